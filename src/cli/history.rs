//! `blkmirror history list|prune|restore TARGET`: the snapshots a receiver keeps of its target
//! (`receive --keep`, see [`crate::history`]): reflink clones of a file target in its history
//! dir, thin snapshots of a thin-LV target in its volume group. Exit 0, or 2 with one error
//! line.

use super::args::{HistoryCommand, HistoryWhere};
use super::out::outln;
use super::CliError;
use crate::history::{HistoryError, Store};

/// Runs `history`.
pub fn run(command: HistoryCommand) -> Result<i32, CliError> {
    let fail = |e: HistoryError| CliError::Usage(e.to_string());
    match command {
        HistoryCommand::List(place) => {
            for entry in store(&place)?.list().map_err(fail)? {
                outln!("{}", line(&entry));
            }
        }
        HistoryCommand::Prune { place, keep, now } => {
            let now = now.unwrap_or_else(crate::state::now);
            for entry in store(&place)?.prune(&keep, now).map_err(fail)? {
                outln!("pruned {}", line(&entry));
            }
        }
        HistoryCommand::Restore {
            place,
            generation,
            dest,
        } => {
            let entry = store(&place)?.restore(generation, &dest).map_err(fail)?;
            outln!(
                "restored generation {} to {}",
                entry.generation,
                dest.display()
            );
        }
    }
    Ok(0)
}

/// The store of the target: its history dir (`--history-dir`, or the default), or its volume
/// group for a thin LV.
fn store(place: &HistoryWhere) -> Result<Store, CliError> {
    let target = crate::receiver::absolute(&place.target);
    Store::for_target(&target, place.history_dir.as_deref())
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// `GENERATION  CREATED (UTC)  PATH` (a file, or `/dev/VG/LV`)
fn line(entry: &crate::history::Entry) -> String {
    let created = std::time::UNIX_EPOCH + std::time::Duration::from_secs(entry.created);
    format!(
        "{:>8}  {}  {}",
        entry.generation,
        humantime::format_rfc3339_seconds(created),
        entry.path.display()
    )
}

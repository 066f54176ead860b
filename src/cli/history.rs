//! `blkmirror history list|prune|restore TARGET`: the snapshots a receiver keeps of its file
//! target (`receive --keep`, see [`crate::history`]). Exit 0, or 2 with one error line.

use super::args::{HistoryCommand, HistoryWhere};
use super::out::outln;
use super::CliError;
use crate::receiver::KeepHistory;

/// Runs `history`.
pub fn run(command: HistoryCommand) -> Result<i32, CliError> {
    let fail = |e: crate::history::HistoryError| CliError::Usage(e.to_string());
    match command {
        HistoryCommand::List(place) => {
            for entry in crate::history::list(&dir(&place)).map_err(fail)? {
                outln!("{}", line(&entry));
            }
        }
        HistoryCommand::Prune { place, keep, now } => {
            let now = now.unwrap_or_else(crate::state::now);
            for entry in crate::history::prune(&dir(&place), &keep, now).map_err(fail)? {
                outln!("pruned {}", line(&entry));
            }
        }
        HistoryCommand::Restore {
            place,
            generation,
            dest,
        } => {
            let entry = crate::history::restore(&dir(&place), generation, &dest).map_err(fail)?;
            outln!(
                "restored generation {} to {}",
                entry.generation,
                dest.display()
            );
        }
    }
    Ok(0)
}

fn dir(place: &HistoryWhere) -> std::path::PathBuf {
    let target = crate::receiver::absolute(&place.target);
    place
        .history_dir
        .clone()
        .unwrap_or_else(|| KeepHistory::default_dir(&target))
}

/// `GENERATION  CREATED (UTC)  PATH`
fn line(entry: &crate::history::Entry) -> String {
    let created = std::time::UNIX_EPOCH + std::time::Duration::from_secs(entry.created);
    format!(
        "{:>8}  {}  {}",
        entry.generation,
        humantime::format_rfc3339_seconds(created),
        entry.path.display()
    )
}

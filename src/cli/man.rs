//! `blkmirror man [--out DIR]` and `blkmirror completions SHELL`: documentation generated from
//! the grammar in [`super::args`], so it can never disagree with what the binary accepts.
//!
//! `man` renders roff with `clap_mangen`: without `--out`, the top page (`blkmirror.1`) to
//! stdout (`blkmirror man | man -l -`); with `--out DIR`, one page per command and
//! subcommand (`blkmirror.1`, `blkmirror-send.1`, `blkmirror-history-list.1`, ...), each path
//! printed on its own line. `completions` prints a `clap_complete` script for the shell.
//!
//! Both render into memory first and then write through [`out`], so a reader that goes away
//! (`| head`) ends the output quietly instead of panicking inside the generators.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use super::args::{Cli, CompletionsArgs, ManArgs};
use super::{out, CliError};

/// The name the pages and completion scripts use for the program.
const BIN: &str = "blkmirror";

/// Runs `man`.
pub fn man(args: ManArgs) -> Result<i32, CliError> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let Some(dir) = args.out else {
        let page = render(&command)?;
        write_stdout(&page).context("cannot write the man page to stdout")?;
        return Ok(0);
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let mut written = Vec::new();
    write_pages(&command, &dir, &mut written)?;
    let mut listing = String::new();
    for path in &written {
        listing.push_str(&format!("{}\n", path.display()));
    }
    write_stdout(listing.as_bytes()).context("cannot write the list of pages to stdout")?;
    Ok(0)
}

/// Runs `completions`.
pub fn completions(args: CompletionsArgs) -> Result<i32, CliError> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, BIN, &mut script);
    write_stdout(&script).context("cannot write the completion script to stdout")?;
    Ok(0)
}

/// Writes the page of `command` and, recursively, of its visible subcommands into `dir`,
/// appending each file's path to `written`.
fn write_pages(
    command: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), CliError> {
    let man = clap_mangen::Man::new(command.clone());
    let path = dir.join(man.get_filename());
    let page = render(command)?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// One page as roff.
fn render(command: &clap::Command) -> Result<Vec<u8>, CliError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .with_context(|| format!("cannot render the man page of {}", command.get_name()))?;
    Ok(page)
}

fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut stdout = out::stdout();
    out::finished(stdout.write_all(bytes).and_then(|()| stdout.flush()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_named_after_their_command_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Cli::command().disable_help_subcommand(true);
        command.build();
        let mut written = Vec::new();
        assert!(write_pages(&command, dir.path(), &mut written).is_ok());
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "blkmirror.1",
            "blkmirror-send.1",
            "blkmirror-receive.1",
            "blkmirror-history.1",
            "blkmirror-history-list.1",
            "blkmirror-completions.1",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    }
}

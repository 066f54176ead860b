//! `blkmirror verify SOURCE TARGET`: byte-by-byte comparison. Exit 0 identical, 1 different
//! (with the differing ranges, the first 100 of them, on stdout), 2 on any error.

use std::io::{self, Write};

use super::args::{ProgressMode, VerifyArgs};
use super::{make_progress, out, CliError};
use crate::source::compare::VerifyReport;

/// How many differing ranges are listed.
const LISTED_RANGES: usize = 100;

/// Runs `verify`.
pub fn run(args: VerifyArgs) -> Result<i32, CliError> {
    let progress = make_progress(ProgressMode::Auto);
    // `verify` promises exit 2 for errors (1 means "different").
    let report = crate::source::compare::verify(&args.source, &args.target, &*progress)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    out::finished(write(&mut out::stdout(), &report))
        .map_err(|e| CliError::Usage(format!("cannot write the comparison to stdout: {e}")))?;
    Ok(if report.identical() { 0 } else { 1 })
}

/// Writes the verdict and, when different, where.
fn write(out: &mut dyn Write, report: &VerifyReport) -> io::Result<()> {
    if report.identical() {
        writeln!(out, "identical: {} bytes", report.source_size)?;
        return out.flush();
    }
    if report.size_mismatch {
        writeln!(
            out,
            "different: source holds {} bytes, target {}",
            report.source_size, report.target_size
        )?;
    }
    if !report.differing.is_empty() {
        writeln!(
            out,
            "different: {} bytes in {} ranges",
            report.differing_bytes(),
            report.differing.len()
        )?;
        for range in report.differing.iter().take(LISTED_RANGES) {
            writeln!(out, "  bytes {}..{}", range.start, range.end)?;
        }
        if report.differing.len() > LISTED_RANGES {
            let more = report.differing.len() - LISTED_RANGES;
            writeln!(out, "  ... and {more} more ranges")?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(report: &VerifyReport) -> String {
        let mut buf = Vec::new();
        write(&mut buf, report).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn verdicts() {
        let same = VerifyReport {
            source_size: 10,
            target_size: 10,
            ..Default::default()
        };
        assert_eq!(text(&same), "identical: 10 bytes\n");
        let differing = (0..150u64).map(|i| i * 10..i * 10 + 2).collect();
        let report = VerifyReport {
            source_size: 2000,
            target_size: 3000,
            size_mismatch: true,
            differing,
        };
        let text = text(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "different: source holds 2000 bytes, target 3000");
        assert_eq!(lines[1], "different: 300 bytes in 150 ranges");
        assert_eq!(lines[2], "  bytes 0..2");
        assert_eq!(lines.len(), 2 + LISTED_RANGES + 1);
        assert_eq!(lines.last(), Some(&"  ... and 50 more ranges"));
    }

    #[test]
    fn a_closed_pipe_is_reported_to_the_caller() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let report = VerifyReport::default();
        let result = write(&mut Closed, &report);
        assert!(out::reader_gone(result.as_ref().unwrap_err()));
        assert!(out::finished(result).is_ok());
    }
}

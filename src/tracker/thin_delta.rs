//! Reading `thin_delta -m --thin1 OLD --thin2 NEW METADATA`: which ranges of a thin volume
//! differ between two thin devices of one pool, and which `thin_delta` versions may be
//! trusted. Pure: the thin tracker runs the tool.
//!
//! The output is a flat, fixed shape (thin-provisioning-tools 0.7 to 0.9, and 1.0.6 on):
//!
//! ```text
//! <superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="1000">
//!   <diff left="1" right="2">
//!     <same begin="0" length="1"/>
//!     <different begin="1" length="1"/>
//!     <left_only begin="10" length="1"/>
//!     <right_only begin="20" length="2"/>
//!   </diff>
//! </superblock>
//! ```
//!
//! `begin` and `length` count pool data blocks of `data_block_size` 512-byte sectors, as
//! addresses inside the thin volume. `different` and `right_only` changed; `left_only` is now
//! unmapped, which reads as zeros: a change too. It is parsed strictly, by hand (no XML crate
//! for six element names): anything else in the output is an error, and an error means a full
//! scan, never a guess.

use crate::blockdiff::ranges::RangeSet;

/// Versions of `thin_delta` whose output can be trusted: 0.7 to 0.9.x, and 1.0.6 on (1.0.0
/// ignored `-m`; 1.0.0 to 1.0.5 reject `--thin2` or can report changed blocks as `same`).
pub fn version_trusted(version: &str) -> Result<(), String> {
    let numbers: Vec<u64> = version
        .trim()
        .split('.')
        .map(|n| n.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("cannot read the thin_delta version {version:?}"))?;
    let (major, minor, patch) = match numbers[..] {
        [major, minor, patch, ..] => (major, minor, patch),
        [major, minor] => (major, minor, 0),
        _ => return Err(format!("cannot read the thin_delta version {version:?}")),
    };
    let trusted = match major {
        0 => (7..=9).contains(&minor),
        1 => minor > 0 || patch >= 6,
        _ => true,
    };
    if trusted {
        Ok(())
    } else {
        Err(format!(
            "thin_delta {} is refused (1.0.0-1.0.5 misreport changes; 0.7-0.9 and 1.0.6 on are trusted)",
            version.trim()
        ))
    }
}

/// The byte ranges of the newer thin device that may differ from the older, clipped to
/// `volume_size` (a shrunk volume leaves `left_only` past its end).
pub fn changed_ranges(output: &str, volume_size: u64) -> Result<RangeSet, String> {
    let mut block_bytes = None;
    let mut changed = RangeSet::new();
    let mut closed = false;
    for tag in tags(output)? {
        let (name, attributes) = split_tag(tag);
        match name {
            "superblock" => {
                let sectors = attribute(attributes, "data_block_size")?;
                if sectors == 0 {
                    return Err("data_block_size 0".into());
                }
                block_bytes = Some(sectors * 512);
            }
            "diff" | "/diff" => {}
            "/superblock" => closed = true,
            "same" | "different" | "left_only" | "right_only" => {
                let bytes = block_bytes.ok_or("a range before the superblock")?;
                let begin = attribute(attributes, "begin")?;
                let length = attribute(attributes, "length")?;
                if name != "same" {
                    let start = begin.checked_mul(bytes).ok_or("begin overflows")?;
                    let len = length.checked_mul(bytes).ok_or("length overflows")?;
                    let end = start.checked_add(len).ok_or("range overflows")?;
                    changed.insert(start..end);
                }
            }
            other => return Err(format!("unexpected element <{other}>")),
        }
    }
    if !closed {
        return Err("output ends before </superblock> (truncated?)".into());
    }
    Ok(changed.clipped(volume_size))
}

/// The contents of every `<...>` of `text` (self-closing slash removed), checking that only
/// whitespace lies between them.
fn tags(text: &str) -> Result<Vec<&str>, String> {
    let mut tags = Vec::new();
    let mut rest = text;
    loop {
        let Some(open) = rest.find('<') else {
            if !rest.trim().is_empty() {
                return Err(format!("unexpected text {:?}", rest.trim()));
            }
            return Ok(tags);
        };
        if !rest[..open].trim().is_empty() {
            return Err(format!("unexpected text {:?}", rest[..open].trim()));
        }
        let close = rest[open..].find('>').ok_or("unclosed element")? + open;
        let tag = rest[open + 1..close].trim();
        tags.push(tag.strip_suffix('/').unwrap_or(tag).trim());
        rest = &rest[close + 1..];
    }
}

/// An element's name and the rest of its tag.
fn split_tag(tag: &str) -> (&str, &str) {
    match tag.split_once(char::is_whitespace) {
        Some((name, attributes)) => (name, attributes),
        None => (tag, ""),
    }
}

/// The unsigned number in `name="N"` among `attributes`.
fn attribute(attributes: &str, name: &str) -> Result<u64, String> {
    let needle = format!("{name}=\"");
    let mut search = attributes;
    loop {
        let at = search
            .find(&needle)
            .ok_or_else(|| format!("missing attribute {name}"))?;
        // A match inside another attribute's name ("xbegin=") does not count.
        let before = search[..at].chars().last();
        let value = &search[at + needle.len()..];
        if before.is_none_or(char::is_whitespace) {
            let end = value.find('"').ok_or("unterminated attribute")?;
            return value[..end]
                .parse()
                .map_err(|_| format!("attribute {name}={:?} is not a number", &value[..end]));
        }
        search = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="1000">
  <diff left="1" right="2">
    <same begin="0" length="1"/>
    <different begin="1" length="1"/>
    <same begin="2" length="1"/>
    <left_only begin="10" length="1"/>
    <right_only begin="20" length="2"/>
  </diff>
</superblock>
"#;

    /// Bytes per pool data block in the samples (`data_block_size="128"` sectors).
    const SAMPLE_BLOCK: u64 = 128 * 512;

    /// The byte ranges the samples' `different`, `right_only` and `left_only` runs make.
    fn sample_changes() -> Vec<std::ops::Range<u64>> {
        let block = SAMPLE_BLOCK;
        vec![
            block..2 * block,
            10 * block..11 * block,
            20 * block..22 * block,
        ]
    }

    #[test]
    fn different_right_only_and_left_only_are_changes() {
        let ranges = changed_ranges(SAMPLE, 1 << 30).unwrap();
        assert_eq!(ranges.iter().cloned().collect::<Vec<_>>(), sample_changes());
        // Clipped to a shrunk volume.
        let clipped = changed_ranges(SAMPLE, 15 * SAMPLE_BLOCK).unwrap();
        assert_eq!(clipped.total_len(), 2 * SAMPLE_BLOCK);
    }

    #[test]
    fn anything_unexpected_is_an_error() {
        assert!(changed_ranges("", 100).is_err());
        assert!(changed_ranges(&SAMPLE.replace("</superblock>", ""), 1 << 30).is_err());
        assert!(changed_ranges(&SAMPLE.replace("different", "differing"), 1 << 30).is_err());
        assert!(changed_ranges(&SAMPLE.replace("length=\"2\"", "length=\"x\""), 1 << 30).is_err());
        assert!(changed_ranges(&format!("oops {SAMPLE}"), 1 << 30).is_err());
        assert!(changed_ranges(&SAMPLE.replace("data_block_size=\"128\"", ""), 1 << 30).is_err());
    }

    #[test]
    fn versions() {
        for good in ["0.7.0", "0.9.0", "0.9.1", "1.0.6", "1.1.0", "1.2.3", "2.0"] {
            assert!(version_trusted(good).is_ok(), "{good}");
        }
        for bad in ["0.6.2", "1.0.0", "1.0.3", "1.0.5", "x", "1"] {
            assert!(version_trusted(bad).is_err(), "{bad}");
        }
    }

    /// Real output of the installed tools, where they are: a metadata file made with
    /// thin_restore, compared with thin_delta.
    #[test]
    fn parses_what_the_installed_thin_delta_prints() {
        let (Some(restore), Some(delta)) = (
            crate::snapshot::find_program("thin_restore"),
            crate::snapshot::find_program("thin_delta"),
        ) else {
            eprintln!("thin-provisioning-tools not installed: skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let xml = dir.path().join("meta.xml");
        let bin = dir.path().join("meta.bin");
        std::fs::write(&xml, METADATA).unwrap();
        std::fs::File::create(&bin)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let restored = std::process::Command::new(&restore)
            .args(["-i", xml.to_str().unwrap(), "-o", bin.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(restored.success());
        let output = std::process::Command::new(&delta)
            // A metadata file holds no metadata snapshot: read its current superblock (on a
            // live pool the tracker reserves one and passes -m).
            .args(["--thin1", "1", "--thin2", "2", bin.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        let ranges = changed_ranges(&text, 1 << 30).unwrap();
        assert_eq!(
            ranges.iter().cloned().collect::<Vec<_>>(),
            sample_changes(),
            "{text}"
        );
    }

    /// Two thin devices: 2 is a snapshot of 1 that rewrote block 1, unmapped block 10 and
    /// wrote blocks 20 and 21.
    const METADATA: &str = r#"<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">
  <device dev_id="1" mapped_blocks="4" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="0" data_begin="0" length="3" time="0"/>
    <single_mapping origin_block="10" data_block="5" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="5" transaction="1" creation_time="1" snap_time="1">
    <single_mapping origin_block="0" data_block="0" time="0"/>
    <single_mapping origin_block="1" data_block="20" time="1"/>
    <single_mapping origin_block="2" data_block="2" time="0"/>
    <single_mapping origin_block="20" data_block="21" time="1"/>
    <single_mapping origin_block="21" data_block="22" time="1"/>
  </device>
</superblock>
"#;
}

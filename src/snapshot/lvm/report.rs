//! Parsing the JSON reports of `lvs` and `vgs` (`--reportformat json`, with `--units b
//! --nosuffix`) and decoding `lv_attr`. Pure functions, tested on real lvm2 output.
//!
//! lvm2 up to 2.03.16 prints every value as a string (`"536870912"`, `""` for none); the
//! `json_std` format of later versions prints numbers and `null`: both are accepted.

use serde::{Deserialize, Deserializer};

/// One `lvs` row (only the fields asked for are present; the others default).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LvRow {
    /// The volume group.
    pub vg_name: String,
    /// The LV's name within its VG.
    pub lv_name: String,
    /// The 10-character attribute string (see [`Attr`]).
    pub lv_attr: String,
    /// Size in bytes.
    #[serde(deserialize_with = "number")]
    pub lv_size: Option<u64>,
    /// The thin pool of a thin LV; empty otherwise.
    pub pool_lv: String,
    /// The origin of a snapshot; empty otherwise.
    pub origin: String,
    /// `/dev/VG/LV`; empty for hidden LVs.
    pub lv_path: String,
    /// Kernel device major number (lvm2 reports -1 for an inactive LV).
    #[serde(deserialize_with = "signed")]
    pub lv_kernel_major: Option<i64>,
    /// Kernel device minor number (lvm2 reports -1 for an inactive LV).
    #[serde(deserialize_with = "signed")]
    pub lv_kernel_minor: Option<i64>,
    /// How full a snapshot's copy-on-write space is, in percent.
    #[serde(deserialize_with = "percent")]
    pub snap_percent: Option<f64>,
    /// How full a thin pool's data space is, in percent.
    #[serde(deserialize_with = "percent")]
    pub data_percent: Option<f64>,
    /// How full a thin pool's metadata space is, in percent.
    #[serde(deserialize_with = "percent")]
    pub metadata_percent: Option<f64>,
    /// A thin volume's device id in its pool (`thin_id`).
    #[serde(deserialize_with = "number")]
    pub thin_id: Option<u64>,
    /// The LV's tags (`lv_tags`: a comma-separated string, or a list in `json_std`).
    #[serde(deserialize_with = "tags")]
    pub lv_tags: Vec<String>,
}

/// One `vgs` row.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct VgRow {
    /// The volume group.
    pub vg_name: String,
    /// Unallocated space, in bytes.
    #[serde(deserialize_with = "number")]
    pub vg_free: Option<u64>,
    /// Physical extent size, in bytes (LVs are sized in whole extents).
    #[serde(deserialize_with = "number")]
    pub vg_extent_size: Option<u64>,
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<Section<T>>,
}

#[derive(Deserialize)]
struct Section<T> {
    #[serde(default = "Vec::new", alias = "vg", alias = "seg")]
    lv: Vec<T>,
}

/// The rows of an `lvs --reportformat json` output.
pub fn parse_lvs(json: &str) -> Result<Vec<LvRow>, String> {
    parse(json)
}

/// The rows of a `vgs --reportformat json` output.
pub fn parse_vgs(json: &str) -> Result<Vec<VgRow>, String> {
    parse(json)
}

fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<Vec<T>, String> {
    let report: Report<T> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(report.report.into_iter().flat_map(|s| s.lv).collect())
}

/// A JSON value that is a number, a string holding one (maybe with a `B` unit), `""` or null.
fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => {
            let s = s.trim().trim_end_matches(['B', 'b']).trim().to_string();
            (!s.is_empty()).then_some(s)
        }
        serde_json::Value::Number(n) => Some(n.to_string()),
        other => return Err(serde::de::Error::custom(format!("unexpected {other}"))),
    })
}

fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    scalar(d)?
        .map(|s| s.parse::<u64>().map_err(serde::de::Error::custom))
        .transpose()
}

fn signed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    scalar(d)?
        .map(|s| s.parse::<i64>().map_err(serde::de::Error::custom))
        .transpose()
}

/// `"a,b"`, `["a","b"]`, `""` or null: the tags, empty ones dropped.
fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    let words: Vec<String> = match value {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::String(s) => s.split(',').map(str::to_string).collect(),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Ok(s),
                other => Err(serde::de::Error::custom(format!("unexpected tag {other}"))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(serde::de::Error::custom(format!("unexpected {other}"))),
    };
    Ok(words
        .into_iter()
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .collect())
}

/// A percentage field: `None` for none (`""`, `"-"`, null), an error for text that is no
/// percentage (see [`parse_percent`]).
fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let Some(text) = scalar(d)? else {
        return Ok(None);
    };
    match parse_percent(&text) {
        Percent::Value(p) => Ok(Some(p)),
        Percent::None => Ok(None),
        Percent::Invalid => Err(serde::de::Error::custom(format!(
            "not a percentage: {text:?}"
        ))),
    }
}

/// What a percentage field of an lvm2 report holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Percent {
    /// A percentage: 0 to 100 (lvm2 prints no other, but a larger one is kept as it is, so
    /// that a snapshot's health check sees 100 or more as full).
    Value(f64),
    /// No figure: `""` (the field does not apply to the LV) or `"-"`.
    None,
    /// Text that is no percentage: not a number, negative, NaN or infinite.
    Invalid,
}

/// A percentage as lvm2 prints it: `"12.34"`, with blanks around (`--noheadings` output), a
/// `%` after, or a decimal comma (lvm2 formats numbers in the caller's locale: `"12,34"`).
/// Never panics, whatever the text.
pub fn parse_percent(text: &str) -> Percent {
    let text = text.trim();
    let text = text.strip_suffix('%').unwrap_or(text).trim();
    if text.is_empty() || text == "-" {
        return Percent::None;
    }
    // A decimal comma, but not a thousands separator (a percentage has no thousands).
    let normalized = match text.matches(',').count() {
        0 => text.to_string(),
        1 if !text.contains('.') => text.replace(',', "."),
        _ => return Percent::Invalid,
    };
    // The checks also refuse what else parses as a float: NaN, inf.
    match normalized.parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Percent::Value(p),
        _ => Percent::Invalid,
    }
}

/// `lv_attr` decoded (see lvs(8), "The lv_attr bits are").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Bit 1, the volume type: `-` plain, `o` origin, `s` snapshot, `V` thin volume, `t` thin
    /// pool, ...
    pub volume_type: char,
    /// Bit 5, the state: `a` active, `I` invalid snapshot, `S` invalid suspended snapshot, ...
    pub state: char,
    /// Bit 6: `o` when the device is open.
    pub open: bool,
}

impl Attr {
    /// Decodes an `lv_attr` string; `None` when it has fewer than 6 characters.
    pub fn parse(attr: &str) -> Option<Attr> {
        let bits: Vec<char> = attr.chars().collect();
        if bits.len() < 6 {
            return None;
        }
        Some(Attr {
            volume_type: bits[0],
            state: bits[4],
            open: bits[5] == 'o',
        })
    }

    /// A thin LV (volume type `V`).
    pub fn is_thin_volume(&self) -> bool {
        self.volume_type == 'V'
    }

    /// Active (state `a`).
    pub fn is_active(&self) -> bool {
        self.state == 'a'
    }

    /// A classic snapshot the kernel gave up on (overflowed, or failed).
    pub fn is_invalid_snapshot(&self) -> bool {
        matches!(self.state, 'I' | 'S')
    }

    /// The state in words, for messages.
    pub fn state_words(&self) -> &'static str {
        match self.state {
            'a' => "active",
            '-' => "inactive",
            'h' => "historical",
            's' => "suspended",
            'I' => "invalid",
            'S' => "invalid and suspended",
            'm' => "merge failed",
            'M' => "suspended, merge failed",
            'd' => "mapped without tables",
            'i' => "mapped with an inactive table",
            'c' | 'C' => "thin pool needs a check",
            _ => "in an unknown state",
        }
    }

    /// The volume type in words, for messages.
    pub fn type_words(&self) -> &'static str {
        match self.volume_type {
            '-' => "a plain LV",
            'o' => "an origin of classic snapshots",
            'O' => "an origin with a merging snapshot",
            's' => "a classic snapshot",
            'S' => "a merging classic snapshot",
            'V' => "a thin LV",
            't' => "a thin pool",
            'T' => "thin pool data",
            'e' => "pool metadata",
            'r' | 'R' => "a RAID LV",
            'm' | 'M' => "a mirrored LV",
            'C' => "a cached LV",
            'i' | 'I' => "a RAID or mirror image",
            'l' => "a mirror log",
            'p' => "a pvmove LV",
            'v' => "a virtual LV",
            'c' => "an LV under conversion",
            'd' | 'D' => "a VDO pool",
            _ => "an LV of an unknown type",
        }
    }

    /// Can a classic (COW) snapshot be taken of it?
    pub fn classic_snapshot_possible(&self) -> bool {
        matches!(
            self.volume_type,
            '-' | 'o' | 'r' | 'R' | 'm' | 'M' | 'C' | 'V'
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lvs --reportformat json --units b --nosuffix -o vg_name,lv_name,lv_attr,lv_size,
    /// pool_lv,origin,lv_path,lv_kernel_major,lv_kernel_minor` on lvm2 2.03.16 (Debian 12): a
    /// plain LV with a classic snapshot, a thin pool, a thin LV and its (inactive, skipped)
    /// thin snapshot.
    const LVS_ALL: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"vg_name":"vgt", "lv_name":"data", "lv_attr":"owi-aos---", "lv_size":"268435456", "pool_lv":"", "origin":"", "lv_path":"/dev/vgt/data", "lv_kernel_major":"254", "lv_kernel_minor":"0"},
                  {"vg_name":"vgt", "lv_name":"blkmirror-snap-0123456789abcdef-1700000000", "lv_attr":"swi-a-s---", "lv_size":"67108864", "pool_lv":"", "origin":"data", "lv_path":"/dev/vgt/blkmirror-snap-0123456789abcdef-1700000000", "lv_kernel_major":"254", "lv_kernel_minor":"3"},
                  {"vg_name":"vgt", "lv_name":"pool", "lv_attr":"twi-aotz--", "lv_size":"536870912", "pool_lv":"", "origin":"", "lv_path":"", "lv_kernel_major":"254", "lv_kernel_minor":"6"},
                  {"vg_name":"vgt", "lv_name":"thin", "lv_attr":"Vwi-aotz--", "lv_size":"268435456", "pool_lv":"pool", "origin":"", "lv_path":"/dev/vgt/thin", "lv_kernel_major":"254", "lv_kernel_minor":"7"},
                  {"vg_name":"vgt", "lv_name":"tsnap", "lv_attr":"Vwi---tz-k", "lv_size":"268435456", "pool_lv":"pool", "origin":"thin", "lv_path":"/dev/vgt/tsnap", "lv_kernel_major":"-1", "lv_kernel_minor":"-1"}
              ]
          }
      ]
  }
"#;

    #[test]
    fn parses_lvs_rows() {
        let rows = parse_lvs(LVS_ALL).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0].vg_name, "vgt");
        assert_eq!(rows[0].lv_name, "data");
        assert_eq!(rows[0].lv_size, Some(256 << 20));
        assert_eq!(
            (rows[0].lv_kernel_major, rows[0].lv_kernel_minor),
            (Some(254), Some(0))
        );
        assert_eq!(rows[1].origin, "data");
        assert_eq!(rows[3].pool_lv, "pool");
        assert_eq!(rows[4].lv_kernel_major, Some(-1));
        assert_eq!(rows[4].snap_percent, None);
    }

    #[test]
    fn parses_snapshot_health() {
        // `lvs ... -o lv_name,lv_attr,lv_size,snap_percent vgt/snap`: filling, then overflowed.
        let filling = r#"{"report":[{"lv":[{"lv_name":"snap","lv_attr":"swi-a-s---","lv_size":"67108864","snap_percent":"12.50"}]}]}"#;
        let full = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"snap", "lv_attr":"swi-I-s---", "lv_size":"67108864", "snap_percent":"100.00"}
              ]
          }
      ]
  }"#;
        let row = &parse_lvs(filling).unwrap()[0];
        assert_eq!(row.snap_percent, Some(12.5));
        assert!(!Attr::parse(&row.lv_attr).unwrap().is_invalid_snapshot());
        let row = &parse_lvs(full).unwrap()[0];
        assert_eq!(row.snap_percent, Some(100.0));
        let attr = Attr::parse(&row.lv_attr).unwrap();
        assert!(attr.is_invalid_snapshot());
        assert_eq!(attr.state_words(), "invalid");
    }

    #[test]
    fn percentages_as_lvm2_prints_them() {
        let value = |text: &str| match parse_percent(text) {
            Percent::Value(p) => p,
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!(value("12.34"), 12.34);
        assert_eq!(value("  12.34"), 12.34);
        assert_eq!(value("  12.34\n"), 12.34);
        assert_eq!(value("0.00"), 0.0);
        assert_eq!(value("100.00"), 100.0);
        assert_eq!(value("7.5%"), 7.5);
        assert_eq!(value("100.01"), 100.01);
        // A locale with a decimal comma.
        assert_eq!(value("12,34"), 12.34);
        assert_eq!(value(" 99,90 "), 99.9);
        for none in ["", "   ", "-", " - ", "%"] {
            assert_eq!(parse_percent(none), Percent::None, "{none:?}");
        }
        for bad in [
            "abc", "1,2,3", "1,234.5", "12.3.4", ".", ",", "-5", "-0.5", "NaN", "inf", "1e400",
            "12 34", "\u{0}",
        ] {
            assert_eq!(parse_percent(bad), Percent::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn parses_pool_usage() {
        // `lvs --reportformat json --units b --nosuffix -o lv_name,lv_attr,data_percent,
        // metadata_percent vgt/pool`, and a thin LV's row (no metadata figure).
        let json = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"pool", "lv_attr":"twi-aotz--", "data_percent":"12.34", "metadata_percent":"10.94"},
                  {"lv_name":"thin", "lv_attr":"Vwi-aotz--", "data_percent":"49,80", "metadata_percent":""}
              ]
          }
      ]
  }"#;
        let rows = parse_lvs(json).unwrap();
        assert_eq!(
            (rows[0].data_percent, rows[0].metadata_percent),
            (Some(12.34), Some(10.94))
        );
        assert_eq!(
            (rows[1].data_percent, rows[1].metadata_percent),
            (Some(49.8), None)
        );
        let bad = r#"{"report":[{"lv":[{"lv_name":"pool","data_percent":"lots"}]}]}"#;
        assert!(parse_lvs(bad).is_err());
    }

    #[test]
    fn parses_json_std_numbers_and_nulls() {
        let std = r#"{"report":[{"lv":[{"lv_name":"snap","lv_attr":"swi-a-s---","lv_size":67108864,"snap_percent":3.25,"lv_kernel_major":254,"pool_lv":""}]}],"log":[]}"#;
        let row = &parse_lvs(std).unwrap()[0];
        assert_eq!(row.lv_size, Some(64 << 20));
        assert_eq!(row.snap_percent, Some(3.25));
        assert_eq!(row.lv_kernel_major, Some(254));
        let nulls = r#"{"report":[{"lv":[{"lv_name":"x","lv_size":null,"snap_percent":null}]}]}"#;
        let row = &parse_lvs(nulls).unwrap()[0];
        assert_eq!((row.lv_size, row.snap_percent), (None, None));
    }

    #[test]
    fn parses_tags_as_string_or_list() {
        let json = r#"{"report":[{"lv":[{"lv_name":"a","lv_tags":"blkmirror-history,other"},{"lv_name":"b","lv_tags":""},{"lv_name":"c","lv_tags":["x","y"]},{"lv_name":"d"}]}]}"#;
        let rows = parse_lvs(json).unwrap();
        assert_eq!(rows[0].lv_tags, ["blkmirror-history", "other"]);
        assert!(rows[1].lv_tags.is_empty());
        assert_eq!(rows[2].lv_tags, ["x", "y"]);
        assert!(rows[3].lv_tags.is_empty());
    }

    #[test]
    fn parses_sizes_with_unit_suffix() {
        let json = r#"{"report":[{"vg":[{"vg_name":"vgt","vg_free":"1069547520B","vg_extent_size":"4194304B"}]}]}"#;
        let vg = &parse_vgs(json).unwrap()[0];
        assert_eq!(vg.vg_free, Some(1_069_547_520));
        assert_eq!(vg.vg_extent_size, Some(4 << 20));
    }

    #[test]
    fn parses_vgs_and_empty_reports() {
        let json = r#"  {
      "report": [
          {
              "vg": [
                  {"vg_name":"vgt", "vg_free":"0", "vg_extent_size":"4194304"}
              ]
          }
      ]
  }"#;
        assert_eq!(parse_vgs(json).unwrap()[0].vg_free, Some(0));
        assert!(parse_lvs(r#"{"report":[{"lv":[]}]}"#).unwrap().is_empty());
        assert!(parse_lvs("  Volume group \"x\" not found").is_err());
        assert!(parse_lvs(r#"{"report":[{"lv":[{"lv_size":"12x"}]}]}"#).is_err());
    }

    #[test]
    fn decodes_attr() {
        let plain = Attr::parse("-wi-ao----").unwrap();
        assert_eq!(
            (plain.volume_type, plain.state, plain.open),
            ('-', 'a', true)
        );
        assert!(plain.classic_snapshot_possible() && !plain.is_thin_volume());
        let thin_snap = Attr::parse("Vwi---tz-k").unwrap();
        assert!(thin_snap.is_thin_volume() && !thin_snap.is_active());
        assert_eq!(thin_snap.state_words(), "inactive");
        let pool = Attr::parse("twi-aotz--").unwrap();
        assert!(!pool.classic_snapshot_possible());
        assert_eq!(pool.type_words(), "a thin pool");
        let snap = Attr::parse("swi-a-s---").unwrap();
        assert!(!snap.classic_snapshot_possible() && !snap.is_invalid_snapshot());
        assert!(Attr::parse("swi-S-s---").unwrap().is_invalid_snapshot());
        assert!(Attr::parse("-wi").is_none());
    }
}

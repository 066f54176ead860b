//! Reading a classic LVM snapshot's exception table (the dm-snapshot persistent store, on
//! `/dev/mapper/VG-SNAP-cow`): the origin chunks written since the snapshot was taken. The
//! previous cycle's snapshot, kept alive, has copied aside every origin chunk written since
//! it was taken; those chunks are a superset of what changed up to the current snapshot.
//!
//! Layout (drivers/md/dm-snap-persistent.c), little-endian throughout:
//! * chunk 0, the header: `magic` u32 (0x70416e53, "SnAp"), `valid` u32 (0: the snapshot
//!   overflowed and is unusable), `version` u32 (1), `chunk_size` u32 in 512-byte sectors;
//! * metadata area `i` sits at chunk `1 + (epa + 1) * i`, `epa = chunk_size * 512 / 16`
//!   exceptions per area; each exception is `old_chunk` u64 (the origin chunk) and
//!   `new_chunk` u64 (where its old content went); an area ends at the first `new_chunk` 0,
//!   and the table at the first area that is not full.
//!
//! Pure over a chunk reader, so it is tested on synthetic stores.

use std::io;

use crate::blockdiff::ranges::RangeSet;

/// "SnAp".
pub const SNAP_MAGIC: u32 = 0x7041_6e53;
/// The only on-disk version.
pub const DISK_VERSION: u32 = 1;
/// Largest chunk accepted: tables are read a chunk at a time, so the buffer is bounded.
const MAX_CHUNK_BYTES: u64 = 16 << 20;

/// What a table says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CowTable {
    /// Bytes per chunk.
    pub chunk_bytes: u64,
    /// The origin's byte ranges written since the snapshot was taken.
    pub written: RangeSet,
}

/// Reads the exception table through `read_chunk(index, buffer)`, which fills `buffer` with
/// chunk `index` of the COW device (the buffer is one chunk long, or the header's 512 bytes
/// first). `origin_size` bounds the chunks accepted.
pub fn read_table(
    mut read_chunk: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    origin_size: u64,
) -> Result<CowTable, String> {
    let mut header = [0u8; 512];
    read_chunk(0, &mut header).map_err(|e| format!("cannot read the COW header: {e}"))?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let (magic, valid, version, sectors) = (word(0), word(4), word(8), word(12));
    if magic != SNAP_MAGIC {
        return Err(format!("not a dm-snapshot COW store (magic {magic:#x})"));
    }
    if valid == 0 {
        return Err("the previous snapshot is invalid (it overflowed)".into());
    }
    if version != DISK_VERSION {
        return Err(format!("COW store version {version} (only 1 is known)"));
    }
    let chunk_bytes = sectors as u64 * 512;
    if chunk_bytes == 0 || !chunk_bytes.is_power_of_two() || chunk_bytes > MAX_CHUNK_BYTES {
        return Err(format!("COW chunk size of {sectors} sectors"));
    }
    let per_area = chunk_bytes / 16;
    let origin_chunks = origin_size.div_ceil(chunk_bytes);
    let mut written = RangeSet::new();
    let mut area = vec![0u8; chunk_bytes as usize];
    for index in 0u64.. {
        let location = 1 + (per_area + 1) * index;
        read_chunk(location, &mut area)
            .map_err(|e| format!("cannot read COW metadata area {index}: {e}"))?;
        let mut full = true;
        for entry in area.chunks_exact(16) {
            let old = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
            let new = u64::from_le_bytes(entry[8..].try_into().expect("8 bytes"));
            if new == 0 {
                full = false;
                break;
            }
            if old >= origin_chunks {
                return Err(format!(
                    "exception for origin chunk {old}, past the origin's end"
                ));
            }
            written.insert(old * chunk_bytes..(old + 1) * chunk_bytes);
        }
        if !full {
            break;
        }
    }
    Ok(CowTable {
        chunk_bytes,
        written: written.clipped(origin_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A COW store of `chunk_bytes` chunks holding `exceptions` (origin chunk, COW chunk).
    fn store(chunk_bytes: u64, valid: u32, exceptions: &[(u64, u64)]) -> Vec<u8> {
        let per_area = (chunk_bytes / 16) as usize;
        let areas = exceptions.len() / per_area + 1;
        let chunks = 1 + areas * (per_area + 1);
        let mut bytes = vec![0u8; chunks * chunk_bytes as usize];
        for (at, value) in [SNAP_MAGIC, valid, DISK_VERSION, (chunk_bytes / 512) as u32]
            .iter()
            .enumerate()
        {
            bytes[at * 4..at * 4 + 4].copy_from_slice(&value.to_le_bytes());
        }
        for (i, (old, new)) in exceptions.iter().enumerate() {
            let area = i / per_area;
            let location = (1 + (per_area + 1) * area) * chunk_bytes as usize;
            let at = location + (i % per_area) * 16;
            bytes[at..at + 8].copy_from_slice(&old.to_le_bytes());
            bytes[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
        }
        bytes
    }

    fn read(bytes: &[u8], chunk_bytes: u64) -> impl FnMut(u64, &mut [u8]) -> io::Result<()> + '_ {
        move |index, buf| {
            let at = (index * chunk_bytes) as usize;
            match bytes.get(at..at + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    Ok(())
                }
                None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end")),
            }
        }
    }

    #[test]
    fn exceptions_across_areas_become_origin_ranges() {
        let chunk = 4096u64;
        // 256 exceptions per area: fill one area and start a second.
        let exceptions: Vec<(u64, u64)> = (0..300).map(|i| (i * 3, 1000 + i)).collect();
        let bytes = store(chunk, 1, &exceptions);
        let table = read_table(read(&bytes, chunk), 1 << 30).unwrap();
        assert_eq!(table.chunk_bytes, chunk);
        assert_eq!(table.written.range_count(), 300);
        assert!(table.written.contains(299 * 3 * chunk));
        assert!(!table.written.contains(chunk));
    }

    #[test]
    fn an_empty_table_means_nothing_written() {
        let bytes = store(8192, 1, &[]);
        let table = read_table(read(&bytes, 8192), 1 << 20).unwrap();
        assert!(table.written.is_empty());
    }

    #[test]
    fn invalid_foreign_or_odd_stores_are_refused() {
        let invalid = store(4096, 0, &[(1, 2)]);
        assert!(read_table(read(&invalid, 4096), 1 << 20)
            .unwrap_err()
            .contains("overflowed"));
        let mut foreign = store(4096, 1, &[]);
        foreign[0] = 0;
        assert!(read_table(read(&foreign, 4096), 1 << 20).is_err());
        let past_end = store(4096, 1, &[(1 << 20, 2)]);
        assert!(read_table(read(&past_end, 4096), 1 << 20).is_err());
    }
}

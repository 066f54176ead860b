//! Reading a source ahead of its consumer. Several reader threads each read every n-th chunk
//! into page-aligned buffers of their own, do the caller's per-chunk work on it (the scan
//! hashes there), and hand the chunks to the consumer in order. So the device sees several
//! requests at once (a virtio disk reads about 1.5x faster with four streams than with one:
//! see `docs/benchmarks.md`), and hashing runs beside both the reads and the consumer.
//!
//! Reads bypass the page cache (`O_DIRECT`) when the source allows it: a scan reads the
//! whole device every cycle and would otherwise evict everyone's cached data, and the
//! kernel's copy into the cache costs more CPU than the hashing. A range already wholly in
//! the page cache (`mincore`) is taken from there instead: a warm image is not read again. A
//! regular file's chunk wholly in the cache is not even copied: it is hashed through a
//! read-only mapping (the copy cost as much CPU as the hashing; a file truncated under the
//! mapping raises SIGBUS, which the binary reports as one error line, see
//! `cli::report_sigbus`). Block devices are never mapped.
//! Regular files are asked for their holes (`SEEK_DATA`/`SEEK_HOLE`): a hole is zeros without
//! reading it, and the chunk says which of its bytes came from data, so the hasher need not
//! look at the rest.
//!
//! Memory is bounded: readers × [`BUFFERS_PER_READER`] buffers of one chunk each.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use nix::errno::Errno;
use nix::unistd::Whence;

use super::BlockSource;
use crate::device::DeviceKind;

/// Alignment of direct reads: offsets, lengths and buffers (covers 512 B and 4 KiB sectors).
const DIRECT_ALIGN: usize = 4096;
/// Buffers each reader cycles through: one being read while one waits for the consumer.
pub const BUFFERS_PER_READER: usize = 2;

/// How to read ahead.
#[derive(Clone, Copy, Debug)]
pub struct ReadAheadOptions {
    /// Bytes per chunk (the last chunk may be shorter).
    pub chunk_len: usize,
    /// Reader threads (each keeps one read in flight).
    pub readers: usize,
    /// Try `O_DIRECT` (falls back to cached reads where the file system refuses it).
    pub direct: bool,
}

/// One chunk of the source: `data()` is `len` bytes read at `offset`.
pub struct Chunk {
    /// Byte offset in the source where `data()` starts.
    pub offset: u64,
    len: usize,
    buf: memmap2::MmapMut,
    /// The chunk's bytes mapped from the page cache, when they were all there (then `buf` is
    /// not used).
    mapped: Option<memmap2::Mmap>,
    /// Byte ranges of `data()` that hold data; the rest is holes, zero-filled.
    data_ranges: Vec<Range<usize>>,
}

impl Chunk {
    fn new(capacity: usize) -> io::Result<Chunk> {
        Ok(Chunk {
            offset: 0,
            len: 0,
            buf: memmap2::MmapMut::map_anon(capacity)?,
            mapped: None,
            data_ranges: Vec::new(),
        })
    }

    /// The chunk's bytes (holes read as zeros).
    pub fn data(&self) -> &[u8] {
        match &self.mapped {
            Some(map) => &map[..self.len],
            None => &self.buf[..self.len],
        }
    }

    /// Bytes of the chunk read from the source (holes are not read).
    pub fn bytes_from_source(&self) -> u64 {
        self.data_ranges
            .iter()
            .map(|r| (r.end - r.start) as u64)
            .sum()
    }

    /// Whether `range` (bytes of `data()`) may hold non-zero bytes; false means it lies in
    /// holes of the file and is known to be zeros.
    pub fn may_hold_data(&self, range: Range<usize>) -> bool {
        self.data_ranges
            .iter()
            .any(|r| r.start < range.end && range.start < r.end)
    }
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadAheadError<E> {
    /// A read failed (or a chunk buffer could not be mapped).
    Read {
        /// Byte offset of the chunk whose read failed (0 for a buffer).
        offset: u64,
        /// The error.
        source: io::Error,
    },
    /// The cancel flag was set.
    Cancelled,
    /// `consume` returned this error; reading stopped there.
    Consumer(E),
}

/// Reads `spans` of `source` (byte ranges in ascending order, each at most
/// `options.chunk_len` long), one chunk per span; on the reader's thread runs `prepare` on each
/// chunk, which fills a `T` of that chunk's (a reused one: `prepare` overwrites it); then
/// calls `consume` with each chunk and its `T`, in order.
pub fn for_each_chunk<T: Default + Send, E>(
    source: &BlockSource,
    spans: &[Range<u64>],
    options: ReadAheadOptions,
    cancel: &AtomicBool,
    prepare: impl Fn(&Chunk, &mut T) + Sync,
    mut consume: impl FnMut(&Chunk, &T) -> Result<(), E>,
) -> Result<(), ReadAheadError<E>> {
    if spans.is_empty() {
        return Ok(());
    }
    let chunk_len = options.chunk_len.max(1);
    debug_assert!(spans.iter().all(|s| s.end - s.start <= chunk_len as u64));
    let readers = options.readers.clamp(1, spans.len().min(64));
    // Buffers as large as the largest span (small tracked ranges need small buffers).
    let largest = spans.iter().map(|s| s.end - s.start).max().unwrap_or(0) as usize;
    let capacity = largest.max(1).next_multiple_of(DIRECT_ALIGN);
    let direct = if options.direct {
        open_direct(source)
    } else {
        None
    };
    let plan = Plan {
        cached: source.file(),
        direct: direct.as_ref(),
        holes: source.kind() == DeviceKind::File,
        map_cached: options.direct && source.kind() == DeviceKind::File,
        size: source.size(),
        spans,
        readers,
        cancel,
    };
    std::thread::scope(|scope| {
        let mut lanes = Vec::with_capacity(readers);
        for lane in 0..readers {
            let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(Chunk, T)>>(1);
            let (free_tx, free_rx) = mpsc::channel::<(Chunk, T)>();
            for _ in 0..BUFFERS_PER_READER {
                let chunk = Chunk::new(capacity).map_err(|e| ReadAheadError::Read {
                    offset: 0,
                    source: e,
                })?;
                free_tx.send((chunk, T::default())).expect("receiver alive");
            }
            let (plan, prepare) = (&plan, &prepare);
            scope.spawn(move || plan.run_lane(lane, prepare, free_rx, full_tx));
            lanes.push((full_rx, free_tx));
        }
        for (index, span) in spans.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(ReadAheadError::Cancelled);
            }
            let (full_rx, free_tx) = &lanes[index % readers];
            let (chunk, work) = match full_rx.recv() {
                Ok(Ok(filled)) => filled,
                Ok(Err(source)) => {
                    return Err(ReadAheadError::Read {
                        offset: span.start,
                        source,
                    })
                }
                // A reader only stops early on cancellation.
                Err(_) => return Err(ReadAheadError::Cancelled),
            };
            debug_assert_eq!(chunk.offset, span.start);
            consume(&chunk, &work).map_err(ReadAheadError::Consumer)?;
            let _ = free_tx.send((chunk, work));
        }
        Ok(())
        // Dropping the lanes ends the readers: their sends and receives fail.
    })
}

/// What every reader thread needs.
struct Plan<'a> {
    /// The source as opened (reads through the page cache).
    cached: &'a File,
    /// The same opened with `O_DIRECT`, when that works.
    direct: Option<&'a File>,
    holes: bool,
    /// Hash chunks wholly in the page cache through a mapping instead of copying them.
    map_cached: bool,
    size: u64,
    spans: &'a [Range<u64>],
    readers: usize,
    cancel: &'a AtomicBool,
}

impl Plan<'_> {
    /// Reads spans `lane`, `lane + readers`, ... into free buffers, prepares and sends them.
    fn run_lane<T>(
        &self,
        lane: usize,
        prepare: &(impl Fn(&Chunk, &mut T) + Sync),
        free: mpsc::Receiver<(Chunk, T)>,
        full: mpsc::SyncSender<io::Result<(Chunk, T)>>,
    ) {
        // The last data run `SEEK_HOLE` reported: later chunks inside it need not ask again.
        let mut known_data = 0..0;
        for span in self.spans.iter().skip(lane).step_by(self.readers) {
            if self.cancel.load(Ordering::Relaxed) {
                return;
            }
            let Ok((mut chunk, mut work)) = free.recv() else {
                return;
            };
            let result = self
                .fill(&mut chunk, span.clone(), &mut known_data)
                .map(|()| {
                    prepare(&chunk, &mut work);
                    (chunk, work)
                });
            let failed = result.is_err();
            if full.send(result).is_err() || failed {
                return;
            }
        }
    }

    fn fill(
        &self,
        chunk: &mut Chunk,
        span: Range<u64>,
        known_data: &mut Range<u64>,
    ) -> io::Result<()> {
        let offset = span.start;
        let len = (span.end.min(self.size) - offset.min(self.size)) as usize;
        if (len as u64) < span.end - span.start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the source ends at byte {} (it shrank during the cycle?)",
                    self.size
                ),
            ));
        }
        chunk.offset = offset;
        chunk.len = len;
        chunk.mapped = None;
        chunk.data_ranges.clear();
        if self.holes {
            data_ranges(self.cached, offset, len, &mut chunk.data_ranges, known_data)?;
        } else {
            chunk.data_ranges.push(0..len);
        }
        // Whether the whole chunk is known not to be all in the page cache (asked once).
        let mut not_all_cached = false;
        if self.map_cached && offset.is_multiple_of(page_size() as u64) {
            match cached_mapping(self.cached, offset, len) {
                Some(map) => {
                    chunk.mapped = Some(map);
                    return Ok(());
                }
                None => not_all_cached = true,
            }
        }
        let mut filled = 0;
        for range in &chunk.data_ranges {
            chunk.buf[filled..range.start].fill(0);
            // A range that is the whole chunk was just asked about.
            let known = not_all_cached && *range == (0..len);
            self.read_range(&mut chunk.buf, offset, range.clone(), known)?;
            filled = range.end;
        }
        chunk.buf[filled..len].fill(0);
        Ok(())
    }

    /// Reads `range` of the chunk at `offset` into the same range of `buf`: directly unless
    /// the range is all in the page cache (`not_all_cached`: known not to be). Direct reads
    /// are widened to the alignment (the buffer has room: its capacity is aligned).
    fn read_range(
        &self,
        buf: &mut [u8],
        offset: u64,
        range: Range<usize>,
        not_all_cached: bool,
    ) -> io::Result<()> {
        let at = offset + range.start as u64;
        match self.direct {
            Some(direct) if not_all_cached || !in_page_cache(self.cached, at, range.len()) => {
                let start = range.start / DIRECT_ALIGN * DIRECT_ALIGN;
                let end = range.end.next_multiple_of(DIRECT_ALIGN).min(buf.len());
                read_fully(
                    direct,
                    &mut buf[start..end],
                    offset + start as u64,
                    range.end - start,
                )
            }
            _ => read_fully(self.cached, &mut buf[range.clone()], at, range.len()),
        }
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; fewer than `want` bytes is
/// an error.
fn read_fully(file: &File, buf: &mut [u8], offset: u64, want: usize) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if done < want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the source ended at byte {} (it shrank during the cycle?)",
                offset + done as u64
            ),
        ));
    }
    Ok(())
}

/// Whether every page of `len` bytes at `offset` is in the page cache. False when it cannot
/// tell.
fn in_page_cache(file: &File, offset: u64, len: usize) -> bool {
    cached_mapping(file, offset, len).is_some()
}

/// A read-only mapping of `len` bytes at `offset` (page-aligned downwards) when every page of
/// them is in the page cache (`mincore` on the mapping before it is touched, so asking reads
/// nothing); `None` when some page is not, or it cannot tell.
#[allow(unsafe_code)]
fn cached_mapping(file: &File, offset: u64, len: usize) -> Option<memmap2::Mmap> {
    let page = page_size();
    let start = offset / page as u64 * page as u64;
    let span = (offset + len as u64 - start) as usize;
    // SAFETY: a read-only shared mapping; here only its residency is asked. The caller that
    // reads it (a regular file's chunk) is exposed to a concurrent truncation as SIGBUS, which
    // the binary turns into an error line and exit (`cli::report_sigbus`).
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(start)
            .len(span)
            .map(file)
    }
    .ok()?;
    let mut resident = vec![0u8; span.div_ceil(page)];
    // SAFETY: `map` covers `span` bytes from a page-aligned address, and `resident` has one
    // byte per page of it.
    let status = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            span,
            resident.as_mut_ptr(),
        )
    };
    (status == 0 && resident.iter().all(|&page| page & 1 == 1)).then_some(map)
}

fn page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) if size > 0 => size as usize,
        _ => 4096,
    }
}

/// Opens a second handle on the source with `O_DIRECT`, if the file system supports it and
/// a first aligned read through it works.
fn open_direct(source: &BlockSource) -> Option<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(source.path())
        .ok()?;
    let mut probe = memmap2::MmapMut::map_anon(DIRECT_ALIGN).ok()?;
    file.read_at(&mut probe, 0).ok()?;
    // The same object? (A path swapped since the source was opened would not be.)
    let (a, b) = (file.metadata().ok()?, source.file().metadata().ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino() && a.rdev() == b.rdev()).then_some(file)
}

/// Fills `out` with the byte ranges of `[offset, offset + len)` (relative to `offset`) that
/// hold data, by `SEEK_DATA`/`SEEK_HOLE`; all of it when the file system cannot tell.
///
/// `known_data` is a run of data found by an earlier call (updated here): `SEEK_HOLE` walks
/// every extent up to the next hole, which in a fragmented, fully allocated file (an image
/// after many small writes to a reflinked copy) is the end of the file, so asking it again for
/// every small chunk would cost O(extents) each time. Only data runs are remembered: if the
/// file changed since, a remembered run is read (a read is always right), never skipped.
fn data_ranges(
    file: &File,
    offset: u64,
    len: usize,
    out: &mut Vec<Range<usize>>,
    known_data: &mut Range<u64>,
) -> io::Result<()> {
    let end = offset + len as u64;
    let fd = file.as_raw_fd();
    // lseek moves only the shared file position, which nothing here uses (all reads are
    // positional). ENXIO: no data at or after `from`.
    let seek = |from: u64, whence: Whence| -> io::Result<Option<u64>> {
        match nix::unistd::lseek(fd, from as libc::off_t, whence) {
            Ok(at) => Ok(Some(at as u64)),
            Err(Errno::ENXIO) => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let mut at = offset;
    while at < end {
        if known_data.contains(&at) {
            let stop = known_data.end.min(end);
            out.push((at - offset) as usize..(stop - offset) as usize);
            at = stop;
            continue;
        }
        let data = match seek(at, Whence::SeekData) {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(_) => {
                // No hole support: everything is data.
                out.clear();
                out.push(0..len);
                return Ok(());
            }
        };
        if data >= end {
            break;
        }
        let hole = seek(data, Whence::SeekHole)?.unwrap_or(end);
        *known_data = data..hole;
        let stop = hole.min(end);
        out.push((data - offset) as usize..(stop - offset) as usize);
        at = stop;
    }
    // A file that shrank reads as a hole past its new end: that must be an error, not zeros.
    if at < end && file.metadata()?.len() < end {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the source ended before byte {end} (it shrank during the cycle?)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The whole of `size` bytes in chunks of `chunk_len`.
    fn whole(size: u64, chunk_len: usize) -> Vec<Range<u64>> {
        (0..size)
            .step_by(chunk_len)
            .map(|start| start..(start + chunk_len as u64).min(size))
            .collect()
    }

    fn collect(source: &BlockSource, options: ReadAheadOptions) -> Vec<u8> {
        let cancel = AtomicBool::new(false);
        let mut all = Vec::new();
        for_each_chunk(
            source,
            &whole(source.size(), options.chunk_len),
            options,
            &cancel,
            |_, _: &mut ()| {},
            |chunk, _| {
                assert_eq!(chunk.offset, all.len() as u64);
                // Bytes outside the data ranges are zeros.
                for (i, &b) in chunk.data().iter().enumerate() {
                    if b != 0 {
                        assert!(
                            chunk.may_hold_data(i..i + 1),
                            "byte {i} outside data ranges"
                        );
                    }
                }
                all.extend_from_slice(chunk.data());
                Ok::<(), ()>(())
            },
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap();
        all
    }

    #[test]
    fn chunks_arrive_in_order_with_holes_zeroed() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        // Data, a large hole, data, a short unaligned tail.
        let mut expected = vec![0u8; 5 * 65536 + 1234];
        for (i, b) in expected[..70000].iter_mut().enumerate() {
            *b = (i % 253) as u8 + 1;
        }
        for (i, b) in expected[4 * 65536..].iter_mut().enumerate() {
            *b = (i % 7) as u8 + 1;
        }
        file.write_all(&expected[..70000]).unwrap();
        file.as_file()
            .write_all_at(&expected[4 * 65536..], 4 * 65536)
            .unwrap();
        let source = BlockSource::open(file.path()).unwrap();
        for direct in [false, true] {
            for (chunk_len, readers) in [(65536, 1), (65536, 3), (12288, 4), (1 << 20, 2)] {
                let options = ReadAheadOptions {
                    chunk_len,
                    readers,
                    direct,
                };
                assert!(collect(&source, options) == expected, "{options:?}");
            }
        }
    }

    /// A regular file's chunks wholly in the page cache are hashed through a mapping (with
    /// direct reads asked for; `cached` mode copies), and read the same.
    #[test]
    fn cached_chunks_of_a_file_are_mapped_not_copied() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let expected: Vec<u8> = (0..4 * 65536u32).map(|i| (i % 251) as u8).collect();
        // Just written: every page is in the page cache.
        file.write_all(&expected).unwrap();
        let source = BlockSource::open(file.path()).unwrap();
        for direct in [true, false] {
            let options = ReadAheadOptions {
                chunk_len: 65536,
                readers: 2,
                direct,
            };
            let cancel = AtomicBool::new(false);
            let (mut mapped, mut all) = (0, Vec::new());
            for_each_chunk(
                &source,
                &whole(source.size(), options.chunk_len),
                options,
                &cancel,
                |_, _: &mut ()| {},
                |chunk, _| {
                    mapped += usize::from(chunk.mapped.is_some());
                    all.extend_from_slice(chunk.data());
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
            assert!(all == expected, "direct {direct}");
            assert_eq!(mapped, if direct { 4 } else { 0 }, "direct {direct}");
        }
    }

    #[test]
    fn a_source_that_shrank_is_a_read_error() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&[7u8; 100_000]).unwrap();
        let source = BlockSource::open(file.path()).unwrap();
        file.as_file().set_len(50_000).unwrap();
        let cancel = AtomicBool::new(false);
        let options = ReadAheadOptions {
            chunk_len: 32768,
            readers: 2,
            direct: true,
        };
        let result = for_each_chunk(
            &source,
            &whole(100_000, options.chunk_len),
            options,
            &cancel,
            |_, _: &mut ()| {},
            |_, _| Ok::<(), ()>(()),
        );
        match result {
            Err(ReadAheadError::Read { offset, source }) => {
                assert_eq!(offset, 32768);
                assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn a_consumer_error_stops_the_readers() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&vec![1u8; 1 << 20]).unwrap();
        let source = BlockSource::open(file.path()).unwrap();
        let cancel = AtomicBool::new(false);
        let options = ReadAheadOptions {
            chunk_len: 4096,
            readers: 4,
            direct: false,
        };
        let mut seen = 0;
        let prepare = |chunk: &Chunk, sum: &mut u64| {
            *sum = chunk.data().iter().map(|&b| b as u64).sum();
        };
        let spans = whole(1 << 20, options.chunk_len);
        let result = for_each_chunk(&source, &spans, options, &cancel, prepare, |_, sum| {
            assert_eq!(*sum, 4096, "prepared on the reader");
            seen += 1;
            if seen == 3 {
                Err("stop")
            } else {
                Ok(())
            }
        });
        assert!(matches!(result, Err(ReadAheadError::Consumer("stop"))));
    }
}

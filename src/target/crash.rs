//! Power loss, simulated (fault injection for the crash-consistency tests, after redb's
//! crash-testing backend). A [`CrashTarget`] keeps two images: what was *written* (what reads
//! see) and what is *durable* (what survives a crash: the written image as of the last
//! successful `sync`). Its companion [`crate::state::CrashStore`] keeps the receiver's state
//! record and manifest the same way: each save is atomic and durable, or did not happen.
//!
//! Both count their sync points (a target `sync`, a state or manifest save) on one shared
//! [`Power`]. At the chosen point the power goes out: that sync does not happen, and every
//! later operation fails. A test then "reboots": it builds a new target and store over the
//! durable images and checks that what the state says matches what the target holds.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::device::DeviceKind;

use super::mem::{out_of_range, span};
use super::{BlockTarget, TargetError};

/// The power supply shared by a crash target and its store.
pub struct Power {
    points: AtomicU64,
    cut_at: Option<u64>,
    lost: AtomicBool,
    /// While set, a target `sync` hangs (a very slow fsync) and then fails.
    stall: AtomicBool,
    /// A target `sync` is hanging.
    stalled: AtomicBool,
}

impl Power {
    /// Power that goes out at sync point `cut_at` (counted from 0), or never.
    pub fn new(cut_at: Option<u64>) -> Arc<Power> {
        Arc::new(Power {
            points: AtomicU64::new(0),
            cut_at,
            lost: AtomicBool::new(false),
            stall: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
        })
    }

    /// Makes target syncs hang (`true`) until released (`false`); a released hung sync fails,
    /// making nothing durable.
    pub fn stall_syncs(&self, stall: bool) {
        self.stall.store(stall, Ordering::SeqCst);
    }

    /// Whether a target sync is hanging now.
    pub fn sync_stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    /// Cuts the power now.
    pub fn cut(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Sync points reached so far (including the one the power went out at).
    pub fn points(&self) -> u64 {
        self.points.load(Ordering::SeqCst)
    }

    /// Whether the power went out.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub(crate) fn check(&self) -> io::Result<()> {
        if self.is_lost() {
            return Err(io::Error::other("power lost (simulated)"));
        }
        Ok(())
    }

    /// A sync is about to make things durable: it may not, if this is the cut point.
    pub(crate) fn sync_point(&self) -> io::Result<()> {
        self.check()?;
        let point = self.points.fetch_add(1, Ordering::SeqCst);
        if Some(point) == self.cut_at {
            self.lost.store(true, Ordering::SeqCst);
        }
        self.check()
    }
}

struct Images {
    written: Vec<u8>,
    durable: Vec<u8>,
}

/// A target that loses everything written since its last sync when the power goes out.
pub struct CrashTarget {
    name: PathBuf,
    power: Arc<Power>,
    images: Mutex<Images>,
}

impl CrashTarget {
    /// A target whose durable (and written) content is `durable`.
    pub fn new(power: Arc<Power>, durable: Vec<u8>) -> Self {
        CrashTarget {
            name: PathBuf::from("(crash target)"),
            power,
            images: Mutex::new(Images {
                written: durable.clone(),
                durable,
            }),
        }
    }

    /// What would survive a crash now.
    pub fn durable_image(&self) -> Vec<u8> {
        self.images.lock().expect("images lock").durable.clone()
    }

    fn io(&self, error: io::Error) -> TargetError {
        TargetError::Io {
            path: self.name.clone(),
            source: error,
        }
    }

    fn checked(&self) -> Result<std::sync::MutexGuard<'_, Images>, TargetError> {
        self.power.check().map_err(|e| self.io(e))?;
        Ok(self.images.lock().expect("images lock"))
    }
}

impl BlockTarget for CrashTarget {
    fn name(&self) -> &Path {
        &self.name
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::File
    }

    fn size(&self) -> u64 {
        self.images.lock().expect("images lock").written.len() as u64
    }

    fn set_len(&self, len: u64) -> Result<(), TargetError> {
        self.checked()?.written.resize(len as usize, 0);
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TargetError> {
        let images = self.checked()?;
        let size = images.written.len();
        let range = span(offset, buf.len(), size)
            .ok_or_else(|| out_of_range(&self.name, offset, buf.len(), size as u64))?;
        buf.copy_from_slice(&images.written[range]);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), TargetError> {
        let mut images = self.checked()?;
        let size = images.written.len();
        let range = span(offset, data.len(), size)
            .ok_or_else(|| out_of_range(&self.name, offset, data.len(), size as u64))?;
        images.written[range].copy_from_slice(data);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        let mut images = self.checked()?;
        let size = images.written.len();
        let range = span(offset, len as usize, size)
            .ok_or_else(|| out_of_range(&self.name, offset, len as usize, size as u64))?;
        images.written[range].fill(0);
        Ok(())
    }

    fn sync(&self) -> Result<(), TargetError> {
        if self.power.stall.load(Ordering::SeqCst) {
            self.power.stalled.store(true, Ordering::SeqCst);
            while self.power.stall.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            self.power.stalled.store(false, Ordering::SeqCst);
            return Err(self.io(io::Error::other("sync abandoned (simulated)")));
        }
        self.power.sync_point().map_err(|e| self.io(e))?;
        let mut images = self.images.lock().expect("images lock");
        images.durable = images.written.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_after_the_last_sync_are_lost_at_the_cut() {
        let power = Power::new(Some(1));
        let target = CrashTarget::new(power.clone(), vec![0; 8]);
        target.write_at(&[1, 1], 0).unwrap();
        target.sync().unwrap(); // point 0: durable
        target.write_at(&[2, 2], 2).unwrap();
        assert!(target.sync().is_err(), "point 1: the power goes out");
        assert!(power.is_lost());
        assert!(
            target.write_at(&[3], 0).is_err(),
            "nothing works afterwards"
        );
        assert_eq!(target.durable_image(), vec![1, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(power.points(), 2);
    }
}

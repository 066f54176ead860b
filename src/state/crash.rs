//! A receiver store whose saves are sync points on a simulated power supply
//! ([`crate::target::Power`], shared with a [`crate::target::CrashTarget`]): each save is
//! atomic and durable, or, once the power is out, did not happen. For the crash-consistency
//! tests.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::blockdiff::manifest::{Manifest, ManifestError};
use crate::target::Power;

use super::{ReceiverState, ReceiverStore};

/// The durable records of a [`CrashStore`], kept by a test across simulated reboots.
#[derive(Clone, Debug, Default)]
pub struct StoreImage {
    /// The state record as saved (JSON), if any.
    pub state: Option<Vec<u8>>,
    /// The manifest as saved (its file format), if any.
    pub manifest: Option<Vec<u8>>,
}

/// A receiver store whose saves are sync points on a [`Power`].
pub struct CrashStore {
    location: PathBuf,
    power: Arc<Power>,
    image: Arc<Mutex<StoreImage>>,
}

impl CrashStore {
    /// A store over `image` (shared with the test, which keeps it across reboots).
    pub fn new(power: Arc<Power>, image: Arc<Mutex<StoreImage>>) -> Self {
        CrashStore {
            location: PathBuf::from("(crash store)"),
            power,
            image,
        }
    }

    fn image(&self) -> std::sync::MutexGuard<'_, StoreImage> {
        self.image.lock().expect("store lock")
    }
}

impl ReceiverStore for CrashStore {
    fn location(&self) -> &Path {
        &self.location
    }

    fn load_state(&self) -> io::Result<Option<ReceiverState>> {
        self.power.check()?;
        match &self.image().state {
            Some(bytes) => serde_json::from_slice::<ReceiverState>(bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
                .known_format()
                .map(Some),
            None => Ok(None),
        }
    }

    fn save_state(&mut self, state: &ReceiverState) -> io::Result<()> {
        let bytes = serde_json::to_vec(state)?;
        self.power.sync_point()?;
        self.image().state = Some(bytes);
        Ok(())
    }

    fn load_manifest(&self) -> Result<Option<Manifest>, ManifestError> {
        self.power.check()?;
        match &self.image().manifest {
            Some(bytes) => Manifest::decode(&mut &bytes[..], bytes.len() as u64).map(Some),
            None => Ok(None),
        }
    }

    fn save_manifest(&mut self, manifest: &Manifest) -> io::Result<()> {
        let mut bytes = Vec::new();
        manifest.encode(&mut bytes)?;
        self.power.sync_point()?;
        self.image().manifest = Some(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_saves_are_atomic_sync_points() {
        let power = Power::new(Some(1));
        let image = Arc::new(Mutex::new(StoreImage::default()));
        let mut store = CrashStore::new(power.clone(), image.clone());
        let mut state = ReceiverState::new(Path::new("/t"));
        state.committed_generation = 1;
        store.save_state(&state).unwrap();
        state.committed_generation = 2;
        assert!(store.save_state(&state).is_err());
        let rebooted = CrashStore::new(Power::new(None), image);
        let loaded = rebooted.load_state().unwrap().unwrap();
        assert_eq!(loaded.committed_generation, 1);
    }
}

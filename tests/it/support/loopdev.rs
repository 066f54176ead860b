//! Kernel objects a test creates: a [`LoopDevice`] over a file (detached on drop) and a
//! [`Mount`] (unmounted on drop, lazily as a last resort).

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{run_program, s, sh};

/// A loop device attached to a file with `losetup -f --show`; detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> LoopDevice {
        let mut last = None;
        for _ in 0..5 {
            let out = run_program(
                "losetup",
                &["-f", "--show", s(file)],
                Duration::from_secs(60),
            );
            if out.code() == Some(0) {
                let dev = out.stdout_text().trim().to_string();
                assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
                return LoopDevice {
                    path: PathBuf::from(dev),
                };
            }
            // Another test may have taken the free device between find and attach: retry.
            last = Some(out);
        }
        panic!("losetup -f --show failed\n{:?}", last.unwrap());
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_str(&self) -> &str {
        s(&self.path)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Detach can fail with EBUSY for a moment after an unmount: retry until a deadline.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = run_program("losetup", &["-d", s(&self.path)], Duration::from_secs(30));
            if out.code() == Some(0) || Instant::now() >= deadline {
                if out.code() != Some(0) {
                    eprintln!("warning: could not detach {}\n{out:?}", self.path.display());
                }
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `mount DEV DIR`; unmounted on drop (declare it after the loop device so it drops first).
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(dev: &Path, dir: &Path) -> Mount {
        fs::create_dir_all(dir).unwrap();
        sh("mount", &[s(dev), s(dir)]);
        Mount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = run_program("umount", &[s(&self.dir)], Duration::from_secs(60));
            if out.code() == Some(0) {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!("warning: umount failed, detaching lazily\n{out:?}");
                let _ = run_program("umount", &["-l", s(&self.dir)], Duration::from_secs(60));
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

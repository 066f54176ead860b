//! Kernel objects a test creates: a [`LoopDevice`] over a file (detached on drop), a
//! [`Mount`] (unmounted on drop, lazily as a last resort), and both as a [`Filesystem`] made
//! on a sparse file (xfs with reflink, btrfs, ext4).

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{run_program, s, sh, Scratch, MIB};

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

/// A filesystem made on a sparse file in the test's scratch dir, on a loop device, mounted;
/// unmounted and detached on drop (the mount is declared first, so it drops first).
pub struct Filesystem {
    pub mount: Mount,
    _dev: LoopDevice,
}

impl Filesystem {
    /// `kind`: "xfs" (512 MiB, reflink=1), "btrfs" or "ext4" (256 MiB).
    pub fn new(t: &Scratch, kind: &str) -> Filesystem {
        let size = if kind == "xfs" { 512 * MIB } else { 256 * MIB };
        Filesystem::with_size(t, kind, size)
    }

    /// A `kind` filesystem of `size` bytes (its backing file is sparse).
    pub fn with_size(t: &Scratch, kind: &str, size: u64) -> Filesystem {
        let image = t.path(&format!("{kind}.fs"));
        fs::File::create(&image).unwrap().set_len(size).unwrap();
        match kind {
            "xfs" => sh("mkfs.xfs", &["-q", "-f", "-m", "reflink=1", s(&image)]),
            "btrfs" => sh("mkfs.btrfs", &["-q", "-f", s(&image)]),
            "ext4" => sh("mkfs.ext4", &["-q", "-F", s(&image)]),
            other => panic!("no mkfs for {other}"),
        };
        let dev = LoopDevice::attach(&image);
        let mount = Mount::new(dev.path(), &t.path(&format!("{kind}-mnt")));
        Filesystem { mount, _dev: dev }
    }

    /// A path on the filesystem.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mount.dir.join(name)
    }

    /// A directory on the filesystem, created.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

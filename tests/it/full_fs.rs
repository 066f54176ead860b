//! Filesystem limits on the receiving side. A receiver whose state dir shares the target's full
//! filesystem is not stuck: it must record "applying" before a cycle may free space (punch
//! holes where the source became zeros), and the space it set aside at the last commit
//! (`STATE/targets/<key>/reserve`) lets it. A sender cannot make a file target grow past what
//! its filesystem could ever hold (or `receive --max-size`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::support::*;

#[test]
fn a_full_filesystem_under_the_state_dir_and_target_does_not_stop_the_mirror() {
    let t = Scratch::new("full-fs");
    let fs = small_fs(&t, 32 * MIB);
    let mount = &fs.mount;
    let (tgt, state) = (mount.dir.join("tgt.img"), mount.dir.join("state"));
    let src = t.path("src.img");
    write_random_file(&src, 8 * MIB, 191);
    send_once(s(&src), s(&tgt), &state, &[]);
    let reserves = std::fs::read_dir(state.join("targets"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("reserve").exists())
        .count();
    assert_eq!(reserves, 1, "the commit set space aside");

    // Fill the filesystem to the last block (preallocated: delayed allocation would leave a
    // few blocks free), and check that it is full.
    fill(&mount.dir.join("filler"));
    let probe = std::fs::write(mount.dir.join("probe"), [1u8; 4096])
        .and_then(|_| File::open(mount.dir.join("probe"))?.sync_all());
    assert_eq!(
        probe.as_ref().err().and_then(std::io::Error::raw_os_error),
        Some(libc::ENOSPC),
        "the filesystem is full: {probe:?}"
    );

    // Half of the source becomes zeros: the cycle punches those holes in the target.
    zero_range(
        &src,
        Range {
            offset: 2 * MIB,
            len: 4 * MIB,
        },
    );
    let next = send_once(s(&src), s(&tgt), &state, &[]);
    assert_identical(&src, &tgt);
    assert_receiver_consistent(&status_entry(&state, "receiver"), next.generation);
}

/// A small ext4 filesystem on a loop device, mounted (unmounted and detached on drop).
struct SmallFs {
    mount: Mount,
    _dev: LoopDevice,
}

fn small_fs(t: &Scratch, size: u64) -> SmallFs {
    let image = t.path("small.fs");
    File::create(&image).unwrap().set_len(size).unwrap();
    sh("mkfs.ext4", &["-q", "-F", s(&image)]);
    let dev = LoopDevice::attach(&image);
    let mount = Mount::new(dev.path(), &t.path("mnt"));
    SmallFs { mount, _dev: dev }
}

/// A listening receiver on a 32 MiB filesystem is sent a 64 MiB (sparse) source: refused by
/// default with one line naming the limit, nothing created; accepted with `--max-size 64M`.
#[test]
fn a_target_may_not_grow_past_its_filesystem_unless_max_size_says_so() {
    let t = Scratch::new("full-fs-grow");
    let fs = small_fs(&t, 32 * MIB);
    let (tgt, rstate) = (fs.mount.dir.join("tgt.img"), t.dir("receiver-state"));
    let src = t.path("src.img");
    write_sparse_file(&src, 64 * MIB, 192, 4, 64 * 1024);
    let tls = TlsPair::new(&t);

    let mut extra = tls.receiver_args();
    extra.push("--create".into());
    let receiver = Receiver::start(&tgt, &rstate, &extra);
    let mut args = send_args(s(&src), &receiver.url(), &t.dir("sender-state"));
    args.push("--once".into());
    args.extend(tls.sender_args());
    let out = run(&args);
    out.assert_error(1, &["announced 67108864 bytes", "--max-size"]);
    assert!(!tgt.exists(), "nothing was created");
    drop(receiver);

    extra.extend(["--max-size", "64M"].map(String::from));
    let receiver = Receiver::start(&tgt, &rstate, &extra);
    let mut args = send_args(s(&src), &receiver.url(), &t.dir("sender-state"));
    args.push("--once".into());
    args.extend(tls.sender_args());
    run(&args).assert_success();
    assert_identical(&src, &tgt);
    drop(receiver);
}

/// Preallocates `path` over every free block of its filesystem.
fn fill(path: &Path) {
    let file = File::create(path).unwrap();
    let fd = file.as_raw_fd();
    let stat = nix::sys::statvfs::statvfs(path.parent().unwrap()).unwrap();
    let mut size = stat.blocks_free() as i64 * stat.fragment_size() as i64;
    while size > 0 && nix::fcntl::posix_fallocate(fd, 0, size).is_err() {
        size -= 4096;
    }
    while nix::fcntl::posix_fallocate(fd, size, 4096).is_ok() {
        size += 4096;
    }
    file.sync_all().unwrap();
}

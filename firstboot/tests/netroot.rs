//! A network boot's root image (`firstboot netroot`, `firstboot::netroot`): fetched from
//! an HTTP server on 127.0.0.1, verified, retried; then, as root in a mount namespace of
//! the test's own, a real erofs image (mkfs.erofs) mounted read-only through a loop
//! device and the state set up in RAM. The whole path in the initramfs is booted by
//! qemu-tests/tests/pxe_boot.rs.

use std::path::Path;
use std::process::Command;

use firstboot::netroot::{self, FetchTimeouts, NetRoot, NetRootError};
use sha2::{Digest, Sha256};
use test_support::http::{Reply, TestServer};
use test_support::Needs;

fn timeouts() -> FetchTimeouts {
    FetchTimeouts {
        connect: std::time::Duration::from_secs(5),
        deadline: std::time::Duration::from_secs(20),
        backoff_initial: std::time::Duration::from_millis(50),
        backoff_max: std::time::Duration::from_millis(200),
    }
}

fn root_for(url: &str, body: &[u8]) -> NetRoot {
    NetRoot::from_cmdline(&format!(
        "nodeimage.root_url={url} nodeimage.root_sha256={}",
        hex::encode(Sha256::digest(body))
    ))
    .unwrap()
    .unwrap()
}

/// Fetch `url` pinned to the digest of `expected` into a fresh directory.
fn fetch(
    url: &str,
    expected: &[u8],
    t: FetchTimeouts,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Result<netroot::Fetched, NetRootError>,
) {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("root.erofs");
    let r = netroot::fetch_verified(&root_for(url, expected), &dest, t, &mut |_, _| {});
    (d, dest, r)
}

#[test]
fn fetches_and_verifies_while_streaming() {
    let body = test_support::files::content(5 << 20, 7);
    let server = TestServer::files(vec![("/pxe/root.erofs", body.clone())]);
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("root.erofs");
    let mut seen = Vec::new();
    let got = netroot::fetch_verified(
        &root_for(&server.url("/pxe/root.erofs"), &body),
        &dest,
        timeouts(),
        &mut |n, total| seen.push((n, total)),
    )
    .unwrap();
    assert_eq!(got.bytes, body.len() as u64);
    assert_eq!(got.attempts, 1);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(
        seen.last(),
        Some(&(body.len() as u64, Some(body.len() as u64)))
    );
    assert!(
        seen.len() > 1,
        "progress is reported while the body arrives"
    );
    assert!(!dest.with_extension("part").exists());
}

#[test]
fn a_tampered_image_is_refused_and_removed() {
    let body = test_support::files::content(1 << 20, 3);
    let mut tampered = body.clone();
    tampered[4096] ^= 1;
    let server = TestServer::files(vec![("/root.erofs", tampered)]);
    let (d, _, r) = fetch(&server.url("/root.erofs"), &body, timeouts());
    let err = r.unwrap_err();
    let line = err.to_string();
    assert!(matches!(err, NetRootError::Mismatch { .. }), "{line}");
    test_support::assert_contains(
        &line,
        &[
            &server.url("/root.erofs"),
            &hex::encode(Sha256::digest(&body)),
            "refusing to boot it",
        ],
    );
    // Asked once: the server has the wrong file, asking again gets the same.
    assert_eq!(server.count(), 1);
    assert!(
        std::fs::read_dir(d.path()).unwrap().next().is_none(),
        "nothing is left behind"
    );
}

#[test]
fn failed_transfers_are_retried_from_the_start() {
    let body = test_support::files::content(3 << 20, 9);
    let served = body.clone();
    // A 503, then a body cut after 1 MiB, then the whole image.
    let server = TestServer::start(move |_, i| match i {
        0 => Reply::status(503),
        1 => Reply::ok(&served).cut_after(1 << 20),
        _ => Reply::ok(&served),
    });
    let (_d, dest, r) = fetch(&server.url("/r"), &body, timeouts());
    let got = r.unwrap();
    assert_eq!(got.attempts, 3);
    assert_eq!(server.count(), 3);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[test]
fn not_found_is_final_and_a_dead_server_times_out() {
    let server = TestServer::files(vec![]);
    let err = fetch(&server.url("/missing"), b"x", timeouts())
        .2
        .unwrap_err();
    assert!(
        matches!(err, NetRootError::Status { status: 404, .. }),
        "{err}"
    );
    assert_eq!(server.count(), 1);

    let mut t = timeouts();
    t.deadline = std::time::Duration::from_secs(2);
    let dead = format!("{}/r", test_support::http::closed_port_url());
    let err = fetch(&dead, b"x", t).2.unwrap_err();
    let line = err.to_string();
    assert!(
        matches!(err, NetRootError::Timeout { attempts, .. } if attempts > 1),
        "{line}"
    );
}

/// A private mount namespace for this test thread, so nothing it mounts is seen outside.
fn private_mounts() {
    // SAFETY: unshare(2) and mount(2) with constant arguments.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        let root = c"/";
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0
        );
    }
}

fn fstype(path: &Path) -> String {
    test_support::cmd::run_ok(
        Command::new("findmnt")
            .args(["-n", "-o", "FSTYPE"])
            .arg(path),
    )
    .trim()
    .to_string()
}

#[test]
fn erofs_image_mounts_read_only_with_state_in_ram() {
    if !Needs::new("netroot loop mount")
        .root()
        .tool("mkfs.erofs", "erofs-utils")
        .tool("findmnt", "util-linux")
        .met()
    {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    for dir in ["etc", "var/lib/dpkg", "var/log"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    std::fs::write(tree.join("etc/hostname"), "image\n").unwrap();
    std::fs::write(tree.join("var/lib/dpkg/status"), "Package: x\n").unwrap();
    let image = d.path().join("root.erofs");
    test_support::cmd::run_ok(
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&image)
            .arg(&tree),
    );
    let rootmnt = d.path().join("root");
    std::fs::create_dir_all(&rootmnt).unwrap();
    let staging = d.path().join("staging");
    let (rootmnt2, staging2, image2) = (rootmnt.clone(), staging.clone(), image.clone());
    // Its own thread: the mount namespace is the thread's, and goes away with it.
    std::thread::spawn(move || {
        private_mounts();
        let dev = netroot::mount_erofs_image(&image2, &rootmnt2).unwrap();
        assert!(dev.to_string_lossy().starts_with("/dev/loop"), "{dev:?}");
        assert_eq!(fstype(&rootmnt2), "erofs");
        let ro = std::fs::read_to_string(format!(
            "/sys/block/{}/ro",
            dev.file_name().unwrap().to_string_lossy()
        ))
        .unwrap();
        assert_eq!(ro.trim(), "1", "the loop device is read-only");
        assert_eq!(
            std::fs::read_to_string(rootmnt2.join("etc/hostname")).unwrap(),
            "image\n"
        );
        assert!(
            std::fs::write(rootmnt2.join("etc/x"), "x").is_err(),
            "erofs is read-only"
        );

        firstboot::state::setup_ram(&rootmnt2, &staging2).unwrap();
        assert_eq!(fstype(&rootmnt2.join("var")), "tmpfs");
        assert_eq!(fstype(&rootmnt2.join("etc")), "overlay");
        assert_eq!(
            std::fs::read_to_string(rootmnt2.join("var/lib/dpkg/status")).unwrap(),
            "Package: x\n",
            "the image's /var is the tmpfs' starting content"
        );
        std::fs::write(rootmnt2.join("etc/hostname"), "node-1\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(rootmnt2.join("var/lib/nodeimage/etc/upper/hostname")).unwrap(),
            "node-1\n",
            "/etc writes land in the RAM state"
        );
        for m in ["etc", "var", ""] {
            let p = rootmnt2.join(m);
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: umount(2) on a NUL-terminated path.
            assert_eq!(unsafe { libc::umount(c.as_ptr()) }, 0, "umount {p:?}");
        }
    })
    .join()
    .unwrap();
    // Nothing leaked into the test's own namespace, and the image is untouched.
    assert!(!rootmnt.join("etc/hostname").exists());
    assert!(std::fs::read_dir(&staging).unwrap().next().is_none());
}

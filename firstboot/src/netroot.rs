//! Network boot: the root filesystem image over HTTP, verified, run from RAM.
//!
//! The `pxe` output of `nodeimage build` is a kernel, an initrd, the erofs root image and
//! an iPXE script (`boot.ipxe`). The script boots the kernel with `boot=nodeimage-net`,
//! which makes the initramfs run `overlays/base/etc/initramfs-tools/scripts/nodeimage-net`
//! instead of mounting a disk: it brings the network up and calls
//! `firstboot netroot --rootmnt DIR`, which is [`setup`]:
//!
//! 1. [`NetRoot::from_cmdline`]: `nodeimage.root_url=` (absolute, or relative to
//!    `nodeimage.base_url=`, which the script fills with the directory it was loaded
//!    from) and `nodeimage.root_sha256=`;
//! 2. [`fetch_verified`]: the image is streamed into a tmpfs of its own
//!    ([`RAM_DIR`]), hashed while it arrives, retried from the start on a failed
//!    transfer; an image whose SHA-256 is not the pinned one is deleted and refused with
//!    [`NetRootError::Mismatch`], before anything mounts it;
//! 3. the verified file is attached read-only to a loop device and mounted as erofs at
//!    DIR; the tmpfs is then detached, so nothing can reach the file but the loop device;
//! 4. [`crate::state::setup_ram`]: `/var` is a tmpfs holding the image's `/var`, and
//!    `/etc` an overlay whose upper layer lives in it.
//!
//! Root and state are in RAM, not on a local disk: a network-booted node is usually
//! diskless or has disks for workloads only, and a node whose root comes from the
//! network every boot has nothing on a disk worth keeping consistent with it. The price
//! is RAM (the root image's size, about 0.4–0.9 GB) and a node that starts afresh on
//! every boot: firstboot runs on each boot and joins the cluster again, as other
//! diskless node images do.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll};
use sha2::{Digest, Sha256};

use crate::source::cmdline_param;

/// Kernel parameter: the root image's URL (absolute, or relative to [`BASE_URL_PARAM`]).
pub const ROOT_URL_PARAM: &str = "nodeimage.root_url";
/// Kernel parameter: the URL relative root URLs resolve against (iPXE's `${cwuri}`).
pub use crate::source::BASE_URL_PARAM;
/// Kernel parameter: the root image's SHA-256 (hex).
pub const ROOT_SHA256_PARAM: &str = "nodeimage.root_sha256";
/// The tmpfs the root image is fetched into; detached once the root is mounted from it
/// (the loop device keeps it alive).
pub const RAM_DIR: &str = "/run/nodeimage/netroot";
/// Where the state tmpfs is filled before it is moved onto `/var`.
pub const STATE_STAGING: &str = "/run/nodeimage/state";

/// The root image a network boot runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRoot {
    pub url: url::Url,
    pub sha256: [u8; 32],
}

/// Why the root image could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum NetRootError {
    #[error("root image {url}: sha256 {actual}, expected {expected} ({bytes} bytes): refusing to boot it")]
    Mismatch {
        url: String,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("root image {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("root image {url}: {bytes} bytes do not fit in RAM ({free} bytes free in {dir})")]
    TooLarge {
        url: String,
        bytes: u64,
        free: u64,
        dir: String,
    },
    #[error("root image {url}: no complete transfer within {waited_s} s ({attempts} attempts; last: {last})")]
    Timeout {
        url: String,
        waited_s: u64,
        attempts: u32,
        last: String,
    },
    #[error("root image {url}: writing {path}: {error}")]
    Write {
        url: String,
        path: String,
        error: std::io::Error,
    },
}

impl NetRoot {
    /// The root image named on a kernel command line, or `None` without
    /// `nodeimage.root_url=`. Errors name the parameter and what was expected.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<NetRoot>> {
        let Some(raw) = cmdline_param(cmdline, ROOT_URL_PARAM) else {
            return Ok(None);
        };
        let url = match url::Url::parse(&raw) {
            Ok(u) => u,
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                let base = cmdline_param(cmdline, BASE_URL_PARAM).unwrap_or_default();
                if base.is_empty() {
                    bail!(
                        "{ROOT_URL_PARAM}={raw} is relative and {BASE_URL_PARAM}= is empty or missing \
                         (an iPXE without the ${{cwuri}} setting leaves it empty: set nodeimage-base \
                         to the directory URL of boot.ipxe before chaining it)"
                    );
                }
                let base = url::Url::parse(&base).map_err(|e| {
                    anyhow::anyhow!("{BASE_URL_PARAM}={base}: expected an absolute URL ({e})")
                })?;
                base.join(&raw).map_err(|e| {
                    anyhow::anyhow!("{ROOT_URL_PARAM}={raw} relative to {base}: {e}")
                })?
            }
            Err(e) => bail!("{ROOT_URL_PARAM}={raw}: expected an http(s) URL ({e})"),
        };
        if !matches!(url.scheme(), "http" | "https") {
            bail!(
                "{ROOT_URL_PARAM}={url}: expected an http:// or https:// URL, found scheme {}",
                url.scheme()
            );
        }
        let hex_sha = cmdline_param(cmdline, ROOT_SHA256_PARAM).unwrap_or_default();
        let mut sha256 = [0u8; 32];
        if hex_sha.len() != 64 || hex::decode_to_slice(&hex_sha, &mut sha256).is_err() {
            bail!(
                "{ROOT_SHA256_PARAM}=: expected the root image's SHA-256 as 64 hex digits, found {:?} \
                 (a root image is never booted unverified)",
                hex_sha
            );
        }
        Ok(Some(NetRoot { url, sha256 }))
    }
}

/// What [`fetch_verified`] fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: u64,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// Timeouts of the root image's transfer.
#[derive(Debug, Clone, Copy)]
pub struct FetchTimeouts {
    /// Connecting to the server.
    pub connect: Duration,
    /// All attempts together; it also cuts a transfer that stalls (reqwest's blocking
    /// client has no read timeout, so each attempt gets the time that is left).
    pub deadline: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for FetchTimeouts {
    fn default() -> Self {
        FetchTimeouts {
            connect: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(15),
        }
    }
}

enum Attempt {
    /// Retry: a network error, a 5xx or 429, a short body.
    Retry(String),
    /// Stop: a 4xx, a full tmpfs, a mismatch.
    Final(NetRootError),
}

/// Stream `root` into `dest` (via `dest.part`, renamed once verified), hashing as it
/// arrives. A failed transfer starts again from the beginning; a complete transfer whose
/// hash is not the pinned one is removed and refused at once (the server has the wrong
/// file: asking again gets the same). `progress` is called with (bytes so far, total).
pub fn fetch_verified(
    root: &NetRoot,
    dest: &Path,
    t: FetchTimeouts,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Fetched, NetRootError> {
    let started = Instant::now();
    let url = root.url.to_string();
    let part = dest.with_extension("part");
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .connect_timeout(t.connect)
        .user_agent(concat!("firstboot/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| NetRootError::Timeout {
            url: url.clone(),
            waited_s: 0,
            attempts: 0,
            last: format!("HTTP client: {e}"),
        })?;
    let deadline = Deadline::after(t.deadline);
    let mut backoff = Backoff::new(t.backoff_initial, t.backoff_max);
    let outcome = wait_until(&deadline, &mut backoff, |attempt| {
        match one_attempt(
            &client,
            root,
            &url,
            &part,
            dest,
            deadline.remaining(),
            progress,
        ) {
            Ok(bytes) => Poll::Ready(Ok(Fetched {
                bytes,
                attempts: attempt,
                elapsed: started.elapsed(),
            })),
            Err(Attempt::Final(e)) => {
                let _ = fs::remove_file(&part);
                Poll::Ready(Err(e))
            }
            Err(Attempt::Retry(why)) => {
                let _ = fs::remove_file(&part);
                eprintln!(
                    "nodeimage: root image {url}: attempt {attempt} failed ({why}); retrying"
                );
                Poll::Pending(why)
            }
        }
    });
    match outcome {
        Ok(r) => r,
        Err(timed_out) => Err(NetRootError::Timeout {
            url,
            waited_s: timed_out.waited.as_secs(),
            attempts: timed_out.attempts,
            last: timed_out.last,
        }),
    }
}

fn one_attempt(
    client: &reqwest::blocking::Client,
    root: &NetRoot,
    url: &str,
    part: &Path,
    dest: &Path,
    time_left: Duration,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<u64, Attempt> {
    let mut resp = client
        .get(root.url.clone())
        .timeout(time_left.max(Duration::from_secs(1)))
        .send()
        .map_err(|e| Attempt::Retry(nodeimage_core::errors::chain(&e)))?;
    let status = resp.status().as_u16();
    if status >= 500 || status == 429 {
        return Err(Attempt::Retry(format!("HTTP {status}")));
    }
    if status != 200 {
        return Err(Attempt::Final(NetRootError::Status {
            url: url.into(),
            status,
        }));
    }
    let total = resp.content_length();
    let dir = dest.parent().unwrap_or(Path::new("/"));
    if let (Some(total), Ok(free)) = (total, crate::preflight::free_bytes(dir)) {
        if total > free {
            return Err(Attempt::Final(NetRootError::TooLarge {
                url: url.into(),
                bytes: total,
                free,
                dir: dir.display().to_string(),
            }));
        }
    }
    let write_err = |error: std::io::Error, path: &Path| {
        let too_large = error.raw_os_error() == Some(libc::ENOSPC);
        if too_large {
            Attempt::Final(NetRootError::TooLarge {
                url: url.into(),
                bytes: total.unwrap_or(0),
                free: crate::preflight::free_bytes(dir).unwrap_or(0),
                dir: dir.display().to_string(),
            })
        } else {
            Attempt::Final(NetRootError::Write {
                url: url.into(),
                path: path.display().to_string(),
                error,
            })
        }
    };
    let mut out = fs::File::create(part).map_err(|e| write_err(e, part))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Attempt::Retry(format!("after {got} bytes: {e}"))),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| write_err(e, part))?;
        got += n as u64;
        progress(got, total);
    }
    if let Some(total) = total {
        if got != total {
            return Err(Attempt::Retry(format!(
                "the transfer ended after {got} of {total} bytes"
            )));
        }
    }
    let actual: [u8; 32] = hasher.finalize().into();
    if actual != root.sha256 {
        return Err(Attempt::Final(NetRootError::Mismatch {
            url: url.into(),
            expected: hex::encode(root.sha256),
            actual: hex::encode(actual),
            bytes: got,
        }));
    }
    out.sync_all().map_err(|e| write_err(e, part))?;
    drop(out);
    fs::rename(part, dest).map_err(|e| write_err(e, dest))?;
    Ok(got)
}

// Loop devices (linux/loop.h).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device attached by [`attach_loop_read_only`]: it stays attached while this
/// handle is open or something (a mount) uses it, and detaches itself after both.
pub struct LoopDevice {
    pub node: PathBuf,
    _open: fs::File,
}

/// A read-only loop device backed by `file`, released when its last user (this handle,
/// the mount) goes away.
pub fn attach_loop_read_only(file: &Path) -> Result<LoopDevice> {
    let _ = std::process::Command::new("modprobe")
        .args(["-q", "loop"])
        .status();
    let backing = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let ctl = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .context("opening /dev/loop-control (is the loop module loaded?)")?;
    // Another process may take the free device between the two calls: try again then.
    for _ in 0..10 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            bail!("LOOP_CTL_GET_FREE: {}", std::io::Error::last_os_error());
        }
        let node = PathBuf::from(format!("/dev/loop{n}"));
        let dev = wait_for_file(&node, Duration::from_secs(5))
            .and_then(|_| {
                fs::OpenOptions::new()
                    .read(true)
                    .open(&node)
                    .with_context(|| format!("opening {}", node.display()))
            })
            .with_context(|| format!("loop device {}", node.display()))?;
        let mut name = [0u8; 64];
        let s = file.as_os_str().as_encoded_bytes();
        let k = s.len().min(63);
        name[..k].copy_from_slice(&s[..k]);
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                lo_file_name: name,
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which outlives the call.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &cfg) };
        if rc == 0 {
            return Ok(LoopDevice { node, _open: dev });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            bail!(
                "LOOP_CONFIGURE {} with {}: {e}",
                node.display(),
                file.display()
            );
        }
    }
    bail!("no free loop device for {} after 10 tries", file.display())
}

fn wait_for_file(p: &Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !p.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {limit:?}", p.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Mount the erofs image `file` read-only at `target` through a loop device.
pub fn mount_erofs_image(file: &Path, target: &Path) -> Result<PathBuf> {
    let _ = std::process::Command::new("modprobe")
        .args(["-q", "erofs"])
        .status();
    let dev = attach_loop_read_only(file)?;
    crate::state::mount(
        &dev.node.to_string_lossy(),
        target,
        "erofs",
        libc::MS_RDONLY,
        "",
    )
    .with_context(|| format!("mounting the root image {}", file.display()))?;
    Ok(dev.node)
}

/// Initramfs entry point of a network boot: fetch and verify the root image named on
/// the kernel command line, mount it at `rootmnt`, set the state up in RAM.
pub fn setup(rootmnt: &Path, cmdline: &str) -> Result<()> {
    let Some(root) = NetRoot::from_cmdline(cmdline)? else {
        bail!("{ROOT_URL_PARAM}= is not on the kernel command line (boot=nodeimage-net needs it)");
    };
    let ram = Path::new(RAM_DIR);
    fs::create_dir_all(ram)?;
    crate::state::mount(
        "tmpfs",
        ram,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0700",
    )
    .context("mounting the tmpfs for the root image")?;
    let dest = ram.join("root.erofs");
    eprintln!("nodeimage: fetching the root image {}", root.url);
    let mut next_report = 0u64;
    let mut progress = |got: u64, total: Option<u64>| {
        if got >= next_report {
            match total {
                Some(t) => eprintln!("nodeimage: root image: {} of {} MiB", got >> 20, t >> 20),
                None => eprintln!("nodeimage: root image: {} MiB", got >> 20),
            }
            next_report = got + (64 << 20);
        }
    };
    let fetched = fetch_verified(&root, &dest, FetchTimeouts::default(), &mut progress)?;
    let dev = mount_erofs_image(&dest, rootmnt)?;
    // The loop device holds the file open: detaching the tmpfs now leaves it alive for
    // as long as the root is mounted, and leaves no mount behind that the booted system
    // would try (and fail) to unmount at shutdown, nor a file anyone could change.
    crate::state::umount(ram, libc::MNT_DETACH)?;
    crate::state::setup_ram(rootmnt, Path::new(STATE_STAGING))?;
    eprintln!(
        "nodeimage: root image {} ({} MiB, sha256 {}) verified in {} ms ({} attempt{}), mounted from RAM through {}; state in RAM",
        root.url,
        fetched.bytes >> 20,
        hex::encode(root.sha256),
        fetched.elapsed.as_millis(),
        fetched.attempts,
        if fetched.attempts == 1 { "" } else { "s" },
        dev.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn cmdline_absolute_relative_and_refused() {
        assert_eq!(NetRoot::from_cmdline("ro quiet").unwrap(), None);
        let r = NetRoot::from_cmdline(&format!(
            "nodeimage.root_url=http://10.0.2.2:8080/pxe/root.erofs nodeimage.root_sha256={SHA}"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(r.url.as_str(), "http://10.0.2.2:8080/pxe/root.erofs");
        assert_eq!(hex::encode(r.sha256), SHA);
        // Relative to the script's own URL (iPXE's ${cwuri}) or its directory.
        for base in [
            "http://boot.example/nodes/boot.ipxe",
            "http://boot.example/nodes/",
        ] {
            let r = NetRoot::from_cmdline(&format!(
                "nodeimage.base_url={base} nodeimage.root_url=root.erofs nodeimage.root_sha256={SHA}"
            ))
            .unwrap()
            .unwrap();
            assert_eq!(r.url.as_str(), "http://boot.example/nodes/root.erofs");
        }
        let refused = |c: &str| format!("{:#}", NetRoot::from_cmdline(c).unwrap_err());
        let e = refused(&format!(
            "nodeimage.base_url= nodeimage.root_url=root.erofs nodeimage.root_sha256={SHA}"
        ));
        assert!(
            e.contains("nodeimage.base_url") && e.contains("cwuri"),
            "{e}"
        );
        let e = refused("nodeimage.root_url=http://h/r nodeimage.root_sha256=abc");
        assert!(
            e.contains("nodeimage.root_sha256") && e.contains("64 hex"),
            "{e}"
        );
        let e = refused("nodeimage.root_url=http://h/r");
        assert!(e.contains("nodeimage.root_sha256"), "{e}");
        let e = refused(&format!(
            "nodeimage.root_url=tftp://h/r nodeimage.root_sha256={SHA}"
        ));
        assert!(e.contains("http://") && e.contains("tftp"), "{e}");
    }
}

//! The verified root: the initramfs opens the root partition through dm-verity before
//! anything mounts it (`firstboot verity-open`, called by the initramfs script
//! `local-top/nodeimage-verity`).
//!
//! The loader entry's kernel command line (written by `nodeimage build`) names the trust
//! anchor and where the tree is:
//!
//! * `root=PARTUUID=<root>`: the data, the erofs image;
//! * `nodeimage.verity=<hex>`: the root hash of the tree over it;
//! * `nodeimage.verity_hash=PARTUUID=<guid>`: the partition holding the tree, with
//!   veritysetup's superblock (salt, block sizes) in its first block;
//! * `nodeimage.verity_blocks=<n>`: how many data blocks the tree covers;
//! * `nodeimage.verity_check=full|lazy` (optional, default `full`).
//!
//! [`open`] checks the superblock against the command line, creates the device-mapper
//! device `/dev/mapper/nodeimage-root` with a `verity` table, and, with `full`, reads
//! every block through it once: a block whose hash is not in the tree fails the read,
//! and the boot stops with [`VerityError::Corrupt`] on the console (the initramfs then
//! reboots after `panic=`), never a silently running node. Then the table is swapped
//! for the same one with `restart_on_corruption`, so a block changed under the running
//! node (or one skipped by `lazy`) restarts it at the first read instead of handing a
//! program bad bytes; with A/B slots the boot counter then falls back.
//!
//! The salt and block sizes come from the superblock, which is not itself covered by
//! the root hash: a wrong salt or size only gives other hashes, and the root hash on
//! the command line no longer matches. The number of data blocks is taken from the
//! command line, so a forged superblock cannot shrink the verified area.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nodeimage_core::layout::verity::*;
use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll};
use nodeimage_core::verity::Superblock;

use crate::dm::{Control, Target};
use crate::source::cmdline_param;

/// erofs' superblock magic, at byte 1024.
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;

/// How long the partitions may take to appear (USB and SD readers are slow).
const DEVICE_WAIT: Duration = Duration::from_secs(30);

/// The verified root the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityRoot {
    /// The data partition's GUID (from `root=PARTUUID=`).
    pub data: uuid::Uuid,
    pub hash: uuid::Uuid,
    pub root_hash: [u8; 32],
    pub data_blocks: u64,
    /// `full`: read every block before the root is mounted.
    pub full_check: bool,
}

/// Why the root cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("kernel command line: {param}={value:?}: expected {expected}")]
    Param {
        param: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "the root partition fails dm-verity at byte {offset} (data block {block} of {blocks}): \
         its content is not what root hash {root_hash} vouches for; refusing to boot it \
         (re-write the image, or update to a good slot)"
    )]
    Corrupt {
        offset: u64,
        block: u64,
        blocks: u64,
        root_hash: String,
    },
}

/// `PARTUUID=<guid>` → the GUID.
fn partuuid(param: &'static str, v: &str) -> Result<uuid::Uuid, VerityError> {
    v.strip_prefix("PARTUUID=")
        .and_then(|g| uuid::Uuid::parse_str(g).ok())
        .ok_or(VerityError::Param {
            param,
            value: v.to_string(),
            expected: "PARTUUID=<partition GUID>",
        })
}

impl VerityRoot {
    /// The verified root `cmdline` asks for; `None` without `nodeimage.verity=`.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<VerityRoot>, VerityError> {
        let Some(hash_hex) = cmdline_param(cmdline, ROOT_HASH_PARAM) else {
            return Ok(None);
        };
        let root_hash = hex::decode(&hash_hex)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(VerityError::Param {
                param: ROOT_HASH_PARAM,
                value: hash_hex.clone(),
                expected: "a SHA-256 root hash, 64 hex digits",
            })?;
        let get = |param: &'static str, expected: &'static str| {
            cmdline_param(cmdline, param).ok_or(VerityError::Param {
                param,
                value: String::new(),
                expected,
            })
        };
        let data = partuuid(
            "root",
            &get("root", "PARTUUID=<the root partition's GUID>")?,
        )?;
        let hash = partuuid(
            HASH_DEVICE_PARAM,
            &get(HASH_DEVICE_PARAM, "PARTUUID=<the verity partition's GUID>")?,
        )?;
        let blocks = get(DATA_BLOCKS_PARAM, "the number of 4 KiB data blocks")?;
        let data_blocks =
            blocks
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(VerityError::Param {
                    param: DATA_BLOCKS_PARAM,
                    value: blocks,
                    expected: "the number of data blocks, a positive integer",
                })?;
        let full_check = match cmdline_param(cmdline, CHECK_PARAM).as_deref() {
            None | Some("full") => true,
            Some("lazy") => false,
            Some(other) => {
                return Err(VerityError::Param {
                    param: CHECK_PARAM,
                    value: other.to_string(),
                    expected: "full or lazy",
                })
            }
        };
        Ok(Some(VerityRoot {
            data,
            hash,
            root_hash,
            data_blocks,
            full_check,
        }))
    }
}

/// The `verity` table line (format 1, hash blocks after the superblock's block).
pub fn table(
    data_dev: libc::dev_t,
    hash_dev: libc::dev_t,
    sb: &Superblock,
    v: &VerityRoot,
    restart_on_corruption: bool,
) -> Target {
    let p = &sb.params;
    let salt = if p.salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(&p.salt)
    };
    let mut params = format!(
        "1 {}:{} {}:{} {} {} {} 1 sha256 {} {salt}",
        libc::major(data_dev),
        libc::minor(data_dev),
        libc::major(hash_dev),
        libc::minor(hash_dev),
        p.data_block_size,
        p.hash_block_size,
        v.data_blocks,
        hex::encode(v.root_hash),
    );
    if restart_on_corruption {
        params.push_str(" 1 restart_on_corruption");
    }
    Target {
        sectors: v.data_blocks * u64::from(p.data_block_size) / 512,
        target_type: "verity".into(),
        params,
    }
}

/// The partition node of `guid`, once udev has linked it.
fn wait_for_partition(guid: &uuid::Uuid, what: &str) -> Result<PathBuf> {
    let link = PathBuf::from(format!("/dev/disk/by-partuuid/{guid}"));
    let deadline = Deadline::after(DEVICE_WAIT);
    let mut backoff = Backoff::constant(Duration::from_millis(200));
    wait_until(&deadline, &mut backoff, |_| match fs::canonicalize(&link) {
        Ok(p) => Poll::Ready(p),
        Err(e) => Poll::Pending(e),
    })
    .map_err(|t| {
        anyhow::anyhow!(
            "the {what} partition (PARTUUID={guid}) did not appear in {} s: {}",
            t.waited.as_secs(),
            t.last
        )
    })
}

/// A block device's number.
fn rdev(node: &Path) -> Result<libc::dev_t> {
    let m = fs::metadata(node).with_context(|| format!("stat {}", node.display()))?;
    if !m.file_type().is_block_device() {
        bail!("{} is not a block device", node.display());
    }
    Ok(m.rdev() as libc::dev_t)
}

/// Something to read whole blocks from at an offset (a block device; a test's stand-in).
pub trait ReadAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

/// Read `len` bytes of `dev` in 1 MiB chunks; on a failed chunk, find the first failing
/// `block`-sized block in it. Returns the offset of that block, or `None` when every
/// byte read.
pub fn first_unreadable(dev: &dyn ReadAt, len: u64, block: u64) -> Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0u64;
    while at < len {
        let n = CHUNK.min(len - at) as usize;
        if read_fully(dev, &mut buf[..n], at).is_err() {
            let mut b = at;
            while b < at + n as u64 {
                let k = block.min(at + n as u64 - b) as usize;
                if let Err(e) = read_fully(dev, &mut buf[..k], b) {
                    if e.raw_os_error() == Some(libc::EIO) {
                        return Ok(Some(b));
                    }
                    return Err(e).with_context(|| format!("reading at byte {b}"));
                }
                b += k as u64;
            }
            // The chunk failed but each block read: a transient error; carry on.
        }
        at += n as u64;
    }
    Ok(None)
}

fn read_fully(dev: &dyn ReadAt, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match dev.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What [`open`] did.
#[derive(Debug)]
pub struct Opened {
    /// `/dev/mapper/nodeimage-root`.
    pub node: PathBuf,
    pub bytes: u64,
    /// Time spent reading and checking every block (`None` with `lazy`).
    pub checked_in: Option<Duration>,
}

/// Open the verified root named by `cmdline`; `None` when it names none.
pub fn open_from_cmdline(cmdline: &str) -> Result<Option<Opened>> {
    let Some(v) = VerityRoot::from_cmdline(cmdline)? else {
        return Ok(None);
    };
    open(&v).map(Some)
}

/// Create `/dev/mapper/nodeimage-root` over the data and hash partitions of `v`,
/// checked per [`VerityRoot::full_check`]. See the module documentation.
pub fn open(v: &VerityRoot) -> Result<Opened> {
    let data = wait_for_partition(&v.data, "root")?;
    let hash = wait_for_partition(&v.hash, "root's verity")?;
    let hash_file = File::open(&hash).with_context(|| format!("opening {}", hash.display()))?;
    let mut sb = [0u8; 512];
    FileExt::read_exact_at(&hash_file, &mut sb, 0)
        .with_context(|| format!("reading the verity superblock of {}", hash.display()))?;
    let sb = Superblock::parse(&sb).with_context(|| format!("{}", hash.display()))?;
    if sb.data_blocks != v.data_blocks {
        bail!(
            "{}: the verity superblock covers {} data blocks, the kernel command line's \
             {DATA_BLOCKS_PARAM}= {}: the partitions are not the ones this boot entry was made for",
            hash.display(),
            sb.data_blocks,
            v.data_blocks
        );
    }
    let bytes = v.data_blocks * u64::from(sb.params.data_block_size);
    let mut data_file = File::open(&data).with_context(|| format!("opening {}", data.display()))?;
    let have = crate::state::gpt::size(&mut data_file)?;
    if have < bytes {
        bail!(
            "{}: {have} bytes, fewer than the {bytes} the root's hash tree covers",
            data.display()
        );
    }
    drop((data_file, hash_file));
    let (data_dev, hash_dev) = (rdev(&data)?, rdev(&hash)?);

    let ctl = Control::open()?;
    let dev = ctl.create(
        DM_NAME,
        &format!("NODEIMAGE-VERITY-{}", hex::encode(&v.root_hash[..8])),
    )?;
    let made = (|| -> Result<Opened> {
        ctl.load(DM_NAME, &table(data_dev, hash_dev, &sb, v, false))?;
        ctl.resume(DM_NAME)?;
        let node = mapper_node(dev)?;
        let checked_in = if v.full_check {
            let started = Instant::now();
            let f = File::open(&node).with_context(|| format!("opening {}", node.display()))?;
            let block = u64::from(sb.params.data_block_size);
            if let Some(offset) = first_unreadable(&f, bytes, block)? {
                return Err(VerityError::Corrupt {
                    offset,
                    block: offset / block,
                    blocks: v.data_blocks,
                    root_hash: hex::encode(v.root_hash),
                }
                .into());
            }
            // The pages were only read to be checked: leave the RAM to the node.
            // SAFETY: posix_fadvise on an open descriptor.
            unsafe {
                libc::posix_fadvise(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                    0,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
            Some(started.elapsed())
        } else {
            None
        };
        // A root that verifies but is no erofs (a broken image, signed as it was built)
        // says so now, rather than after initramfs-tools has waited for its type.
        let f = File::open(&node).with_context(|| format!("opening {}", node.display()))?;
        let mut magic = [0u8; 4];
        FileExt::read_exact_at(&f, &mut magic, 1024)
            .with_context(|| format!("reading the erofs superblock of {}", node.display()))?;
        if u32::from_le_bytes(magic) != EROFS_MAGIC {
            bail!(
                "the verified root holds no erofs file system (superblock magic {:08x}, \
                 expected {EROFS_MAGIC:08x}): the image is broken; refusing to boot it",
                u32::from_le_bytes(magic)
            );
        }
        // From now on a bad block restarts the node instead of failing a read.
        ctl.load(DM_NAME, &table(data_dev, hash_dev, &sb, v, true))?;
        ctl.resume(DM_NAME)?;
        Ok(Opened {
            node,
            bytes,
            checked_in,
        })
    })();
    if made.is_err() {
        let _ = fs::remove_file(Path::new("/dev/mapper").join(DM_NAME));
        let _ = ctl.remove(DM_NAME);
    }
    made
}

/// `/dev/mapper/<name>` for the device `dev`: udev's dm rules make it where the image
/// has them; otherwise it is made here, beside devtmpfs' `/dev/dm-N`.
fn mapper_node(dev: libc::dev_t) -> Result<PathBuf> {
    let node = Path::new("/dev/mapper").join(DM_NAME);
    if rdev(&node).ok() == Some(dev) {
        return Ok(node);
    }
    let _ = fs::remove_file(&node);
    let c = std::ffi::CString::new(node.as_os_str().as_encoded_bytes())?;
    // SAFETY: mknod(2) with a NUL-terminated path that outlives the call.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, dev) } != 0 {
        bail!(
            "mknod {}: {}",
            node.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(node)
}

/// The live verity device's state for `firstboot status`: `Some("verified")` when no
/// corruption was seen, `Some("corrupted")` once a block failed; `None` without one.
pub fn live_state() -> Option<&'static str> {
    let ctl = Control::open().ok()?;
    match ctl.status(DM_NAME, false).ok()?.trim() {
        "V" => Some("verified"),
        "C" => Some("corrupted"),
        _ => Some("unknown"),
    }
}

/// What `firstboot status` says of the root: its root hash and the live device's state
/// (`unverified` when the command line names no verity root).
pub fn root_status(cmdline: &str) -> serde_json::Value {
    match VerityRoot::from_cmdline(cmdline) {
        Ok(Some(v)) => serde_json::json!({
            "verity": "dm-verity",
            "root_hash": hex::encode(v.root_hash),
            "device": format!("/dev/mapper/{DM_NAME}"),
            "state": live_state().unwrap_or("not open"),
        }),
        Ok(None) => serde_json::json!({ "verity": "none", "state": "unverified" }),
        Err(e) => serde_json::json!({ "verity": "invalid", "error": e.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMD: &str = "BOOT_IMAGE=/vmlinuz root=PARTUUID=11111111-2222-4333-8444-555555555555 ro rootfstype=erofs \
        nodeimage.verity=abababababababababababababababababababababababababababababababab \
        nodeimage.verity_hash=PARTUUID=66666666-7777-4888-9999-aaaaaaaaaaaa nodeimage.verity_blocks=60691 quiet";

    #[test]
    fn the_command_line_names_data_tree_and_anchor() {
        let v = VerityRoot::from_cmdline(CMD).unwrap().unwrap();
        assert_eq!(v.data.to_string(), "11111111-2222-4333-8444-555555555555");
        assert_eq!(v.hash.to_string(), "66666666-7777-4888-9999-aaaaaaaaaaaa");
        assert_eq!(v.root_hash, [0xab; 32]);
        assert_eq!(v.data_blocks, 60691);
        assert!(v.full_check);
        assert_eq!(VerityRoot::from_cmdline("root=/dev/vda2 ro").unwrap(), None);
        let lazy = VerityRoot::from_cmdline(&format!("{CMD} nodeimage.verity_check=lazy")).unwrap();
        assert!(!lazy.unwrap().full_check);
    }

    #[test]
    fn a_bad_parameter_is_named_with_what_was_expected() {
        let cases = [
            (
                CMD.replace("verity=abab", "verity=zzab"),
                "nodeimage.verity=\"zz",
            ),
            (CMD.replace("root=PARTUUID=", "root=/dev/"), "root=\"/dev/"),
            (
                CMD.replace(" nodeimage.verity_blocks=60691", ""),
                "nodeimage.verity_blocks=\"\": expected the number of 4 KiB",
            ),
            (
                CMD.replace("blocks=60691", "blocks=0"),
                "nodeimage.verity_blocks=\"0\"",
            ),
            (
                format!("{CMD} nodeimage.verity_check=some"),
                "expected full or lazy",
            ),
        ];
        for (cmd, want) in cases {
            let e = VerityRoot::from_cmdline(&cmd).unwrap_err().to_string();
            assert!(e.contains(want), "{e}\n  wanted {want}");
        }
    }

    #[test]
    fn the_table_is_dm_veritys_format() {
        let v = VerityRoot::from_cmdline(CMD).unwrap().unwrap();
        let sb = Superblock {
            params: nodeimage_core::verity::Params::new(vec![0x5a; 32], [0; 16]),
            data_blocks: v.data_blocks,
        };
        let t = table(libc::makedev(254, 2), libc::makedev(254, 3), &sb, &v, false);
        assert_eq!(t.target_type, "verity");
        assert_eq!(t.sectors, 60691 * 8);
        assert_eq!(
            t.params,
            format!(
                "1 254:2 254:3 4096 4096 60691 1 sha256 {} {}",
                "ab".repeat(32),
                "5a".repeat(32)
            )
        );
        let r = table(libc::makedev(8, 2), libc::makedev(8, 3), &sb, &v, true);
        assert!(
            r.params.ends_with(" 1 restart_on_corruption"),
            "{}",
            r.params
        );
    }

    /// A device whose block `bad` fails with EIO, as dm-verity fails a corrupted block.
    struct Failing {
        len: u64,
        bad: u64,
    }

    impl ReadAt for Failing {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            let end = offset + buf.len() as u64;
            if offset <= self.bad * 4096 + 4095 && end > self.bad * 4096 {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            let n = buf.len().min((self.len - offset.min(self.len)) as usize);
            buf[..n].fill(1);
            Ok(n)
        }
    }

    #[test]
    fn the_first_failing_block_is_found() {
        let len = 3 * (1 << 20) + 5 * 4096;
        for bad in [0, 255, 256, 700, 771] {
            let d = Failing { len, bad };
            assert_eq!(
                first_unreadable(&d, len, 4096).unwrap(),
                Some(bad * 4096),
                "block {bad}"
            );
        }
        let d = Failing { len, bad: 10_000 };
        assert_eq!(first_unreadable(&d, len, 4096).unwrap(), None);
        // A device shorter than the tree says is an error, not a pass.
        assert!(first_unreadable(&d, len + 4096, 4096).is_err());
    }
}

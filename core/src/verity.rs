//! dm-verity hash trees, as `veritysetup format` writes them (format version 1, the
//! "normal" hash type, SHA-256), so the build can make the hash partition of a read-only
//! root without cryptsetup and a node can check a root image against its root hash.
//!
//! Layout of the hash area (cryptsetup's `lib/verity`, the kernel's dm-verity):
//!
//! * block 0: the 512-byte superblock ([`Superblock`]), zero-padded to a hash block;
//! * then the tree, the level nearest the root first: level `i` (0 hashes the data
//!   blocks, each higher level the blocks of the one below) has
//!   `ceil(data_blocks / per_block^(i+1))` blocks, `per_block` = hash block size / 32
//!   digests each, zero-padded;
//! * every digest is `sha256(salt || block)`; the root hash is that of the top level's
//!   one block (of the single data block when there is only one).
//!
//! Checked byte for byte against `veritysetup format` by this module's tests.

use std::io::Read;

use sha2::{Digest, Sha256};

/// Digest size of SHA-256.
const DIGEST: usize = 32;

/// The parameters of a hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// At most 256 bytes.
    pub salt: Vec<u8>,
    /// Stored in the superblock (veritysetup's `--uuid`).
    pub uuid: [u8; 16],
}

impl Params {
    /// 4 KiB blocks, as veritysetup's defaults and erofs' block size.
    pub fn new(salt: Vec<u8>, uuid: [u8; 16]) -> Params {
        Params {
            data_block_size: 4096,
            hash_block_size: 4096,
            salt,
            uuid,
        }
    }
}

/// Why a tree cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerityError {
    #[error("the data is {len} bytes, not a whole number of {block}-byte blocks")]
    Partial { len: u64, block: u32 },
    #[error("the salt is {0} bytes; at most 256")]
    Salt(usize),
    #[error("block sizes must be powers of two from 512 to 65536 and hold whole digests: data {data}, hash {hash}")]
    BlockSize { data: u32, hash: u32 },
}

/// A finished tree: the hash area's bytes (superblock first) and the root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub hash_area: Vec<u8>,
    pub root_hash: [u8; 32],
    pub data_blocks: u64,
}

/// The 512-byte superblock at the start of the hash area.
pub fn superblock(p: &Params, data_blocks: u64) -> [u8; 512] {
    let mut sb = [0u8; 512];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal
    sb[16..32].copy_from_slice(&p.uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&p.data_block_size.to_le_bytes());
    sb[68..72].copy_from_slice(&p.hash_block_size.to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(p.salt.len() as u16).to_le_bytes());
    sb[88..88 + p.salt.len()].copy_from_slice(&p.salt);
    sb
}

fn digest(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The hash tree of `data` (a whole number of data blocks).
pub fn build(data: &[u8], p: &Params) -> Result<Tree, VerityError> {
    build_from(&mut std::io::Cursor::new(data), data.len() as u64, p).map_err(|e| match e {
        ReadError::Verity(v) => v,
        ReadError::Io(e) => unreachable!("reading memory: {e}"),
    })
}

/// Why a tree could not be made from a reader.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Verity(#[from] VerityError),
    #[error("reading the data: {0}")]
    Io(#[from] std::io::Error),
}

/// The hash tree of the `len` bytes `data` yields (a whole number of data blocks),
/// streamed: only the digests are held in memory (32 bytes a block), not the data.
pub fn build_from(data: &mut dyn Read, len: u64, p: &Params) -> Result<Tree, ReadError> {
    check(p)?;
    let dbs = p.data_block_size as usize;
    if len == 0 || !len.is_multiple_of(dbs as u64) {
        return Err(VerityError::Partial {
            len,
            block: p.data_block_size,
        }
        .into());
    }
    let data_blocks = len / dbs as u64;
    let mut block = vec![0u8; dbs];
    let mut level0 = Vec::with_capacity(data_blocks as usize);
    for _ in 0..data_blocks {
        data.read_exact(&mut block)?;
        level0.push(digest(&p.salt, &block));
    }
    Ok(tree_over(level0, data_blocks, p))
}

fn check(p: &Params) -> Result<(), VerityError> {
    let ok = |s: u32| s.is_power_of_two() && (512..=65536).contains(&s);
    if !ok(p.data_block_size) || !ok(p.hash_block_size) {
        return Err(VerityError::BlockSize {
            data: p.data_block_size,
            hash: p.hash_block_size,
        });
    }
    if p.salt.len() > 256 {
        return Err(VerityError::Salt(p.salt.len()));
    }
    Ok(())
}

/// The levels above the data blocks' digests, the superblock, the root hash.
fn tree_over(mut below: Vec<[u8; 32]>, data_blocks: u64, p: &Params) -> Tree {
    let hbs = p.hash_block_size as usize;
    // Each level from the one below, until one block.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    while below.len() > 1 {
        let per_block = hbs / DIGEST;
        let mut level = vec![0u8; below.len().div_ceil(per_block) * hbs];
        for (i, d) in below.iter().enumerate() {
            let at = (i / per_block) * hbs + (i % per_block) * DIGEST;
            level[at..at + DIGEST].copy_from_slice(d);
        }
        below = level.chunks(hbs).map(|b| digest(&p.salt, b)).collect();
        levels.push(level);
    }
    let mut hash_area = vec![0u8; hbs];
    hash_area[..512].copy_from_slice(&superblock(p, data_blocks));
    for level in levels.iter().rev() {
        hash_area.extend_from_slice(level);
    }
    Tree {
        hash_area,
        root_hash: below[0],
        data_blocks,
    }
}

/// The size of the hash area (superblock and every level) of a tree over `data_blocks`
/// blocks with `p`'s block sizes: what a verity partition for that much data must hold.
pub fn hash_area_size(data_blocks: u64, p: &Params) -> u64 {
    let hbs = u64::from(p.hash_block_size);
    let per_block = hbs / DIGEST as u64;
    let mut below = data_blocks.max(1);
    let mut blocks = 1; // the superblock's
    while below > 1 {
        below = below.div_ceil(per_block);
        blocks += below;
    }
    blocks * hbs
}

/// A superblock as read back from a hash device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub params: Params,
    pub data_blocks: u64,
}

/// What is wrong with a superblock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuperblockError {
    #[error("no dm-verity superblock (the first 8 bytes are not \"verity\\0\\0\")")]
    Magic,
    #[error("dm-verity superblock version {version}, hash type {hash_type}: expected version 1, hash type 1 (normal)")]
    Version { version: u32, hash_type: u32 },
    #[error("dm-verity superblock names the hash algorithm {0:?}: expected \"sha256\"")]
    Algorithm(String),
    #[error("dm-verity superblock: salt of {0} bytes, more than 256")]
    Salt(usize),
    #[error("dm-verity superblock: {0}")]
    Params(#[from] VerityError),
}

impl Superblock {
    /// Parse the 512-byte superblock [`superblock`] writes (SHA-256 trees only).
    pub fn parse(sb: &[u8; 512]) -> Result<Superblock, SuperblockError> {
        let u32_at = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().unwrap());
        if &sb[0..8] != b"verity\0\0" {
            return Err(SuperblockError::Magic);
        }
        let (version, hash_type) = (u32_at(8), u32_at(12));
        if version != 1 || hash_type != 1 {
            return Err(SuperblockError::Version { version, hash_type });
        }
        let alg = &sb[32..64];
        let alg = String::from_utf8_lossy(&alg[..alg.iter().position(|b| *b == 0).unwrap_or(32)])
            .into_owned();
        if alg != "sha256" {
            return Err(SuperblockError::Algorithm(alg));
        }
        let salt_len = u16::from_le_bytes([sb[80], sb[81]]) as usize;
        if salt_len > 256 {
            return Err(SuperblockError::Salt(salt_len));
        }
        let params = Params {
            data_block_size: u32_at(64),
            hash_block_size: u32_at(68),
            salt: sb[88..88 + salt_len].to_vec(),
            uuid: sb[16..32].try_into().unwrap(),
        };
        check(&params)?;
        Ok(Superblock {
            params,
            data_blocks: u64::from_le_bytes(sb[72..80].try_into().unwrap()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(blocks: usize, seed: u32) -> Vec<u8> {
        test_support::noise(blocks * 4096, seed)
    }

    #[test]
    fn refuses_what_veritysetup_refuses() {
        let p = Params::new(vec![1; 32], [0; 16]);
        assert!(matches!(
            build(&[0; 4095], &p),
            Err(VerityError::Partial { .. })
        ));
        assert!(matches!(
            build(&[0; 4096], &Params::new(vec![0; 257], [0; 16])),
            Err(VerityError::Salt(257))
        ));
    }

    #[test]
    fn streamed_equals_in_memory_and_the_superblock_reads_back() {
        let p = Params::new(b"pepper".to_vec(), [9; 16]);
        let bytes = data(300, 5);
        let t = build(&bytes, &p).unwrap();
        let s = build_from(&mut &bytes[..], bytes.len() as u64, &p).unwrap();
        assert_eq!(t, s);
        assert_eq!(hash_area_size(300, &p), t.hash_area.len() as u64);
        for n in [1u64, 2, 128, 129, 16384, 16385, 2_000_000] {
            let levels = std::iter::successors(Some(n), |b| (*b > 1).then(|| b.div_ceil(128)))
                .skip(1)
                .sum::<u64>();
            assert_eq!(hash_area_size(n, &p), (1 + levels) * 4096, "{n} blocks");
        }
        let sb = Superblock::parse(t.hash_area[..512].try_into().unwrap()).unwrap();
        assert_eq!(
            sb,
            Superblock {
                params: p,
                data_blocks: 300
            }
        );
        // A short reader is an I/O error, not a tree.
        assert!(matches!(
            build_from(&mut &bytes[..4096], 8192, &sb.params),
            Err(ReadError::Io(_))
        ));
        let mut bad = t.hash_area[..512].to_vec();
        bad[32..38].copy_from_slice(b"sha512");
        assert_eq!(
            Superblock::parse(bad[..].try_into().unwrap()),
            Err(SuperblockError::Algorithm("sha512".into()))
        );
        bad[0] = b'V';
        assert_eq!(
            Superblock::parse(bad[..].try_into().unwrap()),
            Err(SuperblockError::Magic)
        );
    }

    #[test]
    fn levels_are_laid_out_top_first() {
        // 129 blocks: level 0 needs 2 hash blocks, level 1 one; superblock + 1 + 2.
        let p = Params::new(b"salt".to_vec(), [7; 16]);
        let t = build(&data(129, 1), &p).unwrap();
        assert_eq!(t.hash_area.len(), 4 * 4096);
        assert_eq!(&t.hash_area[..8], b"verity\0\0");
        let top = &t.hash_area[4096..8192];
        assert_eq!(t.root_hash, digest(b"salt", top));
        let level0 = &t.hash_area[8192..];
        assert_eq!(&top[..32], &digest(b"salt", &level0[..4096]));
        assert_eq!(&top[32..64], &digest(b"salt", &level0[4096..]));
        assert!(top[64..].iter().all(|b| *b == 0));
    }

    /// Byte for byte against `veritysetup format` (cryptsetup-bin) for trees of one to
    /// three levels, with the same salt and UUID.
    #[test]
    fn matches_veritysetup_format() {
        if !test_support::Needs::new("dm-verity against veritysetup")
            .tool("veritysetup", "cryptsetup-bin")
            .met()
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (n, blocks) in [1usize, 2, 128, 129, 16385].into_iter().enumerate() {
            let salt: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ n as u8).collect();
            let uuid =
                *uuid::Uuid::from_u128(0x1234_5678_9abc_4def_8123_4567_89ab_cdef + n as u128)
                    .as_bytes();
            let bytes = data(blocks, n as u32 + 3);
            let data_file = dir.path().join(format!("data{n}"));
            let hash_file = dir.path().join(format!("hash{n}"));
            std::fs::write(&data_file, &bytes).unwrap();
            let out = std::process::Command::new("veritysetup")
                .arg("format")
                .arg(&data_file)
                .arg(&hash_file)
                .arg(format!("--salt={}", hex::encode(&salt)))
                .arg(format!("--uuid={}", uuid::Uuid::from_bytes(uuid)))
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let theirs_root = stdout
                .lines()
                .find_map(|l| l.strip_prefix("Root hash:"))
                .unwrap()
                .trim()
                .to_string();
            let ours = build(&bytes, &Params::new(salt, uuid)).unwrap();
            assert_eq!(hex::encode(ours.root_hash), theirs_root, "{blocks} blocks");
            let theirs = std::fs::read(&hash_file).unwrap();
            assert_eq!(ours.hash_area.len(), theirs.len(), "{blocks} blocks: size");
            assert!(
                ours.hash_area == theirs,
                "{blocks} blocks: hash area bytes differ"
            );
        }
    }
}

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
    let dbs = p.data_block_size as usize;
    let hbs = p.hash_block_size as usize;
    if data.is_empty() || !data.len().is_multiple_of(dbs) {
        return Err(VerityError::Partial {
            len: data.len() as u64,
            block: p.data_block_size,
        });
    }
    let data_blocks = (data.len() / dbs) as u64;
    // Level 0 from the data, each further level from the one below, until one block.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut below: Vec<[u8; 32]> = data.chunks(dbs).map(|b| digest(&p.salt, b)).collect();
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
    Ok(Tree {
        hash_area,
        root_hash: below[0],
        data_blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(blocks: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2654435761) | 1;
        (0..blocks * 4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
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

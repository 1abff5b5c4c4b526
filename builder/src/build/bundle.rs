//! The update bundle (`<out>/<name>.bundle`, with `--sign-key`): this image's kernel,
//! initrd, erofs root and dm-verity tree behind a signed manifest
//! ([`nodeimage_core::bundle`]), which `firstboot update` writes into a node's other slot.

use std::fs;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeimage_core::bundle::{self, BundleManifest, BundleVerity, Member, SigningKey};

use super::pxe::NetbootInputs;
use super::sha256_file;
use crate::manifest::Manifest;

/// The bundle's members, in the order they are written: name and file.
fn members(i: &NetbootInputs) -> [(&'static str, &Path); 4] {
    [
        ("vmlinuz", &i.kernel),
        ("initrd.img", &i.initrd),
        ("root.erofs", &i.root),
        ("root.verity", &i.verity),
    ]
}

/// The signed manifest of this build's bundle.
pub fn manifest_of(i: &NetbootInputs, m: &Manifest) -> Result<BundleManifest> {
    let mut out = Vec::new();
    for (name, path) in members(i) {
        let (sha256, size) = sha256_file(path)?;
        out.push(Member {
            name: name.into(),
            size,
            sha256,
        });
    }
    Ok(BundleManifest {
        format: 1,
        name: m.profile.name.clone(),
        arch: m.profile.arch.clone(),
        version: version(m),
        inputs_sha256: m.inputs_sha256.clone(),
        kernel_version: m.kernel.version.clone(),
        cmdline: i.profile_cmdline.clone(),
        verity: BundleVerity {
            root_hash: m.root.verity.root_hash.clone(),
            data_blocks: m.root.verity.data_blocks,
        },
        members: out,
    })
}

/// An image's version, from its manifest (as `Identity::version`).
pub fn version(m: &Manifest) -> String {
    super::identity::version_of(m.source_date_epoch, &m.inputs_sha256)
}

/// Write `<dir>/<name>.bundle` (temporary file, fsync, rename); returns its path.
pub fn write(i: &NetbootInputs, m: &Manifest, key: &SigningKey, dir: &Path) -> Result<PathBuf> {
    let manifest = manifest_of(i, m)?;
    let path = dir.join(format!("{}.bundle", m.profile.name));
    let tmp = dir.join(format!(".{}.bundle.tmp", m.profile.name));
    let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    bundle::write_header(&mut w, &manifest, key)?;
    for ((_, file), member) in members(i).into_iter().zip(&manifest.members) {
        let mut r = BufReader::new(fs::File::open(file)?);
        // Copied through the checking reader: what is written is what was hashed.
        bundle::copy_member(&mut r, member, &mut w)
            .with_context(|| format!("{} changed while the bundle was written", file.display()))?;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &path)?;
    nodeimage_core::files::sync_dir(dir)?;
    tracing::info!(bundle = %path.display(), version = %manifest.version,
        key = %key.public().fingerprint(), "update bundle signed");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_verifies_with_the_key_and_carries_each_file() {
        let d = tempfile::tempdir().unwrap();
        let file = |n: &str, b: &[u8]| {
            let p = d.path().join(n);
            fs::write(&p, b).unwrap();
            p
        };
        let i = NetbootInputs {
            kernel: file("vmlinuz", b"kernel"),
            initrd: file("initrd.img", b"initrd"),
            root: file("root.erofs", &[3u8; 8192]),
            verity: file("root.verity", &[4u8; 4096]),
            profile_cmdline: "quiet".into(),
            name: "t".into(),
            arch: "x86_64".into(),
            inputs_sha256: "0".repeat(64),
        };
        let dir = tempfile::tempdir().unwrap();
        let b = crate::build::tests::test_build(dir.path(), crate::build::tests::PROFILE, false);
        let tree = crate::build::filesystems::tests::fake_tree(dir.path());
        let m = crate::build::tests::manifest_for(&b, &tree);
        let (_, key) = SigningKey::generate().unwrap();
        let path = write(&i, &m, &key, d.path()).unwrap();
        let bytes = fs::read(&path).unwrap();
        let mut r = &bytes[..];
        let got = bundle::read_header(&mut r, &key.public()).unwrap();
        assert_eq!(got.version, version(&m));
        assert_eq!(got.verity.root_hash, m.root.verity.root_hash);
        let names: Vec<_> = got.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["vmlinuz", "initrd.img", "root.erofs", "root.verity"]
        );
        let mut all = Vec::new();
        for mem in &got.members {
            bundle::copy_member(&mut r, mem, &mut all).unwrap();
        }
        assert_eq!(all.len(), 6 + 6 + 8192 + 4096);
        assert!(r.is_empty());
        assert!(!d.path().join(".t.bundle.tmp").exists());
    }
}

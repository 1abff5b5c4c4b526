//! The output directory: the raw image and/or its zstd compression, and manifest.json
//! with the partitions and the outputs' hashes.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::assemble::DiskImage;
use super::{sha256_file, Build};
use crate::manifest::{Manifest, OutputRecord};
use crate::profile::OutputFormat;

/// What the output directory holds.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
}

/// Stage 6: the profile's output formats and `manifest.json` (the ESP's manifest plus
/// the partitions, the disk GUID and the outputs).
pub fn write_outputs(b: &Build, disk: &DiskImage, mut manifest: Manifest) -> Result<Outputs> {
    let p = &b.lp.profile;
    let zst = b.out_dir.join(format!("{}.raw.zst", p.name));
    manifest.disk_guid = Some(disk.disk_guid.to_string());
    manifest.partitions = disk.partition_records();
    if p.outputs.formats.contains(&OutputFormat::RawZst) {
        compress_zstd(&disk.raw, &zst)?;
    }
    for f in &p.outputs.formats {
        let (file, format) = match f {
            OutputFormat::Raw => (disk.raw.clone(), "raw"),
            OutputFormat::RawZst => (zst.clone(), "raw.zst"),
        };
        let (sha256, size) = sha256_file(&file)?;
        manifest.outputs.push(OutputRecord {
            file: file.file_name().unwrap().to_string_lossy().into(),
            format: format.into(),
            size,
            sha256,
        });
    }
    if !p.outputs.formats.contains(&OutputFormat::Raw) {
        fs::remove_file(&disk.raw)?;
    }
    let manifest_path = b.out_dir.join("manifest.json");
    nodeimage_core::files::atomic_write(
        &manifest_path,
        &serde_json::to_vec_pretty(&manifest)?,
        0o644,
    )?;
    Ok(Outputs {
        manifest_path,
        manifest,
    })
}

/// zstd-compress `src` into `dst` (multithreaded; the output does not depend on the thread count).
pub fn compress_zstd(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("zst.tmp");
    let input = fs::File::open(src)?;
    let out = fs::File::create(&tmp)?;
    let mut enc = zstd::stream::Encoder::new(out, 3)?;
    enc.multithread(
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
    )?;
    enc.include_checksum(true)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, input);
    std::io::copy(&mut reader, &mut enc)?;
    let f = enc.finish()?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dst)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_follow_the_profile_formats_and_are_recorded() {
        let d = tempfile::tempdir().unwrap();
        let b = crate::build::tests::test_build(
            d.path(),
            &format!(
                "{}[outputs]\nformats = [\"raw-zst\"]\n",
                crate::build::tests::PROFILE
            ),
            true,
        );
        fs::create_dir_all(&b.out_dir).unwrap();
        let raw = b.out_dir.join("t.raw");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&raw, &bytes).unwrap();
        let tree = crate::build::filesystems::tests::fake_tree(d.path());
        let m = crate::build::tests::manifest_for(&b, &tree);
        let disk = DiskImage {
            raw: raw.clone(),
            disk_guid: uuid::Uuid::from_u128(1),
            layout: crate::disk::DiskLayout {
                disk_guid: uuid::Uuid::from_u128(1),
                size_bytes: 3_000_000,
                sector_size: 512,
                partitions: vec![],
            },
        };
        let out = write_outputs(&b, &disk, m).unwrap();
        assert!(!raw.exists(), "raw is not among the formats");
        let zst = b.out_dir.join("t.raw.zst");
        assert_eq!(
            zstd::decode_all(fs::File::open(&zst).unwrap()).unwrap(),
            bytes
        );
        assert_eq!(out.manifest.outputs.len(), 1);
        assert_eq!(out.manifest.outputs[0].file, "t.raw.zst");
        assert_eq!(out.manifest.outputs[0].sha256, sha256_file(&zst).unwrap().0);
        assert_eq!(
            out.manifest.disk_guid.as_deref(),
            Some(uuid::Uuid::from_u128(1).to_string().as_str())
        );
        let on_disk: Manifest =
            serde_json::from_slice(&fs::read(&out.manifest_path).unwrap()).unwrap();
        assert_eq!(on_disk, out.manifest);
    }
}

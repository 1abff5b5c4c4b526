//! The output directory: the profile's formats of the one disk (raw, raw.zst, qcow2, a
//! fixed VHD, a GCE tarball), the network boot files (`pxe/`, [`super::pxe`]), manifest.json with the partitions and the outputs'
//! hashes, and SHA256SUMS over all of them (`sha256sum -c` reads it). Every output is
//! reproducible: nothing in them depends on the time or the machine of the build.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::assemble::DiskImage;
use super::pxe::NetbootInputs;
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
pub fn write_outputs(
    b: &Build,
    disk: &DiskImage,
    netboot: &NetbootInputs,
    mut manifest: Manifest,
) -> Result<Outputs> {
    let p = &b.lp.profile;
    let zst = b.out_dir.join(format!("{}.raw.zst", p.name));
    manifest.disk_guid = Some(disk.disk_guid.to_string());
    manifest.partitions = disk.partition_records();
    if p.outputs.formats.contains(&OutputFormat::RawZst) {
        compress_zstd(&disk.raw, &zst)?;
    }
    for f in &p.outputs.formats {
        if *f == OutputFormat::Pxe {
            super::pxe::write(netboot, &b.out_dir)?;
            for file in super::pxe::FILES {
                let (sha256, size) = sha256_file(&b.out_dir.join(file))?;
                manifest.outputs.push(OutputRecord {
                    file: file.into(),
                    format: format!("pxe-{}", file.rsplit('/').next().unwrap_or(file)),
                    size,
                    sha256,
                });
            }
            continue;
        }
        let (file, format) = match f {
            OutputFormat::Raw => (disk.raw.clone(), "raw"),
            OutputFormat::RawZst => (zst.clone(), "raw.zst"),
            OutputFormat::Qcow2 => {
                let out = b.out_dir.join(format!("{}.qcow2", p.name));
                write_qcow2(&disk.raw, &out)?;
                (out, "qcow2")
            }
            OutputFormat::Vhd => {
                let out = b.out_dir.join(format!("{}.vhd", p.name));
                let id = crate::disk::derive_guid("nodeimage/vhd", disk.disk_guid.as_bytes());
                crate::disk::vhd::write_fixed(&disk.raw, &out, b.epoch, id)?;
                (out, "vhd")
            }
            OutputFormat::Gce => {
                let out = b.out_dir.join(format!("{}.gce.tar.gz", p.name));
                write_gce(disk, &b.work.join("gce"), b.epoch, &out)?;
                (out, "gce")
            }
            OutputFormat::Pxe => unreachable!("written above"),
        };
        let (sha256, size) = sha256_file(&file)?;
        manifest.outputs.push(OutputRecord {
            file: file.file_name().unwrap().to_string_lossy().into(),
            format: format.into(),
            size,
            sha256,
        });
    }
    if let Some(key) = &b.sign_key {
        let file = super::bundle::write(netboot, &manifest, key, &b.out_dir)?;
        let (sha256, size) = sha256_file(&file)?;
        manifest.outputs.push(OutputRecord {
            file: file.file_name().unwrap().to_string_lossy().into(),
            format: "bundle".into(),
            size,
            sha256,
        });
    }
    if !p.outputs.formats.contains(&OutputFormat::Raw) {
        fs::remove_file(&disk.raw)?;
    }
    let manifest_path = b.out_dir.join("manifest.json");
    let manifest_json = serde_json::to_vec_pretty(&manifest)?;
    nodeimage_core::files::atomic_write(&manifest_path, &manifest_json, 0o644)?;
    nodeimage_core::files::atomic_write(
        &b.out_dir.join("SHA256SUMS"),
        sha256sums(&manifest, &manifest_json).as_bytes(),
        0o644,
    )?;
    Ok(Outputs {
        manifest_path,
        manifest,
    })
}

/// `sha256sum`'s format: every output and manifest.json, sorted by name.
fn sha256sums(manifest: &Manifest, manifest_json: &[u8]) -> String {
    let mut rows: Vec<(String, String)> = manifest
        .outputs
        .iter()
        .map(|o| (o.file.clone(), o.sha256.clone()))
        .collect();
    rows.push((
        "manifest.json".into(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest_json)),
    ));
    rows.sort();
    rows.iter().map(|(f, h)| format!("{h}  {f}\n")).collect()
}

/// `qemu-img convert` of `raw` to qcow2 (version 3), synced and renamed into place.
/// The conversion writes in order (no `-W`), so the same raw image gives the same bytes.
pub fn write_qcow2(raw: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("qcow2.tmp");
    let _ = fs::remove_file(&tmp);
    let result = crate::tools::run(
        Command::new(crate::tools::QEMU_IMG.program)
            .args([
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "compat=1.1",
            ])
            .arg(raw)
            .arg(&tmp),
    )
    .and_then(|_| Ok(fs::File::open(&tmp)?.sync_all()?))
    .and_then(|_| Ok(fs::rename(&tmp, dst)?));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("converting {} to qcow2", raw.display()))
}

/// A GCE image: the disk grown to a whole number of GiB (both GPTs written for that
/// size), named `disk.raw`, in an oldgnu tar with its holes as sparse entries (GNU tar,
/// holes found by reading, so the tar depends only on the bytes; owner root, mode 0644,
/// the build's time), gzip'd without a name or time. `work` is scratch space.
pub fn write_gce(disk: &DiskImage, work: &Path, epoch: i64, dst: &Path) -> Result<()> {
    const GIB: u64 = 1 << 30;
    fs::create_dir_all(work)?;
    let padded = work.join("disk.raw");
    let size = disk.layout.size_bytes.div_ceil(GIB) * GIB;
    crate::disk::pad_disk(&disk.raw, &disk.layout, size, &padded)?;
    let tmp = dst.with_extension("gz.tmp");
    let result = (|| -> Result<()> {
        let mut tar = Command::new(crate::tools::TAR.program)
            .args([
                "--create",
                "--format=oldgnu",
                "--sparse",
                "--hole-detection=raw",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mode=0644",
            ])
            .arg(format!("--mtime=@{epoch}"))
            .arg("--file=-")
            .arg("--directory")
            .arg(work)
            .arg("disk.raw")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("running tar")?;
        let out = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(std::io::BufWriter::new(out), flate2::Compression::default());
        if let Err(e) = std::io::copy(tar.stdout.as_mut().expect("piped"), &mut gz) {
            let _ = tar.kill();
            let _ = tar.wait();
            return Err(e.into());
        }
        let status = tar.wait()?;
        anyhow::ensure!(
            status.success(),
            "tar of {} failed: {status}",
            padded.display()
        );
        let mut w = gz.finish()?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, dst)?;
        Ok(())
    })();
    let _ = fs::remove_file(&padded);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing the GCE image {}", dst.display()))
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
        let out = write_outputs(&b, &disk, &netboot_of(&tree, &raw), m).unwrap();
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

    /// Network boot inputs from a fake tree, with `root` as the root image.
    fn netboot_of(tree: &crate::build::tree::RootTree, root: &Path) -> NetbootInputs {
        NetbootInputs {
            kernel: tree.kernel.clone(),
            initrd: tree.initrd.clone(),
            root: root.to_path_buf(),
            verity: root.to_path_buf(),
            profile_cmdline: String::new(),
            name: "t".into(),
            arch: "x86_64".into(),
            inputs_sha256: "00".repeat(32),
        }
    }

    fn sh(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every format from one small GPT disk (a 3 MiB partition of patterned data and a
    /// zero one), checked by the tools that read them: qemu-img check and compare for
    /// qcow2 and the VHD, the VHD footer against the one qemu-img writes, the GCE tar
    /// through GNU tar and sfdisk, SHA256SUMS through sha256sum -c; and the same bytes
    /// from a second run.
    #[test]
    fn every_format_is_readable_by_its_tools_and_reproducible() {
        if !test_support::Needs::new("output formats")
            .tool("qemu-img", "qemu-utils")
            .tool("sfdisk", "fdisk")
            .tool("sha256sum", "coreutils")
            .met()
        {
            return;
        }
        use crate::disk::{type_guid, PartitionContent, PartitionSpec};
        let d = tempfile::tempdir().unwrap();
        let b = crate::build::tests::test_build(
            d.path(),
            &format!(
                "{}[outputs]\nformats = [\"raw\", \"qcow2\", \"vhd\", \"gce\", \"pxe\"]\n",
                crate::build::tests::PROFILE
            ),
            true,
        );
        fs::create_dir_all(&b.out_dir).unwrap();
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8 | 1).collect();
        let raw = b.out_dir.join("t.raw");
        let guid = uuid::Uuid::from_u128(0x5eed);
        let specs = [
            PartitionSpec::new(
                "data",
                type_guid::LINUX_DATA,
                uuid::Uuid::from_u128(1),
                3 << 20,
                PartitionContent::Bytes(data.clone()),
            ),
            PartitionSpec::new(
                "empty",
                type_guid::LINUX_DATA,
                uuid::Uuid::from_u128(2),
                2 << 20,
                PartitionContent::Zero,
            ),
        ];
        let write = |b: &Build| {
            let layout = crate::disk::write_disk(&raw, guid, &specs).unwrap();
            let tree = crate::build::filesystems::tests::fake_tree(d.path());
            let m = crate::build::tests::manifest_for(b, &tree);
            let disk = DiskImage {
                raw: raw.clone(),
                disk_guid: guid,
                layout: layout.clone(),
            };
            (
                write_outputs(b, &disk, &netboot_of(&tree, &raw), m).unwrap(),
                layout,
            )
        };
        let (out, layout) = write(&b);
        let raw_size = fs::metadata(&raw).unwrap().len();
        assert_eq!(raw_size % (1 << 20), 0);
        let files: Vec<&str> = out
            .manifest
            .outputs
            .iter()
            .map(|o| o.file.as_str())
            .collect();
        assert_eq!(
            files,
            [
                "t.raw",
                "t.qcow2",
                "t.vhd",
                "t.gce.tar.gz",
                "pxe/boot.ipxe",
                "pxe/initrd.img",
                "pxe/root.erofs",
                "pxe/vmlinuz"
            ]
        );
        // The network boot files: the tree's kernel and initrd, the root image, a script.
        assert_eq!(fs::read(b.out_dir.join("pxe/vmlinuz")).unwrap(), b"kernel");
        assert_eq!(
            fs::read(b.out_dir.join("pxe/initrd.img")).unwrap(),
            b"initrd"
        );
        let qemu_img =
            |args: &[&str]| sh(Command::new("qemu-img").args(args).current_dir(&b.out_dir));

        // qcow2: clean, and the same disk.
        qemu_img(&["check", "-f", "qcow2", "t.qcow2"]);
        qemu_img(&["compare", "-f", "raw", "-F", "qcow2", "t.raw", "t.qcow2"]);

        // VHD: the raw bytes then one footer; qemu reads the same disk from it.
        let vhd = fs::read(b.out_dir.join("t.vhd")).unwrap();
        assert_eq!(vhd.len() as u64, raw_size + 512);
        assert!(vhd[..raw_size as usize] == fs::read(&raw).unwrap()[..]);
        let info: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", "-f", "vpc", "t.vhd"]))
                .unwrap();
        assert_eq!(info["virtual-size"], raw_size, "{info}");
        qemu_img(&["compare", "-f", "raw", "-F", "vpc", "t.raw", "t.vhd"]);
        // Against qemu-img's own fixed VHD of the same disk: equal but for the time, the
        // creator application and version, the checksum and the unique id.
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size",
            "t.raw",
            "qemu.vhd",
        ]);
        let theirs = fs::read(b.out_dir.join("qemu.vhd")).unwrap();
        assert_eq!(
            theirs.len(),
            vhd.len(),
            "qemu-img's fixed VHD has another size"
        );
        let footer = |v: &[u8]| {
            let mut f = v[v.len() - 512..].to_vec();
            for r in [24..36, 64..84] {
                f[r].fill(0);
            }
            f
        };
        assert_eq!(
            footer(&vhd),
            footer(&theirs),
            "footer fields differ from qemu-img's"
        );
        let ours: [u8; 512] = vhd[vhd.len() - 512..].try_into().unwrap();
        assert_eq!(
            crate::disk::vhd::checksum(&ours).to_be_bytes(),
            ours[64..68]
        );
        fs::remove_file(b.out_dir.join("qemu.vhd")).unwrap();

        // GCE: one sparse disk.raw of a whole GiB in the tar; its data is the disk's, and
        // its GPT is valid for the grown size (the backup header in the last sector).
        let listing = sh(Command::new("tar")
            .args(["-tvzf", "t.gce.tar.gz"])
            .current_dir(&b.out_dir));
        assert!(
            listing.contains(" 1073741824 ") && listing.trim_end().ends_with(" disk.raw"),
            "{listing}"
        );
        let x = d.path().join("x");
        fs::create_dir_all(&x).unwrap();
        sh(Command::new("tar")
            .args(["-xzSf"])
            .arg(b.out_dir.join("t.gce.tar.gz"))
            .current_dir(&x));
        let gce = fs::read(x.join("disk.raw")).unwrap();
        assert_eq!(gce.len(), 1 << 30);
        let start = layout.partitions[0].start_bytes as usize;
        assert_eq!(&gce[start..][..data.len()], &data[..]);
        assert_eq!(
            &gce[(1 << 30) - 512..][..8],
            b"EFI PART",
            "backup header at the end"
        );
        sh(Command::new("sfdisk")
            .arg("--verify")
            .arg(x.join("disk.raw")));
        let grown = crate::disk::read_layout(&x.join("disk.raw")).unwrap();
        assert_eq!(grown.partitions, layout.partitions);
        assert_eq!(grown.size_bytes, 1 << 30);
        drop(gce);

        // SHA256SUMS covers every file, and sha256sum agrees.
        let sums = fs::read_to_string(b.out_dir.join("SHA256SUMS")).unwrap();
        assert_eq!(sums.lines().count(), 9, "{sums}");
        sh(Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&b.out_dir));

        // Reproducible: a second run gives the same bytes.
        let (again, _) = write(&b);
        assert_eq!(again.manifest.outputs, out.manifest.outputs);
        assert_eq!(
            fs::read_to_string(b.out_dir.join("SHA256SUMS")).unwrap(),
            sums
        );
    }
}

//! The filesystems of the disk: the erofs root and its dm-verity hash tree ([`root_image`]),
//! then the FAT32 ESP (systemd-boot, the loader entry carrying the root hash, kernel,
//! initrd, manifest) and the FAT NODECONFIG volume with its README ([`filesystems`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeimage_core::fat::{self, FatOptions, FatType};
use serde::Serialize;

use super::identity::Identity;
use super::tree::RootTree;
use super::Build;
use crate::manifest::{Manifest, RootRecord, VerityRecord};
use crate::profile::Arch;

/// Version of the `filesystems` stage.
const FILESYSTEMS_STAGE_VERSION: u32 = 2;
/// Version of the `root` stage.
const ROOT_STAGE_VERSION: u32 = 1;

/// The filesystem images, one file each.
#[derive(Debug, Clone)]
pub struct Filesystems {
    /// The erofs root (the root partition's data).
    pub root: PathBuf,
    /// Its dm-verity hash area (the verity partition's data).
    pub verity: PathBuf,
    pub esp: PathBuf,
    pub nodeconfig: PathBuf,
}

/// The root filesystem image, its hash tree and what the manifest says of them.
#[derive(Debug, Clone)]
pub struct RootImage {
    pub erofs: PathBuf,
    pub verity: PathBuf,
    pub record: RootRecord,
}

#[derive(Serialize)]
struct RootInputs<'a> {
    tree: &'a str,
    erofs_uuid: uuid::Uuid,
    verity_uuid: uuid::Uuid,
    salt: String,
    epoch: i64,
}

/// Stage 4a: the erofs root and its dm-verity hash tree (computed here, the same bytes
/// `veritysetup format` writes), cached by the root tree and the identity's UUIDs and
/// salt. The root hash goes on the kernel command line, so the ESP is made after this.
pub fn root_image(b: &Build, tree: &RootTree, id: &Identity) -> Result<RootImage> {
    let erofs_uuid = id.guid("root-filesystem");
    let verity_uuid = id.guid("root-verity");
    let salt = id.verity_salt();
    let key = super::cache::stage_key(
        "root",
        ROOT_STAGE_VERSION,
        &RootInputs {
            tree: &tree.key,
            erofs_uuid,
            verity_uuid,
            salt: hex::encode(&salt),
            epoch: b.epoch,
        },
    )?;
    let entry = b.stages.get_or_make("root", &key, |dir| {
        let erofs = dir.join("root.erofs");
        crate::rootfs::make_erofs(&tree.root, &erofs, &erofs_uuid, b.epoch)?;
        let started = std::time::Instant::now();
        let params = nodeimage_core::verity::Params::new(salt.clone(), *verity_uuid.as_bytes());
        let len = fs::metadata(&erofs)?.len();
        let mut f = std::io::BufReader::with_capacity(
            1 << 20,
            fs::File::open(&erofs).with_context(|| format!("opening {}", erofs.display()))?,
        );
        let t = nodeimage_core::verity::build_from(&mut f, len, &params)
            .with_context(|| format!("dm-verity hash tree of {}", erofs.display()))?;
        write(&dir.join("root.verity"), &t.hash_area)?;
        let (erofs_sha256, erofs_size) = super::sha256_file(&erofs)?;
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            data_mib = len >> 20,
            hash_kib = t.hash_area.len() >> 10,
            "dm-verity hash tree"
        );
        Ok(RootRecord {
            erofs_sha256,
            erofs_size,
            verity: VerityRecord {
                root_hash: hex::encode(t.root_hash),
                salt: hex::encode(&salt),
                hash_algorithm: "sha256".into(),
                data_block_size: params.data_block_size,
                hash_block_size: params.hash_block_size,
                data_blocks: t.data_blocks,
                hash_size: t.hash_area.len() as u64,
            },
        })
    })?;
    tracing::info!(cached = entry.hit, root_hash = %entry.meta.verity.root_hash, "root");
    Ok(RootImage {
        erofs: entry.dir.join("root.erofs"),
        verity: entry.dir.join("root.verity"),
        record: entry.meta,
    })
}

#[derive(Serialize)]
struct FilesystemsInputs<'a> {
    tree: &'a str,
    /// The manifest the ESP carries: it names every input and the kernel command line.
    manifest: &'a Manifest,
    esp_size_mib: u64,
    config_size_mib: u64,
}

/// Stage 4b: the ESP and NODECONFIG, cached by the root tree and the ESP's manifest
/// (which holds the build identity every serial derives from, and the root hash).
pub fn filesystems(
    b: &Build,
    tree: &RootTree,
    root: &RootImage,
    id: &Identity,
    manifest: &Manifest,
) -> Result<Filesystems> {
    let p = &b.lp.profile;
    let key = super::cache::stage_key(
        "filesystems",
        FILESYSTEMS_STAGE_VERSION,
        &FilesystemsInputs {
            tree: &tree.key,
            manifest,
            esp_size_mib: p.disk.esp_size_mib,
            config_size_mib: p.disk.config_size_mib,
        },
    )?;
    let entry = b.stages.get_or_make("filesystems", &key, |dir| {
        let cmdline = &manifest.kernel.cmdline;
        let esp = esp_files(p.arch, &tree.root, tree, cmdline, &p.name, manifest)?;
        let esp = fat::build(
            &esp,
            &FatOptions {
                size_bytes: p.disk.esp_size_mib << 20,
                label: "ESP".into(),
                volume_id: volume_id(&id.guid("esp-filesystem")),
                timestamp: b.epoch,
                fat_type: Some(FatType::Fat32),
            },
        )?;
        write(&dir.join("esp.fat"), &esp)?;
        let config = fat::build(
            &nodeconfig_files(),
            &FatOptions {
                size_bytes: p.disk.config_size_mib << 20,
                label: "NODECONFIG".into(),
                volume_id: volume_id(&id.guid("nodeconfig-filesystem")),
                timestamp: b.epoch,
                fat_type: None,
            },
        )?;
        write(&dir.join("nodeconfig.fat"), &config)?;
        Ok(())
    })?;
    tracing::info!(cached = entry.hit, "filesystems");
    Ok(Filesystems {
        root: root.erofs.clone(),
        verity: root.verity.clone(),
        esp: entry.dir.join("esp.fat"),
        nodeconfig: entry.dir.join("nodeconfig.fat"),
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// A FAT volume serial from a GUID.
fn volume_id(g: &uuid::Uuid) -> u32 {
    let b = g.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The EFI system partition: systemd-boot, one loader entry, kernel, initrd, manifest.
fn esp_files(
    arch: Arch,
    root: &Path,
    tree: &RootTree,
    cmdline: &str,
    name: &str,
    manifest: &Manifest,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let efi = arch.efi();
    let sdboot = root.join(format!("usr/lib/systemd/boot/efi/systemd-boot{efi}.efi"));
    let sdboot = fs::read(&sdboot)
        .with_context(|| format!("reading {} (package systemd-boot-efi)", sdboot.display()))?;
    let mut m = BTreeMap::new();
    m.insert(
        format!("EFI/BOOT/BOOT{}.EFI", efi.to_uppercase()),
        sdboot.clone(),
    );
    m.insert(format!("EFI/systemd/systemd-boot{efi}.efi"), sdboot);
    use nodeimage_core::layout::esp;
    m.insert(
        "loader/loader.conf".into(),
        esp::LOADER_CONF.as_bytes().to_vec(),
    );
    // Slot A, the first generation; updates add the next ones (firstboot update).
    m.insert(
        esp::entry(1, "a", None),
        esp::entry_text(name, "a", cmdline).into_bytes(),
    );
    m.insert(esp::kernel("a"), fs::read(&tree.kernel)?);
    m.insert(esp::initrd("a"), fs::read(&tree.initrd)?);
    m.insert(
        "nodeimage/manifest.json".into(),
        serde_json::to_vec_pretty(manifest)?,
    );
    Ok(m)
}

/// The NODECONFIG partition starts with a README for the person editing it on a laptop.
fn nodeconfig_files() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    m.insert(
        "README.TXT".into(),
        b"Put this node's config here as node.yaml (native) or config.ign (Ignition v3).\r\n\
Create one with: nodeimage node-config -c cluster.yml --role worker -o node.yaml\r\n\
or write it into the image with: nodeimage write-config IMAGE node.yaml\r\n"
            .to_vec(),
    );
    m
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A root tree with just what the ESP takes from it.
    pub(crate) fn fake_tree(dir: &Path) -> RootTree {
        let root = dir.join("root");
        let efi = root.join("usr/lib/systemd/boot/efi");
        fs::create_dir_all(&efi).unwrap();
        fs::write(efi.join("systemd-bootx64.efi"), b"MZ systemd-boot").unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), b"node\n").unwrap();
        fs::create_dir_all(dir.join("boot")).unwrap();
        fs::write(dir.join("boot/vmlinuz"), b"kernel").unwrap();
        fs::write(dir.join("boot/initrd.img"), b"initrd").unwrap();
        RootTree {
            key: "tree".into(),
            root,
            kernel: dir.join("boot/vmlinuz"),
            initrd: dir.join("boot/initrd.img"),
            kernel_version: "6.1.0-test".into(),
            packages: [("systemd".to_string(), "252".to_string())].into(),
        }
    }

    #[test]
    fn esp_holds_the_bootloader_entry_kernel_and_manifest() {
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(d.path());
        let b = crate::build::tests::test_build(d.path(), crate::build::tests::PROFILE, true);
        let m = crate::build::tests::manifest_for(&b, &tree);
        let files = esp_files(Arch::X86_64, &tree.root, &tree, "root=x ro", "t", &m).unwrap();
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "EFI/BOOT/BOOTX64.EFI",
                "EFI/systemd/systemd-bootx64.efi",
                "loader/entries/nodeimage-1-a.conf",
                "loader/loader.conf",
                "nodeimage/a/initrd.img",
                "nodeimage/a/vmlinuz",
                "nodeimage/manifest.json",
            ]
        );
        assert_eq!(
            String::from_utf8_lossy(&files["loader/entries/nodeimage-1-a.conf"]),
            "title t\nlinux /nodeimage/a/vmlinuz\ninitrd /nodeimage/a/initrd.img\noptions root=x ro\n"
        );
        let back: Manifest = serde_json::from_slice(&files["nodeimage/manifest.json"]).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn filesystems_are_made_once_and_then_taken_from_the_cache() {
        if !test_support::needs_tool("filesystems stage", "mkfs.erofs", "erofs-utils") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = fake_tree(d.path());
        let b = crate::build::tests::test_build(d.path(), crate::build::tests::PROFILE, true);
        let m = crate::build::tests::manifest_for(&b, &tree);
        let id = Identity {
            inputs: m.inputs_sha256.clone(),
        };
        let root = root_image(&b, &tree, &id).unwrap();
        let fs1 = filesystems(&b, &tree, &root, &id, &m).unwrap();
        let mut fat = fat::FatImage::open(fs::File::open(&fs1.esp).unwrap(), 0, 128 << 20).unwrap();
        let esp = fat.read_file("nodeimage/a/vmlinuz").unwrap();
        assert_eq!(esp, b"kernel");
        assert_eq!(fs::metadata(&fs1.nodeconfig).unwrap().len(), 16 << 20);
        let erofs = fs::read(&fs1.root).unwrap();
        assert_eq!(
            &erofs[1024..1028],
            &0xE0F5E1E2u32.to_le_bytes(),
            "erofs magic"
        );
        // Same inputs: the cached files. Another manifest (another identity): new files.
        let fs2 = filesystems(&b, &tree, &root, &id, &m).unwrap();
        assert_eq!(fs2.esp, fs1.esp);
        assert_eq!(root_image(&b, &tree, &id).unwrap().erofs, root.erofs);
        let mut m2 = m.clone();
        m2.kernel.cmdline.push_str(" quiet");
        let fs3 = filesystems(&b, &tree, &root, &id, &m2).unwrap();
        assert_ne!(fs3.esp, fs1.esp);
        // The hash tree is veritysetup's: its root hash is the record's, and it verifies.
        let v = &root.record.verity;
        assert_eq!(v.data_blocks * 4096, erofs.len() as u64);
        assert_eq!(root.record.erofs_size, erofs.len() as u64);
        let tree_bytes = fs::read(&root.verity).unwrap();
        assert_eq!(tree_bytes.len() as u64, v.hash_size);
        let sb = nodeimage_core::verity::Superblock::parse(tree_bytes[..512].try_into().unwrap())
            .unwrap();
        assert_eq!(hex::encode(&sb.params.salt), v.salt);
        assert_eq!(sb.params.salt, id.verity_salt());
        let again = nodeimage_core::verity::build(&erofs, &sb.params).unwrap();
        assert_eq!(hex::encode(again.root_hash), v.root_hash);
        if test_support::Needs::new("the root's hash tree against veritysetup verify")
            .tool("veritysetup", "cryptsetup-bin")
            .met()
        {
            test_support::cmd::stdout_ok(
                "veritysetup verify",
                std::process::Command::new("veritysetup")
                    .arg("verify")
                    .arg(&root.erofs)
                    .arg(&root.verity)
                    .arg(&v.root_hash),
            );
        }
    }
}

//! The three filesystems of the disk: the erofs root, the FAT32 ESP (systemd-boot,
//! kernel, initrd, manifest) and the FAT NODECONFIG volume with its README.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeimage_core::fat::{self, FatOptions, FatType};
use serde::Serialize;

use super::identity::Identity;
use super::tree::RootTree;
use super::Build;
use crate::manifest::Manifest;
use crate::profile::Arch;

/// Version of the `filesystems` stage.
const FILESYSTEMS_STAGE_VERSION: u32 = 1;

/// The filesystem images, one file each.
#[derive(Debug, Clone)]
pub struct Filesystems {
    pub root: PathBuf,
    pub esp: PathBuf,
    pub nodeconfig: PathBuf,
}

#[derive(Serialize)]
struct FilesystemsInputs<'a> {
    tree: &'a str,
    /// The manifest the ESP carries: it names every input and the kernel command line.
    manifest: &'a Manifest,
    esp_size_mib: u64,
    config_size_mib: u64,
}

/// Stage 4: the filesystems, cached by the root tree and the ESP's manifest (which
/// holds the build identity every serial derives from).
pub fn filesystems(
    b: &Build,
    tree: &RootTree,
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
        crate::rootfs::make_erofs(
            &tree.root,
            &dir.join("root.erofs"),
            &id.guid("root-filesystem"),
            b.epoch,
        )?;
        let esp = esp_files(p.arch, &tree.root, tree, &id.cmdline(b), &p.name, manifest)?;
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
        root: entry.dir.join("root.erofs"),
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
    m.insert(
        "loader/loader.conf".into(),
        b"default nodeimage.conf\ntimeout 0\neditor no\n".to_vec(),
    );
    m.insert(
        "loader/entries/nodeimage.conf".into(),
        format!("title {name}\nlinux /nodeimage/vmlinuz\ninitrd /nodeimage/initrd.img\noptions {cmdline}\n").into_bytes(),
    );
    m.insert("nodeimage/vmlinuz".into(), fs::read(&tree.kernel)?);
    m.insert("nodeimage/initrd.img".into(), fs::read(&tree.initrd)?);
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
                "loader/entries/nodeimage.conf",
                "loader/loader.conf",
                "nodeimage/initrd.img",
                "nodeimage/manifest.json",
                "nodeimage/vmlinuz",
            ]
        );
        assert_eq!(
            String::from_utf8_lossy(&files["loader/entries/nodeimage.conf"]),
            "title t\nlinux /nodeimage/vmlinuz\ninitrd /nodeimage/initrd.img\noptions root=x ro\n"
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
        let fs1 = filesystems(&b, &tree, &id, &m).unwrap();
        let mut fat = fat::FatImage::open(fs::File::open(&fs1.esp).unwrap(), 0, 128 << 20).unwrap();
        let esp = fat.read_file("nodeimage/vmlinuz").unwrap();
        assert_eq!(esp, b"kernel");
        assert_eq!(fs::metadata(&fs1.nodeconfig).unwrap().len(), 16 << 20);
        let erofs = fs::read(&fs1.root).unwrap();
        assert_eq!(
            &erofs[1024..1028],
            &0xE0F5E1E2u32.to_le_bytes(),
            "erofs magic"
        );
        // Same inputs: the cached files. Another manifest (another identity): new files.
        let fs2 = filesystems(&b, &tree, &id, &m).unwrap();
        assert_eq!(fs2.root, fs1.root);
        let mut m2 = m.clone();
        m2.kernel.cmdline.push_str(" quiet");
        let fs3 = filesystems(&b, &tree, &id, &m2).unwrap();
        assert_ne!(fs3.esp, fs1.esp);
        assert_eq!(
            fs::read(&fs3.root).unwrap(),
            erofs,
            "same tree, same uuid: same erofs"
        );
    }
}

//! The `pxe` output: `<out>/pxe/`, a directory to serve over HTTP as it is.
//!
//! * `vmlinuz`, `initrd.img`: the image's own kernel and initramfs (the same bytes the
//!   ESP carries);
//! * `root.erofs`: the read-only root filesystem (the same bytes as the root partition);
//! * `boot.ipxe`: an iPXE script that boots them with `boot=nodeimage-net`, the root
//!   image's URL relative to the script and its SHA-256 on the kernel command line, and
//!   `firstboot.config_url=` (default `config/{mac}.yaml` next to the script; firstboot
//!   fills `{mac}`).
//!
//! The initramfs fetches `root.erofs`, refuses it unless its SHA-256 is the one in the
//! script, and runs it from RAM with the state in RAM (`firstboot/src/netroot.rs` says
//! why RAM). The script is the only place the hash is written, so the script is what an
//! operator must serve from a place they trust (https, or their own boot network).
//!
//! iPXE settings an operator's own script may set before `chain .../boot.ipxe`:
//! `nodeimage-base` (the URL of the directory, ending in `/`; default `${cwuri}`, the
//! script's own URL, in an iPXE that has that setting), `nodeimage-config-url` and
//! `nodeimage-config-sha256` (`firstboot.config_sha256=`, which firstboot requires for a
//! plain-HTTP config URL).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What the `pxe` output is made of.
#[derive(Debug, Clone)]
pub struct NetbootInputs {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The erofs root image.
    pub root: PathBuf,
    /// Its dm-verity hash tree (for the update bundle).
    pub verity: PathBuf,
    /// The profile's own kernel arguments.
    pub profile_cmdline: String,
    /// Named in the script's comment.
    pub name: String,
    pub arch: String,
    pub inputs_sha256: String,
}

/// The files of the `pxe/` directory, relative to the output directory, in the order
/// they are recorded.
pub const FILES: [&str; 4] = [
    "pxe/boot.ipxe",
    "pxe/initrd.img",
    "pxe/root.erofs",
    "pxe/vmlinuz",
];

/// The kernel command line of a network boot (iPXE settings still in `${...}`).
pub fn kernel_cmdline(root_sha256: &str, profile_cmdline: &str) -> String {
    format!(
        "initrd=initrd.img boot=nodeimage-net ip=dhcp ro rootfstype=erofs \
         nodeimage.base_url=${{nodeimage-base}} nodeimage.root_url=root.erofs \
         nodeimage.root_sha256={root_sha256} \
         firstboot.config_url=${{nodeimage-config-url}} ${{nodeimage-config-pin}} {profile_cmdline}"
    )
    .trim()
    .to_string()
}

/// The iPXE script.
pub fn script(i: &NetbootInputs, root_sha256: &str) -> String {
    format!(
        "#!ipxe\n\
         # nodeimage network boot: {name} ({arch}), build inputs sha256 {inputs}.\n\
         # Serve this directory over HTTP(S) and chain this script. The initramfs fetches\n\
         # root.erofs and boots it only if its sha256 is the one below; root and state run\n\
         # from RAM. Settings your own script may set before chaining this one:\n\
         #   nodeimage-base           this directory's URL, ending in / (default: ${{cwuri}})\n\
         #   nodeimage-config-url     firstboot.config_url= (default: config/{{mac}}.yaml here)\n\
         #   nodeimage-config-sha256  firstboot.config_sha256= (needed for an http:// config URL)\n\
         isset ${{nodeimage-base}} || set nodeimage-base ${{cwuri}}\n\
         isset ${{nodeimage-config-url}} || set nodeimage-config-url config/{{mac}}.yaml\n\
         isset ${{nodeimage-config-sha256}} || goto nodeimage-boot\n\
         set nodeimage-config-pin firstboot.config_sha256=${{nodeimage-config-sha256}}\n\
         :nodeimage-boot\n\
         echo nodeimage: booting {name} from ${{nodeimage-base}}\n\
         kernel vmlinuz {cmdline}\n\
         initrd initrd.img\n\
         boot\n",
        name = i.name,
        arch = i.arch,
        inputs = i.inputs_sha256,
        cmdline = kernel_cmdline(root_sha256, &i.profile_cmdline),
    )
}

/// Write `<out>/pxe/`: made in `pxe.tmp/`, every file synced, then renamed into place
/// (an earlier `pxe/` is replaced only once the new one is complete).
pub fn write(i: &NetbootInputs, out_dir: &Path) -> Result<()> {
    let dir = out_dir.join("pxe");
    let tmp = out_dir.join("pxe.tmp");
    let result = (|| -> Result<()> {
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        for (src, name) in [
            (&i.kernel, "vmlinuz"),
            (&i.initrd, "initrd.img"),
            (&i.root, "root.erofs"),
        ] {
            let dst = tmp.join(name);
            fs::copy(src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            fs::File::open(&dst)?.sync_all()?;
        }
        let (root_sha256, _) = super::sha256_file(&tmp.join("root.erofs"))?;
        let mut f = fs::File::create(tmp.join("boot.ipxe"))?;
        f.write_all(script(i, &root_sha256).as_bytes())?;
        f.sync_all()?;
        nodeimage_core::files::sync_dir(&tmp)?;
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::rename(&tmp, &dir)?;
        nodeimage_core::files::sync_dir(out_dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.with_context(|| format!("writing the network boot files {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_pins_the_root_and_resolves_against_its_own_url() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(&src).unwrap();
        for (n, b) in [("k", "kernel"), ("i", "initrd"), ("r", "erofs bytes")] {
            fs::write(src.join(n), b).unwrap();
        }
        let i = NetbootInputs {
            kernel: src.join("k"),
            initrd: src.join("i"),
            root: src.join("r"),
            verity: src.join("r"),
            profile_cmdline: "console=ttyS0".into(),
            name: "t".into(),
            arch: "x86_64".into(),
            inputs_sha256: "ab".repeat(32),
        };
        let out = d.path().join("out");
        fs::create_dir_all(out.join("pxe")).unwrap();
        fs::write(out.join("pxe/stale"), "old").unwrap();
        write(&i, &out).unwrap();
        let mut names: Vec<String> = fs::read_dir(out.join("pxe"))
            .unwrap()
            .map(|e| format!("pxe/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        names.sort();
        assert_eq!(names, FILES, "a complete, fresh directory");
        assert!(!out.join("pxe.tmp").exists());
        assert_eq!(
            fs::read(out.join("pxe/root.erofs")).unwrap(),
            b"erofs bytes"
        );
        let s = fs::read_to_string(out.join("pxe/boot.ipxe")).unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"erofs bytes"));
        assert!(s.starts_with("#!ipxe\n"), "{s}");
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        for want in [
            "kernel vmlinuz initrd=initrd.img boot=nodeimage-net ip=dhcp",
            "nodeimage.base_url=${nodeimage-base} nodeimage.root_url=root.erofs",
            &format!("nodeimage.root_sha256={sha}"),
            "firstboot.config_url=${nodeimage-config-url} ${nodeimage-config-pin}",
        ] {
            assert!(kernel.contains(want), "{want} not in {kernel}");
        }
        assert!(kernel.ends_with(" console=ttyS0"), "{kernel}");
        assert!(
            s.contains("set nodeimage-config-url config/{mac}.yaml"),
            "{s}"
        );
        assert!(s.contains("initrd initrd.img\nboot\n"), "{s}");
        // The same inputs make the same script.
        assert_eq!(s, script(&i, &sha));
    }
}

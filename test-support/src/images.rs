//! Filesystem images made by the real tools: FAT volumes with `mkfs.fat` and mtools,
//! ISO 9660 images with genisoimage or xorriso, and `fsck.fat` as the judge of ours.

use std::path::{Path, PathBuf};

use crate::cmd::{run_ok, tool};

/// `mkfs.fat <args> -C <dir>/<name> <kib>`, then `files` (path, contents) copied in
/// with mcopy (parent directories made with mmd). An image left by an earlier run is
/// replaced (mkfs.fat -C refuses an existing file). Returns the image path.
pub fn mkfs_fat(
    dir: &Path,
    name: &str,
    args: &[&str],
    kib: u32,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let img = dir.join(name);
    match std::fs::remove_file(&img) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("removing {}: {e}", img.display())
        }
        _ => {}
    }
    run_ok(
        tool("mkfs.fat", "dosfstools")
            .args(args)
            .arg("-C")
            .arg(&img)
            .arg(kib.to_string()),
    );
    let src = dir.join(format!("{name}.src"));
    for (path, data) in files {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            // Fails harmlessly when the directory is already there.
            let _ = tool("mmd", "mtools")
                .arg("-i")
                .arg(&img)
                .arg(format!("::/{}", parts[..i].join("/")))
                .output();
        }
        std::fs::write(&src, data).unwrap();
        run_ok(
            tool("mcopy", "mtools")
                .arg("-i")
                .arg(&img)
                .arg(&src)
                .arg(format!("::/{path}")),
        );
    }
    let _ = std::fs::remove_file(&src);
    img
}

/// A FAT image of `kib` KiB labelled `label` holding `files`; `fat` is 12, 16 or 32
/// (FAT16 and FAT32 with 512-byte sectors and one sector per cluster).
pub fn fat_image(
    dir: &Path,
    name: &str,
    label: &str,
    fat: u8,
    kib: u32,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let fat = fat.to_string();
    let mut args = vec!["-F", &fat, "-n", label];
    if fat != "12" {
        args.extend(["-S", "512", "-s", "1"]);
    }
    mkfs_fat(dir, name, &args, kib, files)
}

/// [`fat_image`] as most tests want it: FAT16, 8 MiB.
pub fn fat16(dir: &Path, name: &str, label: &str, files: &[(&str, &[u8])]) -> PathBuf {
    fat_image(dir, name, label, 16, 8192, files)
}

/// [`fat_image`] the size of a floppy: FAT12, 1440 KiB.
pub fn fat12(dir: &Path, name: &str, label: &str, files: &[(&str, &[u8])]) -> PathBuf {
    fat_image(dir, name, label, 12, 1440, files)
}

/// An ISO image of `files` made with `tool` (`genisoimage`, or `xorriso` in its mkisofs
/// mode) with volume label `label`; `extensions` are the name extensions (`-J`, `-r`).
pub fn iso_image(
    dir: &Path,
    name: &str,
    label: &str,
    tool_name: &str,
    extensions: &[&str],
    files: &[(&str, &[u8])],
) -> PathBuf {
    let src = dir.join(format!("{name}.d"));
    for (path, data) in files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let img = dir.join(name);
    let mut cmd = tool(tool_name, tool_name);
    if tool_name == "xorriso" {
        cmd.args(["-as", "mkisofs"]);
    }
    cmd.args(["-quiet", "-V", label])
        .args(extensions)
        .arg("-o")
        .arg(&img)
        .arg(&src);
    run_ok(&mut cmd);
    img
}

/// `fsck.fat -n <args> <path>` must exit 0 and its output (lowercased) must contain
/// none of `findings` (words fsck.fat uses when it finds something to fix). Returns the
/// output.
pub fn fsck_fat(path: &Path, args: &[&str], findings: &[&str]) -> String {
    let text = run_ok(
        tool("fsck.fat", "dosfstools")
            .arg("-n")
            .args(args)
            .arg(path),
    );
    let lower = text.to_lowercase();
    for bad in findings {
        assert!(
            !lower.contains(bad),
            "fsck.fat reports `{bad}` on {}:\n{text}",
            path.display()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_images_hold_their_files_and_pass_fsck() {
        if !crate::Needs::new("FAT images from mkfs.fat")
            .tool("mkfs.fat", "dosfstools")
            .tool("mcopy", "mtools")
            .met()
        {
            return;
        }
        let d = std::env::temp_dir().join(format!("images-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let img = fat_image(&d, "a.img", "CFG", 16, 8192, &[("dir/sub/f.txt", b"hello")]);
        fsck_fat(&img, &["-v"], &["differ", "wrong", "invalid"]);
        let out = run_ok(
            tool("mtype", "mtools")
                .arg("-i")
                .arg(&img)
                .arg("::/dir/sub/f.txt"),
        );
        assert_eq!(out, "hello");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

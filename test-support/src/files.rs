//! Files and bytes for tests.

use std::path::{Path, PathBuf};

/// Deterministic test content of `n` bytes.
pub fn content(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Names of the files directly under `dir` (empty if it does not exist).
pub fn list(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

/// A machine root whose QEMU fw_cfg item `name` (`-fw_cfg name=<name>,...`) holds
/// `content`, as the kernel shows it under `/sys/firmware/qemu_fw_cfg`.
pub fn fw_cfg_root(name: &str, content: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let item = d.path().join("sys/firmware/qemu_fw_cfg/by_name").join(name);
    std::fs::create_dir_all(&item).unwrap();
    std::fs::write(item.join("raw"), content).unwrap();
    d
}

/// Every entry below `dir` (directories too, symlinks not followed) with its metadata,
/// in no particular order.
pub fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), m));
        }
    }
    out
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_below(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

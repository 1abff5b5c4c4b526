//! The read-only root filesystem image.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::tools;

/// Make the read-only root filesystem: erofs, lz4hc-compressed, every timestamp and the
/// UUID fixed so the same tree gives the same bytes.
pub fn make_erofs(root: &Path, out: &Path, uuid: &uuid::Uuid, epoch: i64) -> Result<()> {
    tools::require(&[tools::MKFS_EROFS])?;
    let _ = fs::remove_file(out);
    tools::run(
        Command::new("mkfs.erofs")
            .arg("-zlz4hc")
            .arg(format!("-T{epoch}"))
            .arg(format!("-U{uuid}"))
            .arg("--quiet")
            .arg(out)
            .arg(root),
    )
    .context("mkfs.erofs could not build the root filesystem")
}

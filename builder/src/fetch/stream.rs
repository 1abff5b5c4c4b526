//! The streaming core shared by HTTP and local sources: read a chunk, hash it, write
//! it, count it, refuse to go past the expected length. Nothing is buffered whole.

use std::fs::File;
use std::io::{self, Read, Write};

use super::digest::Hasher;
use super::progress::Progress;

const CHUNK: usize = 256 * 1024;

pub(crate) enum CopyError {
    /// Reading the source failed (for HTTP: the connection broke).
    Read(io::Error),
    /// Writing the partial file failed (disk full, ...).
    Write(io::Error),
    /// The source had more bytes than the expected length.
    TooLong { limit: u64 },
}

/// Copies `r` to `w` through `hasher`. `pos` is the number of bytes already in `w`
/// (already hashed); the copy fails with [`CopyError::TooLong`] past `limit`.
/// Returns the number of bytes copied by this call, also on error.
pub(crate) fn copy_hashing(
    r: &mut dyn Read,
    w: &mut File,
    hasher: &mut Hasher,
    pos: u64,
    limit: Option<u64>,
    progress: &mut Progress,
) -> (u64, Result<(), CopyError>) {
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return (copied, Ok(())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (copied, Err(CopyError::Read(e))),
        };
        if let Some(limit) = limit {
            if pos + copied + n as u64 > limit {
                return (copied, Err(CopyError::TooLong { limit }));
            }
        }
        hasher.update(&buf[..n]);
        if let Err(e) = w.write_all(&buf[..n]) {
            return (copied, Err(CopyError::Write(e)));
        }
        copied += n as u64;
        progress.inc(n as u64);
    }
}

//! The one error type of the fetch stage. Every message names the URL (or path) it
//! is about and, where the user can do something, says what.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

use super::digest::{Digest, DigestError};

/// Why fetching or extracting an artifact failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Digest(#[from] DigestError),

    #[error("invalid source `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("invalid request for {url}: {reason}")]
    InvalidRequest { url: String, reason: String },

    #[error("invalid mirror `{mirror}`: {reason}")]
    InvalidMirror { mirror: String, reason: String },

    /// The bytes did not hash to the pinned value. The download was deleted.
    #[error(
        "hash mismatch for {url}: expected {expected}, got {actual} ({bytes} bytes); \
         the download was discarded"
    )]
    HashMismatch {
        url: String,
        expected: Box<Digest>,
        actual: Box<Digest>,
        bytes: u64,
    },

    /// The server announced (or sent) a size other than the pinned one.
    #[error("size mismatch for {url}: expected {expected} bytes, the server {detail}")]
    SizeMismatch {
        url: String,
        expected: u64,
        detail: String,
    },

    /// A final HTTP status: 4xx other than 408/429, or a 5xx/408/429 that outlived the retries.
    #[error("{status} {reason} for {url}{}", after(*.attempts))]
    HttpStatus {
        url: String,
        status: u16,
        reason: String,
        attempts: u32,
    },

    /// No connection could be made (DNS, refused, connect timeout), on every attempt.
    #[error("could not reach {url}: {cause}{}{hint}", after(*.attempts))]
    Unreachable {
        url: String,
        cause: String,
        attempts: u32,
        /// Appended verbatim; the `--mirror` advice when no mirror is configured.
        hint: String,
    },

    /// Connections were made but the transfer kept failing (cut, read timeout, ...).
    #[error("download of {url} failed{}: {cause}", after(*.attempts))]
    Interrupted {
        url: String,
        cause: String,
        attempts: u32,
    },

    /// A local source (path, `file://`, mirror directory) does not exist or cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Local { path: PathBuf, source: io::Error },

    /// `--offline` and the blob is not in the cache.
    #[error(
        "offline: {url} ({digest}) is not in the cache at {}; run without --offline or \
         pre-fill the cache{}",
        .cache.display(),
        tried_list(.tried)
    )]
    Offline {
        url: String,
        digest: Box<Digest>,
        cache: PathBuf,
        /// Local sources (mirror directories) that were tried and failed.
        tried: Vec<FetchError>,
    },

    /// Every source (mirrors, then upstream) failed; each failure names its URL.
    #[error(
        "could not fetch {url} ({digest}); tried, in order:{}{hint}",
        failure_list(.failures)
    )]
    AllSourcesFailed {
        url: String,
        digest: Box<Digest>,
        failures: Vec<FetchError>,
        hint: String,
    },

    /// Several downloads of a [`super::Fetcher::fetch_all`] failed.
    #[error("{} downloads failed:{}", .0.len(), several_list(.0))]
    Several(Vec<FetchError>),

    #[error(
        "archive {}: no member `{member}`{}",
        .archive.display(),
        candidates_text(.similar, .sample, *.total)
    )]
    MemberNotFound {
        archive: PathBuf,
        member: String,
        /// Similar member names, best first.
        similar: Vec<String>,
        /// A few member names, shown when none is similar.
        sample: Vec<String>,
        /// Number of regular files in the archive.
        total: usize,
    },

    #[error("archive {}: member `{member}` is {kind}, not a regular file", .archive.display())]
    MemberNotFile {
        archive: PathBuf,
        member: String,
        kind: String,
    },

    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl FetchError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        FetchError::Io {
            context: context.into(),
            source,
        }
    }
}

fn after(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

fn failure_list(failures: &[FetchError]) -> String {
    let mut s = String::new();
    for f in failures {
        let _ = write!(s, "\n  - {f}");
    }
    s
}

/// Like [`failure_list`], but the `--mirror` advice of unreachable URLs is given once.
fn several_list(failures: &[FetchError]) -> String {
    let mut s = String::new();
    let mut advice = false;
    for f in failures {
        match f {
            FetchError::Unreachable {
                url,
                cause,
                attempts,
                hint,
            } => {
                advice |= !hint.is_empty();
                let _ = write!(
                    s,
                    "\n  - could not reach {url}: {cause}{}",
                    after(*attempts)
                );
            }
            f => {
                let _ = write!(s, "\n  - {f}");
            }
        }
    }
    if advice {
        s.push_str(
            "\nto build without network access, serve the pinned files from a mirror and pass \
             --mirror <URL|DIR> (layout: <DIR>/<host>/<path>)",
        );
    }
    s
}

fn tried_list(tried: &[FetchError]) -> String {
    if tried.is_empty() {
        return String::new();
    }
    format!("\nlocal mirrors tried:{}", failure_list(tried))
}

fn candidates_text(similar: &[String], sample: &[String], total: usize) -> String {
    let quote = |v: &[String]| {
        v.iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !similar.is_empty() {
        format!("; similar members: {}", quote(similar))
    } else if total == 0 {
        "; the archive holds no regular files".to_string()
    } else {
        let more = if total > sample.len() { ", ..." } else { "" };
        format!(
            "; no similar name among its {total} files ({}{more})",
            quote(sample)
        )
    }
}

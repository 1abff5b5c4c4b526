//! The content-addressed cache: a blob's path is a function of its digest, so a blob
//! that is present is correct (it was verified before it was renamed into place) and
//! is served without network.
//!
//! ```text
//! <root>/blobs/sha256/<hex>             verified blobs
//! <root>/blobs/sha512/<hex>
//! <root>/partial/<alg>-<hex>.part       a download in progress or interrupted
//! <root>/partial/<alg>-<hex>.part.json  its sidecar: URL and validators for a safe Range resume
//! <root>/locks/<alg>-<hex>.lock         flock(2) so two fetches of one blob do not interleave
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::{Digest, Hasher};
use super::error::FetchError;

/// Environment variable that overrides the cache root.
pub const CACHE_ENV: &str = "NODEIMAGE_CACHE";

/// A content-addressed blob cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache rooted at `root` (created lazily).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    /// The cache chosen by, in order: `explicit` (a `--cache` option), `$NODEIMAGE_CACHE`,
    /// `$XDG_CACHE_HOME/nodeimage`, `$HOME/.cache/nodeimage`.
    pub fn open(explicit: Option<&Path>) -> Result<Self, FetchError> {
        match explicit {
            Some(p) => Ok(Cache::new(p)),
            None => Self::default_root().map(Cache::new),
        }
    }

    /// `$NODEIMAGE_CACHE`, else `$XDG_CACHE_HOME/nodeimage`, else `$HOME/.cache/nodeimage`.
    pub fn default_root() -> Result<PathBuf, FetchError> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = var(CACHE_ENV) {
            return Ok(p);
        }
        // The XDG spec says relative values are to be ignored.
        if let Some(p) = var("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
            return Ok(p.join("nodeimage"));
        }
        if let Some(home) = var("HOME") {
            return Ok(home.join(".cache").join("nodeimage"));
        }
        Err(FetchError::io(
            "choosing the download cache",
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("none of {CACHE_ENV}, XDG_CACHE_HOME, HOME is set; pass --cache DIR"),
            ),
        ))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (whether or not it is present).
    pub fn path_for(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Where a download of this digest is kept while in progress.
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("partial").join(format!(
            "{}-{}.part",
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    pub(crate) fn sidecar_path(&self, digest: &Digest) -> PathBuf {
        let mut p = self.partial_path(digest).into_os_string();
        p.push(".json");
        p.into()
    }

    fn lock_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("locks").join(format!(
            "{}-{}.lock",
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    /// The blob's path if it is present (a regular file, non-empty unless the digest is
    /// that of empty content). Blobs are verified before they enter the cache; use
    /// [`Cache::verify`] to re-hash.
    pub fn get(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.path_for(digest);
        let meta = fs::metadata(&path).ok()?;
        (meta.is_file() && (meta.len() > 0 || digest.is_empty_content())).then_some(path)
    }

    /// Like [`Cache::get`] but re-hashes the blob; a corrupt blob is deleted and `None`
    /// returned so it is fetched again.
    pub fn verify(&self, digest: &Digest) -> Result<Option<PathBuf>, FetchError> {
        let Some(path) = self.get(digest) else {
            return Ok(None);
        };
        let actual = hash_file(&path, digest.algorithm().hasher())
            .map_err(|e| FetchError::io(format!("re-hashing {}", path.display()), e))?;
        if actual == *digest {
            Ok(Some(path))
        } else {
            tracing::warn!(path = %path.display(), expected = %digest, actual = %actual,
                "cached blob is corrupt; removing it");
            remove_if_exists(&path)
                .map_err(|e| FetchError::io(format!("removing {}", path.display()), e))?;
            Ok(None)
        }
    }

    /// Takes the per-digest lock (blocks while another fetch of the same digest runs).
    pub(crate) fn lock(&self, digest: &Digest) -> Result<CacheLock, FetchError> {
        let path = self.lock_path(digest);
        let ctx = |e| FetchError::io(format!("locking {}", path.display()), e);
        fs::create_dir_all(path.parent().expect("has parent")).map_err(ctx)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ctx)?;
        flock_exclusive(&file, &path);
        Ok(CacheLock { _file: file })
    }

    /// Creates the directories a download needs.
    pub(crate) fn prepare(&self, digest: &Digest) -> Result<(), FetchError> {
        for dir in [
            self.partial_path(digest)
                .parent()
                .expect("has parent")
                .to_path_buf(),
            self.path_for(digest)
                .parent()
                .expect("has parent")
                .to_path_buf(),
        ] {
            fs::create_dir_all(&dir)
                .map_err(|e| FetchError::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// Moves a verified partial into place: fsync the data, rename atomically, fsync
    /// the directory, drop the sidecar.
    pub(crate) fn commit(&self, digest: &Digest, partial: File) -> Result<PathBuf, FetchError> {
        let part = self.partial_path(digest);
        let dest = self.path_for(digest);
        partial
            .sync_all()
            .map_err(|e| FetchError::io(format!("syncing {}", part.display()), e))?;
        drop(partial);
        fs::rename(&part, &dest).map_err(|e| {
            FetchError::io(
                format!("moving {} to {}", part.display(), dest.display()),
                e,
            )
        })?;
        if let Some(dir) = dest.parent() {
            // Durability of the rename; not fatal where directories cannot be opened.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        let _ = remove_if_exists(&self.sidecar_path(digest));
        Ok(dest)
    }

    /// Deletes the partial download and its sidecar.
    pub(crate) fn discard_partial(&self, digest: &Digest) -> Result<(), FetchError> {
        for p in [self.partial_path(digest), self.sidecar_path(digest)] {
            remove_if_exists(&p)
                .map_err(|e| FetchError::io(format!("removing {}", p.display()), e))?;
        }
        Ok(())
    }

    pub(crate) fn read_sidecar(&self, digest: &Digest) -> Option<PartialMeta> {
        let text = fs::read(self.sidecar_path(digest)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub(crate) fn write_sidecar(
        &self,
        digest: &Digest,
        meta: &PartialMeta,
    ) -> Result<(), FetchError> {
        let path = self.sidecar_path(digest);
        let json = serde_json::to_vec_pretty(meta).expect("serializable");
        fs::write(&path, json).map_err(|e| FetchError::io(format!("writing {}", path.display()), e))
    }
}

/// What is known about the origin of a partial download: resuming is only attempted
/// from the same URL, with `If-Range` carrying the recorded validator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartialMeta {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

impl PartialMeta {
    /// The `If-Range` value: a strong ETag, else Last-Modified (weak ETags are not
    /// allowed in If-Range).
    pub fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }
}

/// Held while a digest is being fetched; released on drop (closing the file).
pub(crate) struct CacheLock {
    _file: File,
}

fn flock_exclusive(file: &File, path: &Path) {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a file descriptor we own for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return;
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // Some filesystems (old NFS) have no flock: carry on unlocked rather than fail.
        tracing::warn!(path = %path.display(), error = %err, "cannot lock; continuing without");
        return;
    }
}

pub(crate) fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Hashes a whole file.
pub(crate) fn hash_file(path: &Path, mut hasher: Hasher) -> io::Result<Digest> {
    let mut f = File::open(path)?;
    feed(&mut f, &mut hasher, None)?;
    Ok(hasher.finalize())
}

/// Feeds `r` into `hasher`, at most `limit` bytes if given; returns the byte count.
pub(crate) fn feed(r: &mut dyn Read, hasher: &mut Hasher, limit: Option<u64>) -> io::Result<u64> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut left = limit.unwrap_or(u64::MAX);
    let mut total = 0;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        left -= n as u64;
        total += n as u64;
    }
    Ok(total)
}

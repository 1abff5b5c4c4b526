//! The stage cache: a stage's output stored under `<cache>/stages/<stage>/<key>/`, where
//! `key` is the sha256 of everything the stage reads (see [`stage_key`]). An entry is
//! built in a hidden sibling directory and renamed into place once complete, so a build
//! that dies half-way leaves nothing a later build would take for an output; two builds
//! racing for one key both succeed and one copy is kept.
//!
//! `stage.json` in an entry holds the stage's small typed result (package lists,
//! versions, file names); the files next to it are the stage's bytes.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// File in an entry that holds the stage's typed result; its presence marks the entry complete.
const META: &str = "stage.json";

/// Entries kept per stage after a build besides the ones the build used (most recently
/// used first).
pub const KEEP_PER_STAGE: usize = 3;

/// The key of a stage: sha256 over the stage's name and version and its serialized inputs.
/// Bump a stage's version whenever its code starts producing different bytes from the same
/// inputs.
pub fn stage_key(stage: &str, version: u32, inputs: &impl Serialize) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"nodeimage-stage\0");
    h.update(stage.as_bytes());
    h.update([0]);
    h.update(version.to_le_bytes());
    h.update(serde_json::to_vec(inputs).context("serializing stage inputs")?);
    Ok(hex::encode(h.finalize()))
}

/// A stage's output directory and typed result.
#[derive(Debug)]
pub struct Entry<T> {
    pub dir: PathBuf,
    pub meta: T,
    /// Taken from the cache (`false`: made by this build).
    pub hit: bool,
}

/// Where stage outputs live: the cache, or (disabled, `--no-stage-cache`) the build's
/// work directory (`<work>/<stage>/<key>`), rebuilt every time and never read back.
#[derive(Debug, Clone)]
pub struct StageCache {
    root: Option<PathBuf>,
    work: PathBuf,
    /// Entries this build used (never pruned by it).
    used: Arc<Mutex<BTreeSet<PathBuf>>>,
}

impl StageCache {
    /// Stage outputs in `<cache_dir>/stages`.
    pub fn new(cache_dir: &Path, work: &Path) -> StageCache {
        StageCache {
            root: Some(cache_dir.join("stages")),
            work: work.to_path_buf(),
            used: Default::default(),
        }
    }

    /// Every stage runs, into `<work>/<stage>/<key>`; nothing is read from or written to
    /// the cache.
    pub fn disabled(work: &Path) -> StageCache {
        StageCache {
            root: None,
            work: work.to_path_buf(),
            used: Default::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.root.is_some()
    }

    /// The entry of `stage` for `key`: taken from the cache when complete, otherwise made
    /// by `make(dir)` (which writes its files into the empty `dir` and returns the typed
    /// result) and stored.
    pub fn get_or_make<T: Serialize + DeserializeOwned>(
        &self,
        stage: &str,
        key: &str,
        make: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<Entry<T>> {
        let Some(root) = &self.root else {
            let dir = self.work.join(stage).join(key);
            crate::rootfs::remove_tree(&dir)?;
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let meta = make(&dir)?;
            return Ok(Entry {
                dir,
                meta,
                hit: false,
            });
        };
        let stage_dir = root.join(stage);
        let entry = stage_dir.join(key);
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.clone());
        if let Some(meta) = read_meta(&entry)? {
            // The modification time says when the entry was last used (for pruning).
            let _ =
                fs::File::open(&entry).and_then(|d| d.set_modified(std::time::SystemTime::now()));
            return Ok(Entry {
                dir: entry,
                meta,
                hit: true,
            });
        }
        fs::create_dir_all(&stage_dir)
            .with_context(|| format!("creating {}", stage_dir.display()))?;
        let tmp = stage_dir.join(format!(".{key}.tmp.{}", std::process::id()));
        crate::rootfs::remove_tree(&tmp)?;
        fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let made = make(&tmp).and_then(|meta| {
            fs::write(tmp.join(META), serde_json::to_vec_pretty(&meta)?)
                .with_context(|| format!("writing {}", tmp.join(META).display()))?;
            sync_filesystem(&tmp)?;
            Ok(meta)
        });
        let meta = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = crate::rootfs::remove_tree(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&tmp, &entry) {
            // Another build stored the same key meanwhile: keep theirs.
            crate::rootfs::remove_tree(&tmp)?;
            if read_meta::<T>(&entry)?.is_none() {
                return Err(e)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), entry.display()));
            }
        }
        fs::File::open(&stage_dir).and_then(|d| d.sync_all()).ok();
        Ok(Entry {
            dir: entry,
            meta,
            hit: false,
        })
    }

    /// Remove the entries of every stage that this build did not use, except the
    /// [`KEEP_PER_STAGE`] most recently used of them, and unfinished entries of builds
    /// that are no longer running.
    pub fn prune(&self) -> Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        let Ok(stages) = fs::read_dir(root) else {
            return Ok(());
        };
        for stage in stages.flatten() {
            let mut done = Vec::new();
            for e in fs::read_dir(stage.path())?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.rsplit_once(".tmp.").map(|(_, pid)| pid) {
                    if !Path::new("/proc").join(pid).exists() {
                        crate::rootfs::remove_tree(&e.path())?;
                    }
                } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                    done.push((m, e.path()));
                }
            }
            let used = self.used.lock().unwrap_or_else(|e| e.into_inner()).clone();
            done.retain(|(_, p)| !used.contains(p));
            done.sort_by_key(|d| std::cmp::Reverse(d.0));
            for (_, old) in done.into_iter().skip(KEEP_PER_STAGE) {
                tracing::debug!(entry = %old.display(), "pruning stage cache entry");
                crate::rootfs::remove_tree(&old)?;
            }
        }
        Ok(())
    }
}

fn read_meta<T: DeserializeOwned>(entry: &Path) -> Result<Option<T>> {
    match fs::read(entry.join(META)) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", entry.join(META).display())),
    }
}

/// Flush the filesystem holding `dir` (an entry is many files; one `syncfs` before the
/// rename makes the entry durable once it has its final name).
fn sync_filesystem(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let d = fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: `d` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("syncing the filesystem of {}", dir.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_stage_version_and_inputs() {
        let k = |s, v, i: &[u32]| stage_key(s, v, &i).unwrap();
        assert_eq!(k("a", 1, &[1]), k("a", 1, &[1]));
        assert_ne!(k("a", 1, &[1]), k("b", 1, &[1]));
        assert_ne!(k("a", 1, &[1]), k("a", 2, &[1]));
        assert_ne!(k("a", 1, &[1]), k("a", 1, &[2]));
        assert_eq!(k("a", 1, &[1]).len(), 64);
    }

    #[test]
    fn second_lookup_is_a_hit_and_does_not_run_the_stage() {
        let cache = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let c = StageCache::new(cache.path(), work.path());
        let e = c
            .get_or_make("s", "k1", |dir| {
                fs::write(dir.join("out"), b"bytes")?;
                Ok(7u32)
            })
            .unwrap();
        assert!(!e.hit);
        assert_eq!(e.meta, 7);
        let e2: Entry<u32> = c
            .get_or_make("s", "k1", |_| panic!("a hit must not run the stage"))
            .unwrap();
        assert!(e2.hit);
        assert_eq!((e2.meta, &e2.dir), (7, &e.dir));
        assert_eq!(fs::read(e2.dir.join("out")).unwrap(), b"bytes");
        // No unfinished entries are left beside it.
        let names: Vec<_> = fs::read_dir(cache.path().join("stages/s"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["k1"]);
    }

    #[test]
    fn a_failed_stage_leaves_no_entry() {
        let cache = tempfile::tempdir().unwrap();
        let c = StageCache::new(cache.path(), cache.path());
        let r: Result<Entry<u32>> = c.get_or_make("s", "k", |dir| {
            fs::write(dir.join("half"), b"x")?;
            anyhow::bail!("stage failed")
        });
        assert!(r.is_err());
        assert_eq!(
            fs::read_dir(cache.path().join("stages/s")).unwrap().count(),
            0
        );
        let e = c.get_or_make("s", "k", |_| Ok(1u32)).unwrap();
        assert!(!e.hit, "the failed attempt was not stored");
    }

    #[test]
    fn disabled_cache_always_runs_the_stage_in_the_work_dir() {
        let work = tempfile::tempdir().unwrap();
        let c = StageCache::disabled(work.path());
        for _ in 0..2 {
            let e = c
                .get_or_make("s", "k", |dir| {
                    assert_eq!(fs::read_dir(dir).unwrap().count(), 0, "starts empty");
                    fs::write(dir.join("f"), b"1")?;
                    Ok(())
                })
                .unwrap();
            assert!(!e.hit);
            assert_eq!(e.dir, work.path().join("s/k"));
        }
        // Entries of one stage under other keys do not replace each other.
        let other = c.get_or_make("s", "k2", |_| Ok(())).unwrap();
        assert!(work.path().join("s/k/f").exists());
        assert_eq!(other.dir, work.path().join("s/k2"));
    }

    #[test]
    fn prune_keeps_the_most_recently_used() {
        let cache = tempfile::tempdir().unwrap();
        let c = StageCache::new(cache.path(), cache.path());
        for i in 0..KEEP_PER_STAGE + 2 {
            c.get_or_make("s", &format!("k{i}"), |_| Ok(i)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // A later build uses k0 (which makes it recent) and k1.
        let later = StageCache::new(cache.path(), cache.path());
        let _: Entry<usize> = later.get_or_make("s", "k1", |_| unreachable!()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let _: Entry<usize> = later.get_or_make("s", "k0", |_| unreachable!()).unwrap();
        fs::create_dir(cache.path().join("stages/s/.k9.tmp.4000000000")).unwrap();
        later.prune().unwrap();
        let mut names = test_support::files::list(&cache.path().join("stages/s"));
        names.sort();
        // Used by the build: k0, k1; the three most recent others: k2, k3, k4 (none older).
        assert_eq!(names, ["k0", "k1", "k2", "k3", "k4"]);
        // With more entries than that, the oldest unused go.
        for i in 5..8 {
            c.get_or_make("s", &format!("k{i}"), |_| Ok(i)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let third = StageCache::new(cache.path(), cache.path());
        let _: Entry<usize> = third.get_or_make("s", "k0", |_| unreachable!()).unwrap();
        third.prune().unwrap();
        let mut names = test_support::files::list(&cache.path().join("stages/s"));
        names.sort();
        assert_eq!(names, ["k0", "k5", "k6", "k7"]);
    }
}

//! Fetch stage: pinned artifacts (URL + sha256/sha512) into a content-addressed cache.
//!
//! The model is coreos-installer's composable readers: one streaming pipeline per
//! artifact that reads a chunk, hashes it, writes it to a partial file and counts it,
//! so a download is verified as it arrives and never held in memory. At the end the
//! digest is compared with the pin: on a match the partial is fsynced and renamed into
//! `blobs/`, on a mismatch it is deleted and the error names the URL and both hashes.
//!
//! * **Cache first.** A blob present in the cache is returned without any network
//!   access, also with `offline`.
//! * **Sources in order.** Each configured [`Mirror`] (`<mirror>/<host>/<path>`, see
//!   [`mirror`]), then the upstream URL unless `mirror_only`. `file://` URLs, plain
//!   paths and mirror directories are copied through the same hashing pipeline.
//!   Extra request headers (`Authorization`) go to the upstream URL only, never to a
//!   mirror, and are never logged.
//! * **Retries.** Connect errors, timeouts, 408, 429, 5xx and connections cut
//!   mid-body are retried with exponential backoff (capped, with jitter). Other 4xx
//!   are final. An interrupted download resumes with `Range: bytes=N-` (+ `If-Range`
//!   from the sidecar) after re-hashing the bytes already on disk; a server that
//!   answers 200 instead is read from byte 0.
//! * **Offline.** Only the cache and local sources (paths, `file://`, mirror
//!   directories) are used; nothing is sent on the network.

mod archive;
mod cache;
mod digest;
mod error;
mod http;
pub mod mirror;
mod progress;
mod stream;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::MultiProgress;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

pub use archive::extract_member;
pub use cache::{Cache, CACHE_ENV};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::FetchError;
pub use mirror::{Mirror, Source};
pub use progress::ProgressMode;

use http::{Attempt, AttemptError};
use progress::Progress;
use stream::{copy_hashing, CopyError};

/// An attempt that moved at least this many bytes does not use up a retry, so a long
/// download over a flaky link keeps going as long as it makes progress.
const PROGRESS_REFUND_BYTES: u64 = 8 * 1024 * 1024;
/// Bound on immediate restarts from byte 0 (server ignoring or rejecting ranges).
const MAX_RESTARTS: u32 = 3;

/// How a [`Fetcher`] behaves. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Tried in order before the upstream URL.
    pub mirrors: Vec<Mirror>,
    /// Never contact the upstream URL of an http(s) artifact (air-gapped sites).
    pub mirror_only: bool,
    /// Use only the cache and local sources.
    pub offline: bool,
    /// Retries after the first attempt, per source. Default 5.
    pub retries: u32,
    /// First backoff delay; doubles per failure up to `backoff_max`. Default 500 ms.
    pub backoff_base: Duration,
    /// Default 30 s.
    pub backoff_max: Duration,
    /// Default 30 s.
    pub connect_timeout: Duration,
    /// Longest wait for response headers or for any single read of the body. Default 60 s.
    pub read_timeout: Duration,
    pub progress: ProgressMode,
    /// Downloads at once in [`Fetcher::fetch_all`]. Default 4.
    pub parallel: usize,
    /// Re-hash cache hits before returning them (a corrupt blob is fetched again).
    pub verify_cached: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            mirrors: Vec::new(),
            mirror_only: false,
            offline: false,
            retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            progress: ProgressMode::Auto,
            parallel: 4,
            verify_cached: false,
        }
    }
}

/// One artifact to fetch.
#[derive(Clone)]
pub struct FetchRequest {
    /// `http(s)://…`, `file://…` or a local path.
    pub url: String,
    pub digest: Digest,
    /// The pinned size in bytes, if known: checked against the server's and used as a limit.
    pub size: Option<u64>,
    /// Extra request headers (e.g. `Authorization: Bearer …` for OCI registry blobs).
    /// Sent to the upstream URL only; values never appear in logs or `Debug`.
    pub headers: Vec<(String, String)>,
    /// Short name for the progress bar; defaults to the URL's file name.
    pub label: Option<String>,
}

impl FetchRequest {
    pub fn new(url: impl Into<String>, digest: Digest) -> Self {
        FetchRequest {
            url: url.into(),
            digest,
            size: None,
            headers: Vec::new(),
            label: None,
        }
    }

    pub fn with_size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            let trimmed = self.url.trim_end_matches('/');
            trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
        })
    }
}

impl fmt::Debug for FetchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("FetchRequest")
            .field("url", &self.url)
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("headers", &names)
            .field("label", &self.label)
            .finish()
    }
}

/// Downloads pinned artifacts into a [`Cache`].
#[derive(Debug)]
pub struct Fetcher {
    cache: Cache,
    opts: FetchOptions,
    client: reqwest::blocking::Client,
    bars: bool,
}

impl Fetcher {
    pub fn new(cache: Cache, opts: FetchOptions) -> Result<Self, FetchError> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(concat!("nodeimage/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.connect_timeout)
            // reqwest's blocking `timeout` bounds the wait for headers and each body read.
            .timeout(opts.read_timeout)
            .build()
            .map_err(|e| FetchError::io("creating the HTTP client", std::io::Error::other(e)))?;
        let bars = opts.progress.bars();
        Ok(Fetcher {
            cache,
            opts,
            client,
            bars,
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn options(&self) -> &FetchOptions {
        &self.opts
    }

    /// Fetches `url` unless the cache has `digest`; returns the verified cache path.
    pub fn fetch(&self, url: &str, digest: &Digest) -> Result<PathBuf, FetchError> {
        self.fetch_with(&FetchRequest::new(url, *digest))
    }

    /// Like [`Fetcher::fetch`], with headers and an expected size.
    pub fn fetch_with(&self, req: &FetchRequest) -> Result<PathBuf, FetchError> {
        self.fetch_one(req, None)
    }

    /// Fetches all `items`, up to `parallel` at once; paths in the order of `items`.
    /// Every item is attempted; if any failed, the error lists every failure.
    pub fn fetch_all(&self, items: &[FetchRequest]) -> Result<Vec<PathBuf>, FetchError> {
        let workers = self.opts.parallel.max(1).min(items.len());
        let multi = self.bars.then(MultiProgress::new);
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<PathBuf, FetchError>>>> =
            Mutex::new(items.iter().map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = self.fetch_one(item, multi.as_ref());
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                });
            }
        });
        let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut paths = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        for r in results {
            match r.expect("every item was attempted") {
                Ok(p) => paths.push(p),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(paths),
            1 => Err(errors.pop().expect("one")),
            _ => Err(FetchError::Several(errors)),
        }
    }

    fn cached(&self, digest: &Digest) -> Result<Option<PathBuf>, FetchError> {
        if self.opts.verify_cached {
            self.cache.verify(digest)
        } else {
            Ok(self.cache.get(digest))
        }
    }

    fn fetch_one(
        &self,
        req: &FetchRequest,
        multi: Option<&MultiProgress>,
    ) -> Result<PathBuf, FetchError> {
        let digest = &req.digest;
        if let Some(p) = self.cached(digest)? {
            tracing::debug!(url = %req.url, %digest, "cache hit");
            return Ok(p);
        }
        let upstream = Source::parse(&req.url)?;
        let headers = header_map(req)?;
        let no_headers = HeaderMap::new();

        // (source, headers to send)
        let mut sources: Vec<(Source, &HeaderMap)> = Vec::new();
        if let Source::Http(u) = &upstream {
            for m in &self.opts.mirrors {
                if let Some(s) = m.locate(u) {
                    sources.push((s, &no_headers));
                }
            }
        }
        if !self.opts.mirror_only || upstream.is_local() {
            sources.push((upstream.clone(), &headers));
        }
        if self.opts.offline {
            sources.retain(|(s, _)| s.is_local());
        }
        if sources.is_empty() {
            return Err(if self.opts.offline {
                self.offline_error(req, Vec::new())
            } else {
                FetchError::InvalidRequest {
                    url: upstream.display(),
                    reason: "--mirror-only is set but no mirror can serve this URL; \
                             pass --mirror <URL|DIR>"
                        .into(),
                }
            });
        }

        self.cache.prepare(digest)?;
        let _lock = self.cache.lock(digest)?;
        // Another thread or process may have fetched it while we waited for the lock.
        if let Some(p) = self.cached(digest)? {
            return Ok(p);
        }

        let mut progress = Progress::new(self.bars, multi, &req.label());
        let mut failures = Vec::new();
        for (source, headers) in &sources {
            let result = match source {
                Source::Local(path) => self.copy_local(path, req, &mut progress),
                Source::Http(url) => self.download(url, headers, req, &mut progress),
            };
            match result {
                Ok(path) => {
                    progress.finish();
                    return Ok(path);
                }
                Err(e) => {
                    if sources.len() > 1 {
                        tracing::warn!(url = %source.display(), error = %e, "source failed");
                    }
                    failures.push(e);
                }
            }
        }
        progress.fail();
        Err(self.combine(req, &upstream, failures))
    }

    fn offline_error(&self, req: &FetchRequest, tried: Vec<FetchError>) -> FetchError {
        FetchError::Offline {
            url: Source::parse(&req.url)
                .map(|s| s.display())
                .unwrap_or_else(|_| req.url.clone()),
            digest: Box::new(req.digest),
            cache: self.cache.path_for(&req.digest),
            tried,
        }
    }

    /// One error from the failures of every source tried.
    fn combine(
        &self,
        req: &FetchRequest,
        upstream: &Source,
        mut failures: Vec<FetchError>,
    ) -> FetchError {
        if self.opts.offline {
            return self.offline_error(req, failures);
        }
        if failures.len() == 1 && self.opts.mirrors.is_empty() {
            return failures.pop().expect("one");
        }
        let mut hint = String::new();
        if let Source::Http(u) = upstream {
            if let Some(layout) = mirror::mirror_layout_path(u) {
                hint = format!("\na mirror must hold this file at <mirror>/{layout}");
                if self.opts.mirror_only {
                    hint.push_str(&format!(
                        "; --mirror-only is set, so {} was not tried",
                        upstream.display()
                    ));
                }
            }
        }
        FetchError::AllSourcesFailed {
            url: upstream.display(),
            digest: Box::new(req.digest),
            failures,
            hint,
        }
    }

    /// Copies a local file through the hashing pipeline into the cache.
    fn copy_local(
        &self,
        path: &Path,
        req: &FetchRequest,
        progress: &mut Progress,
    ) -> Result<PathBuf, FetchError> {
        let local_err = |e| FetchError::Local {
            path: path.to_path_buf(),
            source: e,
        };
        let mut src = File::open(path).map_err(local_err)?;
        let meta = src.metadata().map_err(local_err)?;
        if !meta.is_file() {
            return Err(local_err(std::io::Error::other("not a regular file")));
        }
        let shown = path.display().to_string();
        if let Some(expected) = req.size {
            if meta.len() != expected {
                return Err(FetchError::SizeMismatch {
                    url: shown,
                    expected,
                    detail: format!("has {} bytes", meta.len()),
                });
            }
        }
        let digest = &req.digest;
        self.cache.discard_partial(digest)?;
        let part = self.cache.partial_path(digest);
        let mut out = File::create(&part)
            .map_err(|e| FetchError::io(format!("creating {}", part.display()), e))?;
        let mut hasher = digest.algorithm().hasher();
        progress.start(&shown, 0, Some(meta.len()));
        let (copied, result) = copy_hashing(&mut src, &mut out, &mut hasher, 0, None, progress);
        let fail = |e: FetchError| {
            let _ = self.cache.discard_partial(digest);
            Err(e)
        };
        match result {
            Ok(()) => {}
            Err(CopyError::Read(e)) => return fail(local_err(e)),
            Err(CopyError::Write(e)) => {
                return fail(FetchError::io(format!("writing {}", part.display()), e))
            }
            Err(CopyError::TooLong { .. }) => unreachable!("no limit"),
        }
        let actual = hasher.finalize();
        if actual != *digest {
            drop(out);
            return fail(FetchError::HashMismatch {
                url: shown,
                expected: Box::new(*digest),
                actual: Box::new(actual),
                bytes: copied,
            });
        }
        self.cache.commit(digest, out)
    }

    /// Downloads one URL with retries, backoff and resume.
    fn download(
        &self,
        url: &Url,
        headers: &HeaderMap,
        req: &FetchRequest,
        progress: &mut Progress,
    ) -> Result<PathBuf, FetchError> {
        let shown = mirror::redact(url);
        let digest = &req.digest;
        let unreachable_hint = if self.opts.mirrors.is_empty() {
            let layout = mirror::mirror_layout_path(url).unwrap_or_default();
            format!(
                "; to build without network access, serve the pinned files from a mirror and \
                 pass --mirror <URL|DIR> (layout: <DIR>/<host>/<path>, for this file \
                 <DIR>/{layout})"
            )
        } else {
            String::new()
        };
        let mut attempts = 0u32;
        let mut failures = 0u32;
        let mut restarts = 0u32;
        let mut allow_resume = true;
        let mut restarted_after_mismatch = false;
        loop {
            attempts += 1;
            let attempt = Attempt {
                client: &self.client,
                url,
                shown: &shown,
                headers,
                cache: &self.cache,
                digest,
                size: req.size,
                allow_resume,
            };
            match attempt.run(progress) {
                Ok(done) if done.actual == *digest => {
                    return self.cache.commit(digest, done.file);
                }
                Ok(done) => {
                    drop(done.file);
                    self.cache.discard_partial(digest)?;
                    if done.resumed_from > 0 && !restarted_after_mismatch {
                        // The resumed bytes may not belong to the bytes before them.
                        restarted_after_mismatch = true;
                        tracing::warn!(url = %shown, offset = done.resumed_from,
                            "hash mismatch after resuming; downloading again from the start");
                        continue;
                    }
                    return Err(FetchError::HashMismatch {
                        url: shown,
                        expected: Box::new(*digest),
                        actual: Box::new(done.actual),
                        bytes: done.bytes,
                    });
                }
                Err(AttemptError::Fatal(mut e)) => {
                    if let FetchError::HttpStatus { attempts: a, .. } = &mut e {
                        *a = attempts;
                    }
                    return Err(e);
                }
                Err(AttemptError::Restart(why)) => {
                    self.cache.discard_partial(digest)?;
                    allow_resume = false;
                    restarts += 1;
                    if restarts > MAX_RESTARTS {
                        return Err(FetchError::Interrupted {
                            url: shown,
                            cause: why,
                            attempts,
                        });
                    }
                    tracing::warn!(url = %shown, reason = %why, "cannot resume; restarting from 0");
                }
                Err(AttemptError::Transient(t)) => {
                    if t.progressed < PROGRESS_REFUND_BYTES {
                        failures += 1;
                    }
                    if failures > self.opts.retries {
                        return Err(t.into_error(&shown, attempts, &unreachable_hint));
                    }
                    let delay = backoff(
                        self.opts.backoff_base,
                        self.opts.backoff_max,
                        failures,
                        t.retry_after,
                    );
                    tracing::warn!(url = %shown, attempt = attempts, error = %t.cause,
                        retry_in = ?delay, "transient error; retrying");
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

/// Exponential backoff with "equal jitter": half of `base·2^(n-1)` (capped) is fixed,
/// the other half random, so parallel clients spread out. `Retry-After` raises the
/// delay, still capped.
fn backoff(
    base: Duration,
    max: Duration,
    failures: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    let jitter = Duration::from_nanos(
        rand::thread_rng().gen_range(0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX)),
    );
    (half + jitter).max(retry_after.unwrap_or_default().min(max))
}

fn header_map(req: &FetchRequest) -> Result<HeaderMap, FetchError> {
    let mut map = HeaderMap::new();
    for (name, value) in &req.headers {
        let invalid = |what: &str| FetchError::InvalidRequest {
            url: req.url.clone(),
            // Never the value: it may be a token.
            reason: format!("invalid {what} for header `{name}`"),
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("name"))?;
        let mut v = HeaderValue::from_str(value).map_err(|_| invalid("value"))?;
        v.set_sensitive(true);
        map.append(n, v);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let d1 = backoff(base, max, 1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= base, "{d1:?}");
            let d3 = backoff(base, max, 3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d30 = backoff(base, max, 30, None);
            assert!(d30 >= max / 2 && d30 <= max);
            let ra = backoff(base, max, 1, Some(Duration::from_secs(5)));
            assert_eq!(ra, max);
        }
    }

    #[test]
    fn types_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<FetchError>();
        assert_send_sync::<Fetcher>();
        assert_send_sync::<FetchRequest>();
    }

    #[test]
    fn debug_hides_header_values() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        let r = FetchRequest::new("https://r.example/v2/x/blobs/sha256:00", d)
            .with_header("Authorization", "Bearer s3cr3t");
        let s = format!("{r:?}");
        assert!(s.contains("Authorization") && !s.contains("s3cr3t"), "{s}");
        assert_eq!(r.label(), "sha256:00");
    }
}

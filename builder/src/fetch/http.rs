//! One HTTP attempt: request (with `Range`/`If-Range` when a resumable partial
//! exists), validate the answer, stream the body into the partial file while hashing.
//! The caller ([`super::Fetcher`]) decides what to do with the outcome: retry, restart,
//! move to the next source, or commit.

use std::fs::{self, File, OpenOptions};
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use url::Url;

use super::cache::{feed, Cache, PartialMeta};
use super::digest::Digest;
use super::error::FetchError;
use super::progress::Progress;
use super::stream::{copy_hashing, CopyError};

pub(crate) struct Attempt<'a> {
    pub client: &'a Client,
    pub url: &'a Url,
    /// The URL as shown in messages (password redacted).
    pub shown: &'a str,
    pub headers: &'a HeaderMap,
    pub cache: &'a Cache,
    pub digest: &'a Digest,
    /// The pinned size, if known.
    pub size: Option<u64>,
    pub allow_resume: bool,
}

/// A complete transfer whose hash is yet to be compared.
pub(crate) struct Transferred {
    pub file: File,
    pub actual: Digest,
    pub bytes: u64,
    pub resumed_from: u64,
}

pub(crate) enum AttemptError {
    /// Worth retrying after a backoff.
    Transient(Transient),
    /// The partial cannot be resumed: discard it and retry from byte 0 right away.
    Restart(String),
    /// Retrying this URL cannot help.
    Fatal(FetchError),
}

pub(crate) struct Transient {
    pub kind: TransientKind,
    pub cause: String,
    /// `Retry-After` of a 429/503, in seconds form only.
    pub retry_after: Option<Duration>,
    /// Bytes received by this attempt before it failed.
    pub progressed: u64,
}

pub(crate) enum TransientKind {
    /// No connection (DNS, refused, connect timeout).
    Connect,
    /// 408, 429 or 5xx.
    Status { status: u16, reason: String },
    /// Connected, but the exchange broke (reset, cut body, read timeout).
    Transfer,
}

impl Transient {
    /// The final error once retries are exhausted.
    pub fn into_error(self, url: &str, attempts: u32, unreachable_hint: &str) -> FetchError {
        match self.kind {
            TransientKind::Connect => FetchError::Unreachable {
                url: url.to_string(),
                cause: self.cause,
                attempts,
                hint: unreachable_hint.to_string(),
            },
            TransientKind::Status { status, reason } => FetchError::HttpStatus {
                url: url.to_string(),
                status,
                reason,
                attempts,
            },
            TransientKind::Transfer => FetchError::Interrupted {
                url: url.to_string(),
                cause: self.cause,
                attempts,
            },
        }
    }
}

impl Attempt<'_> {
    pub fn run(&self, progress: &mut Progress) -> Result<Transferred, AttemptError> {
        let part = self.cache.partial_path(self.digest);
        let meta = self.cache.read_sidecar(self.digest);
        let existing = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        // Resume only a partial that came from this very URL and is not already complete.
        let resume_from = match &meta {
            Some(m)
                if self.allow_resume
                    && existing > 0
                    && m.url == self.url.as_str()
                    && m.total.is_none_or(|t| existing < t) =>
            {
                existing
            }
            _ => 0,
        };

        let mut rb = self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone());
        if resume_from > 0 {
            rb = rb.header(header::RANGE, format!("bytes={resume_from}-"));
            if let Some(v) = meta.as_ref().and_then(|m| m.if_range()) {
                rb = rb.header(header::IF_RANGE, v);
            }
        }
        let mut resp = rb.send().map_err(classify_send_error)?;
        let status = resp.status();

        let (offset, total) = if status == StatusCode::PARTIAL_CONTENT && resume_from > 0 {
            let cr = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let parsed = cr.as_deref().and_then(parse_content_range);
            let known_total = meta.as_ref().and_then(|m| m.total);
            match parsed {
                Some((start, _end, t)) if start == resume_from => {
                    if let (Some(t), Some(k)) = (t, known_total) {
                        if t != k {
                            return Err(AttemptError::Restart(format!(
                                "the resource changed size ({k} → {t} bytes)"
                            )));
                        }
                    }
                    (resume_from, t.or(known_total))
                }
                _ => {
                    return Err(AttemptError::Restart(format!(
                        "the server answered `Range: bytes={resume_from}-` with Content-Range {}",
                        cr.as_deref().unwrap_or("(none)")
                    )))
                }
            }
        } else if status.is_success() && status != StatusCode::PARTIAL_CONTENT {
            if resume_from > 0 {
                tracing::info!(url = %self.shown, offset = resume_from,
                    "the server does not resume (answered 200 to a range request); restarting from 0");
            }
            let text = |h| {
                resp.headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let new_meta = PartialMeta {
                url: self.url.as_str().to_string(),
                etag: text(header::ETAG),
                last_modified: text(header::LAST_MODIFIED),
                total: resp.content_length(),
            };
            self.cache
                .write_sidecar(self.digest, &new_meta)
                .map_err(AttemptError::Fatal)?;
            (0, new_meta.total)
        } else if status == StatusCode::RANGE_NOT_SATISFIABLE && resume_from > 0 {
            return Err(AttemptError::Restart(
                "the server rejected the range request (416)".into(),
            ));
        } else if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(AttemptError::Transient(Transient {
                kind: TransientKind::Status {
                    status: status.as_u16(),
                    reason: reason(status),
                },
                cause: format!("{} {}", status.as_u16(), reason(status)),
                retry_after,
                progressed: 0,
            }));
        } else {
            // 4xx, a 206 we did not ask for, an unfollowed 3xx: asking again will not help.
            return Err(AttemptError::Fatal(FetchError::HttpStatus {
                url: self.shown.to_string(),
                status: status.as_u16(),
                reason: reason(status),
                attempts: 1,
            }));
        };

        if let (Some(expected), Some(t)) = (self.size, total) {
            if t != expected {
                return Err(AttemptError::Fatal(FetchError::SizeMismatch {
                    url: self.shown.to_string(),
                    expected,
                    detail: format!("announced {t} bytes"),
                }));
            }
        }
        let limit = total.or(self.size);

        let io_fatal = |what: &str, e| {
            AttemptError::Fatal(FetchError::io(format!("{what} {}", part.display()), e))
        };
        let mut hasher = self.digest.algorithm().hasher();
        let mut file = if offset > 0 {
            let f = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&part)
                .map_err(|e| io_fatal("opening", e))?;
            // The hash state is not saved: re-hash the bytes already on disk.
            let n = feed(&mut &f, &mut hasher, Some(offset)).map_err(|e| io_fatal("reading", e))?;
            if n != offset {
                return Err(AttemptError::Restart(format!(
                    "the partial file shrank to {n} bytes"
                )));
            }
            f
        } else {
            File::create(&part).map_err(|e| io_fatal("creating", e))?
        };

        progress.start(self.shown, offset, total);
        let (copied, result) =
            copy_hashing(&mut resp, &mut file, &mut hasher, offset, limit, progress);
        let received = offset + copied;
        let of_total = |t: Option<u64>| t.map(|t| format!(" of {t}")).unwrap_or_default();
        match result {
            Ok(()) => {}
            Err(CopyError::Read(e)) => {
                return Err(AttemptError::Transient(Transient {
                    kind: TransientKind::Transfer,
                    cause: format!(
                        "connection broken after {received}{} bytes: {}",
                        of_total(total),
                        error_cause(&e)
                    ),
                    retry_after: None,
                    progressed: copied,
                }))
            }
            Err(CopyError::Write(e)) => return Err(io_fatal("writing", e)),
            Err(CopyError::TooLong { limit }) => {
                drop(file);
                let _ = self.cache.discard_partial(self.digest);
                return Err(AttemptError::Fatal(FetchError::SizeMismatch {
                    url: self.shown.to_string(),
                    expected: self.size.unwrap_or(limit),
                    detail: format!("sent more than {limit} bytes"),
                }));
            }
        }
        // A close-delimited body that stops early looks like a clean end: check the length.
        if let Some(expected) = limit {
            if received < expected {
                return Err(AttemptError::Transient(Transient {
                    kind: TransientKind::Transfer,
                    cause: format!("connection closed after {received} of {expected} bytes"),
                    retry_after: None,
                    progressed: copied,
                }));
            }
        }
        Ok(Transferred {
            file,
            actual: hasher.finalize(),
            bytes: received,
            resumed_from: offset,
        })
    }
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("").to_string()
}

fn classify_send_error(e: reqwest::Error) -> AttemptError {
    if e.is_builder() || e.is_redirect() {
        return AttemptError::Fatal(FetchError::InvalidRequest {
            url: e
                .url()
                .map(super::mirror::redact)
                .unwrap_or_else(|| "?".into()),
            reason: error_cause(&e),
        });
    }
    let kind = if e.is_connect() {
        TransientKind::Connect
    } else {
        TransientKind::Transfer
    };
    AttemptError::Transient(Transient {
        kind,
        cause: error_cause(&e),
        retry_after: None,
        progressed: 0,
    })
}

/// A short human cause from an error chain: the innermost message, which is where the
/// useful part is ("Connection refused (os error 111)"), with a prefix for DNS
/// failures and timeouts. reqwest's outer layers only repeat the URL.
pub(crate) fn error_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        chain.push(c.to_string());
        cur = c.source();
    }
    let mut root = chain.last().cloned().unwrap_or_default();
    // "Connection refused (os error 111)" → "connection refused"
    if let Some(i) = root.find(" (os error ") {
        root.truncate(i);
    }
    let mut chars = root.chars();
    if let (Some(first), Some(second)) = (chars.next(), chars.next()) {
        if first.is_ascii_uppercase() && second.is_ascii_lowercase() {
            root = first.to_ascii_lowercase().to_string() + &root[1..];
        }
    }
    let any = |needle: &str| {
        chain
            .iter()
            .any(|m| m.to_ascii_lowercase().contains(needle))
    };
    if any("dns error") {
        format!("DNS lookup failed: {root}")
    } else if any("timed out") || any("timeout") {
        if root.to_ascii_lowercase().contains("time") {
            root
        } else {
            format!("timed out: {root}")
        }
    } else {
        root
    }
}

/// `bytes START-END/TOTAL` or `bytes START-END/*`.
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.trim().split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end && total.is_none_or(|t| end < t)).then_some((start, end, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, 99, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, 99, None)));
        assert_eq!(parse_content_range("bytes 10-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}

//! The network layer every firstboot component talks through.
//!
//! * [`Http`]: the retrying HTTP client of the data sources and Ignition: per-request
//!   timeouts, retries with exponential backoff on 5xx/429/timeouts/transient network
//!   errors, and one total deadline ([`Timeouts`]). Built lazily: the client and the
//!   deadline start when the first request is sent, so a source that is never tried
//!   costs nothing and its clock does not run while others are tried.
//! * [`tls_client`]: the mutual-TLS client for the cluster's own services (etcd's JSON
//!   gateway, the API server's `/readyz`), trusting one CA and nothing else.
//! * [`NetError`]: what went wrong, keeping reqwest's error as `source`.
//!
//! Proxies from the environment are never used: metadata services are link-local and the
//! cluster's endpoints are reached directly.
//!
//! Every answer [`Http`] reads is bounded: at most [`DEFAULT_MAX_BODY`] bytes unless the
//! caller sets a smaller limit ([`Http::set_max_body`], Ignition's staging budget); a
//! larger answer is an error naming the limit, read no further and never retried.
//! Redirects are followed by firstboot itself (at most 10): never from https to http
//! nor to another scheme, and the caller's headers (a metadata token, an Ignition
//! `httpHeaders` secret) go only to the origin they were meant for.

mod http;
mod tls;

pub use http::{redirect_allowed, Http, Reply, DEFAULT_MAX_BODY};
pub use tls::{tls_client, TlsError};

/// A fetched document whose digest is not the one it was pinned to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {what}: expected {algorithm} {expected}, found {actual}")]
pub struct HashMismatch {
    pub source_name: String,
    /// What was fetched (a config field, a URL).
    pub what: String,
    pub algorithm: &'static str,
    pub expected: String,
    pub actual: String,
}

use std::time::Duration;

/// Timeouts of one retrying HTTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One HTTP request (connect + answer).
    pub request: Duration,
    /// All requests of one client together, retries included.
    pub deadline: Duration,
    /// First pause between retries; doubled each time up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Why an HTTP request through [`Http`] failed. `who` names the client (a data source,
/// `<source>: Ignition`).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Nothing listens there, and the client treats that as final.
    #[error("{who}: {url}: connection refused")]
    Refused { who: String, url: String },
    /// The deadline passed without an answer that is not retried.
    #[error("{who}: {url}: no answer within {after_ms} ms ({attempts} attempts; last: {last})")]
    Timeout {
        who: String,
        url: String,
        after_ms: u128,
        attempts: u32,
        last: String,
    },
    /// An answer with a status the caller does not accept (or 5xx/429 at the deadline).
    #[error("{who}: {url}: HTTP {status}: {detail}")]
    Status {
        who: String,
        url: String,
        status: u16,
        detail: String,
    },
    /// The answer is larger than the client reads (an endless or huge body).
    #[error("{who}: {url}: the answer is larger than {limit} bytes ({seen}); not read further")]
    TooLarge {
        who: String,
        url: String,
        limit: u64,
        /// What showed it: `Content-Length: N` or how much had arrived.
        seen: String,
    },
    /// A redirect firstboot does not follow (https to http, another scheme, a loop).
    #[error("{who}: {url}: redirect to {location} refused: {reason}")]
    Redirect {
        who: String,
        url: String,
        location: String,
        reason: String,
    },
    /// The URL does not parse.
    #[error("{who}: {url}: not a URL: {reason}")]
    BadUrl {
        who: String,
        url: String,
        reason: String,
    },
    #[error("{who}: building the HTTP client")]
    Client {
        who: String,
        #[source]
        error: reqwest::Error,
    },
}

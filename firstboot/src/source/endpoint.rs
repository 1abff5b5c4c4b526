//! HTTP for the network sources: per-request timeouts, retries with exponential backoff on
//! 5xx/429/timeouts/transient network errors, and one total deadline per source.
//!
//! "Connection refused" means nothing listens there: for a metadata service that is the
//! quick answer "not here" ([`SourceError::Absent`]) when `refused_is_absent` is set,
//! never a long wait. Proxies from the environment are ignored: metadata services are
//! link-local and must not be reached through a proxy.

use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::Method;

use super::{SourceError, Timeouts};

/// An answer that is not retried (any status but 5xx and 429).
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A metadata service: its base URL, the headers every request to it carries, and the
/// HTTP client. Building the client can fail; that failure is reported when the source
/// is first asked, so a source that is never tried costs nothing.
pub(crate) struct Endpoint {
    source_name: &'static str,
    base: String,
    headers: &'static [(&'static str, &'static str)],
    http: Result<Http, String>,
}

impl Endpoint {
    pub fn new(
        source_name: &'static str,
        base: String,
        headers: &'static [(&'static str, &'static str)],
        timeouts: Timeouts,
    ) -> Self {
        Endpoint {
            source_name,
            base,
            headers,
            http: Http::new(source_name, timeouts, true).map_err(|e| e.to_string()),
        }
    }

    pub fn http(&self) -> Result<&Http, SourceError> {
        self.http
            .as_ref()
            .map_err(|e| SourceError::format(self.source_name, e.clone()))
    }

    /// `<base>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// GET `<base>/<path>` with the endpoint's headers; `Ok(None)` for 404.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        self.http()?.get_optional(&self.url(path), self.headers)
    }
}

pub(crate) struct Http {
    client: Client,
    source_name: String,
    start: Instant,
    timeouts: Timeouts,
    refused_is_absent: bool,
}

fn is_refused(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

impl Http {
    pub fn new(
        source_name: &str,
        timeouts: Timeouts,
        refused_is_absent: bool,
    ) -> Result<Self, SourceError> {
        let client = Client::builder()
            .no_proxy()
            .connect_timeout(timeouts.request)
            .user_agent(concat!("firstboot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Network {
                source_name: source_name.into(),
                url: String::new(),
                message: format!("building the HTTP client: {e}"),
            })?;
        Ok(Http {
            client,
            source_name: source_name.into(),
            start: Instant::now(),
            timeouts,
            refused_is_absent,
        })
    }

    /// Change the per-request timeout (Ignition's `ignition.timeouts.httpTotal`); the
    /// deadline keeps running from the client's creation.
    pub fn set_request_timeout(&mut self, t: Duration) {
        self.timeouts.request = t;
    }

    fn remaining(&self) -> Duration {
        self.timeouts.deadline.saturating_sub(self.start.elapsed())
    }

    /// Send a request, retrying until an answer that is not 5xx/429 arrives or the
    /// deadline passes.
    pub fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, SourceError> {
        let mut backoff = self.timeouts.backoff_initial;
        let mut attempts = 0u32;
        let mut last;
        let mut last_status: Option<u16> = None;
        loop {
            let remaining = self.remaining();
            if remaining.is_zero() {
                return Err(self.deadline_error(
                    url,
                    attempts,
                    last_status,
                    "deadline passed before the first attempt",
                ));
            }
            attempts += 1;
            let mut req = self
                .client
                .request(method.clone(), url)
                .timeout(self.timeouts.request.min(remaining));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            match req.send() {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status >= 500 || status == 429 {
                        last = format!("HTTP {status}");
                        last_status = Some(status);
                        tracing::debug!(source = %self.source_name, url, status, attempt = attempts, "retrying");
                    } else {
                        match resp.bytes() {
                            Ok(b) => {
                                return Ok(Reply {
                                    status,
                                    body: b.to_vec(),
                                })
                            }
                            Err(e) => {
                                last = format!("reading the body: {}", describe(&e));
                                last_status = None;
                            }
                        }
                    }
                }
                Err(e) if is_refused(&e) && self.refused_is_absent => {
                    return Err(SourceError::absent(
                        &self.source_name,
                        format!("{url}: connection refused"),
                    ));
                }
                Err(e) => {
                    last = describe(&e);
                    last_status = None;
                    tracing::debug!(source = %self.source_name, url, error = %last, attempt = attempts, "retrying");
                }
            }
            let remaining = self.remaining();
            if remaining.is_zero() {
                return Err(self.deadline_error(url, attempts, last_status, &last));
            }
            std::thread::sleep(backoff.min(remaining));
            backoff = (backoff * 2).min(self.timeouts.backoff_max);
        }
    }

    fn deadline_error(
        &self,
        url: &str,
        attempts: u32,
        status: Option<u16>,
        last: &str,
    ) -> SourceError {
        match status {
            Some(status) => SourceError::Http {
                source_name: self.source_name.clone(),
                url: url.into(),
                status,
                detail: format!(
                    "still failing after {attempts} attempts in {} ms",
                    self.start.elapsed().as_millis()
                ),
            },
            None => SourceError::Timeout {
                source_name: self.source_name.clone(),
                url: url.into(),
                after_ms: self.start.elapsed().as_millis(),
                attempts,
                last: last.into(),
            },
        }
    }

    /// GET expecting 200; 404 is `Ok(None)`; any other status is an error.
    pub fn get_optional(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let r = self.request(Method::GET, url, headers)?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            status => Err(self.status_error(url, status, &r.body)),
        }
    }

    /// GET expecting 200; anything else (404 included) is an error.
    pub fn get_required(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>, SourceError> {
        let r = self.request(Method::GET, url, headers)?;
        match r.status {
            200 => Ok(r.body),
            status => Err(self.status_error(url, status, &r.body)),
        }
    }

    pub fn status_error(&self, url: &str, status: u16, body: &[u8]) -> SourceError {
        let text = String::from_utf8_lossy(body);
        let detail: String = text.trim().chars().take(200).collect();
        SourceError::Http {
            source_name: self.source_name.clone(),
            url: url.into(),
            status,
            detail: if detail.is_empty() {
                "unexpected status".into()
            } else {
                detail
            },
        }
    }
}

/// Text of a metadata value: trimmed, `None` when empty.
pub(crate) fn text(
    source_name: &str,
    what: &str,
    body: Vec<u8>,
) -> Result<Option<String>, SourceError> {
    let s = String::from_utf8(body)
        .map_err(|_| SourceError::format(source_name, format!("{what}: not UTF-8")))?;
    let s = s.trim();
    Ok((!s.is_empty()).then(|| s.to_string()))
}

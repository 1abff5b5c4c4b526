//! The retrying HTTP client.
//!
//! "Connection refused" means nothing listens there: for a metadata service that is the
//! quick answer "not here" ([`NetError::Refused`]) when `refused_is_final` is set, never
//! a long wait; otherwise (an operator-named URL) it is retried like any network error.
//!
//! Bodies are read in chunks up to the client's limit (Content-Length is checked first);
//! redirects are followed here, not by reqwest (see [`redirect_allowed`]).

use std::cell::{Cell, OnceCell};
use std::io::Read;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::Method;

use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll};

use super::{NetError, Timeouts};
use nodeimage_core::errors::chain as error_chain;

/// The most any firstboot client reads from one answer unless told otherwise (Ignition
/// contents have their own budget): 16 MiB, a thousand times the user data EC2 allows
/// and sixty times GCP's. Decompressed user data may grow to 64 MiB.
pub const DEFAULT_MAX_BODY: u64 = 16 << 20;

/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// An answer that is not retried (any status but 5xx and 429).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A retrying HTTP client with one deadline for all its requests. Nothing is built and
/// no clock runs until the first request.
pub struct Http {
    who: String,
    timeouts: Timeouts,
    refused_is_final: bool,
    max_body: Cell<u64>,
    client: OnceCell<Client>,
    deadline: OnceCell<Deadline>,
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

/// The outcome of one try of a request, kept for the error at the deadline.
enum Failure {
    Status(u16),
    Other(String),
}

/// How one try ended when it did not give a [`Reply`].
enum TryError {
    /// Worth another try (5xx, 429, a network error, a timeout).
    Retry(Failure),
    /// Not: the answer is wrong and will stay wrong.
    Final(NetError),
}

/// Whether firstboot follows a redirect from `from` to `to` (absolute URLs): only to
/// http or https, and never from https down to http (the request, its headers and
/// then the answer would travel in clear). `Err` says why not.
pub fn redirect_allowed(from: &url::Url, to: &url::Url) -> Result<(), String> {
    match (from.scheme(), to.scheme()) {
        (_, s) if s != "http" && s != "https" => Err(format!(
            "scheme `{s}:`; firstboot follows redirects to http and https only"
        )),
        ("https", "http") => Err(
            "a redirect from https to http would send the request and its answer in clear".into(),
        ),
        _ => Ok(()),
    }
}

/// Same scheme, host and port: the caller's headers may go there.
fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

impl Http {
    /// `who` names the client in errors (a data source's name). With `refused_is_final`
    /// a refused connection fails at once with [`NetError::Refused`].
    pub fn new(who: impl Into<String>, timeouts: Timeouts, refused_is_final: bool) -> Self {
        Http {
            who: who.into(),
            timeouts,
            refused_is_final,
            max_body: Cell::new(DEFAULT_MAX_BODY),
            client: OnceCell::new(),
            deadline: OnceCell::new(),
        }
    }

    /// Change the per-request timeout (Ignition's `ignition.timeouts.httpTotal`); the
    /// deadline keeps running from the first request.
    pub fn set_request_timeout(&mut self, t: Duration) {
        self.timeouts.request = t;
    }

    /// The largest body the next requests read (default [`DEFAULT_MAX_BODY`]).
    pub fn set_max_body(&self, limit: u64) {
        self.max_body.set(limit);
    }

    fn client(&self) -> Result<&Client, NetError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = Client::builder()
            .no_proxy()
            .connect_timeout(self.timeouts.request)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("firstboot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| NetError::Client {
                who: self.who.clone(),
                error,
            })?;
        Ok(self.client.get_or_init(|| c))
    }

    fn deadline(&self) -> &Deadline {
        self.deadline
            .get_or_init(|| Deadline::after(self.timeouts.deadline))
    }

    /// Send a request, retrying until an answer that is not 5xx/429 arrives or the
    /// deadline passes.
    pub fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, NetError> {
        let client = self.client()?;
        let start = url::Url::parse(url).map_err(|e| NetError::BadUrl {
            who: self.who.clone(),
            url: url.into(),
            reason: e.to_string(),
        })?;
        let deadline = *self.deadline();
        let mut backoff = Backoff::new(self.timeouts.backoff_initial, self.timeouts.backoff_max);
        let mut sent = 0u32;
        let mut last: Option<Failure> = None;
        // The last HTTP status a failed attempt got: a server that answers 500 until
        // the deadline is reported as such even when the deadline cut the final attempt.
        let mut last_status: Option<u16> = None;
        // Whether `last` came from an attempt that had a request's full time.
        let mut last_full = false;
        let outcome = wait_until(&deadline, &mut backoff, |_| {
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Poll::Ready(Err(self.deadline_error(url, sent, &last, last_status)));
            }
            sent += 1;
            // An attempt the deadline cuts short (less time than a request gets) mostly
            // fails for that reason: the failure before it says more.
            let cut_short = remaining < self.timeouts.request;
            match self.attempt(client, &method, url, &start, headers, remaining) {
                Ok(reply) => Poll::Ready(Ok(reply)),
                Err(TryError::Final(e)) => Poll::Ready(Err(e)),
                Err(TryError::Retry(f)) => {
                    let m = match &f {
                        Failure::Status(s) => {
                            last_status = Some(*s);
                            format!("HTTP {s}")
                        }
                        Failure::Other(m) => m.clone(),
                    };
                    tracing::debug!(source = %self.who, url, error = %m, attempt = sent, "retrying");
                    let says_less = cut_short && matches!(f, Failure::Other(_)) && last_full;
                    if !says_less {
                        last = Some(f);
                        last_full = !cut_short;
                    }
                    Poll::Pending(())
                }
            }
        });
        match outcome {
            Ok(r) => r,
            Err(_) => Err(self.deadline_error(url, sent, &last, last_status)),
        }
    }

    /// One try: the request and the redirects it leads to, within `remaining`.
    fn attempt(
        &self,
        client: &Client,
        method: &Method,
        url: &str,
        start: &url::Url,
        headers: &[(&str, &str)],
        remaining: Duration,
    ) -> Result<Reply, TryError> {
        let began = Instant::now();
        let mut current = start.clone();
        let mut method = method.clone();
        let mut with_headers = true;
        for _ in 0..=MAX_REDIRECTS {
            let left = remaining.saturating_sub(began.elapsed());
            if left.is_zero() {
                return Err(TryError::Retry(Failure::Other(
                    "the deadline passed while following redirects".into(),
                )));
            }
            let mut req = client
                .request(method.clone(), current.clone())
                .timeout(self.timeouts.request.min(left));
            if with_headers {
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
            }
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) if is_refused(&e) && self.refused_is_final => {
                    return Err(TryError::Final(NetError::Refused {
                        who: self.who.clone(),
                        url: url.into(),
                    }))
                }
                Err(e) => return Err(TryError::Retry(Failure::Other(error_chain(&e)))),
            };
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let (301 | 302 | 303 | 307 | 308, Some(location)) = (status, location) {
                let refuse = |reason: String| {
                    TryError::Final(NetError::Redirect {
                        who: self.who.clone(),
                        url: url.into(),
                        location: location.clone(),
                        reason,
                    })
                };
                let next = current
                    .join(&location)
                    .map_err(|e| refuse(format!("not a URL: {e}")))?;
                redirect_allowed(&current, &next).map_err(refuse)?;
                if !same_origin(&current, &next) {
                    with_headers = false;
                }
                if status == 303 && method != Method::HEAD {
                    method = Method::GET;
                }
                tracing::debug!(source = %self.who, from = %current, to = %next, status, "following a redirect");
                current = next;
                continue;
            }
            if status >= 500 || status == 429 {
                return Err(TryError::Retry(Failure::Status(status)));
            }
            let body = self.read_body(resp, url)?;
            return Ok(Reply { status, body });
        }
        Err(TryError::Final(NetError::Redirect {
            who: self.who.clone(),
            url: url.into(),
            location: current.to_string(),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        }))
    }

    /// The body, read in chunks; more than the limit is [`NetError::TooLarge`], checked
    /// against Content-Length before anything is read.
    fn read_body(&self, mut resp: Response, url: &str) -> Result<Vec<u8>, TryError> {
        let limit = self.max_body.get();
        let too_large = |seen: String| {
            TryError::Final(NetError::TooLarge {
                who: self.who.clone(),
                url: url.into(),
                limit,
                seen,
            })
        };
        let announced = resp.content_length();
        if let Some(n) = announced.filter(|n| *n > limit) {
            return Err(too_large(format!("Content-Length: {n}")));
        }
        let mut body = Vec::with_capacity(announced.unwrap_or(0).min(limit) as usize);
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = match resp.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(TryError::Retry(Failure::Other(format!(
                        "reading the body after {} bytes: {}",
                        body.len(),
                        error_chain(&e)
                    ))))
                }
            };
            if body.len() as u64 + n as u64 > limit {
                return Err(too_large(format!("more than {limit} bytes arrived")));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(body)
    }

    fn deadline_error(
        &self,
        url: &str,
        attempts: u32,
        last: &Option<Failure>,
        last_status: Option<u16>,
    ) -> NetError {
        let after_ms = self.deadline().elapsed().as_millis();
        match (last, last_status) {
            (Some(Failure::Other(m)), Some(status)) => NetError::Status {
                who: self.who.clone(),
                url: url.into(),
                status,
                detail: format!(
                    "still failing after {attempts} attempts in {after_ms} ms (the last one: {m})"
                ),
            },
            (Some(Failure::Status(status)), _) => NetError::Status {
                who: self.who.clone(),
                url: url.into(),
                status: *status,
                detail: format!("still failing after {attempts} attempts in {after_ms} ms"),
            },
            (Some(Failure::Other(m)), None) => NetError::Timeout {
                who: self.who.clone(),
                url: url.into(),
                after_ms,
                attempts,
                last: m.clone(),
            },
            (None, _) => NetError::Timeout {
                who: self.who.clone(),
                url: url.into(),
                after_ms,
                attempts,
                last: "deadline passed before the first attempt".into(),
            },
        }
    }

    /// GET expecting 200; 404 is `Ok(None)`; any other status is an error.
    pub fn get_optional(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<Vec<u8>>, NetError> {
        let r = self.request(Method::GET, url, headers)?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            status => Err(self.status_error(url, status, &r.body)),
        }
    }

    /// GET expecting 200; anything else (404 included) is an error.
    pub fn get_required(&self, url: &str, headers: &[(&str, &str)]) -> Result<Vec<u8>, NetError> {
        let r = self.request(Method::GET, url, headers)?;
        match r.status {
            200 => Ok(r.body),
            status => Err(self.status_error(url, status, &r.body)),
        }
    }

    /// An answer with a status the caller does not accept, with the start of its body.
    pub fn status_error(&self, url: &str, status: u16, body: &[u8]) -> NetError {
        let text = String::from_utf8_lossy(body);
        let detail: String = text.trim().chars().take(200).collect();
        NetError::Status {
            who: self.who.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    /// The https → http rule, which the local servers of the tests cannot show (the
    /// clients trust only the public web PKI, so no test server can speak https).
    #[test]
    fn redirects_never_go_down_to_http_or_to_other_schemes() {
        assert!(redirect_allowed(&u("https://a/x"), &u("https://b/y")).is_ok());
        assert!(redirect_allowed(&u("http://a/x"), &u("https://b/y")).is_ok());
        assert!(redirect_allowed(&u("http://a/x"), &u("http://b/y")).is_ok());
        let e = redirect_allowed(&u("https://a/x"), &u("http://a/x")).unwrap_err();
        assert!(e.contains("https to http"), "{e}");
        for to in ["file:///etc/shadow", "ftp://a/x", "data:,x"] {
            let e = redirect_allowed(&u("http://a/x"), &u(to)).unwrap_err();
            assert!(e.contains("http and https only"), "{to}: {e}");
        }
        assert!(same_origin(&u("http://a/x"), &u("http://a:80/y")));
        assert!(!same_origin(&u("http://a/x"), &u("http://a:81/x")));
        assert!(!same_origin(&u("http://a/x"), &u("https://a/x")));
        assert!(!same_origin(&u("http://a/x"), &u("http://b/x")));
    }
}

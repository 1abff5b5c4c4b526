//! The retrying HTTP client.
//!
//! "Connection refused" means nothing listens there: for a metadata service that is the
//! quick answer "not here" ([`NetError::Refused`]) when `refused_is_final` is set, never
//! a long wait; otherwise (an operator-named URL) it is retried like any network error.

use std::cell::OnceCell;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::Method;

use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll};

use super::{NetError, Timeouts};
use nodeimage_core::errors::chain as error_chain;

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

impl Http {
    /// `who` names the client in errors (a data source's name). With `refused_is_final`
    /// a refused connection fails at once with [`NetError::Refused`].
    pub fn new(who: impl Into<String>, timeouts: Timeouts, refused_is_final: bool) -> Self {
        Http {
            who: who.into(),
            timeouts,
            refused_is_final,
            client: OnceCell::new(),
            deadline: OnceCell::new(),
        }
    }

    /// Change the per-request timeout (Ignition's `ignition.timeouts.httpTotal`); the
    /// deadline keeps running from the first request.
    pub fn set_request_timeout(&mut self, t: Duration) {
        self.timeouts.request = t;
    }

    fn client(&self) -> Result<&Client, NetError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = Client::builder()
            .no_proxy()
            .connect_timeout(self.timeouts.request)
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
        let deadline = *self.deadline();
        let mut backoff = Backoff::new(self.timeouts.backoff_initial, self.timeouts.backoff_max);
        let mut sent = 0u32;
        let mut last: Option<Failure> = None;
        // The last HTTP status a failed attempt got: a server that answers 500 until
        // the deadline is reported as such even when the deadline cut the final attempt.
        let mut last_status: Option<u16> = None;
        let outcome = wait_until(&deadline, &mut backoff, |_| {
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Poll::Ready(Err(self.deadline_error(url, sent, &last, last_status)));
            }
            sent += 1;
            let mut req = client
                .request(method.clone(), url)
                .timeout(self.timeouts.request.min(remaining));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let failure = match req.send() {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status >= 500 || status == 429 {
                        tracing::debug!(source = %self.who, url, status, attempt = sent, "retrying");
                        last_status = Some(status);
                        Failure::Status(status)
                    } else {
                        match resp.bytes() {
                            Ok(b) => {
                                return Poll::Ready(Ok(Reply {
                                    status,
                                    body: b.to_vec(),
                                }))
                            }
                            Err(e) => {
                                Failure::Other(format!("reading the body: {}", error_chain(&e)))
                            }
                        }
                    }
                }
                Err(e) if is_refused(&e) && self.refused_is_final => {
                    return Poll::Ready(Err(NetError::Refused {
                        who: self.who.clone(),
                        url: url.into(),
                    }));
                }
                Err(e) => {
                    let m = error_chain(&e);
                    tracing::debug!(source = %self.who, url, error = %m, attempt = sent, "retrying");
                    Failure::Other(m)
                }
            };
            last = Some(failure);
            Poll::Pending(())
        });
        match outcome {
            Ok(r) => r,
            Err(_) => Err(self.deadline_error(url, sent, &last, last_status)),
        }
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

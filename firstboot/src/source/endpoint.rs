//! A metadata service as the network sources see it: a base URL, the headers every
//! request to it carries, and a [`crate::net::Http`] client (built on the first request,
//! when the source's deadline starts too). "Connection refused" is "not present".

use std::net::IpAddr;

use crate::net::{Http, Timeouts};

use super::SourceError;

pub(crate) struct Endpoint {
    source_name: &'static str,
    base: String,
    headers: &'static [(&'static str, &'static str)],
    http: Http,
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
            http: Http::new(source_name, timeouts, true),
        }
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    /// `<base>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// GET `<base>/<path>` with the endpoint's headers; `Ok(None)` for 404.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self.http.get_optional(&self.url(path), self.headers)?)
    }

    /// User data at `<base>/<path>`: `None` for 404 or an empty answer.
    pub fn user_data(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self.get(path)?.filter(|d| !d.is_empty()))
    }

    /// [`Endpoint::get`] as text (see [`text`]).
    pub fn text(&self, path: &str) -> Result<Option<String>, SourceError> {
        match self.get(path)? {
            Some(b) => text(self.source_name, path, b),
            None => Ok(None),
        }
    }

    /// [`Endpoint::text`] as an IP address; anything else is an error.
    pub fn ip(&self, path: &str) -> Result<Option<IpAddr>, SourceError> {
        parse_ip(self.source_name, path, self.text(path)?)
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

/// A metadata value that must be an IP address when present.
pub(crate) fn parse_ip(
    source_name: &str,
    what: &str,
    value: Option<String>,
) -> Result<Option<IpAddr>, SourceError> {
    value
        .map(|s| {
            s.parse().map_err(|_| {
                SourceError::format(source_name, format!("{what}: not an IP address: {s}"))
            })
        })
        .transpose()
}

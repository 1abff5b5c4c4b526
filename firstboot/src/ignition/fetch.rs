//! Fetching a resource (`source` with `compression`, `httpHeaders` and
//! `verification.hash`): data: URLs (base64 or percent-encoded) and http(s), through
//! one retrying client per staging run (one deadline for all of it).
//!
//! Memory is bounded: every content staged (referenced configs, files, appends, after
//! decompression) counts against one budget, [`STAGING_BUDGET`], for the whole config.
//! A download stops at what is left of it, and gzip that would decompress beyond it is
//! an error, never a silently truncated file.

use std::cell::Cell;
use std::io::Read;

use base64::Engine;
use ignition_config::v3_6;
use sha2::{Digest, Sha256, Sha512};

use super::{invalid, unsupported, IgnitionError};
use crate::net::{HashMismatch, Http, Timeouts};

/// What all the contents of one Ignition config may take in memory together.
pub const STAGING_BUDGET: u64 = 256 << 20;

/// Fetches resources for one staging run: one HTTP client, one deadline, one budget.
pub(crate) struct Fetcher {
    source_name: String,
    pub(super) http: Http,
    /// Bytes of [`STAGING_BUDGET`] not used yet.
    left: Cell<u64>,
}

impl Fetcher {
    pub(super) fn new(source_name: &str, timeouts: Timeouts) -> Self {
        Fetcher {
            source_name: source_name.into(),
            http: Http::new(format!("{source_name}: Ignition"), timeouts, false),
            left: Cell::new(STAGING_BUDGET),
        }
    }

    fn over_budget(&self, what: &str, detail: &str) -> IgnitionError {
        invalid(
            &self.source_name,
            what,
            format!(
                "{detail}: more than the {} bytes left of the {STAGING_BUDGET}-byte budget for \
                 all the contents of an Ignition config",
                self.left.get()
            ),
        )
    }

    pub(super) fn describe(&self, r: &v3_6::Resource) -> String {
        let s = r.source.clone().unwrap_or_default();
        if s.starts_with("data:") {
            // By characters: a byte index could fall inside one.
            format!("{}…", s.chars().take(24).collect::<String>())
        } else {
            s
        }
    }

    /// Fetch, verify and decompress one resource. `what` names it in errors
    /// (`storage.files[/etc/x].contents`).
    pub(crate) fn fetch(&self, what: &str, r: &v3_6::Resource) -> Result<Vec<u8>, IgnitionError> {
        let sn = self.source_name.as_str();
        let source = r
            .source
            .as_deref()
            .ok_or_else(|| invalid(sn, what, "expected a source"))?;
        let raw = if let Some(rest) = source.strip_prefix("data:") {
            decode_data_url(rest).map_err(|m| invalid(sn, format!("{what}.source"), m))?
        } else if source.starts_with("http://") || source.starts_with("https://") {
            let headers: Vec<(String, String)> = r
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone().unwrap_or_default()))
                .collect();
            let hdrs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            self.http.set_max_body(self.left.get());
            self.http.get_required(source, &hdrs)?
        } else {
            let scheme = source.split(':').next().unwrap_or("");
            return Err(unsupported(
                sn,
                &format!("{what}.source"),
                format!("scheme `{scheme}:`; firstboot fetches data:, http: and https:"),
            ));
        };
        let left = self.left.get();
        if raw.len() as u64 > left {
            return Err(self.over_budget(what, &format!("{} bytes", raw.len())));
        }
        let data = match r.compression.as_deref() {
            None | Some("") => raw,
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(raw.as_slice())
                    .take(left + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| {
                        invalid(sn, format!("{what}.compression"), format!("gzip: {e}"))
                    })?;
                if out.len() as u64 > left {
                    return Err(self.over_budget(
                        &format!("{what}.compression"),
                        "the gzip data decompresses to",
                    ));
                }
                out
            }
            Some(other) => {
                return Err(invalid(
                    sn,
                    format!("{what}.compression"),
                    format!("expected gzip, found `{other}`"),
                ))
            }
        };
        if let Some(hash) = r.verification.as_ref().and_then(|v| v.hash.as_deref()) {
            verify_hash(sn, what, source, hash, &data)?;
        }
        self.left.set(left - data.len() as u64);
        Ok(data)
    }
}

fn verify_hash(
    source_name: &str,
    what: &str,
    url: &str,
    spec: &str,
    data: &[u8],
) -> Result<(), IgnitionError> {
    let (algo, expected) = spec.split_once('-').ok_or_else(|| {
        invalid(
            source_name,
            format!("{what}.verification.hash"),
            format!("expected sha512-<hex> or sha256-<hex>, found `{spec}`"),
        )
    })?;
    let (algorithm, actual) = match algo {
        "sha512" => ("sha512", hex::encode(Sha512::digest(data))),
        "sha256" => ("sha256", hex::encode(Sha256::digest(data))),
        _ => {
            return Err(invalid(
                source_name,
                format!("{what}.verification.hash"),
                format!("expected sha512 or sha256, found `{algo}`"),
            ))
        }
    };
    if !actual.eq_ignore_ascii_case(expected) {
        let shown = if url.starts_with("data:") {
            what.to_string()
        } else {
            format!("{what} ({url})")
        };
        return Err(IgnitionError::HashMismatch(Box::new(HashMismatch {
            source_name: source_name.into(),
            what: shown,
            algorithm,
            expected: expected.to_ascii_lowercase(),
            actual,
        })));
    }
    Ok(())
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape `%{hex}`"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Decode the part of an RFC 2397 data URL after `data:`.
pub fn decode_data_url(rest: &str) -> Result<Vec<u8>, String> {
    let (meta, payload) = rest
        .split_once(',')
        .ok_or("a data: URL needs a `,` before its data")?;
    let decoded = percent_decode(payload)?;
    if meta.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
        let cleaned: Vec<u8> = decoded
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(&cleaned)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&cleaned))
            .map_err(|e| format!("bad base64: {e}"))
    } else {
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        assert_eq!(decode_data_url(",hello%20world").unwrap(), b"hello world");
        assert_eq!(
            decode_data_url("text/plain;charset=utf-8;base64,aGk=").unwrap(),
            b"hi"
        );
        assert_eq!(decode_data_url(";base64,aGk").unwrap(), b"hi");
        assert!(decode_data_url("nocomma").is_err());
    }
}

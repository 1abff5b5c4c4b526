//! Amazon EC2 instance metadata service, IMDSv2.
//!
//! A session token comes from `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds`; every GET carries it in
//! `X-aws-ec2-metadata-token`. Only when the token call is not supported (404 or 405, an
//! IMDSv1-only endpoint) are GETs sent without a token; 401/403 are errors, never a
//! downgrade. User data is `/latest/user-data` (404: none). Metadata: instance-id,
//! local-ipv4, public-ipv4, hostname, placement/availability-zone, placement/region, the
//! OpenSSH public keys and, when the instance exposes them, tags/instance.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use reqwest::Method;

use super::endpoint::{parse_ip, text, Endpoint};
use super::{DataSource, Platform, SourceContext, SourceError};

pub(crate) const SOURCE_NAME: &str = "ec2";
const TOKEN_TTL_SECONDS: &str = "21600";

pub(crate) struct Ec2Source {
    endpoint: Endpoint,
    /// `Some(token)` for IMDSv2, `None` for an IMDSv1-only service; set once known.
    token: OnceCell<Option<String>>,
}

impl Ec2Source {
    pub fn new(ctx: &SourceContext) -> Self {
        Ec2Source {
            endpoint: Endpoint::new(SOURCE_NAME, ctx.endpoint(Platform::Ec2), &[], ctx.timeouts),
            token: OnceCell::new(),
        }
    }

    fn token(&self) -> Result<Option<String>, SourceError> {
        if let Some(t) = self.token.get() {
            return Ok(t.clone());
        }
        let url = self.endpoint.url("latest/api/token");
        let http = self.endpoint.http();
        let r = http.request(
            Method::PUT,
            &url,
            &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)],
        )?;
        let token =
            match r.status {
                200 => Some(text(SOURCE_NAME, "IMDSv2 token", r.body)?.ok_or_else(|| {
                    SourceError::format(SOURCE_NAME, "IMDSv2 token: empty answer")
                })?),
                404 | 405 => {
                    tracing::warn!(
                        source = SOURCE_NAME,
                        status = r.status,
                        "IMDSv2 token call not supported; using IMDSv1"
                    );
                    None
                }
                status => return Err(http.status_error(&url, status, &r.body).into()),
            };
        let _ = self.token.set(token.clone());
        Ok(token)
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let token = self.token()?;
        let url = self.endpoint.url(&format!("latest/{path}"));
        let http = self.endpoint.http();
        Ok(match &token {
            Some(t) => http.get_optional(&url, &[("X-aws-ec2-metadata-token", t)])?,
            None => http.get_optional(&url, &[])?,
        })
    }

    fn meta(&self, path: &str) -> Result<Option<String>, SourceError> {
        match self.get(&format!("meta-data/{path}"))? {
            Some(b) => text(SOURCE_NAME, path, b),
            None => Ok(None),
        }
    }

    fn meta_ip(&self, path: &str) -> Result<Option<IpAddr>, SourceError> {
        parse_ip(SOURCE_NAME, path, self.meta(path)?)
    }
}

impl DataSource for Ec2Source {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self.get("user-data")?.filter(|d| !d.is_empty()))
    }

    fn hostname(&self) -> Result<Option<String>, SourceError> {
        self.meta("hostname")
    }

    fn instance_id(&self) -> Result<Option<String>, SourceError> {
        self.meta("instance-id")
    }

    fn local_ipv4(&self) -> Result<Option<IpAddr>, SourceError> {
        self.meta_ip("local-ipv4")
    }

    fn public_ipv4(&self) -> Result<Option<IpAddr>, SourceError> {
        self.meta_ip("public-ipv4")
    }

    fn availability_zone(&self) -> Result<Option<String>, SourceError> {
        self.meta("placement/availability-zone")
    }

    fn region(&self) -> Result<Option<String>, SourceError> {
        self.meta("placement/region")
    }

    fn ssh_authorized_keys(&self) -> Result<Vec<String>, SourceError> {
        let Some(list) = self.meta("public-keys")? else {
            return Ok(Vec::new());
        };
        let mut keys = Vec::new();
        for line in list.lines() {
            // "0=my-key-name"
            let Some((index, _)) = line.split_once('=') else {
                continue;
            };
            if let Some(k) = self.meta(&format!("public-keys/{index}/openssh-key"))? {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    fn attributes(&self) -> Result<BTreeMap<String, String>, SourceError> {
        let mut out = BTreeMap::new();
        // Tags are only exposed when the instance allows it; 404 otherwise.
        if let Some(list) = self.meta("tags/instance")? {
            for key in list.lines().map(str::trim).filter(|k| !k.is_empty()) {
                let value = self.meta(&format!(
                    "tags/instance/{}",
                    super::cmdline::percent_encode(key)
                ))?;
                out.insert(format!("tag:{key}"), value.unwrap_or_default());
            }
        }
        Ok(out)
    }
}

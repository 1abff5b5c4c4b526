//! Registry authentication: `WWW-Authenticate` challenges and docker-style credential
//! files (`config.json`: `auths.<host>.auth` = base64 `user:password`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde::Deserialize;

/// A parsed `WWW-Authenticate` challenge: `Bearer realm="…",service="…",scope="…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercase scheme (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters with lowercase names.
    pub params: BTreeMap<String, String>,
}

/// Parses one challenge (the first, if a server sends several schemes in one header).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(char::is_whitespace) {
        Some(i) => (&header[..i], header[i..].trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' || c.is_whitespace() {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            break; // token68 or a second scheme: not needed here
        }
        chars.next();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        params.insert(name.to_ascii_lowercase(), value);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// `Basic <base64 user:password>`.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Credentials from a docker-style `config.json`.
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    /// Normalised registry host -> credentials.
    entries: BTreeMap<String, Credentials>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    auths: BTreeMap<String, RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The key a registry host is looked up by: no scheme, no path, Docker Hub's aliases
/// folded into `docker.io`.
pub fn normalise_host(key: &str) -> String {
    let k = key.trim();
    let k = k.split_once("://").map(|(_, r)| r).unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

impl AuthFile {
    pub fn load(path: &Path) -> Result<AuthFile> {
        let text = std::fs::read(path)
            .with_context(|| format!("reading the auth file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("auth file {}", path.display()))
    }

    pub fn parse(text: &[u8]) -> Result<AuthFile> {
        let raw: RawFile = serde_json::from_slice(text)
            .context("expected a docker config.json ({\"auths\": {...}})")?;
        let mut entries = BTreeMap::new();
        for (key, e) in raw.auths {
            let creds = match (e.auth, e.username, e.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .with_context(|| format!("auths.\"{key}\".auth: not base64"))?;
                    let s = String::from_utf8(decoded)
                        .with_context(|| format!("auths.\"{key}\".auth: not UTF-8"))?;
                    let (u, p) = s.split_once(':').with_context(|| {
                        format!("auths.\"{key}\".auth: expected base64 of `user:password`")
                    })?;
                    Credentials {
                        username: u.into(),
                        password: p.into(),
                    }
                }
                (_, Some(u), Some(p)) => Credentials {
                    username: u,
                    password: p,
                },
                _ => continue,
            };
            entries.insert(normalise_host(&key), creds);
        }
        Ok(AuthFile { entries })
    }

    /// Credentials for a registry host (`host` or `host:port`).
    pub fn lookup(&self, host: &str) -> Option<&Credentials> {
        self.entries.get(&normalise_host(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull,push");
        let c = parse_challenge("Basic realm=\"Registry Realm\"").unwrap();
        assert_eq!(
            (c.scheme.as_str(), c.params["realm"].as_str()),
            ("basic", "Registry Realm")
        );
        let c = parse_challenge("Bearer realm=http://127.0.0.1:1/token , service=x").unwrap();
        assert_eq!(c.params["realm"], "http://127.0.0.1:1/token");
        assert_eq!(c.params["service"], "x");
    }

    #[test]
    fn auth_file() {
        let f = AuthFile::parse(
            br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},"127.0.0.1:5000":{"username":"a","password":"b"},"quay.io":{}}}"#,
        )
        .unwrap();
        let hub = f.lookup("registry-1.docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(
            f.lookup("127.0.0.1:5000").unwrap().basic_header(),
            "Basic YTpi"
        );
        assert!(f.lookup("quay.io").is_none());
        assert!(!format!("{hub:?}").contains("pa:ss"));
        assert!(AuthFile::parse(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
    }
}

//! A small OCI distribution client: manifests (by tag or digest) and small blobs over
//! `GET /v2/<name>/...`, with anonymous or credentialed bearer-token auth
//! (401 + `WWW-Authenticate: Bearer realm=…,service=…` → `GET realm?service=…&scope=
//! repository:<name>:pull` → token → retry) and Basic auth. Large blobs go through
//! [`crate::fetch::Fetcher`] with the `Authorization` header this client provides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use url::Url;

use super::auth::{normalise_host, parse_challenge, AuthFile, Challenge};
use super::media::{self, Kind};
use super::reference::Reference;
use crate::fetch::{Algorithm, Digest};

/// Largest manifest or index accepted (the distribution spec suggests 4 MiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// Registry options shared by `nodeimage lock` and `nodeimage build`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Pull the images of registry HOST from a mirror registry first: HOST=URL, e.g.
    /// registry.k8s.io=http://127.0.0.1:5000 (the pinned digests still decide); repeatable.
    #[arg(long = "registry-mirror", value_name = "HOST=URL")]
    pub registry_mirrors: Vec<String>,
    /// Registry credentials: a docker-style config.json (auths.<host>.auth = base64 user:password).
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Talk plain HTTP (no TLS) to this registry host[:port]; repeatable.
    #[arg(long = "plain-http-registry", value_name = "HOST")]
    pub plain_http_registries: Vec<String>,
    /// `nodeimage lock`: let a registry mirror resolve an image that the profile pins by
    /// tag only. That is trust on first use: the lock records whatever digest the mirror
    /// serves for the tag. Without it such an image is resolved only at its own registry
    /// (pin `digest` in the profile to use a mirror without trusting it).
    #[arg(long)]
    pub trust_mirror_tags: bool,
}

/// One place to ask for a repository: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://registry.k8s.io`, `http://127.0.0.1:5000`, or a mirror's base URL.
    pub base: Url,
    pub mirror: bool,
}

impl Endpoint {
    /// `<base>/v2/<repo>/<kind>/<object>` (`kind` is `manifests` or `blobs`).
    pub fn url(&self, repo: &str, kind: &str, object: &str) -> String {
        format!(
            "{}/v2/{repo}/{kind}/{object}",
            self.base.as_str().trim_end_matches('/')
        )
    }

    fn host(&self) -> String {
        host_port(&self.base)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.base.as_str().trim_end_matches('/'))
    }
}

/// A manifest or index as the registry served it, verified against its digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub body: Vec<u8>,
    pub kind: Kind,
    pub media_type: String,
    pub digest: Digest,
}

/// The registry client.
#[derive(Debug)]
pub struct Registry {
    http: Client,
    mirrors: BTreeMap<String, Vec<Url>>,
    plain_http: BTreeSet<String>,
    auth_file: AuthFile,
    /// (endpoint base, repository) -> the Authorization header value that works (None: none needed).
    auth: Mutex<HashMap<(String, String), Option<String>>>,
    /// [`RegistryOptions::trust_mirror_tags`].
    pub trust_mirror_tags: bool,
}

impl Registry {
    pub fn new(opts: &RegistryOptions) -> Result<Registry> {
        let mut mirrors: BTreeMap<String, Vec<Url>> = BTreeMap::new();
        for m in &opts.registry_mirrors {
            let (host, url) = m
                .split_once('=')
                .with_context(|| format!("--registry-mirror `{m}`: expected HOST=URL, e.g. registry.k8s.io=http://127.0.0.1:5000"))?;
            let url = Url::parse(url.trim())
                .with_context(|| format!("--registry-mirror `{m}`: bad URL"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                bail!("--registry-mirror `{m}`: expected an http:// or https:// URL");
            }
            mirrors.entry(normalise_host(host)).or_default().push(url);
        }
        let auth_file = match &opts.auth_file {
            Some(p) => AuthFile::load(p)?,
            None => AuthFile::default(),
        };
        let http = Client::builder()
            .user_agent(concat!("nodeimage/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("creating the HTTP client")?;
        Ok(Registry {
            http,
            mirrors,
            plain_http: opts
                .plain_http_registries
                .iter()
                .map(|h| normalise_host(h))
                .collect(),
            auth_file,
            auth: Mutex::new(HashMap::new()),
            trust_mirror_tags: opts.trust_mirror_tags,
        })
    }

    /// Where to ask for `r`: its mirrors in order, then (unless `mirror_only`) the registry.
    pub fn endpoints(&self, r: &Reference, mirror_only: bool) -> Vec<Endpoint> {
        let mut v: Vec<Endpoint> = self
            .mirrors
            .get(&normalise_host(&r.registry))
            .into_iter()
            .flatten()
            .map(|u| Endpoint {
                base: u.clone(),
                mirror: true,
            })
            .collect();
        if !mirror_only {
            let scheme = if self.plain_http.contains(&normalise_host(&r.registry)) {
                "http"
            } else {
                "https"
            };
            let base = Url::parse(&format!("{scheme}://{}", r.api_host()))
                .expect("validated registry host");
            v.push(Endpoint {
                base,
                mirror: false,
            });
        }
        v
    }

    fn cached_auth(&self, origin: &str, repo: &str) -> Option<String> {
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(origin.to_string(), repo.to_string()))
            .cloned()
            .flatten()
    }

    fn remember_auth(&self, origin: &str, repo: &str, value: String) {
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((origin.to_string(), repo.to_string()), Some(value));
    }

    /// Drops every cached authorization for `repo` (an expired token) so the next
    /// request asks again.
    pub fn forget_authorization(&self, repo: &str) {
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, r), _| r != repo);
    }

    /// Whether Basic credentials for `registry` (the host that answered 401) may be sent
    /// to the Bearer `realm` it named: only to the registry's own host (Docker Hub's
    /// `auth.docker.io` for `docker.io`), and only over https, unless that host is one
    /// the user chose plain HTTP for (`--plain-http`, an `http://` mirror). A mirror, a
    /// redirect target or a compromised registry naming another realm gets nothing
    /// (the containerd CVE-2020-15157 class).
    fn credentials_may_go_to(&self, registry: &str, realm: &Url) -> Result<(), String> {
        let realm_host = host_port(realm);
        let own = normalise_host(&realm_host) == normalise_host(registry)
            || (normalise_host(registry) == "docker.io" && realm_host == "auth.docker.io");
        if !own {
            return Err(format!("the realm is on {realm_host}, not on {registry}"));
        }
        match realm.scheme() {
            "https" => Ok(()),
            "http"
                if self
                    .plain_http_hosts()
                    .contains(&normalise_host(&realm_host)) =>
            {
                Ok(())
            }
            s => Err(format!(
                "the realm is {s}://, and {realm_host} is not a host given as plain HTTP"
            )),
        }
    }

    /// Hosts the user chose plain HTTP for: `--plain-http` registries and `http://`
    /// mirrors.
    fn plain_http_hosts(&self) -> BTreeSet<String> {
        let mut hosts = self.plain_http.clone();
        for u in self.mirrors.values().flatten() {
            if u.scheme() == "http" {
                hosts.insert(normalise_host(&host_port(u)));
            }
        }
        hosts
    }

    /// Answers a 401 from `url`: a bearer token from the challenge's realm for the
    /// challenge's scope (else `repository:<repo>:pull`), with Basic credentials from the
    /// auth file when it has some for this host and the realm may have them
    /// ([`Self::credentials_may_go_to`]); or Basic auth directly.
    fn authenticate(
        &self,
        ep: &Endpoint,
        url: &Url,
        repo: &str,
        resp: &Response,
    ) -> Result<String> {
        let header = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let host = host_port(url);
        let challenge: Challenge = parse_challenge(header).with_context(|| {
            format!("{host} answered 401 without a usable WWW-Authenticate header (`{header}`)")
        })?;
        // The credentials of the host that asked (never those of the endpoint when a
        // redirect led elsewhere).
        let creds = self.auth_file.lookup(&host);
        match challenge.scheme.as_str() {
            "bearer" => {
                let realm = challenge
                    .params
                    .get("realm")
                    .context("Bearer challenge without realm")?;
                let mut token_url = Url::parse(realm)
                    .with_context(|| format!("Bearer realm `{realm}` is not a URL"))?;
                let scope = challenge
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{repo}:pull"));
                {
                    let mut q = token_url.query_pairs_mut();
                    if let Some(s) = challenge.params.get("service") {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &scope);
                }
                let creds = match (creds, self.credentials_may_go_to(&host, &token_url)) {
                    (Some(c), Ok(())) => Some(c),
                    (Some(_), Err(why)) => {
                        tracing::warn!(registry = %host, realm = %redact_query(&token_url), reason = %why, "not sending credentials to the token realm");
                        None
                    }
                    (None, _) => None,
                };
                let mut rb = self.http.get(token_url.clone());
                if let Some(c) = creds {
                    rb = rb.header(AUTHORIZATION, c.basic_header());
                }
                let shown = format!(
                    "{}://{}{}",
                    token_url.scheme(),
                    token_url.host_str().unwrap_or(""),
                    token_url.path()
                );
                let r = rb
                    .send()
                    .map_err(|e| anyhow!("token request to {shown}: {}", cause(&e)))?;
                if !r.status().is_success() {
                    let hint = if creds.is_none() && matches!(r.status().as_u16(), 401 | 403) {
                        format!("; the registry wants credentials: pass --auth-file with an entry for {}", ep.host())
                    } else {
                        String::new()
                    };
                    bail!("token request to {shown} for {scope}: {}{hint}", r.status());
                }
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let t: TokenResponse = r
                    .json()
                    .with_context(|| format!("token response from {shown}"))?;
                let token = t
                    .token
                    .or(t.access_token)
                    .filter(|t| !t.is_empty())
                    .with_context(|| format!("token response from {shown} has no token"))?;
                Ok(format!("Bearer {token}"))
            }
            "basic" => match creds {
                Some(c) => Ok(c.basic_header()),
                None => bail!(
                    "{host} wants Basic credentials: pass --auth-file with an entry for {}",
                    ep.host()
                ),
            },
            other => bail!("{host} asks for unsupported authentication scheme `{other}`"),
        }
    }

    /// Sends `method url`, following redirects itself (so a token only ever goes to the
    /// origin that asked for it, and a redirect target can ask for its own) and answering
    /// a 401 challenge once per hop. Returns the final response and URL, and the
    /// Authorization value the final origin accepted.
    fn send(
        &self,
        ep: &Endpoint,
        repo: &str,
        method: reqwest::Method,
        url: &str,
        make: &dyn Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<(Response, Url, Option<String>)> {
        let mut url = Url::parse(url).with_context(|| format!("bad URL {url}"))?;
        for _ in 0..8 {
            let origin = url.origin().ascii_serialization();
            let send = |auth: Option<&String>| {
                let mut rb = make(self.http.request(method.clone(), url.clone()));
                if let Some(a) = auth {
                    rb = rb.header(AUTHORIZATION, a.as_str());
                }
                rb.send().map_err(|e| {
                    let host = url.host_str().unwrap_or("REGISTRY");
                    let hint = if e.is_connect() || e.is_timeout() {
                        format!(
                            "; to work without access to {host}, serve the images from a registry mirror \
                             and pass --registry-mirror {host}=http://MIRROR:PORT (the pinned digests still decide)"
                        )
                    } else {
                        String::new()
                    };
                    anyhow!("{method} {}: {}{hint}", redact_query(&url), cause(&e))
                })
            };
            let mut auth = self.cached_auth(&origin, repo);
            let mut resp = send(auth.as_ref())?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                let value = self.authenticate(ep, &url, repo, &resp)?;
                self.remember_auth(&origin, repo, value.clone());
                resp = send(Some(&value))?;
                auth = Some(value);
                if resp.status() == StatusCode::UNAUTHORIZED {
                    bail!(
                        "{method} {}: still 401 Unauthorized after authenticating",
                        redact_query(&url)
                    );
                }
            }
            if resp.status().is_redirection() {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .with_context(|| {
                        format!(
                            "{method} {}: {} without Location",
                            redact_query(&url),
                            resp.status()
                        )
                    })?;
                url = url
                    .join(location)
                    .with_context(|| format!("bad redirect Location `{location}`"))?;
                continue;
            }
            return Ok((resp, url, auth));
        }
        bail!("{method} {}: too many redirects", redact_query(&url))
    }

    fn get(
        &self,
        ep: &Endpoint,
        repo: &str,
        url: &str,
        make: &dyn Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        self.send(ep, repo, reqwest::Method::GET, url, make)
            .map(|(r, _, _)| r)
    }

    /// Where to download a manifest (`kind` = `manifests`) or blob (`blobs`) of `repo`
    /// from, with the Authorization value to send there: `ep`'s redirects followed with
    /// HEAD requests (registry.k8s.io sends every API request on to its backing registry,
    /// which may send blobs on to storage).
    pub fn locate(
        &self,
        ep: &Endpoint,
        repo: &str,
        kind: &str,
        object: &str,
    ) -> Result<(String, Option<String>)> {
        let url = ep.url(repo, kind, object);
        let accept = media::accept_header();
        let (resp, last, auth) = self.send(ep, repo, reqwest::Method::HEAD, &url, &|rb| {
            rb.header(ACCEPT, accept.as_str())
        })?;
        if !resp.status().is_success() {
            bail!("HEAD {}: {}", redact_query(&last), resp.status());
        }
        Ok((last.to_string(), auth))
    }

    /// The manifest or index `object` (a tag or a digest) of `repo`, hash-checked: a
    /// digest request must return bytes with that digest, and a `Docker-Content-Digest`
    /// header must agree with the bytes.
    pub fn manifest(&self, ep: &Endpoint, repo: &str, object: &str) -> Result<FetchedManifest> {
        let url = ep.url(repo, "manifests", object);
        let accept = media::accept_header();
        let resp = self.get(ep, repo, &url, &|rb| rb.header(ACCEPT, accept.as_str()))?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "GET {url}: {status}{}",
                if status == StatusCode::NOT_FOUND {
                    " (no such manifest)"
                } else {
                    ""
                }
            );
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_limited(resp, MAX_MANIFEST).with_context(|| format!("GET {url}"))?;
        let digest = Digest::of(Algorithm::Sha256, &body);
        if let Ok(want) = Digest::parse(object) {
            if want != digest {
                bail!("GET {url}: the registry sent bytes with digest {digest}, not the {want} asked for; refused");
            }
        }
        if let Some(h) = header_digest.as_deref().and_then(|h| Digest::parse(h).ok()) {
            if h.algorithm() == Algorithm::Sha256 && h != digest {
                bail!("GET {url}: Docker-Content-Digest says {h} but the bytes hash to {digest}; refused");
            }
        }
        let (kind, media_type) = media::classify(content_type.as_deref(), &body)
            .map_err(|m| anyhow!("GET {url}: {m}"))?;
        Ok(FetchedManifest {
            body,
            kind,
            media_type,
            digest,
        })
    }

    /// A small blob (an image config), verified against `digest`.
    pub fn small_blob(
        &self,
        ep: &Endpoint,
        repo: &str,
        digest: &Digest,
        max: u64,
    ) -> Result<Vec<u8>> {
        let url = ep.url(repo, "blobs", &digest.to_string());
        let resp = self.get(ep, repo, &url, &|rb| rb)?;
        if !resp.status().is_success() {
            bail!("GET {url}: {}", resp.status());
        }
        let body = read_limited(resp, max).with_context(|| format!("GET {url}"))?;
        let actual = Digest::of(digest.algorithm(), &body);
        if actual != *digest {
            bail!("GET {url}: the bytes hash to {actual}, not {digest}; refused");
        }
        Ok(body)
    }
}

/// `host` or `host:port` of a URL.
fn host_port(u: &Url) -> String {
    match u.port() {
        Some(p) => format!("{}:{p}", u.host_str().unwrap_or("")),
        None => u.host_str().unwrap_or("").to_string(),
    }
}

/// A URL for messages: no query (signed storage URLs carry credentials there).
fn redact_query(u: &Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.to_string()
}

fn read_limited(resp: Response, max: u64) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    resp.take(max + 1)
        .read_to_end(&mut body)
        .context("reading the body")?;
    if body.len() as u64 > max {
        bail!("larger than {max} bytes");
    }
    Ok(body)
}

fn cause(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s = c.to_string();
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_put_mirrors_first() {
        let r = Registry::new(&RegistryOptions {
            registry_mirrors: vec![
                "registry.k8s.io=http://127.0.0.1:5000".into(),
                "docker.io=https://m.example/p".into(),
            ],
            auth_file: None,
            plain_http_registries: vec!["127.0.0.1:5001".into()],
            trust_mirror_tags: false,
        })
        .unwrap();
        let k8s = Reference::parse("registry.k8s.io/pause:3.10.1").unwrap();
        let eps = r.endpoints(&k8s, false);
        assert_eq!(eps.len(), 2);
        assert_eq!(
            eps[0].url("pause", "manifests", "3.10.1"),
            "http://127.0.0.1:5000/v2/pause/manifests/3.10.1"
        );
        assert!(eps[0].mirror && !eps[1].mirror);
        assert_eq!(eps[1].to_string(), "https://registry.k8s.io");
        assert_eq!(r.endpoints(&k8s, true).len(), 1);
        let hub = Reference::parse("rajchaudhuri/weave-kube:2.9.0").unwrap();
        let eps = r.endpoints(&hub, false);
        assert_eq!(
            eps[0].url("rajchaudhuri/weave-kube", "blobs", "x"),
            "https://m.example/p/v2/rajchaudhuri/weave-kube/blobs/x"
        );
        assert_eq!(eps[1].to_string(), "https://registry-1.docker.io");
        let local = Reference::parse("127.0.0.1:5001/a/b:1").unwrap();
        assert_eq!(
            r.endpoints(&local, false)[0].to_string(),
            "http://127.0.0.1:5001"
        );
        assert!(Registry::new(&RegistryOptions {
            registry_mirrors: vec!["nourl".into()],
            ..Default::default()
        })
        .is_err());
    }
}

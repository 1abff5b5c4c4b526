//! Where bytes come from: the upstream URL (http, https, file, or a plain path) and
//! mirrors that serve the same files for air-gapped sites and tests.
//!
//! The mirror rule is one and only one: the upstream host and path are appended to
//! the mirror.
//!
//! ```text
//! upstream  https://dl.k8s.io/release/v1.35.1/bin/linux/amd64/kubelet
//! mirror    http://mirror.example:8080/pub           (a base URL)
//!        →  http://mirror.example:8080/pub/dl.k8s.io/release/v1.35.1/bin/linux/amd64/kubelet
//! mirror    /srv/mirror                               (a local directory, or file:///srv/mirror)
//!        →  /srv/mirror/dl.k8s.io/release/v1.35.1/bin/linux/amd64/kubelet
//! ```
//!
//! The upstream port, user info, query and fragment are not part of the mirrored path.
//! The pinned digest still decides whether the mirrored bytes are accepted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use url::Url;

use super::error::FetchError;

/// A place that serves copies of upstream files under `<mirror>/<host>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    /// `http://` or `https://` base URL.
    Url(Url),
    /// A local directory (given as a path or a `file://` URL).
    Dir(PathBuf),
}

impl Mirror {
    /// Parses `http(s)://…` as a base URL, `file://…` and anything without `://` as a directory.
    pub fn parse(s: &str) -> Result<Self, FetchError> {
        match parse_location(
            s,
            "empty; expected a base URL or a directory",
            "a directory",
        ) {
            Ok(Source::Http(url)) => Ok(Mirror::Url(url)),
            Ok(Source::Local(dir)) => Ok(Mirror::Dir(dir)),
            Err(reason) => Err(FetchError::InvalidMirror {
                mirror: s.to_string(),
                reason,
            }),
        }
    }

    /// Where this mirror keeps the copy of `upstream`, or `None` if the URL cannot be
    /// mirrored (no host, or a path segment that cannot be a file name).
    pub fn locate(&self, upstream: &Url) -> Option<Source> {
        let host = upstream.host_str().filter(|h| !h.is_empty())?;
        match self {
            Mirror::Url(base) => {
                let mut base = base.clone();
                base.set_query(None);
                base.set_fragment(None);
                let s = format!(
                    "{}/{}{}",
                    base.as_str().trim_end_matches('/'),
                    host,
                    upstream.path()
                );
                Url::parse(&s).ok().map(Source::Http)
            }
            Mirror::Dir(dir) => {
                let mut path = dir.join(host);
                for seg in upstream.path_segments()? {
                    if seg.is_empty() {
                        continue;
                    }
                    let seg = percent_decode(seg)?;
                    if seg == "." || seg == ".." || seg.contains('/') || seg.contains('\0') {
                        return None;
                    }
                    path.push(seg);
                }
                Some(Source::Local(path))
            }
        }
    }

    /// Whether fetching from this mirror needs the network.
    pub fn is_local(&self) -> bool {
        matches!(self, Mirror::Dir(_))
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mirror::Url(u) => f.write_str(&redact(u)),
            Mirror::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

impl FromStr for Mirror {
    type Err = FetchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mirror::parse(s)
    }
}

/// `http(s)://` → HTTP, `file://` → local, anything without `://` → local path; otherwise
/// why not (`empty` when blank; `local` names the non-URL form in the unsupported-scheme
/// message).
fn parse_location(s: &str, empty: &str, local: &str) -> Result<Source, String> {
    if s.trim().is_empty() {
        return Err(empty.into());
    }
    if !s.contains("://") {
        return Ok(Source::Local(PathBuf::from(s)));
    }
    let url = Url::parse(s).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" | "https" => Ok(Source::Http(url)),
        "file" => url
            .to_file_path()
            .map(Source::Local)
            .map_err(|()| "not a local file path".into()),
        other => Err(format!(
            "unsupported scheme `{other}`: expected http, https, file or {local}"
        )),
    }
}

/// One concrete place to read an artifact from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http(Url),
    Local(PathBuf),
}

impl Source {
    /// `http(s)://` → HTTP, `file://` → local, anything without `://` → local path.
    pub fn parse(s: &str) -> Result<Self, FetchError> {
        parse_location(s, "empty", "a local path").map_err(|reason| FetchError::InvalidUrl {
            url: s.to_string(),
            reason,
        })
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Source::Local(_))
    }

    /// The form used in messages and logs (passwords redacted).
    pub fn display(&self) -> String {
        match self {
            Source::Http(u) => redact(u),
            Source::Local(p) => p.display().to_string(),
        }
    }

    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Source::Local(p) => Some(p),
            Source::Http(_) => None,
        }
    }
}

/// A URL as it may appear in logs and errors: any password is replaced by `***`.
pub fn redact(url: &Url) -> String {
    if url.password().is_some() {
        let mut u = url.clone();
        let _ = u.set_password(Some("***"));
        u.to_string()
    } else {
        url.to_string()
    }
}

/// `<host>/<path>` of an upstream URL: the layout a mirror must use for it.
pub fn mirror_layout_path(upstream: &Url) -> Option<String> {
    let host = upstream.host_str().filter(|h| !h.is_empty())?;
    Some(format!("{host}{}", upstream.path()))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBELET: &str = "https://dl.k8s.io/release/v1.35.1/bin/linux/amd64/kubelet";

    #[test]
    fn url_mirror_appends_host_and_path() {
        let up = Url::parse(KUBELET).unwrap();
        for base in ["http://m.example:8080/pub", "http://m.example:8080/pub/"] {
            let m = Mirror::parse(base).unwrap();
            assert_eq!(
                m.locate(&up),
                Some(Source::Http(
                    Url::parse(
                        "http://m.example:8080/pub/dl.k8s.io/release/v1.35.1/bin/linux/amd64/kubelet"
                    )
                    .unwrap()
                ))
            );
        }
        let up = Url::parse("https://u:p@h.example:444/a/b?x=1#f").unwrap();
        let m = Mirror::parse("http://m.example").unwrap();
        assert_eq!(
            m.locate(&up).unwrap().display(),
            "http://m.example/h.example/a/b"
        );
    }

    #[test]
    fn dir_mirror_appends_host_and_decoded_path() {
        let up = Url::parse(KUBELET).unwrap();
        let m = Mirror::parse("/srv/mirror").unwrap();
        assert_eq!(
            m.locate(&up),
            Some(Source::Local(PathBuf::from(
                "/srv/mirror/dl.k8s.io/release/v1.35.1/bin/linux/amd64/kubelet"
            )))
        );
        assert_eq!(Mirror::parse("file:///srv/mirror").unwrap(), m);
        let up = Url::parse("https://h.example/a%20b/c").unwrap();
        assert_eq!(
            m.locate(&up),
            Some(Source::Local(PathBuf::from("/srv/mirror/h.example/a b/c")))
        );
        let up = Url::parse("https://h.example/a%2F..%2Fb").unwrap();
        assert_eq!(m.locate(&up), None);
    }

    #[test]
    fn sources() {
        assert!(matches!(Source::parse(KUBELET).unwrap(), Source::Http(_)));
        assert_eq!(
            Source::parse("file:///tmp/x").unwrap(),
            Source::Local("/tmp/x".into())
        );
        assert_eq!(
            Source::parse("rel/x").unwrap(),
            Source::Local("rel/x".into())
        );
        let e = Source::parse("ftp://h/x").unwrap_err().to_string();
        assert!(e.contains("unsupported scheme `ftp`"), "{e}");
        assert!(Mirror::parse("s3://b").is_err());
        let u = Url::parse("https://user:secret@h/x").unwrap();
        assert!(!redact(&u).contains("secret"));
    }
}

//! Image references: `registry.k8s.io/pause:3.10.1`, `rajchaudhuri/weave-kube:2.9.0`,
//! `127.0.0.1:5000/test/img:1`, with Docker's normalisation (no registry → `docker.io`,
//! a single-component Docker Hub name → `library/<name>`).

use std::fmt;

/// Where the Docker Hub API lives: `docker.io` names the registry, this host serves it.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written in normalised names (`docker.io`, `registry.k8s.io`,
    /// `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path (`library/busybox`, `coredns/coredns`).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>` after `@`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses a reference. Registry, repository, tag and digest are checked against the
    /// distribution grammar (simplified: lowercase path components of `[a-z0-9._-]`).
    pub fn parse(s: &str) -> Result<Reference, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty image reference".into());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let (registry, mut repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | DOCKER_HUB_API_HOST => DOCKER_HUB.to_string(),
            _ => registry,
        };
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
                    || !c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            })
        {
            return Err(format!(
                "`{s}`: the repository `{repository}` must be lowercase path components of [a-z0-9._-]"
            ));
        }
        if !registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        {
            return Err(format!("`{s}`: `{registry}` is not a registry host"));
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                return Err(format!(
                    "`{s}`: tag `{t}` must be [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}"
                ));
            }
        }
        if let Some(d) = &digest {
            crate::fetch::Digest::parse(d).map_err(|e| format!("`{s}`: {e}"))?;
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host to send API requests to (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// The tag or digest to ask the registry for.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `registry/repository` (the name without tag or digest).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    /// The normalised full reference, as containerd and the kubelet name the image.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = Reference::parse("rajchaudhuri/weave-kube:2.9.0").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "docker.io/rajchaudhuri/weave-kube:2.9.0");
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox");
        assert_eq!(r.object(), "latest");
        let r = Reference::parse("docker.io/library/busybox:1.36").unwrap();
        assert_eq!(r.repository, "library/busybox");
        let r = Reference::parse("registry.k8s.io/coredns/coredns:v1.13.1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("registry.k8s.io", "coredns/coredns", Some("v1.13.1"))
        );
        assert_eq!(r.api_host(), "registry.k8s.io");
        let r = Reference::parse("127.0.0.1:5000/test/img:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "test/img")
        );
        let d = format!("sha256:{}", "0".repeat(64));
        let r = Reference::parse(&format!("localhost/x@{d}")).unwrap();
        assert_eq!(r.object(), d);
        assert_eq!(r.tag, None);
    }

    #[test]
    fn refuses_bad_names() {
        assert!(Reference::parse("Registry.k8s.io/Pause:1").is_err());
        assert!(Reference::parse("registry.k8s.io/pause:").is_err());
        assert!(Reference::parse("x@sha256:00").is_err());
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("a//b").is_err());
    }
}

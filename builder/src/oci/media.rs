//! OCI and Docker manifest documents: media types, the image index (manifest list),
//! the image manifest, the config's platform fields, and choosing a platform.

use serde::{Deserialize, Serialize};

use crate::profile::Arch;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_LAYOUT_VERSION: &str = "1.0.0";

/// The `Accept` header for manifest requests: every index and manifest type we read.
pub fn accept_header() -> String {
    [
        OCI_INDEX,
        DOCKER_MANIFEST_LIST,
        OCI_MANIFEST,
        DOCKER_MANIFEST,
    ]
    .join(", ")
}

/// Annotation containerd's importer takes the image name from.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI image-layout reference name annotation.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What a manifest document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An OCI index or a Docker manifest list: one manifest per platform.
    Index,
    /// An OCI or Docker v2 image manifest.
    Manifest,
}

/// Classifies a document from the `Content-Type` the registry sent, else from its
/// `mediaType` field, else from its shape.
pub fn classify(content_type: Option<&str>, body: &[u8]) -> Result<(Kind, String), String> {
    let declared = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| {
            [
                OCI_INDEX,
                DOCKER_MANIFEST_LIST,
                OCI_MANIFEST,
                DOCKER_MANIFEST,
            ]
            .contains(&c.as_str())
        });
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, rename = "mediaType")]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
        #[serde(default, rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let p: Probe = serde_json::from_slice(body).map_err(|e| format!("not a JSON manifest: {e}"))?;
    if p.schema_version != Some(2) {
        return Err(format!(
            "schemaVersion {:?}: only schema 2 manifests (OCI, Docker v2) are supported",
            p.schema_version
        ));
    }
    let media = declared.or(p.media_type.clone()).unwrap_or_else(|| {
        if p.manifests.is_some() {
            OCI_INDEX.to_string()
        } else {
            OCI_MANIFEST.to_string()
        }
    });
    match media.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok((Kind::Index, media)),
        OCI_MANIFEST | DOCKER_MANIFEST if p.layers.is_some() => Ok((Kind::Manifest, media)),
        OCI_MANIFEST | DOCKER_MANIFEST => Err("the manifest has no layers".into()),
        other => Err(format!("unsupported media type `{other}`")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A content descriptor as it appears in manifests and indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The platform fields of an image config.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigPlatform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// OCI's name of an architecture (`GOARCH`).
pub fn oci_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "amd64",
        Arch::Aarch64 => "arm64",
    }
}

/// `linux/amd64`, `linux/arm64`.
pub fn platform_string(arch: Arch) -> String {
    format!("linux/{}", oci_arch(arch))
}

/// The index entry for `linux/<arch>`. For arm64 an entry with variant `v8` or none is
/// taken (a `v7`-style variant never matches a 64-bit node).
pub fn choose(index: &Index, arch: Arch) -> Option<&Descriptor> {
    let want = oci_arch(arch);
    let fits = |d: &&Descriptor| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == "linux"
                && p.architecture == want
                && match (arch, p.variant.as_deref()) {
                    (Arch::Aarch64, Some(v)) => v == "v8",
                    _ => true,
                }
        })
    };
    index.manifests.iter().find(fits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(json: &str) -> Index {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn chooses_platform() {
        let i = idx(r#"{"manifests":[
            {"mediaType":"m","digest":"sha256:a","size":1,"platform":{"architecture":"arm","os":"linux","variant":"v7"}},
            {"mediaType":"m","digest":"sha256:b","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
            {"mediaType":"m","digest":"sha256:c","size":1,"platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"m","digest":"sha256:d","size":1,"platform":{"architecture":"unknown","os":"unknown"}}]}"#);
        assert_eq!(choose(&i, Arch::X86_64).unwrap().digest, "sha256:c");
        assert_eq!(choose(&i, Arch::Aarch64).unwrap().digest, "sha256:b");
        let i = idx(
            r#"{"manifests":[{"mediaType":"m","digest":"sha256:c","size":1,"platform":{"architecture":"amd64","os":"windows"}}]}"#,
        );
        assert!(choose(&i, Arch::X86_64).is_none());
    }

    #[test]
    fn classifies() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:a","size":1},"layers":[]}"#;
        assert_eq!(
            classify(Some(DOCKER_MANIFEST), m).unwrap(),
            (Kind::Manifest, DOCKER_MANIFEST.to_string())
        );
        assert_eq!(
            classify(Some("application/json"), m).unwrap().0,
            Kind::Manifest
        );
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            classify(None, i).unwrap(),
            (Kind::Index, OCI_INDEX.to_string())
        );
        assert!(classify(None, br#"{"schemaVersion":1}"#)
            .unwrap_err()
            .contains("schema 2"));
    }
}

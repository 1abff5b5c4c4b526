//! Container images for the cluster manifests: the list the image build wrote, else
//! documented defaults pulled from their registries.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::kube::manifests::Images;
use nodeimage_core::config::{CniProvider, NodeConfig};
use nodeimage_core::files::rooted;

/// Written by the image build: the OCI images baked into the image.
pub const IMAGES_JSON: &str = "/usr/share/nodeimage/images/images.json";

/// One entry of [`IMAGES_JSON`] (unknown keys are ignored: the build may add more).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageEntry {
    /// Short name: `coredns`, `weave-kube`, `weave-npc`, `ingress-nginx-controller`,
    /// `ingress-nginx-default-backend`, `kured`, `kubernetes-dashboard`, `pause`, ...
    pub name: String,
    /// `registry/repository:tag` (or already `...@sha256:...`).
    pub reference: String,
    /// `sha256:...` of what was baked.
    #[serde(default)]
    pub digest: Option<String>,
    /// Which nodes import it (`master`, `worker`, `all`); not used here.
    #[serde(default)]
    pub role: Option<String>,
}

impl ImageEntry {
    /// The reference a manifest uses for a baked image: exactly the name the `images`
    /// step imported it under (`repo:tag`). The digest is not appended: containerd's CRI
    /// resolves `repo:tag@sha256:…` by the digest reference `repo@sha256:…`, which no
    /// imported image is named, so the kubelet would pull (and an air-gapped node never
    /// start the pod). The bytes are pinned anyway: the build pulled them by digest and
    /// the `images` step checks the digest of what it imported.
    pub fn reference_as_imported(&self) -> String {
        self.reference.clone()
    }

    fn repository(&self) -> &str {
        let r = self.reference.split('@').next().unwrap_or_default();
        // A tag follows the last `:` after the last `/` (a registry port comes before it).
        match (r.rfind(':'), r.rfind('/')) {
            (Some(c), Some(s)) if c > s => &r[..c],
            (Some(c), None) => &r[..c],
            _ => r,
        }
    }

    fn matches(&self, key: &ImageKey) -> bool {
        self.name == key.name
            || key
                .aliases
                .iter()
                .any(|a| self.repository().ends_with(&format!("/{a}")))
    }
}

/// An image the manifests may need, with the default used when the image build wrote no
/// [`IMAGES_JSON`].
#[derive(Debug, Clone, Copy)]
pub struct ImageKey {
    pub name: &'static str,
    /// Repository suffixes that identify it in [`IMAGES_JSON`] entries with other names.
    pub aliases: &'static [&'static str],
    pub default: &'static str,
}

/// Default references (docs: the worked example lists them). CoreDNS is kubeadm 1.35's
/// pin by digest. The others follow the default profiles (Weave Net from the maintained
/// community fork, see profiles/k8s-1.36-*.toml); they have no published digest.
pub const IMAGE_KEYS: &[ImageKey] = &[
    ImageKey {
        name: "coredns",
        aliases: &["coredns/coredns"],
        default: "registry.k8s.io/coredns/coredns:v1.13.1@sha256:9b9128672209474da07c91439bf15ed704ae05ad918dd6454e5b6ae14e35fee6",
    },
    ImageKey {
        name: "weave-kube",
        aliases: &["weave-kube"],
        default: "docker.io/rajchaudhuri/weave-kube:2.9.0",
    },
    ImageKey {
        name: "weave-npc",
        aliases: &["weave-npc"],
        default: "docker.io/rajchaudhuri/weave-npc:2.9.0",
    },
    ImageKey {
        name: "flannel",
        aliases: &["flannel-io/flannel"],
        default: "ghcr.io/flannel-io/flannel:v0.28.10",
    },
    ImageKey {
        name: "ingress-nginx-controller",
        aliases: &["ingress-nginx/controller"],
        default: "registry.k8s.io/ingress-nginx/controller:v1.15.1",
    },
    ImageKey {
        name: "kured",
        aliases: &["kured"],
        default: "ghcr.io/kubereboot/kured:1.21.0",
    },
    ImageKey {
        name: "kubernetes-dashboard",
        aliases: &["kubernetesui/dashboard"],
        default: "docker.io/kubernetesui/dashboard:v2.7.0",
    },
];

const DEFAULT_BACKEND: &str = "ingress-nginx-default-backend";

fn key(name: &str) -> &'static ImageKey {
    IMAGE_KEYS
        .iter()
        .find(|k| k.name == name)
        .expect("known image key")
}

/// The images this cluster's manifests need (CoreDNS and the pod network's always,
/// addons when enabled).
pub fn needed_images(config: &NodeConfig) -> Vec<&'static str> {
    let a = &config.cluster.addons;
    let mut v = vec!["coredns"];
    match config.cluster.network.provider {
        CniProvider::Weave => v.extend(["weave-kube", "weave-npc"]),
        CniProvider::Flannel => v.push("flannel"),
    }
    if a.ingress_enabled() {
        v.push("ingress-nginx-controller");
    }
    if a.kured.as_ref().is_some_and(|k| k.enabled) {
        v.push("kured");
    }
    if a.kubernetes_dashboard.as_ref().is_some_and(|k| k.enabled) {
        v.push("kubernetes-dashboard");
    }
    v
}

/// Parse [`IMAGES_JSON`]: a list of entries, or `{"images": [...]}`.
pub fn parse_images_json(text: &str) -> Result<Vec<ImageEntry>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<ImageEntry>),
        Wrapped { images: Vec<ImageEntry> },
    }
    Ok(match serde_json::from_str::<Doc>(text)? {
        Doc::List(v) => v,
        Doc::Wrapped { images } => images,
    })
}

/// The manifests' images and a word on where they came from.
///
/// With [`IMAGES_JSON`] under `root` the image says what it carries: every needed image
/// must be listed (an air-gapped node could not pull a default), else a clear error.
/// Without it the defaults of [`IMAGE_KEYS`] are used and pulled from their registries.
pub fn resolve_images(root: &Path, config: &NodeConfig) -> Result<(Images, String)> {
    let path = rooted(root, IMAGES_JSON);
    let needed = needed_images(config);
    let entries = match std::fs::read_to_string(&path) {
        Ok(text) => Some(parse_images_json(&text).with_context(|| {
            format!("{IMAGES_JSON}: expected a list of {{name, reference, digest, role}}")
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let pick = |name: &str| -> Result<String> {
        let k = key(name);
        match &entries {
            None => Ok(k.default.to_string()),
            Some(list) => match list.iter().find(|e| e.matches(k)) {
                Some(e) => Ok(e.reference_as_imported()),
                None if needed.contains(&name) => {
                    let have: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
                    bail!(
                        "the {name} image is needed but not in this image's {IMAGES_JSON} (it lists: {}): \
                         add it to the profile's images, or disable the addon that needs it",
                        if have.is_empty() { "nothing".to_string() } else { have.join(", ") }
                    )
                }
                // Not needed by this cluster: never used in a manifest.
                None => Ok(k.default.to_string()),
            },
        }
    };
    let images = Images {
        coredns: pick("coredns")?,
        weave_kube: pick("weave-kube")?,
        weave_npc: pick("weave-npc")?,
        flannel: pick("flannel")?,
        ingress_nginx_controller: pick("ingress-nginx-controller")?,
        ingress_default_backend: entries
            .as_ref()
            .and_then(|l| l.iter().find(|e| e.name == DEFAULT_BACKEND))
            .map(ImageEntry::reference_as_imported),
        kured: pick("kured")?,
        kubernetes_dashboard: pick("kubernetes-dashboard")?,
    };
    let source = match &entries {
        Some(l) => format!("{IMAGES_JSON} ({} images)", l.len()),
        None => format!("defaults (no {IMAGES_JSON}; pulled from their registries)"),
    };
    Ok((images, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addons: &str) -> NodeConfig {
        NodeConfig::parse(
            "n",
            &format!(
                "version: 1\nrole: master\ncluster:\n  name: d\n  api_endpoint: 10.0.0.1\n{addons}"
            ),
        )
        .unwrap()
    }

    #[test]
    fn defaults_without_the_file() {
        let d = tempfile::tempdir().unwrap();
        let (i, src) = resolve_images(d.path(), &config("")).unwrap();
        assert!(i
            .coredns
            .starts_with("registry.k8s.io/coredns/coredns:v1.13.1@sha256:"));
        assert_eq!(i.ingress_default_backend, None);
        assert!(src.starts_with("defaults"), "{src}");
    }

    #[test]
    fn baked_entries_are_used_by_their_imported_name_and_required() {
        let d = tempfile::tempdir().unwrap();
        let p = rooted(d.path(), IMAGES_JSON);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            r#"[
              {"name": "pause", "reference": "registry.k8s.io/pause:3.10.1", "digest": "sha256:aa", "role": "all"},
              {"name": "coredns", "reference": "registry.k8s.io/coredns/coredns:v1.13.1", "digest": "sha256:bb"},
              {"name": "weave", "reference": "docker.io/weaveworks/weave-kube:2.8.1"},
              {"name": "weave-npc", "reference": "docker.io/weaveworks/weave-npc:2.8.1@sha256:cc", "digest": "sha256:cc"}
            ]"#,
        )
        .unwrap();
        let (i, src) = resolve_images(d.path(), &config("")).unwrap();
        // The name the archive was imported under, not `…:v1.13.1@sha256:bb` (which
        // containerd's CRI would look up as `…@sha256:bb` and not find).
        assert_eq!(i.coredns, "registry.k8s.io/coredns/coredns:v1.13.1");
        assert_eq!(
            i.weave_kube, "docker.io/weaveworks/weave-kube:2.8.1",
            "matched by repository"
        );
        assert_eq!(
            i.weave_npc,
            "docker.io/weaveworks/weave-npc:2.8.1@sha256:cc"
        );
        assert!(src.contains("4 images"), "{src}");
        let e = resolve_images(
            d.path(),
            &config("  addons:\n    kured:\n      enabled: true\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("the kured image is needed but not in this image's /usr/share/nodeimage/images/images.json (it lists: pause, coredns, weave, weave-npc)"),
            "{e}"
        );
        std::fs::write(&p, "{not json").unwrap();
        let e = format!("{:#}", resolve_images(d.path(), &config("")).unwrap_err());
        assert!(e.contains("expected a list"), "{e}");
    }

    #[test]
    fn repository_of_references() {
        let e = |r: &str| ImageEntry {
            name: "x".into(),
            reference: r.into(),
            digest: None,
            role: None,
        };
        assert_eq!(e("localhost:5000/a/b:1").repository(), "localhost:5000/a/b");
        assert_eq!(e("localhost:5000/a/b").repository(), "localhost:5000/a/b");
        assert_eq!(e("a/b@sha256:00").repository(), "a/b");
        assert_eq!(e("busybox:1").repository(), "busybox");
        assert_eq!(
            parse_images_json(r#"{"images": []}"#).unwrap(),
            Vec::<ImageEntry>::new()
        );
    }
}

//! The files the `containerd-config` step writes, as typed values serialized with the
//! `toml` crate (which quotes keys such as "io.containerd.grpc.v1.cri" and escapes
//! strings): `config.toml` in both schemas and one `hosts.toml` per registry.

use std::fmt::Write as _;

use serde::Serialize;

use super::{ConfigSchema, ContainerdSettings, MARKER};

/// `config.toml`: the schema version and the plugins' sections (`PluginsV2` for
/// containerd 1.x, `PluginsV3` for 2.x).
#[derive(Debug, Serialize)]
struct Config<P> {
    version: u32,
    /// Empty: the CRI plugin must not be disabled (some packages ship
    /// `disabled_plugins = ["cri"]`).
    disabled_plugins: Vec<String>,
    plugins: P,
}

#[derive(Debug, Serialize)]
struct PluginsV3<'a> {
    #[serde(rename = "io.containerd.cri.v1.images")]
    images: CriImagesV3<'a>,
    #[serde(rename = "io.containerd.cri.v1.runtime")]
    runtime: CriRuntimeV3,
}

#[derive(Debug, Serialize)]
struct CriImagesV3<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_images: Option<PinnedImages<'a>>,
    registry: Registry<'a>,
}

#[derive(Debug, Serialize)]
struct PinnedImages<'a> {
    sandbox: &'a str,
}

#[derive(Debug, Serialize)]
struct CriRuntimeV3 {
    containerd: CriContainerd,
}

#[derive(Debug, Serialize)]
struct PluginsV2<'a> {
    #[serde(rename = "io.containerd.grpc.v1.cri")]
    cri: CriV2<'a>,
}

#[derive(Debug, Serialize)]
struct CriV2<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox_image: Option<&'a str>,
    cni: Cni,
    registry: Registry<'a>,
    containerd: CriContainerd,
}

/// Debian's packaged config points CNI at /usr/lib/cni; the node's plugins (and
/// Weave's) live in /opt/cni/bin.
#[derive(Debug, Serialize)]
struct Cni {
    bin_dir: &'static str,
    conf_dir: &'static str,
}

#[derive(Debug, Serialize)]
struct Registry<'a> {
    config_path: &'a str,
}

/// runc as the default runtime, with the systemd cgroup driver.
#[derive(Debug, Serialize)]
struct CriContainerd {
    default_runtime_name: &'static str,
    runtimes: Runtimes,
}

#[derive(Debug, Serialize)]
struct Runtimes {
    runc: Runc,
}

#[derive(Debug, Serialize)]
struct Runc {
    runtime_type: &'static str,
    options: RuncOptions,
}

#[derive(Debug, Serialize)]
struct RuncOptions {
    #[serde(rename = "SystemdCgroup")]
    systemd_cgroup: bool,
}

impl CriContainerd {
    fn runc_systemd() -> Self {
        CriContainerd {
            default_runtime_name: "runc",
            runtimes: Runtimes {
                runc: Runc {
                    runtime_type: "io.containerd.runc.v2",
                    options: RuncOptions {
                        systemd_cgroup: true,
                    },
                },
            },
        }
    }
}

/// containerd's `config.toml` for a Kubernetes node.
pub fn render_config(s: &ContainerdSettings, schema: ConfigSchema) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "{MARKER}");
    let _ = writeln!(t, "# containerd for Kubernetes: CRI on, runc with the systemd cgroup driver, the pinned pause");
    let _ = writeln!(
        t,
        "# image as sandbox image, registry mirrors in {} (one hosts.toml per registry).",
        s.config_path
    );
    let registry = Registry {
        config_path: &s.config_path,
    };
    let body = match schema {
        ConfigSchema::V3 => toml::to_string(&Config {
            version: schema.number(),
            disabled_plugins: Vec::new(),
            plugins: PluginsV3 {
                images: CriImagesV3 {
                    pinned_images: s
                        .sandbox_image
                        .as_deref()
                        .map(|sandbox| PinnedImages { sandbox }),
                    registry,
                },
                runtime: CriRuntimeV3 {
                    containerd: CriContainerd::runc_systemd(),
                },
            },
        }),
        ConfigSchema::V2 => toml::to_string(&Config {
            version: schema.number(),
            disabled_plugins: Vec::new(),
            plugins: PluginsV2 {
                cri: CriV2 {
                    sandbox_image: s.sandbox_image.as_deref(),
                    cni: Cni {
                        bin_dir: "/opt/cni/bin",
                        conf_dir: "/etc/cni/net.d",
                    },
                    registry,
                    containerd: CriContainerd::runc_systemd(),
                },
            },
        }),
    };
    t.push_str(&body.expect("containerd's config serialises"));
    t
}

/// `hosts.toml`: the registry's server, then its mirrors as `[host."<url>"]` tables, in
/// the order containerd tries them.
#[derive(Debug, Serialize)]
struct HostsToml {
    server: String,
    #[serde(serialize_with = "ordered_tables")]
    host: Vec<(String, MirrorHost)>,
}

#[derive(Debug, Serialize)]
struct MirrorHost {
    capabilities: [&'static str; 2],
}

/// Pairs as a TOML table whose keys keep their order.
fn ordered_tables<S: serde::Serializer, V: Serialize>(
    pairs: &[(String, V)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// The upstream server of a registry host, as containerd's hosts.toml `server` wants it.
pub fn registry_server(host: &str) -> String {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://registry-1.docker.io".into()
        }
        h => format!("https://{h}"),
    }
}

/// `hosts.toml` for one registry: pull from the mirrors in order, then the registry.
pub fn render_hosts(host: &str, mirrors: &[String]) -> String {
    let hosts = HostsToml {
        server: registry_server(host),
        host: mirrors
            .iter()
            .map(|m| {
                let url = if m.contains("://") {
                    m.trim_end_matches('/').to_string()
                } else {
                    format!("https://{}", m.trim_end_matches('/'))
                };
                let mirror = MirrorHost {
                    capabilities: ["pull", "resolve"],
                };
                (url, mirror)
            })
            .collect(),
    };
    let body = toml::to_string(&hosts).expect("hosts.toml serialises");
    format!("{MARKER}\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        // What the config says comes back from a TOML reader unchanged, whatever it holds.
        for image in ["a\"b\\c", "x\u{1}", "tab\there", "line\nbreak", "ünï"] {
            for schema in [ConfigSchema::V2, ConfigSchema::V3] {
                let text = render_config(&ContainerdSettings::new(Some(image.into())), schema);
                let v: toml::Value = toml::from_str(&text).unwrap();
                let got = match schema {
                    ConfigSchema::V2 => &v["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"],
                    ConfigSchema::V3 => {
                        &v["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
                    }
                };
                assert_eq!(got.as_str(), Some(image), "{text}");
            }
        }
        let hosts = render_hosts("quay.io", &["https://m\"x\"".into(), "m2".into()]);
        let v: toml::Value = toml::from_str(&hosts).unwrap();
        assert!(v["host"].get("https://m\"x\"").is_some(), "{hosts}");
    }
}

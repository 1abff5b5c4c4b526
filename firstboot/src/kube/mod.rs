//! Kubernetes configuration generators: systemd units and flags for the control plane,
//! the kubelet and kube-proxy, KubeletConfiguration, kubeconfigs, and the manifests the
//! bootstrap master applies (bootstrap token, RBAC, CoreDNS, Weave Net, addons).
//!
//! All of it is pure: values in, text out, golden-file tested. Manifests, the kubelet's
//! and kube-proxy's configurations and kubeconfigs are typed values ([`objects`] and
//! the configuration structs) serialized by [`nodeimage_core::yaml`], never text templates;
//! systemd units come from [`ServiceUnit`]. Written from the Kubernetes v1.35 reference
//! documentation. Decisions worth knowing:
//!
//! * The control plane runs as systemd services with the pinned binaries, not as static
//!   pods: the image has no registry to pull control-plane images from, and etcd is a
//!   systemd service already.
//! * kube-proxy is a systemd service on every node for the same reason. It uses the
//!   kubelet's own client certificate (`/etc/kubernetes/kubelet.conf`); the group
//!   `system:nodes` is bound to the built-in `system:node-proxier` role.
//! * Node roles: NodeRestriction forbids a kubelet to set `node-role.kubernetes.io/*` on
//!   itself (and the kubelet refuses such `--node-labels`). The kubelet sets only the
//!   operator's labels; the bootstrap master labels Nodes through the API
//!   ([`manifests::node_role_patch`]): masters `node-role.kubernetes.io/master` and
//!   `.../control-plane`, workers `node-role.kubernetes.io/node=true` (Tectonic).
//! * Masters register with the taint `node-role.kubernetes.io/control-plane:NoSchedule`
//!   (kubelet `registerWithTaints`) unless `taint_masters: false`.
//! * Kubelet serving certificates: masters serve with the certificate they minted;
//!   workers request one (`serverTLSBootstrap`), which nothing in Kubernetes approves
//!   automatically: the bootstrap master approves those that pass [`csr`]'s policy.
//! * Cloud providers: the in-tree providers are gone (removed from Kubernetes in 1.31,
//!   and kube-apiserver no longer takes `--cloud-provider`). With `cloud.provider` set,
//!   the kubelet and kube-controller-manager run with `--cloud-provider=external` and
//!   the provider's cloud-controller-manager must be deployed (not done here).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use nodeimage_core::config::{NodeConfig, Role};
use nodeimage_core::ports::{NodeFacts, PortPolicy, PortsError, Service};

pub mod addons;
pub mod control_plane;
pub mod csr;
pub mod flannel;

pub mod kubelet;
pub mod manifests;
pub mod objects;
pub mod proxy;

/// Where the pinned Kubernetes binaries are on the image.
pub const DEFAULT_BIN_DIR: &str = "/usr/bin";
/// containerd's CRI socket.
pub const CONTAINERD_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// Where this node's components listen, resolved once from the port table
/// ([`PortPolicy::bind_address`]) so the firewall and the configs cannot drift apart.
/// `None`: the service does not run on this node, or its row disables it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binds {
    pub apiserver: Option<SocketAddr>,
    pub controller_manager: Option<SocketAddr>,
    pub scheduler: Option<SocketAddr>,
    /// The stacked etcd's loopback client listener (what the local kube-apiserver uses).
    pub etcd_local_client: Option<SocketAddr>,
    pub kubelet: Option<SocketAddr>,
    pub kubelet_healthz: Option<SocketAddr>,
    /// The read-only kubelet port; the table disables it (`readOnlyPort: 0`).
    pub kubelet_read_only: Option<SocketAddr>,
    pub kube_proxy_healthz: Option<SocketAddr>,
    pub kube_proxy_metrics: Option<SocketAddr>,
    pub weave_status: Option<SocketAddr>,
}

impl Binds {
    pub fn from_policy(p: &PortPolicy) -> Result<Self, PortsError> {
        let b = |s: Service| p.bind_address(s);
        let etcd_local_client = p
            .listen_addresses(Service::EtcdClient)?
            .into_iter()
            .find(|a| a.ip().is_loopback());
        Ok(Binds {
            apiserver: b(Service::KubeApiserver)?,
            controller_manager: b(Service::KubeControllerManager)?,
            scheduler: b(Service::KubeScheduler)?,
            etcd_local_client,
            kubelet: b(Service::Kubelet)?,
            kubelet_healthz: b(Service::KubeletHealthz)?,
            kubelet_read_only: b(Service::KubeletReadOnly)?,
            kube_proxy_healthz: b(Service::KubeProxyHealthz)?,
            kube_proxy_metrics: b(Service::KubeProxyMetrics)?,
            weave_status: b(Service::WeaveStatus)?,
        })
    }
}

/// The port policy of the node a config describes, with `internal_ip` as its address
/// (detected when the config names none).
pub fn port_policy(node: &NodeConfig, internal_ip: IpAddr) -> Result<PortPolicy, PortsError> {
    let mut facts = NodeFacts::from_node_config(node)?;
    facts.node_address = Some(internal_ip);
    PortPolicy::new(facts)
}

/// Everything the generators need to know about this node.
#[derive(Debug, Clone)]
pub struct KubeInputs<'a> {
    pub node: &'a NodeConfig,
    /// The node's name (hostname).
    pub hostname: &'a str,
    /// The node's internal address (advertise address, node IP).
    pub internal_ip: IpAddr,
    /// Directory of kube-apiserver, kubelet, ... on the image.
    pub bin_dir: &'a str,
    /// Bind addresses from the port table.
    pub binds: Binds,
}

impl<'a> KubeInputs<'a> {
    /// Inputs for a node, with its bind addresses resolved from the port table.
    pub fn new(
        node: &'a NodeConfig,
        hostname: &'a str,
        internal_ip: IpAddr,
        bin_dir: &'a str,
    ) -> Result<Self, PortsError> {
        let binds = Binds::from_policy(&port_policy(node, internal_ip)?)?;
        Ok(KubeInputs {
            node,
            hostname,
            internal_ip,
            bin_dir,
            binds,
        })
    }

    pub fn is_master(&self) -> bool {
        self.node.role == Role::Master
    }

    pub fn bin(&self, name: &str) -> String {
        format!("{}/{name}", self.bin_dir.trim_end_matches('/'))
    }
}

/// A file to write on the node.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Absolute node path.
    pub path: String,
    pub mode: u32,
    pub contents: String,
}

impl std::fmt::Debug for GeneratedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Contents may be secret (kubeconfigs with tokens, the weave password).
        write!(
            f,
            "GeneratedFile({}, {:o}, {} bytes)",
            self.path,
            self.mode,
            self.contents.len()
        )
    }
}

impl GeneratedFile {
    pub(crate) fn new(path: &str, mode: u32, contents: String) -> Self {
        GeneratedFile {
            path: path.to_string(),
            mode,
            contents,
        }
    }
}

/// Write generated files under a root prefix, atomically, with their modes.
pub fn write_files(root: &Path, files: &[GeneratedFile]) -> std::io::Result<()> {
    for f in files {
        nodeimage_core::files::atomic_write(
            &nodeimage_core::files::rooted(root, &f.path),
            f.contents.as_bytes(),
            f.mode,
        )?;
    }
    Ok(())
}

/// Command-line flags, rendered sorted as `--name=value`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags(std::collections::BTreeMap<String, String>);

impl Flags {
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.0.insert(name.to_string(), value.into());
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Add (or replace) the operator's flags: `components.<name>.extra_args`.
    pub fn extend_from(&mut self, extra: &std::collections::BTreeMap<String, String>) -> &mut Self {
        for (k, v) in extra {
            self.set(k, v.clone());
        }
        self
    }

    /// One `--name=value` per element.
    pub fn to_args(&self) -> Vec<String> {
        self.iter().map(|(k, v)| format!("--{k}={v}")).collect()
    }
}

/// A systemd service unit running `exec` with `flags`, one flag per line.
pub struct ServiceUnit<'a> {
    pub description: &'a str,
    pub documentation: &'a str,
    pub after: &'a [&'a str],
    pub wants: &'a [&'a str],
    pub requires: &'a [&'a str],
    pub exec: String,
    pub flags: &'a Flags,
}

impl ServiceUnit<'_> {
    pub fn render(&self) -> String {
        let mut s = String::from("# Written by firstboot.\n[Unit]\n");
        s.push_str(&format!(
            "Description={}\nDocumentation={}\n",
            self.description, self.documentation
        ));
        // Every component listens on ports: none starts without the firewall (fail
        // closed; see nodeimage-firewall.service).
        let mut after = self.after.to_vec();
        after.push(crate::host::FIREWALL_UNIT);
        let mut requires = self.requires.to_vec();
        requires.push(crate::host::FIREWALL_UNIT);
        s.push_str(&format!("After={}\n", after.join(" ")));
        if !self.wants.is_empty() {
            s.push_str(&format!("Wants={}\n", self.wants.join(" ")));
        }
        s.push_str(&format!("Requires={}\n", requires.join(" ")));
        s.push_str("\n[Service]\nExecStart=");
        s.push_str(&exec_word(&self.exec));
        for a in self.flags.to_args() {
            s.push_str(" \\\n    ");
            s.push_str(&exec_word(&a));
        }
        s.push_str("\nRestart=always\nRestartSec=5s\nLimitNOFILE=65536\n\n[Install]\nWantedBy=multi-user.target\n");
        s
    }
}

/// One word of an `ExecStart=` line, as systemd splits and unescapes it again
/// (systemd.service(5), "Command lines"): `%` specifiers and `$VAR` expansion are
/// escaped (`%%`, `$$`) everywhere; a word with whitespace, quotes, backslashes, control
/// characters or other shell-ish characters is double-quoted with C escapes (`\"`,
/// `\\`, `\n`, `\xNN`), which systemd decodes; a lone `;` is written `\;`.
pub fn exec_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%$~*[]".contains(c));
    let escaped = word.replace('%', "%%").replace('$', "$$");
    if plain {
        return escaped;
    }
    if word == ";" {
        return "\\;".into();
    }
    let mut s = String::with_capacity(escaped.len() + 2);
    s.push('"');
    for c in escaped.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if c.is_control() => {
                for b in c.to_string().bytes() {
                    s.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// Every file this node's role needs: control plane (masters), kubelet, kube-proxy.
pub fn node_files(inp: &KubeInputs) -> Vec<GeneratedFile> {
    let mut v = Vec::new();
    if inp.is_master() {
        v.extend(control_plane::control_plane_files(inp));
    }
    v.extend(kubelet::kubelet_files(inp));
    v.extend(proxy::kube_proxy_files(inp));
    v
}

/// A configuration file's typed value with the operator's top-level fields
/// (`components.<name>.config`) merged over it: a field they name replaces the product's.
pub fn with_overrides<T: serde::Serialize>(
    typed: &T,
    over: &std::collections::BTreeMap<String, serde_json::Value>,
) -> serde_json::Value {
    let mut v = serde_json::to_value(typed).expect("configuration types serialize");
    if let serde_json::Value::Object(m) = &mut v {
        for (k, x) in over {
            m.insert(k.clone(), x.clone());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_words_are_quoted_and_escaped() {
        for (word, written) in [
            (
                "--node-labels=disk=ssd,topology.kubernetes.io/zone=a",
                "--node-labels=disk=ssd,topology.kubernetes.io/zone=a",
            ),
            ("/usr/bin/kubelet", "/usr/bin/kubelet"),
            ("--x=100%", "--x=100%%"),
            ("--x=$HOME", "--x=$$HOME"),
            ("--x=a b", "\"--x=a b\""),
            ("--x=a\tb", "\"--x=a\\tb\""),
            ("--x=say \"hi\"", "\"--x=say \\\"hi\\\"\""),
            ("--x='a'", "\"--x='a'\""),
            ("--x=a\\b", "\"--x=a\\\\b\""),
            ("--x=line1\nline2", "\"--x=line1\\nline2\""),
            ("--x=a\u{1}", "\"--x=a\\x01\""),
            ("--x=50% of $X y", "\"--x=50%% of $$X y\""),
            ("--x=a;b", "\"--x=a;b\""),
            (";", "\\;"),
            ("", "\"\""),
        ] {
            assert_eq!(exec_word(word), written, "{word:?}");
        }
    }

    #[test]
    fn a_unit_keeps_one_word_per_line() {
        let mut f = Flags::default();
        f.set("a", "x y").set("b", "two\nlines");
        let unit = ServiceUnit {
            description: "d",
            documentation: "https://example.com",
            after: &[],
            wants: &[],
            requires: &[],
            exec: "/usr/bin/x".into(),
            flags: &f,
        }
        .render();
        let exec: Vec<&str> = unit
            .lines()
            .skip_while(|l| !l.starts_with("ExecStart="))
            .take(3)
            .collect();
        assert_eq!(
            exec,
            [
                "ExecStart=/usr/bin/x \\",
                "    \"--a=x y\" \\",
                "    \"--b=two\\nlines\"",
            ]
        );
    }
}

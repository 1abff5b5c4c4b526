//! `nodeimage ports`: show the host port table of a role, the firewall it becomes and
//! the bind addresses derived from it.
//!
//! The Markdown form is the documentation (`docs/ports.md` is this command's output for
//! both roles, checked by a test), so the documented tables cannot drift from the firewall.
//!
//! ```text
//! nodeimage ports --format markdown > docs/ports.md          # both roles, defaults
//! nodeimage ports -c cluster.yml --role worker --labels disk=ssd
//! nodeimage ports -c cluster.yml --role master --format nft   # what firstboot loads
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use nodeimage_core::config::{ClusterConfig, Role};
use nodeimage_core::firewall;
use nodeimage_core::ports::{
    seed_ids, Activation, Condition, NodeFacts, PortPolicy, PortRange, PortRow, PortSpec, Reach,
    SourceSet, PORT_TABLE,
};

/// Output format of `nodeimage ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PortsFormat {
    /// Markdown tables (same as `markdown`).
    Table,
    /// Markdown tables: the port table, and bind addresses, per role.
    Markdown,
    /// The resolved policy (rules, source sets) and bind addresses as JSON.
    Json,
    /// The nftables ruleset (`nft -f`).
    Nft,
    /// The nftables ruleset as JSON (`nft -j -f`).
    NftJson,
}

/// Arguments of `nodeimage ports`.
#[derive(Debug, Clone, clap::Args)]
pub struct PortsArgs {
    /// cluster.yml to resolve against (hosts, network, addons); defaults when absent.
    #[arg(short = 'c', long = "config", value_name = "cluster.yml")]
    pub config: Option<PathBuf>,
    /// Node role. Without it, the Markdown format shows both roles; the others need it.
    #[arg(long, value_name = "master|worker")]
    pub role: Option<Role>,
    #[arg(long, value_enum, default_value_t = PortsFormat::Table)]
    pub format: PortsFormat,
    /// The node's labels, for addons.ingress-nginx.node_selector (repeat or comma-separate).
    #[arg(long = "labels", value_name = "KEY=VALUE", value_parser = parse_label, value_delimiter = ',')]
    pub labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, found `{s}`")),
    }
}

/// Print the ports of a role in the chosen format to stdout.
pub fn run(args: &PortsArgs) -> anyhow::Result<()> {
    print!("{}", render(args)?);
    Ok(())
}

/// What [`run`] prints.
pub fn render(args: &PortsArgs) -> anyhow::Result<String> {
    let cluster = match &args.config {
        Some(path) => {
            Some(ClusterConfig::load(path).with_context(|| format!("loading {}", path.display()))?)
        }
        None => None,
    };
    let labels: BTreeMap<String, String> = args.labels.iter().cloned().collect();
    let policy_for = |role: Role| -> anyhow::Result<PortPolicy> {
        let facts = match &cluster {
            Some(c) => {
                let name = args
                    .config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                NodeFacts::from_cluster_config(c, role, labels.clone())
                    .with_context(|| name.clone())?
            }
            None => {
                let mut f = NodeFacts::defaults(role);
                f.labels = labels.clone();
                f
            }
        };
        Ok(PortPolicy::new(facts)?)
    };
    let need_role = || -> anyhow::Result<Role> {
        match args.role {
            Some(r) => Ok(r),
            None => bail!(
                "--role master|worker is required for --format {:?}",
                args.format
            ),
        }
    };
    Ok(match args.format {
        PortsFormat::Table | PortsFormat::Markdown => {
            let roles = match args.role {
                Some(r) => vec![r],
                None => vec![Role::Master, Role::Worker],
            };
            let mut s = String::new();
            if args.role.is_none() {
                s += &markdown_header();
            }
            for role in roles {
                s += &markdown_role(&policy_for(role)?, cluster.is_some());
            }
            s
        }
        PortsFormat::Json => {
            let p = policy_for(need_role()?)?;
            let v = serde_json::json!({ "policy": p, "bind": p.bind_plan() });
            serde_json::to_string_pretty(&v)? + "\n"
        }
        PortsFormat::Nft => firewall::render_nft(&policy_for(need_role()?)?),
        PortsFormat::NftJson => firewall::render_json(&policy_for(need_role()?)?),
    })
}

/// `docs/ports.md`: both roles with the default cluster.yml.
pub fn render_docs() -> anyhow::Result<String> {
    render(&PortsArgs {
        config: None,
        role: None,
        format: PortsFormat::Markdown,
        labels: Vec::new(),
    })
}

fn markdown_header() -> String {
    let mut s = String::new();
    s += "# Host ports\n\n";
    s += "<!-- Generated by `nodeimage ports --format markdown` from core/src/ports/table.rs; do not edit. -->\n\n";
    s += "One table, from the seeds (`000`-`004` in the Seeds column), drives both the host firewall \
          (`table inet nodeimage`) and the components' bind addresses. \
          Rows for components this product does not ship (flannel, Calico, node exporter) are shown as options and never opened.\n\n";
    s += "Reachable from:\n\n";
    s += "- **anyone**: any source; the service authenticates or is meant to be public.\n";
    s += "- **cluster nodes**: `cluster.masters`, `cluster.nodes`, `network.node_subnets` \
          and the node itself; not pods.\n";
    s += "- **masters**: `cluster.masters` (and the node itself on a master).\n";
    s += "- **trusted subnets**: `network.trusted_subnets`.\n";
    s += "- **localhost only**: bound to 127.0.0.1 and dropped on every other interface.\n";
    s += "- **disabled**: turned off in the component and dropped.\n\n";
    s +=
        "Every port not listed is dropped (with a counter, and the input chain's policy is drop); \
          loopback, replies, ICMP/ICMPv6 and DHCP client replies are accepted.\n\n";
    s += "Pods: the forward chain drops what pods send to the link-local range (the cloud metadata \
          service at 169.254.169.254, which holds the node's join secrets; EC2's fd00:ec2::254 too) \
          and to every port of a cluster node that no row opens to anyone, so only ports reachable \
          from anyone are reachable from a pod. Run monitoring that scrapes node-only ports \
          (kubelet, Weave, kube-proxy) with `hostNetwork: true`.\n\n";
    s += "Fail closed: `nodeimage-firewall.service` loads a closed ruleset (SSH, DHCP and replies \
          only) before the node's own, which then replaces it; etcd, containerd, the kubelet and \
          the control plane require the unit, so a rejected ruleset keeps them down.\n\n";
    s
}

fn port_cell(row: &PortRow, node_ports: PortRange) -> String {
    match row.port {
        PortSpec::None => "(IP protocol 50)".to_string(),
        PortSpec::Port(p) => p.to_string(),
        PortSpec::NodePortRange => format!("{node_ports} (`network.node_port_range`)"),
    }
}

fn active_cell(policy: &PortPolicy, row: &'static PortRow) -> String {
    if let Activation::Option(what) = row.activation {
        return format!("option ({what})");
    }
    if policy.rules.iter().any(|r| std::ptr::eq(r.row, row)) {
        return "yes".into();
    }
    match row.condition {
        Condition::Always => "no".into(),
        c => format!("no: needs {}", c.describe()),
    }
}

fn reach_cell(row: &PortRow) -> String {
    let mut s = row.reach.describe().to_string();
    if row.carrier == nodeimage_core::ports::Carrier::Ipsec {
        s += ", inside IPsec";
    }
    s
}

fn markdown_role(policy: &PortPolicy, concrete: bool) -> String {
    let role = policy.role;
    let mut s = String::new();
    let _ = writeln!(s, "## {} nodes\n", capitalise(role.as_str()));
    s +=
        "| Protocol | Port | Service | Reachable from | Authenticated | Active | Seeds | Notes |\n";
    s += "|---|---|---|---|---|---|---|---|\n";
    for row in PORT_TABLE.iter().filter(|r| r.roles.includes(role)) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.protocol.as_str().to_uppercase(),
            port_cell(row, policy.node_ports),
            row.service,
            reach_cell(row),
            if row.authenticated { "yes" } else { "no" },
            active_cell(policy, row),
            seed_ids(row),
            row.note,
        );
    }
    if concrete {
        let _ = writeln!(s, "\nSource sets of this {role} node:\n");
        for set in SourceSet::ALL {
            let members: Vec<String> = policy.set(set).iter().map(|n| n.to_string()).collect();
            let members = if members.is_empty() {
                "(none)".to_string()
            } else {
                members.join(", ")
            };
            let _ = writeln!(s, "- `{}`: {members}", set.name());
        }
    }
    let _ = writeln!(s, "\nBind addresses of a {role} node:\n");
    s += "| Service | Protocol | Reachable from | Listen |\n|---|---|---|---|\n";
    for b in policy.bind_plan() {
        let listen = if b.listen.is_empty() {
            "off".to_string()
        } else {
            b.listen
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let reach = if b.reach == Reach::Disabled {
            "disabled"
        } else {
            b.reach.describe()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            b.service,
            b.protocol.as_str().to_uppercase(),
            reach,
            listen
        );
    }
    s += "\n";
    s
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ports: PortsArgs,
    }

    fn args(argv: &[&str]) -> PortsArgs {
        let mut v = vec!["nodeimage-ports"];
        v.extend_from_slice(argv);
        Cli::try_parse_from(v).unwrap().ports
    }

    const CLUSTER: &str = r#"
hosts:
  - address: "1.1.1.1"
    private_address: "10.0.0.1"
    role: master
  - address: "10.0.0.2"
    role: worker
    labels:
      disk: ssd
network:
  trusted_subnets:
    - "10.0.0.0/16"
addons:
  ingress-nginx:
    enabled: true
    node_selector:
      disk: ssd
"#;

    #[test]
    fn docs_ports_md_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ports.md");
        let rendered = render_docs().unwrap();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &rendered).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == rendered,
            "docs/ports.md is out of date with core/src/ports/table.rs; regenerate it with\n  \
             UPDATE_GOLDEN=1 cargo test -p nodeimage --lib ports\n(or `nodeimage ports --format markdown > docs/ports.md`)"
        );
    }

    #[test]
    fn markdown_for_one_role_with_a_config() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.yml");
        std::fs::write(&p, CLUSTER).unwrap();
        let cfg = p.to_str().unwrap();
        let out = render(&args(&[
            "-c", cfg, "--role", "worker", "--labels", "disk=ssd",
        ]))
        .unwrap();
        assert!(out.starts_with("## Worker nodes"), "{out}");
        assert!(
            out.contains("| TCP | 80 | ingress-http | anyone | no | yes |"),
            "{out}"
        );
        assert!(
            !out.contains("| TCP | 6443 |"),
            "no apiserver row on a worker"
        );
        assert!(out.contains("- `masters`: 10.0.0.1/32"), "{out}");
        assert!(
            out.contains(
                "| UDP | 8472 | flannel-vxlan | cluster nodes | no | no: needs network.provider: flannel |"
            ),
            "{out}"
        );
        // Labels not matching: ingress inactive, with the reason.
        let out = render(&args(&["-c", cfg, "--role", "worker"])).unwrap();
        assert!(
            out.contains("| TCP | 80 | ingress-http | anyone | no | no: needs ingress-nginx enabled and node matches its node_selector |"),
            "{out}"
        );
    }

    #[test]
    fn nft_and_json_need_a_role() {
        let e = render(&args(&["--format", "nft"])).unwrap_err();
        assert!(
            e.to_string().contains("--role master|worker is required"),
            "{e}"
        );
        let nft = render(&args(&["--format", "nft", "--role", "master"])).unwrap();
        test_support::assert_contains(&nft, &["table inet nodeimage {", "tcp dport 6443 accept"]);
        let j: serde_json::Value = serde_json::from_str(
            &render(&args(&["--format", "nft-json", "--role", "worker"])).unwrap(),
        )
        .unwrap();
        assert!(j["nftables"].is_array());
        let j: serde_json::Value = serde_json::from_str(
            &render(&args(&["--format", "json", "--role", "master"])).unwrap(),
        )
        .unwrap();
        assert_eq!(j["policy"]["role"], "master");
        let bind = j["bind"].as_array().unwrap();
        assert!(bind
            .iter()
            .any(|b| b["service"] == "kube-scheduler" && b["listen"][0] == "127.0.0.1:10259"));
    }

    #[test]
    fn bad_labels_and_hostnames_are_explained() {
        let Err(e) = Cli::try_parse_from(["x", "--labels", "novalue"]) else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("expected KEY=VALUE"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.yml");
        std::fs::write(
            &p,
            "hosts:\n  - {address: master-1.example.com, role: master}\n",
        )
        .unwrap();
        let e = render(&args(&[
            "-c",
            p.to_str().unwrap(),
            "--role",
            "master",
            "--format",
            "nft",
        ]))
        .unwrap_err();
        let s = format!("{e:#}");
        assert!(
            s.contains(
                "hosts[0].address: expected an IP address or CIDR, found `master-1.example.com`"
            ),
            "{s}"
        );
    }
}

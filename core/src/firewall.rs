//! The host firewall: an nftables ruleset rendered from the node's [`PortPolicy`].
//!
//! Shape, and why:
//!
//! * One table of our own, `table inet nodeimage`, so loading it never touches the
//!   tables kube-proxy and Weave manage (iptables-nft or nft). Both families at once
//!   (`inet`), IPv4 and IPv6 source sets side by side.
//! * Only an `input` chain (hook input, priority filter). Pod-to-pod, NodePort-to-pod
//!   and service traffic is *forwarded* (DNAT happens in prerouting, before input), so
//!   we never add a forward chain and cannot break the pod network.
//! * Policy accept with a final counted `drop`: the input hook only sees packets
//!   addressed to this host, so the final drop closes everything not in the table while
//!   a flush of our table leaves the host open rather than unreachable.
//!   (kube-proxy in IPVS mode delivers service VIPs locally; it is not used here. If it
//!   ever is, its VIPs need an accept before the final drop.)
//! * Loopback, replies (`ct state established,related`), ICMP/ICMPv6 (neighbour
//!   discovery, PMTU) and DHCP client replies are accepted first; then localhost-only
//!   and disabled ports are dropped with a counter *before* any accept, so a NodePort
//!   range or another rule can never open them; then each port is accepted from
//!   exactly its sources (nft sets `<set>_v4` / `<set>_v6`, so automation may add
//!   members with `nft add element` without re-rendering).
//! * Loading is idempotent and atomic: `table inet nodeimage {}` + `delete table` +
//!   the new table in one `nft -f` transaction (`destroy table` needs nft >= 1.0.8,
//!   Debian 12 ships 1.0.6).
//!
//! JSON (`nft -j -f`) is rendered from the same intermediate rules as the text with
//! `serde_json`, not the `nftables` crate: we need about ten expression shapes, the
//! crate would add a dependency tree and tie us to its schema version, and the tests
//! check both forms with the real `nft -c` (and load both into namespaces and compare).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::{json, Value};

use crate::ports::{Carrier, PortPolicy, PortRange, Protocol, ResolvedRule, SourceSet, Sources};

/// nftables table family and name owned by this product.
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "nodeimage";
/// Where Debian installs `nft`.
pub const DEFAULT_NFT: &str = "/usr/sbin/nft";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{nft}: not found; install the nftables package")]
    NftMissing { nft: PathBuf },
    #[error("running {nft}: {source}")]
    Spawn {
        nft: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` rejected the ruleset ({status}): {stderr}")]
    Rejected {
        command: String,
        status: String,
        stderr: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn payload(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn set_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
    fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Match {
    Iif(&'static str),
    CtState(&'static [&'static str]),
    L4Proto(&'static str),
    Sport(Protocol, u16),
    Dport(Protocol, PortRange),
    SaddrSet(Family, String),
    SaddrPrefix(IpNet),
    IpsecExists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Drop,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    matches: Vec<Match>,
    counter: bool,
    verdict: Verdict,
    comment: String,
}

#[derive(Debug, Clone, PartialEq)]
struct SetDef {
    name: String,
    family: Family,
    elements: Vec<IpNet>,
}

/// The intermediate form both renderings come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Ruleset {
    role: String,
    sets: Vec<SetDef>,
    rules: Vec<Rule>,
}

fn set_name(set: SourceSet, family: Family) -> String {
    format!("{}_{}", set.name(), family.suffix())
}

fn rule(matches: Vec<Match>, counter: bool, verdict: Verdict, comment: impl Into<String>) -> Rule {
    Rule {
        matches,
        counter,
        verdict,
        comment: comment.into(),
    }
}

fn port_matches(r: &ResolvedRule) -> Vec<Match> {
    match (r.row.protocol, r.ports) {
        (Protocol::Esp, _) | (_, None) => vec![Match::L4Proto("esp")],
        (proto, Some(p)) => vec![Match::Dport(proto, p)],
    }
}

fn describe(r: &ResolvedRule) -> String {
    let ports = match r.ports {
        Some(p) => format!("{p}/{}", r.row.protocol),
        None => r.row.protocol.to_string(),
    };
    let via = if r.row.carrier == Carrier::Ipsec {
        " via ipsec"
    } else {
        ""
    };
    format!("{} {ports}{via}: {}", r.row.service, r.row.reach.describe())
}

impl Ruleset {
    /// Build the ruleset of a node from its policy.
    pub fn from_policy(policy: &PortPolicy) -> Self {
        let mut sets = Vec::new();
        for set in SourceSet::ALL {
            for family in [Family::V4, Family::V6] {
                let elements = policy
                    .set(set)
                    .iter()
                    .filter(|n| Family::of(n) == family)
                    .copied()
                    .collect();
                sets.push(SetDef {
                    name: set_name(set, family),
                    family,
                    elements,
                });
            }
        }

        let mut rules = vec![
            rule(vec![Match::Iif("lo")], false, Verdict::Accept, "loopback"),
            rule(
                vec![Match::CtState(&["established", "related"])],
                false,
                Verdict::Accept,
                "replies to connections this host opened",
            ),
            rule(vec![Match::L4Proto("icmp")], false, Verdict::Accept, "ICMP"),
            rule(
                vec![Match::L4Proto("ipv6-icmp")],
                false,
                Verdict::Accept,
                "ICMPv6, neighbour discovery",
            ),
            rule(
                vec![
                    Match::Sport(Protocol::Udp, 67),
                    Match::Dport(Protocol::Udp, PortRange::single(68)),
                ],
                false,
                Verdict::Accept,
                "DHCPv4 client",
            ),
            rule(
                vec![
                    Match::SaddrPrefix("fe80::/10".parse().expect("constant prefix")),
                    Match::Sport(Protocol::Udp, 547),
                    Match::Dport(Protocol::Udp, PortRange::single(546)),
                ],
                false,
                Verdict::Accept,
                "DHCPv6 client",
            ),
        ];
        // Restrictions before accepts: nothing later can open them.
        for r in policy.rules.iter().filter(|r| r.is_restriction()) {
            rules.push(rule(port_matches(r), true, Verdict::Drop, describe(r)));
        }
        for r in policy.rules.iter().filter(|r| !r.is_restriction()) {
            let mut base = port_matches(r);
            if r.row.carrier == Carrier::Ipsec {
                base.push(Match::IpsecExists);
            }
            match r.sources {
                Sources::Anyone => rules.push(rule(base, false, Verdict::Accept, describe(r))),
                Sources::Set(set) => {
                    for family in [Family::V4, Family::V6] {
                        let mut m = base.clone();
                        m.push(Match::SaddrSet(family, set_name(set, family)));
                        rules.push(rule(m, false, Verdict::Accept, describe(r)));
                    }
                }
                Sources::Localhost | Sources::Disabled => unreachable!("filtered above"),
            }
        }
        rules.push(rule(
            Vec::new(),
            true,
            Verdict::Drop,
            "not in the port table",
        ));
        Ruleset {
            role: policy.role.to_string(),
            sets,
            rules,
        }
    }

    /// `nft -f` text.
    pub fn to_nft(&self) -> String {
        let mut s = String::new();
        let t = format!("{TABLE_FAMILY} {TABLE_NAME}");
        let _ = writeln!(s, "#!/usr/sbin/nft -f");
        let _ = writeln!(
            s,
            "# Host firewall of a {} node, rendered from the port table",
            self.role
        );
        let _ = writeln!(
            s,
            "# (core/src/ports.rs). Input hook only: forwarded pod and service"
        );
        let _ = writeln!(
            s,
            "# traffic and the tables of kube-proxy and Weave are left alone."
        );
        let _ = writeln!(
            s,
            "# Create-then-delete makes reloading idempotent in one transaction."
        );
        let _ = writeln!(s, "table {t} {{}}");
        let _ = writeln!(s, "delete table {t}");
        let _ = writeln!(s, "table {t} {{");
        for set in &self.sets {
            let _ = writeln!(s, "\tset {} {{", set.name);
            let _ = writeln!(s, "\t\ttype {}", set.family.set_type());
            let _ = writeln!(s, "\t\tflags interval");
            if !set.elements.is_empty() {
                let e: Vec<String> = set.elements.iter().map(element_text).collect();
                let _ = writeln!(s, "\t\telements = {{ {} }}", e.join(", "));
            }
            let _ = writeln!(s, "\t}}\n");
        }
        let _ = writeln!(s, "\tchain input {{");
        let _ = writeln!(
            s,
            "\t\ttype filter hook input priority filter; policy accept;"
        );
        for r in &self.rules {
            let mut parts: Vec<String> = r.matches.iter().map(match_text).collect();
            if r.counter {
                parts.push("counter".into());
            }
            parts.push(match r.verdict {
                Verdict::Accept => "accept".into(),
                Verdict::Drop => "drop".into(),
            });
            parts.push(format!("comment \"{}\"", r.comment));
            let _ = writeln!(s, "\t\t{}", parts.join(" "));
        }
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "}}");
        s
    }

    /// `nft -j -f` JSON (libnftables JSON schema 1).
    pub fn to_json(&self) -> Value {
        let table = json!({"family": TABLE_FAMILY, "name": TABLE_NAME});
        let mut cmds = vec![
            json!({"metainfo": {"json_schema_version": 1}}),
            json!({"add": {"table": table.clone()}}),
            json!({"delete": {"table": table.clone()}}),
            json!({"add": {"table": table}}),
        ];
        for set in &self.sets {
            let mut v = json!({
                "family": TABLE_FAMILY, "table": TABLE_NAME, "name": set.name,
                "type": set.family.set_type(), "flags": ["interval"],
            });
            if !set.elements.is_empty() {
                v["elem"] = Value::Array(set.elements.iter().map(element_json).collect());
            }
            cmds.push(json!({"add": {"set": v}}));
        }
        cmds.push(json!({"add": {"chain": {
            "family": TABLE_FAMILY, "table": TABLE_NAME, "name": "input",
            "type": "filter", "hook": "input", "prio": 0, "policy": "accept",
        }}}));
        for r in &self.rules {
            let mut expr: Vec<Value> = r.matches.iter().map(match_json).collect();
            if r.counter {
                expr.push(json!({"counter": null}));
            }
            expr.push(match r.verdict {
                Verdict::Accept => json!({"accept": null}),
                Verdict::Drop => json!({"drop": null}),
            });
            cmds.push(json!({"add": {"rule": {
                "family": TABLE_FAMILY, "table": TABLE_NAME, "chain": "input",
                "expr": expr, "comment": r.comment,
            }}}));
        }
        json!({ "nftables": cmds })
    }

    /// Pretty JSON text with a trailing newline.
    pub fn to_json_string(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.to_json()).expect("a JSON value serialises");
        s.push('\n');
        s
    }
}

/// Render the `nft -f` text for a node.
pub fn render_nft(policy: &PortPolicy) -> String {
    Ruleset::from_policy(policy).to_nft()
}

/// Render the `nft -j -f` JSON for a node.
pub fn render_json(policy: &PortPolicy) -> String {
    Ruleset::from_policy(policy).to_json_string()
}

fn element_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn element_json(net: &IpNet) -> Value {
    if net.prefix_len() == net.max_prefix_len() {
        json!(net.addr().to_string())
    } else {
        json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
    }
}

fn match_text(m: &Match) -> String {
    match m {
        Match::Iif(i) => format!("iif \"{i}\""),
        Match::CtState(s) => format!("ct state {}", s.join(",")),
        Match::L4Proto(p) => format!("meta l4proto {p}"),
        Match::Sport(p, n) => format!("{p} sport {n}"),
        Match::Dport(p, r) => format!("{p} dport {r}"),
        Match::SaddrSet(f, name) => format!("{} saddr @{name}", f.payload()),
        Match::SaddrPrefix(n) => format!("{} saddr {n}", Family::of(n).payload()),
        Match::IpsecExists => "meta ipsec exists".into(),
    }
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn match_json(m: &Match) -> Value {
    match m {
        Match::Iif(i) => eq(json!({"meta": {"key": "iif"}}), json!(i)),
        Match::CtState(s) => {
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": s}})
        }
        Match::L4Proto(p) => eq(json!({"meta": {"key": "l4proto"}}), json!(p)),
        Match::Sport(p, n) => eq(payload(p.as_str(), "sport"), json!(n)),
        Match::Dport(p, r) => {
            let right = if r.first == r.last {
                json!(r.first)
            } else {
                json!({"range": [r.first, r.last]})
            };
            eq(payload(p.as_str(), "dport"), right)
        }
        Match::SaddrSet(f, name) => eq(payload(f.payload(), "saddr"), json!(format!("@{name}"))),
        Match::SaddrPrefix(n) => eq(
            payload(Family::of(n).payload(), "saddr"),
            json!({"prefix": {"addr": n.network().to_string(), "len": n.prefix_len()}}),
        ),
        Match::IpsecExists => eq(json!({"meta": {"key": "ipsec"}}), json!(true)),
    }
}

/// Check, then load a ruleset: `nft -c -f -`, then `nft -f -` (with `-j` when the
/// ruleset is JSON, i.e. starts with `{`). Loading is one transaction; the ruleset
/// replaces our table only, so applying it again is harmless.
pub fn apply(ruleset: &str, nft: &Path) -> Result<(), FirewallError> {
    check(ruleset, nft)?;
    run_nft(nft, ruleset, false)?;
    tracing::info!(table = TABLE_NAME, nft = %nft.display(), "firewall loaded");
    Ok(())
}

/// `nft -c -f -`: let the kernel's nftables validate a ruleset without committing it.
pub fn check(ruleset: &str, nft: &Path) -> Result<(), FirewallError> {
    run_nft(nft, ruleset, true)
}

fn run_nft(nft: &Path, ruleset: &str, check_only: bool) -> Result<(), FirewallError> {
    let mut args: Vec<&str> = Vec::new();
    if ruleset.trim_start().starts_with('{') {
        args.push("-j");
    }
    if check_only {
        args.push("-c");
    }
    args.extend(["-f", "-"]);
    let command = format!("{} {}", nft.display(), args.join(" "));
    let mut child = Command::new(nft)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => FirewallError::NftMissing {
                nft: nft.to_path_buf(),
            },
            _ => FirewallError::Spawn {
                nft: nft.to_path_buf(),
                source,
            },
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|source| FirewallError::Spawn {
                nft: nft.to_path_buf(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| FirewallError::Spawn {
            nft: nft.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Rejected {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The `nft` binary to use: `$NFT` if set, else [`DEFAULT_NFT`] if present, else `nft`
/// from `PATH`.
pub fn nft_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NFT") {
        return PathBuf::from(p);
    }
    if Path::new(DEFAULT_NFT).exists() {
        return PathBuf::from(DEFAULT_NFT);
    }
    PathBuf::from("nft")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IngressNginx, Role};
    use crate::ports::{parse_source, NodeFacts};
    use std::collections::BTreeMap;

    /// The golden scenarios: (file stem, facts).
    fn scenarios() -> Vec<(&'static str, NodeFacts)> {
        let base = |role: Role, me: &str| {
            let mut f = NodeFacts::defaults(role);
            f.node_address = Some(me.parse().unwrap());
            f.masters = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
                .iter()
                .map(|a| parse_source("m", a).unwrap())
                .collect();
            f.nodes = vec!["10.0.1.0/24".parse().unwrap()];
            f
        };
        let with_extras = |mut f: NodeFacts| {
            f.network.trusted_subnets = vec![
                "10.0.0.0/16".parse().unwrap(),
                "fd00:10::/64".parse().unwrap(),
            ];
            f.network.node_subnets = vec!["fd00:20::/64".parse().unwrap()];
            f.ingress = Some(IngressNginx {
                enabled: true,
                node_selector: [("ingress".to_string(), "yes".to_string())].into(),
                ..Default::default()
            });
            f.labels = BTreeMap::from([("ingress".to_string(), "yes".to_string())]);
            f
        };
        let mut etcd_local = base(Role::Master, "10.0.0.1");
        etcd_local.masters = vec![parse_source("m", "10.0.0.1").unwrap()];
        etcd_local.network.etcd_localhost_only = true;
        let mut master_ingress = with_extras(base(Role::Master, "10.0.0.1"));
        master_ingress.taint_masters = false;
        vec![
            ("master", base(Role::Master, "10.0.0.1")),
            ("worker", base(Role::Worker, "10.0.1.7")),
            ("master-ingress-trusted", master_ingress),
            (
                "worker-ingress-trusted",
                with_extras(base(Role::Worker, "10.0.1.7")),
            ),
            ("master-etcd-localhost", etcd_local),
        ]
    }

    fn golden_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ports")
    }

    fn compare_golden(name: &str, actual: &str) {
        test_support::golden::check(golden_dir(), name, actual);
    }

    /// `nft` usable for `-c`: on PATH and we are root (CAP_NET_ADMIN, to validate against
    /// the kernel). Otherwise say why and skip (fail under CI).
    fn nft_for_checks() -> Option<PathBuf> {
        test_support::Needs::new("nft -c of the golden rulesets")
            .root()
            .tool("nft", "nftables")
            .met()
            .then(nft_binary)
    }

    #[test]
    fn golden_rulesets() {
        let nft = nft_for_checks();
        for (name, facts) in scenarios() {
            let policy = PortPolicy::new(facts).unwrap();
            let text = render_nft(&policy);
            let json = render_json(&policy);
            compare_golden(&format!("{name}.nft"), &text);
            compare_golden(&format!("{name}.json"), &json);
            if let Some(nft) = &nft {
                check(&text, nft).unwrap_or_else(|e| panic!("{name}.nft: {e}"));
                check(&json, nft).unwrap_or_else(|e| panic!("{name}.json: {e}"));
            }
        }
    }

    #[test]
    fn structure_of_the_master_ruleset() {
        let (_, facts) = scenarios().remove(0);
        let text = render_nft(&PortPolicy::new(facts).unwrap());
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let pos = |needle: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no line starting with `{needle}` in\n{text}"))
        };
        assert!(pos("table inet nodeimage {}") < pos("delete table inet nodeimage"));
        assert!(pos("iif \"lo\" accept") < pos("tcp dport 10248 counter drop"));
        assert!(pos("tcp dport 10248 counter drop") < pos("tcp dport 22 accept"));
        assert!(
            pos("tcp dport 30000-32767 accept")
                < pos("counter drop comment \"not in the port table\"")
        );
        assert!(text.contains("tcp dport 2379 ip saddr @masters_v4 accept"));
        assert!(text.contains("udp dport 6784 ip saddr @trusted_subnets_v4 accept"));
        assert!(text.contains("udp dport 6784 meta ipsec exists ip saddr @cluster_nodes_v4 accept"));
        assert!(text.contains("meta l4proto esp ip saddr @cluster_nodes_v4 accept"));
        assert!(text.contains("tcp dport 10255 counter drop"));
        assert!(
            text.contains("elements = { 10.0.0.1, 10.0.0.2/31 }"),
            "masters aggregated"
        );
        assert!(
            !text.contains("hook forward") && !text.contains("chain forward"),
            "no forward chain"
        );
        assert!(!text.contains("dport 80 "), "no ingress without the addon");
        // Every comment fits nft's 128-byte limit.
        for l in &lines {
            if let Some((_, c)) = l.split_once("comment \"") {
                assert!(c.len() <= 129, "{l}");
            }
        }
    }

    #[test]
    fn missing_nft_says_which_package() {
        let e = apply("table inet x {}", Path::new("/nonexistent/nft")).unwrap_err();
        assert!(matches!(e, FirewallError::NftMissing { .. }));
        assert!(
            e.to_string().contains("install the nftables package"),
            "{e}"
        );
    }

    #[test]
    fn rejected_ruleset_names_the_command() {
        let Some(nft) = nft_for_checks() else { return };
        let e = check("table inet nodeimage { chain input { nonsense } }", &nft).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("-c -f -") && s.contains("rejected the ruleset"),
            "{s}"
        );
    }
}

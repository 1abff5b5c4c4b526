use super::*;
use crate::config::{IngressNginx, Role};
use crate::ports::{parse_source, NodeFacts};
use std::collections::BTreeMap;
use std::path::Path;

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
            node_selector: [("ingress".parse().unwrap(), "yes".to_string())].into(),
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
        pos("tcp dport 30000-32767 accept") < pos("counter drop comment \"not in the port table\"")
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
    assert!(text.contains("type filter hook input priority filter; policy drop;"));
    // Forward: drops only, policy accept (the pod network passes).
    assert!(text.contains("type filter hook forward priority filter; policy accept;"));
    let forward = lines[pos("chain forward")..].join("\n");
    assert!(forward.contains("ip daddr 169.254.0.0/16 counter drop"));
    assert!(forward.contains("ip6 daddr fd00:ec2::254 counter drop"));
    let tcp = forward
        .lines()
        .find(|l| l.contains("ip daddr @cluster_nodes_v4 tcp dport {"))
        .expect("node-only tcp ports in the forward chain");
    for port in ["2379", "6781", "6782", "10250", "10256"] {
        assert!(tcp.contains(&format!(" {port},")), "{port}: {tcp}");
    }
    for open in ["22", "80", "443", "6443"] {
        assert!(
            !tcp.contains(&format!(" {open},")),
            "{open} is open to anyone: {tcp}"
        );
    }
    assert!(
        forward
            .lines()
            .filter(|l| !l.contains("policy accept"))
            .all(|l| !l.contains("accept")),
        "the forward chain only drops"
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
    test_support::assert_contains(&s, &["-c -f -", "rejected the ruleset"]);
}

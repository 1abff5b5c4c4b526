//! The two renderings of a [`Ruleset`]: `nft -f` text and `nft -j -f` JSON.

use std::fmt::Write as _;

use ipnet::IpNet;
use serde_json::{json, Value};

use super::{Family, Match, Rule, Ruleset, Verdict, TABLE_FAMILY, TABLE_NAME};
use crate::ports::PortPolicy;

impl Ruleset {
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
            "# (core/src/ports/table.rs). Input: this host's ports. Forward: pods never reach"
        );
        let _ = writeln!(
            s,
            "# the metadata service or node-only ports; the rest of the pod network passes."
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
        chain_text(&mut s, "input", "drop", &self.rules);
        let _ = writeln!(s);
        chain_text(&mut s, "forward", "accept", &self.forward);
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
        for (chain, hook, policy, rules) in [
            ("input", "input", "drop", &self.rules),
            ("forward", "forward", "accept", &self.forward),
        ] {
            cmds.push(json!({"add": {"chain": {
                "family": TABLE_FAMILY, "table": TABLE_NAME, "name": chain,
                "type": "filter", "hook": hook, "prio": 0, "policy": policy,
            }}}));
            for r in rules {
                let mut expr: Vec<Value> = r.matches.iter().map(match_json).collect();
                if r.counter {
                    expr.push(json!({"counter": null}));
                }
                expr.push(match r.verdict {
                    Verdict::Accept => json!({"accept": null}),
                    Verdict::Drop => json!({"drop": null}),
                });
                cmds.push(json!({"add": {"rule": {
                    "family": TABLE_FAMILY, "table": TABLE_NAME, "chain": chain,
                    "expr": expr, "comment": r.comment,
                }}}));
            }
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

/// One base chain of the table: `chain` on the hook of the same name.
fn chain_text(s: &mut String, chain: &str, policy: &str, rules: &[Rule]) {
    let _ = writeln!(s, "\tchain {chain} {{");
    let _ = writeln!(
        s,
        "\t\ttype filter hook {chain} priority filter; policy {policy};"
    );
    for r in rules {
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
        Match::DaddrSet(f, name) => format!("{} daddr @{name}", f.payload()),
        Match::DaddrPrefix(n) => format!("{} daddr {}", Family::of(n).payload(), element_text(n)),
        Match::DportSet(p, ports) => {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!("{p} dport {{ {} }}", list.join(", "))
        }
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
        Match::DaddrSet(f, name) => eq(payload(f.payload(), "daddr"), json!(format!("@{name}"))),
        Match::DaddrPrefix(n) => eq(payload(Family::of(n).payload(), "daddr"), element_json(n)),
        Match::DportSet(p, ports) => eq(payload(p.as_str(), "dport"), json!({"set": ports})),
        Match::IpsecExists => eq(json!({"meta": {"key": "ipsec"}}), json!(true)),
    }
}

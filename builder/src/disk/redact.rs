//! Summaries of node configs that never show a secret: allow-lists of non-secret
//! fields, and the names (never the values) of the secrets present.

use nodeimage_core::config::{NodeConfig, NODE_CONFIG_IGNITION_PATH};
use serde_json::{json, Value};

/// A summary of a native config built from an allow-list of non-secret fields (so a
/// secret field added to the schema later is never shown), and the names of the
/// secrets present.
pub fn redact_native(c: &NodeConfig) -> (Value, Vec<String>) {
    let s = &c.secrets;
    let mut secrets: Vec<String> = [
        ("ca_certificate", s.ca_certificate.is_some()),
        ("bootstrap_token", s.bootstrap_token.is_some()),
        ("etcd_ca_certificate", s.etcd_ca_certificate.is_some()),
        (
            "front_proxy_ca_certificate",
            s.front_proxy_ca_certificate.is_some(),
        ),
        (
            "service_account_public_key",
            s.service_account_public_key.is_some(),
        ),
    ]
    .into_iter()
    .filter(|(_, present)| *present)
    .map(|(n, _)| n.to_string())
    .collect();
    secrets.extend(s.private_keys_present().into_iter().map(str::to_string));
    if c.cluster.etcd.is_some() {
        secrets.push("cluster.etcd.key".into());
    }
    secrets.sort();
    let cl = &c.cluster;
    let files: Vec<Value> = c
        .files
        .iter()
        .map(|f| json!({"path": f.path, "mode": f.mode, "bytes": f.contents.len()}))
        .collect();
    let summary = json!({
        "version": c.version,
        "role": c.role,
        "hostname": c.hostname,
        "bootstrap": c.bootstrap,
        "address": c.address,
        "private_address": c.private_address,
        "cluster": {
            "name": cl.name,
            "api_endpoint": cl.api_endpoint,
            "network": cl.network,
            "masters": cl.masters,
            "nodes": cl.nodes,
            "etcd_endpoints": cl.etcd.as_ref().map(|e| e.endpoints.clone()),
            "token_webhook": cl.authentication.as_ref().map(|a| a.token_webhook.is_some()),
            "audit": cl.audit.is_some(),
            "cloud_provider": cl.cloud.as_ref().map(|x| x.provider.clone()),
            "registry_mirrors": cl.registry_mirrors.keys().collect::<Vec<_>>(),
        },
        "labels": c.labels,
        "taints": c.taints,
        "files": files,
        "preflight": c.preflight,
    });
    (summary, secrets)
}

/// A summary of an Ignition config: version, file paths, unit names, user names; no
/// contents, keys, passwords or source URLs (which may carry credentials).
pub fn redact_ignition(v: &Value) -> (Value, Vec<String>) {
    let arr = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let files: Vec<Value> = arr("/storage/files")
        .iter()
        .map(|f| json!({"path": f.get("path"), "mode": f.get("mode")}))
        .collect();
    let units: Vec<Value> = arr("/systemd/units")
        .iter()
        .map(|u| json!({"name": u.get("name"), "enabled": u.get("enabled")}))
        .collect();
    let users: Vec<Value> = arr("/passwd/users")
        .iter()
        .map(|u| u.get("name").cloned().unwrap_or(Value::Null))
        .collect();
    let mut secrets = Vec::new();
    for u in arr("/passwd/users") {
        let name = u.get("name").and_then(Value::as_str).unwrap_or("?");
        if u.get("passwordHash").is_some_and(|p| !p.is_null()) {
            secrets.push(format!("passwd.users[{name}].passwordHash"));
        }
    }
    let embedded = arr("/storage/files")
        .iter()
        .any(|f| f.get("path").and_then(Value::as_str) == Some(NODE_CONFIG_IGNITION_PATH));
    if embedded {
        secrets.push(format!(
            "storage.files[{NODE_CONFIG_IGNITION_PATH}] (embedded node config)"
        ));
    }
    let summary = json!({
        "ignition_version": v.pointer("/ignition/version"),
        "merge_or_replace_sources": arr("/ignition/config/merge").len()
            + usize::from(v.pointer("/ignition/config/replace/source").is_some()),
        "files": files,
        "units": units,
        "users": users,
        "embedded_node_config": embedded,
    });
    (summary, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\nsecrets:\n  bootstrap_token: abcdef.0123456789abcdef\n";

    #[test]
    fn native_summary_never_shows_secret_values() {
        let c = NodeConfig::parse("n", MINIMAL).unwrap();
        let (summary, secrets) = redact_native(&c);
        let text = summary.to_string();
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(text.contains("node-1"));
        assert_eq!(secrets, ["bootstrap_token"]);
    }

    #[test]
    fn ignition_summary_lists_names_only() {
        let v: Value = serde_json::from_str(
            r#"{"ignition":{"version":"3.4.0"},"passwd":{"users":[{"name":"core","passwordHash":"$6$x","sshAuthorizedKeys":["ssh-ed25519 AAA"]}]},
               "storage":{"files":[{"path":"/etc/nodeimage/node.yaml","contents":{"source":"data:,secret"}}]}}"#,
        )
        .unwrap();
        let (summary, secrets) = redact_ignition(&v);
        let text = summary.to_string();
        assert!(
            !text.contains("secret") && !text.contains("$6$") && !text.contains("AAA"),
            "{text}"
        );
        assert_eq!(secrets.len(), 2, "{secrets:?}");
    }
}

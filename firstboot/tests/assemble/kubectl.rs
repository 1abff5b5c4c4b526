//! The bootstrap master's API side through a stand-in `kubectl` (a shell script under the
//! root that records its arguments and answers from files): server-side apply with
//! retries, skipped CRD kinds and redacted output; CSR approval and node labels.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use base64::Engine;
use firstboot::assemble::{self, Kubectl, Progress, WaitOptions};
use firstboot::kube::manifests::Manifest;

/// A kubectl that logs each call (arguments, one line) and answers:
/// `get certificatesigningrequests` / `get nodes` from csrs.json / nodes.json;
/// `apply` fails the first call (API not ready), refuses ClusterIssuers as an unknown
/// kind, echoes a manifest containing FAIL back on stderr with an error, else succeeds.
const FAKE_KUBECTL: &str = r#"#!/bin/bash
dir="$(dirname "$0")/../../state"
mkdir -p "$dir"
echo "$*" >> "$dir/calls.log"
args=" $* "
case "$args" in
  *" get certificatesigningrequests "*) cat "$dir/csrs.json" ;;
  *" get nodes "*) cat "$dir/nodes.json" ;;
  *" certificate approve "*) echo "approved" ;;
  *" patch node "*) echo "patched" ;;
  *" apply "*)
    input="$(cat)"
    n=$(cat "$dir/applies" 2>/dev/null || echo 0); echo $((n+1)) > "$dir/applies"
    if [ "$n" = 0 ]; then echo "The connection to the server 127.0.0.1:6443 was refused" >&2; exit 1; fi
    case "$input" in
      *"kind: ClusterIssuer"*) echo 'error: resource mapping not found for name: "le" namespace: "" from "STDIN": no matches for kind "ClusterIssuer" in version "cert-manager.io/v1"' >&2; echo "ensure CRDs are installed first" >&2; exit 1 ;;
      *FAIL*) echo "Error from server (Invalid): $input" >&2; exit 1 ;;
    esac
    printf '%s\n' "$input" >> "$dir/applied.yaml"
    echo "object serverside-applied" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#;

fn fake_root() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = path(d.path(), "/usr/bin/kubectl");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, FAKE_KUBECTL).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(d.path().join("state")).unwrap();
    d
}

fn state(root: &Path, f: &str) -> String {
    std::fs::read_to_string(root.join("state").join(f)).unwrap_or_default()
}

fn quick() -> WaitOptions {
    WaitOptions {
        deadline: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        announce_every: Duration::from_secs(60),
    }
}

fn manifest(name: &str, yaml: &str, secret: bool) -> Manifest {
    Manifest {
        name: name.into(),
        yaml: yaml.into(),
        secret,
    }
}

#[test]
fn manifests_are_applied_server_side_with_retries_and_redaction() {
    let d = fake_root();
    let root = d.path();
    let k = Kubectl::under(root, "/etc/kubernetes/super-admin.conf");
    let progress = Progress::new(None, "cluster-objects", Duration::from_secs(60));
    let ms = vec![
        manifest(
            "00-bootstrap-token.yaml",
            &format!("kind: Secret\nstringData:\n  token: {TOKEN}\n"),
            true,
        ),
        manifest("01-rbac.yaml", "kind: ClusterRoleBinding\n", false),
        manifest(
            "40-cert-manager-issuer.yaml",
            "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\n",
            false,
        ),
    ];
    let report = assemble::apply_manifests(&k, &ms, &[TOKEN], &quick(), &progress).unwrap();
    assert_eq!(report.applied, ["00-bootstrap-token.yaml", "01-rbac.yaml"]);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, "40-cert-manager-issuer.yaml");
    assert!(report.skipped[0]
        .1
        .contains("no matches for kind \"ClusterIssuer\""));
    // Four apply calls: the refused first one was retried.
    assert_eq!(state(root, "applies").trim(), "4");
    let calls = state(root, "calls.log");
    let first = calls.lines().next().unwrap();
    let kubeconfig = format!(
        "--kubeconfig={}",
        path(root, "/etc/kubernetes/super-admin.conf").display()
    );
    for part in [
        kubeconfig.as_str(),
        "--request-timeout=30s",
        "apply --server-side --force-conflicts --field-manager=nodeimage -f -",
    ] {
        assert!(first.contains(part), "{first} lacks {part}");
    }
    assert!(
        state(root, "applied.yaml").contains(TOKEN),
        "the manifest went through stdin"
    );
    assert!(!calls.contains(TOKEN), "secrets never on the command line");

    // A manifest the API keeps refusing: the error names it, with secrets redacted.
    let bad = vec![manifest(
        "10-weave-net.yaml",
        &format!("kind: Secret # FAIL\nweave-passwd: {WEAVE_PASSWORD}\n"),
        true,
    )];
    let e = assemble::apply_manifests(&k, &bad, &[TOKEN, WEAVE_PASSWORD], &quick(), &progress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("waiting for the API to accept 10-weave-net.yaml"),
        "{e}"
    );
    test_support::assert_contains(&e, &["Error from server (Invalid)", "<redacted>"]);
    assert!(!e.contains(WEAVE_PASSWORD), "{e}");
}

fn serving_csr(cn: &str, ip: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.subject_alt_names = vec![
        rcgen::SanType::DnsName(cn.trim_start_matches("system:node:").try_into().unwrap()),
        rcgen::SanType::IpAddress(ip.parse().unwrap()),
    ];
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    base64::engine::general_purpose::STANDARD.encode(pem)
}

fn csr(name: &str, signer: &str, user: &str, request: &str, approved: bool) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "signerName": signer,
            "username": user,
            "groups": ["system:nodes", "system:authenticated"],
            "usages": ["digital signature", "server auth"],
            "request": request
        },
        "status": if approved {
            serde_json::json!({"conditions": [{"type": "Approved", "status": "True"}]})
        } else {
            serde_json::json!({})
        }
    })
}

#[test]
fn approve_csrs_approves_only_what_the_node_may_ask_for_and_labels_nodes() {
    let d = fake_root();
    let root = d.path();
    let serving = "kubernetes.io/kubelet-serving";
    let csrs = serde_json::json!({"items": [
        csr("csr-good", serving, "system:node:worker-1", &serving_csr("system:node:worker-1", WORKER_IP), false),
        csr("csr-other-ip", serving, "system:node:worker-1", &serving_csr("system:node:worker-1", "10.10.0.99"), false),
        csr("csr-unregistered", serving, "system:node:worker-9", &serving_csr("system:node:worker-9", "10.10.0.29"), false),
        csr("csr-done", serving, "system:node:worker-1", &serving_csr("system:node:worker-1", WORKER_IP), true),
        csr("csr-client", "kubernetes.io/kube-apiserver-client-kubelet", "system:node:worker-1", "", false),
    ]});
    let nodes = serde_json::json!({"items": [
        {"metadata": {"name": "master-1", "labels": {}},
         "status": {"addresses": [{"type": "InternalIP", "address": MASTERS[0]}, {"type": "Hostname", "address": "master-1"}]}},
        {"metadata": {"name": "worker-1", "labels": {"kubernetes.io/os": "linux"}},
         "status": {"addresses": [{"type": "InternalIP", "address": WORKER_IP}, {"type": "Hostname", "address": "worker-1"}]}}
    ]});
    std::fs::write(root.join("state/csrs.json"), csrs.to_string()).unwrap();
    std::fs::write(root.join("state/nodes.json"), nodes.to_string()).unwrap();

    // Without its credential the approver says where it runs.
    let e = assemble::approve_csrs(root).unwrap_err().to_string();
    assert!(e.contains("only the bootstrap master approves CSRs"), "{e}");

    let conf = path(root, assemble::CSR_APPROVER_CONF);
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, "apiVersion: v1\n").unwrap();
    let roles = path(root, assemble::CLUSTER_ROLES_FILE);
    std::fs::create_dir_all(roles.parent().unwrap()).unwrap();
    std::fs::write(&roles, serde_json::json!({"masters": MASTERS}).to_string()).unwrap();

    assert_eq!(assemble::approve_csrs(root).unwrap(), 1);
    let calls = state(root, "calls.log");
    let approvals: Vec<&str> = calls
        .lines()
        .filter_map(|l| l.split(" certificate approve ").nth(1))
        .collect();
    assert_eq!(approvals, ["csr-good"]);
    assert!(calls.contains(&format!("--kubeconfig={}", conf.display())));
    let patches: Vec<&str> = calls
        .lines()
        .filter(|l| l.contains(" patch node "))
        .collect();
    assert_eq!(patches.len(), 2, "{calls}");
    assert!(patches[0].contains("patch node master-1 --type=merge -p {\"metadata\":{\"labels\":{\"node-role.kubernetes.io/control-plane\":\"\",\"node-role.kubernetes.io/master\":\"\"}}}"), "{}", patches[0]);
    assert!(patches[1].contains("patch node worker-1 --type=merge -p {\"metadata\":{\"labels\":{\"node-role.kubernetes.io/node\":\"true\"}}}"), "{}", patches[1]);

    // The policy's verdicts, for the record.
    let verdicts = assemble::plan_csr_approvals(&csrs, &nodes);
    let by_name = |n: &str| {
        verdicts
            .iter()
            .find(|d| d.name == n)
            .unwrap()
            .verdict
            .clone()
    };
    assert_eq!(by_name("csr-good"), Ok(()));
    assert!(by_name("csr-other-ip").unwrap_err().contains("10.10.0.99"));
    assert!(by_name("csr-unregistered")
        .unwrap_err()
        .contains("no Node worker-9"));
    assert_eq!(
        verdicts.len(),
        3,
        "approved and client CSRs are not considered"
    );
}

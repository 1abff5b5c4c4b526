//! The pinned `kubectl` as the bootstrap master's API client: server-side apply of the
//! cluster manifests, and the periodic approval of kubelet serving CSRs plus node role
//! labels (`firstboot approve-csrs`, run by a systemd timer).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;

use super::wait::{Progress, WaitOptions};
use crate::kube::csr::{kubelet_serving_decision, CsrObject, KUBELET_SERVING_SIGNER};
use crate::kube::manifests::{node_role_patch, Manifest};
use nodeimage_core::files::rooted;

/// The pinned kubectl on the image.
pub const KUBECTL: &str = "/usr/bin/kubectl";
/// Field manager of everything firstboot applies (server-side apply).
pub const FIELD_MANAGER: &str = "nodeimage";
/// The approver's identity: a client certificate for this user (no groups), bound to
/// the ClusterRole of [`approver_rbac`].
pub const CSR_APPROVER_USER: &str = "nodeimage:csr-approver";
pub const CSR_APPROVER_CONF: &str = "/etc/kubernetes/csr-approver.conf";
/// The masters' internal addresses, for labelling Nodes (written by the bootstrap master).
pub const CLUSTER_ROLES_FILE: &str = "/etc/nodeimage/cluster-roles.json";
pub const APPROVER_SERVICE: &str = "/etc/systemd/system/nodeimage-csr-approver.service";
pub const APPROVER_TIMER: &str = "/etc/systemd/system/nodeimage-csr-approver.timer";
pub const APPROVER_TIMER_UNIT: &str = "nodeimage-csr-approver.timer";

/// kubectl with one kubeconfig. Paths are as this process sees them (already rooted).
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    /// `--cache-dir` (a systemd service has no `$HOME`).
    pub cache_dir: PathBuf,
}

/// What one kubectl run said.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    /// The pinned kubectl under `root` with a kubeconfig under `root`.
    pub fn under(root: &Path, kubeconfig: &str) -> Self {
        Kubectl {
            bin: rooted(root, KUBECTL),
            kubeconfig: rooted(root, kubeconfig),
            cache_dir: rooted(root, "/var/cache/firstboot/kubectl"),
        }
    }

    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<KubectlOutput> {
        let mut c = Command::new(&self.bin);
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--cache-dir={}", self.cache_dir.display()))
            .arg("--request-timeout=30s")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if let Some(data) = stdin {
            let mut w = child.stdin.take().expect("piped stdin");
            // kubectl may exit before reading everything (e.g. a bad kubeconfig); its
            // exit status and stderr say why.
            let _ = w.write_all(data);
        }
        let out = child.wait_with_output().context("waiting for kubectl")?;
        Ok(KubectlOutput {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.run(&a, None)?;
        if !out.ok {
            bail!("kubectl {}: {}", args.join(" "), out.stderr.trim());
        }
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("kubectl {}: output is not JSON", args.join(" ")))
    }
}

/// Replace every secret in `text` by `<redacted>` (kubectl may echo what it was given).
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut s = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 6) {
        s = s.replace(secret, "<redacted>");
    }
    s
}

/// The result of applying the cluster manifests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: Vec<String>,
    /// (manifest, why): manifests whose kinds the API does not serve (a CRD that is not
    /// installed, e.g. cert-manager's ClusterIssuer), skipped rather than retried forever.
    pub skipped: Vec<(String, String)>,
}

fn missing_kind(stderr: &str) -> bool {
    stderr.contains("no matches for kind") || stderr.contains("ensure CRDs are installed first")
}

/// Apply each manifest with `kubectl apply --server-side --force-conflicts -f -`, in
/// order, retrying each until the deadline (the API may still be settling: webhooks,
/// RBAC caches). Output is redacted of `secrets` before it is logged or returned.
pub fn apply_manifests(
    kubectl: &Kubectl,
    manifests: &[Manifest],
    secrets: &[&str],
    w: &WaitOptions,
    progress: &Progress,
) -> Result<ApplyReport> {
    let mut report = ApplyReport::default();
    for m in manifests {
        let mut skipped = None;
        let what = format!("the API to accept {}", m.name);
        super::wait::wait_until(progress, &what, w, || {
            let out = kubectl
                .run(
                    &[
                        "apply",
                        "--server-side",
                        "--force-conflicts",
                        &format!("--field-manager={FIELD_MANAGER}"),
                        "-f",
                        "-",
                    ],
                    Some(m.yaml.as_bytes()),
                )
                .map_err(|e| crate::step::error_line(&e))?;
            if out.ok {
                tracing::info!(manifest = %m.name, objects = out.stdout.lines().count(), "applied");
                return Ok(());
            }
            let err = redact(out.stderr.trim(), secrets);
            if missing_kind(&err) {
                skipped = Some(err);
                return Ok(());
            }
            Err(err)
        })?;
        match skipped {
            Some(why) => {
                tracing::warn!(manifest = %m.name, reason = %why, "skipped: the API does not serve its kinds");
                report.skipped.push((m.name.clone(), why));
            }
            None => report.applied.push(m.name.clone()),
        }
    }
    Ok(report)
}

/// The ClusterRole and binding of the approver: read CSRs, approve for the kubelet
/// serving signer only, read and label Nodes.
pub fn approver_rbac() -> Manifest {
    let yaml = format!(
        "---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:\n  name: {u}
rules:
  - apiGroups: [certificates.k8s.io]\n    resources: [certificatesigningrequests]\n    verbs: [get, list, watch]
  - apiGroups: [certificates.k8s.io]\n    resources: [certificatesigningrequests/approval]\n    verbs: [update]
  - apiGroups: [certificates.k8s.io]\n    resources: [signers]\n    resourceNames: [{KUBELET_SERVING_SIGNER}]\n    verbs: [approve]
  - apiGroups: [\"\"]\n    resources: [nodes]\n    verbs: [get, list, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:\n  name: {u}
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {u}
subjects:\n  - apiGroup: rbac.authorization.k8s.io\n    kind: User\n    name: {u}\n",
        u = CSR_APPROVER_USER
    );
    Manifest {
        name: "02-nodeimage-csr-approver.yaml".into(),
        yaml,
        secret: false,
    }
}

/// The oneshot service and timer that run `firstboot approve-csrs` every 30 seconds.
pub fn approver_units(firstboot_bin: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            APPROVER_SERVICE,
            format!(
                "# Written by firstboot.
[Unit]
Description=Approve kubelet serving certificates and label Nodes with their roles (nodeimage)
ConditionPathExists={CSR_APPROVER_CONF}
After=kube-apiserver.service

[Service]
Type=oneshot
ExecStart={firstboot_bin} approve-csrs
"
            ),
        ),
        (
            APPROVER_TIMER,
            "# Written by firstboot.
[Unit]
Description=Approve kubelet serving certificates every 30 seconds (nodeimage)

[Timer]
OnActiveSec=10s
OnUnitInactiveSec=30s
AccuracySec=5s

[Install]
WantedBy=timers.target
"
            .to_string(),
        ),
    ]
}

/// One pending kubelet serving CSR and the policy's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrDecision {
    pub name: String,
    pub username: String,
    pub verdict: std::result::Result<(), String>,
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `status.addresses[].address` of each Node, by name.
fn node_addresses(nodes: &Value) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
    let mut m = std::collections::BTreeMap::new();
    for n in nodes["items"].as_array().into_iter().flatten() {
        let Some(name) = n["metadata"]["name"].as_str() else {
            continue;
        };
        let addrs = n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a["type"].as_str()?.to_string(),
                    a["address"].as_str()?.to_string(),
                ))
            })
            .collect();
        m.insert(name.to_string(), addrs);
    }
    m
}

/// The verdicts for the pending kubelet serving CSRs of a `kubectl get csr -o json` list,
/// given the Nodes (`kubectl get nodes -o json`). Other signers, and CSRs already
/// approved, denied or failed, are not considered.
pub fn plan_csr_approvals(csrs: &Value, nodes: &Value) -> Vec<CsrDecision> {
    let addrs = node_addresses(nodes);
    let mut out = Vec::new();
    for c in csrs["items"].as_array().into_iter().flatten() {
        let spec = &c["spec"];
        if spec["signerName"].as_str() != Some(KUBELET_SERVING_SIGNER) {
            continue;
        }
        let decided = c["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| matches!(k["type"].as_str(), Some("Approved" | "Denied" | "Failed")));
        if decided {
            continue;
        }
        let name = c["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let username = spec["username"].as_str().unwrap_or_default().to_string();
        let groups = strs(&spec["groups"]);
        let usages = strs(&spec["usages"]);
        let request = B64
            .decode(spec["request"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let node = username.strip_prefix("system:node:").unwrap_or_default();
        let verdict = match addrs.get(node) {
            None => Err(format!("no Node {node} is registered (yet)")),
            Some(a) => {
                let node_addrs: Vec<String> = a.iter().map(|(_, v)| v.clone()).collect();
                kubelet_serving_decision(
                    &CsrObject {
                        signer_name: KUBELET_SERVING_SIGNER,
                        username: &username,
                        groups: &groups,
                        usages: &usages,
                        request: &request,
                    },
                    &node_addrs,
                )
            }
        };
        out.push(CsrDecision {
            name,
            username,
            verdict,
        });
    }
    out
}

/// The merge patches that give each Node its role labels (masters by InternalIP).
pub fn plan_node_labels(nodes: &Value, masters: &[String]) -> Vec<(String, Value)> {
    let addrs = node_addresses(nodes);
    let mut out = Vec::new();
    for n in nodes["items"].as_array().into_iter().flatten() {
        let Some(name) = n["metadata"]["name"].as_str() else {
            continue;
        };
        let labels: std::collections::BTreeMap<String, String> = n["metadata"]["labels"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let internal: Vec<String> = addrs
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(t, _)| t == "InternalIP")
            .map(|(_, a)| a.clone())
            .collect();
        if internal.is_empty() {
            continue;
        }
        if let Some(p) = node_role_patch(&labels, &internal, masters) {
            out.push((name.to_string(), p));
        }
    }
    out
}

/// Label the Nodes that lack their role labels; returns how many were patched.
pub fn label_nodes(kubectl: &Kubectl, masters: &[String]) -> Result<usize> {
    let nodes = kubectl.json(&["get", "nodes"])?;
    let mut n = 0;
    for (name, patch) in plan_node_labels(&nodes, masters) {
        let p = patch.to_string();
        let out = kubectl.run(&["patch", "node", &name, "--type=merge", "-p", &p], None)?;
        if !out.ok {
            bail!("labelling node {name}: {}", out.stderr.trim());
        }
        tracing::info!(node = %name, labels = %patch["metadata"]["labels"], "node labelled");
        n += 1;
    }
    Ok(n)
}

/// The masters' internal addresses as the bootstrap master wrote them.
pub fn read_cluster_roles(root: &Path) -> Result<Vec<String>> {
    let p = rooted(root, CLUSTER_ROLES_FILE);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
    Ok(strs(&v["masters"]))
}

/// `firstboot approve-csrs`: approve the pending kubelet serving CSRs that pass
/// [`kubelet_serving_decision`] (the Node's own name and addresses, serving usages) and
/// give Nodes their role labels. Runs on the bootstrap master from a timer, as
/// [`CSR_APPROVER_USER`]. Returns the number of CSRs approved.
pub fn approve_csrs(root: &Path) -> Result<usize> {
    let kubectl = Kubectl::under(root, CSR_APPROVER_CONF);
    if !kubectl.kubeconfig.exists() {
        return Err(anyhow!(
            "{} does not exist: only the bootstrap master approves CSRs (its cluster-objects step writes it)",
            kubectl.kubeconfig.display()
        ));
    }
    let csrs = kubectl.json(&["get", "certificatesigningrequests"])?;
    let nodes = kubectl.json(&["get", "nodes"])?;
    let mut approved = 0;
    for d in plan_csr_approvals(&csrs, &nodes) {
        match &d.verdict {
            Ok(()) => {
                let out = kubectl.run(&["certificate", "approve", &d.name], None)?;
                if !out.ok {
                    bail!("approving {}: {}", d.name, out.stderr.trim());
                }
                tracing::info!(csr = %d.name, requester = %d.username, "kubelet serving certificate approved");
                approved += 1;
            }
            Err(why) => {
                tracing::warn!(csr = %d.name, requester = %d.username, reason = %why, "kubelet serving certificate not approved")
            }
        }
    }
    match read_cluster_roles(root) {
        Ok(masters) => {
            label_nodes(&kubectl, &masters)?;
        }
        Err(e) => tracing::warn!(error = %crate::step::error_line(&e), "node role labels skipped"),
    }
    Ok(approved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_and_missing_kinds() {
        assert_eq!(
            redact(
                "bad token abcdef.0123456789abcdef here",
                &["abcdef.0123456789abcdef", "x"]
            ),
            "bad token <redacted> here"
        );
        assert!(missing_kind(
            "error: resource mapping not found for name: \"le\" namespace: \"\" from \"STDIN\": no matches for kind \"ClusterIssuer\" in version \"cert-manager.io/v1\"\nensure CRDs are installed first"
        ));
    }

    #[test]
    fn labels_by_internal_ip() {
        let nodes = serde_json::json!({"items": [
            {"metadata": {"name": "m1", "labels": {}}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}},
            {"metadata": {"name": "w1", "labels": {"node-role.kubernetes.io/node": "true"}}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]}},
            {"metadata": {"name": "w2"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.8"}, {"type": "Hostname", "address": "w2"}]}}
        ]});
        let p = plan_node_labels(&nodes, &["10.0.0.1".to_string()]);
        let names: Vec<_> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["m1", "w2"]);
        assert_eq!(
            p[0].1["metadata"]["labels"]["node-role.kubernetes.io/master"],
            ""
        );
        assert_eq!(
            p[1].1["metadata"]["labels"]["node-role.kubernetes.io/node"],
            "true"
        );
    }
}

//! Golden files for every generated unit, config and manifest (tests/golden/kube/).
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p firstboot --test kube_golden` and
//! review the diff.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use firstboot::etcd::{etcd_env, etcd_unit, ClusterState, EtcdMemberSpec};
use firstboot::kube::addons::addon_manifests;
use firstboot::kube::control_plane::{
    apiserver_flags, control_plane_files, controller_manager_flags, scheduler_flags,
};
use firstboot::kube::kubelet::{kubelet_config, kubelet_files, kubelet_flags};
use firstboot::kube::manifests::{
    bootstrap_token_secret, cluster_manifests, node_role_patch, Images,
};
use firstboot::kube::proxy::kube_proxy_files;
use firstboot::kube::{GeneratedFile, KubeInputs};
use nodeimage_core::config::{BootstrapToken, NodeConfig};
use serde_json::json;

const MASTER: &str = r#"
version: 1
role: master
hostname: master-0
bootstrap: true
address: 203.0.113.10
private_address: 10.133.0.10
labels:
  disk: ssd
  topology.kubernetes.io/zone: zone-a
cluster:
  name: demo
  api_endpoint: demo-k8s.example.com
  masters: [10.133.0.10, 10.133.0.11, 10.133.0.12]
  nodes: [10.133.0.0/24]
  network:
    trusted_subnets: [10.133.0.0/16, 172.31.0.0/16]
  authentication:
    token_webhook:
      config:
        cluster:
          name: token-reviewer
          server: http://localhost:9292/token
          certificate_authority: "-----BEGIN CERTIFICATE-----\nWEBHOOK CA\n-----END CERTIFICATE-----\n"
        user:
          name: kube-apiserver
          client_key: /etc/kubernetes/webhooks/client.key
          client_certificate: /etc/kubernetes/webhooks/client.crt
      cache_ttl: 5m
  audit:
    server: http://audit.example.com/webhook
  cloud:
    provider: aws
  addons:
    ingress-nginx:
      enabled: true
      node_selector:
        disk: ssd
      configmap:
        load-balance: least_conn
      default_backend:
        image: my-custom-image:latest
    cert-manager:
      enabled: true
      issuer:
        name: letsencrypt-staging
        server: https://acme-staging-v02.api.letsencrypt.org/directory
        email: me@domain.com
    kured:
      enabled: true
    kubernetes-dashboard:
      enabled: true
    host-upgrades:
      enabled: true
      interval: 7d
      url: "https://updates.example/k8s-{arch}.bundle"
secrets:
  ca_certificate: "-----BEGIN CERTIFICATE-----\nCLUSTER CA\n-----END CERTIFICATE-----\n"
  bootstrap_token: abcdef.0123456789abcdef
  ca_key: KEY
  weave_password: weave-secret-password
"#;

const WORKER: &str = r#"
version: 1
role: worker
hostname: worker-0
address: 10.133.0.20
cluster:
  name: demo
  api_endpoint: demo-k8s.example.com:443
  masters: [10.133.0.10]
labels:
  pool: general
secrets:
  ca_certificate: "-----BEGIN CERTIFICATE-----\nCLUSTER CA\n-----END CERTIFICATE-----\n"
  bootstrap_token: abcdef.0123456789abcdef
"#;

fn images() -> Images {
    Images {
        coredns: "registry.k8s.io/coredns/coredns:v1.13.1".into(),
        weave_kube: "example.invalid/weave-kube:2.8.1".into(),
        weave_npc: "example.invalid/weave-npc:2.8.1".into(),
        flannel: "ghcr.io/flannel-io/flannel:v0.28.10".into(),
        ingress_nginx_controller: "registry.k8s.io/ingress-nginx/controller:v1.12.0".into(),
        ingress_default_backend: None,
        kured: "ghcr.io/kubereboot/kured:1.16.0".into(),
        kubernetes_dashboard: "docker.io/kubernetesui/dashboard:v2.7.0".into(),
    }
}

fn golden(name: &str, actual: &str) {
    test_support::golden::check(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kube"),
        name,
        actual,
    );
}

/// MASTER with `from` replaced by `to` (which must change it), parsed.
fn master_with(from: &str, to: &str) -> NodeConfig {
    let text = MASTER.replace(from, to);
    assert_ne!(text, MASTER);
    NodeConfig::parse("master", &text).unwrap()
}

fn inputs<'a>(node: &'a NodeConfig, host: &'a str, ip: &str) -> KubeInputs<'a> {
    KubeInputs::new(node, host, ip.parse::<IpAddr>().unwrap(), "/usr/bin").unwrap()
}

fn golden_files(dir: &str, files: &[GeneratedFile]) {
    for f in files {
        golden(&format!("{dir}{}", f.path), &f.contents);
    }
}

/// One YAML document as JSON (what `kubectl apply` sends).
fn parse(yaml: &str) -> serde_json::Value {
    yaml_serde::from_str(yaml).unwrap_or_else(|e| panic!("{e}:\n{yaml}"))
}

/// Every document of a manifest as JSON.
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    yaml_serde::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The document of `kind` named `name`.
fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

/// Every document parses as YAML and names its apiVersion, kind and metadata.name.
fn check_documents(name: &str, yaml: &str) -> Vec<(String, String)> {
    use serde::Deserialize;
    let mut kinds = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(yaml) {
        let v = yaml_serde::Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
        if v.is_null() {
            continue;
        }
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no kind in {v:?}"))
            .to_string();
        assert!(v["apiVersion"].as_str().is_some(), "{name}: no apiVersion");
        let n = v["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {kind} without a name"))
            .to_string();
        kinds.push((kind, n));
    }
    kinds
}

#[test]
fn master_units_and_configs() {
    let node = NodeConfig::parse("master", MASTER).unwrap();
    let inp = inputs(&node, "master-0", "10.133.0.10");
    let cp = control_plane_files(&inp);
    golden_files("master", &cp);
    golden_files("master", &kubelet_files(&inp));
    golden_files("master", &kube_proxy_files(&inp));
    let paths: Vec<_> = cp.iter().map(|f| (f.path.as_str(), f.mode)).collect();
    assert!(paths.contains(&("/etc/kubernetes/audit/webhook.kubeconfig", 0o600)));
    assert!(paths.contains(&("/etc/kubernetes/webhooks/token-webhook.kubeconfig", 0o600)));

    let a = apiserver_flags(&inp);
    for (k, v) in [
        ("authorization-mode", "Node,RBAC"),
        ("enable-bootstrap-token-auth", "true"),
        ("enable-admission-plugins", "NodeRestriction"),
        ("secure-port", "6443"),
        ("service-cluster-ip-range", "10.96.0.0/12"),
        ("etcd-servers", "https://127.0.0.1:2379"),
        ("audit-webhook-mode", "batch"),
        ("authentication-token-webhook-cache-ttl", "5m"),
        ("requestheader-allowed-names", "front-proxy-client"),
        (
            "service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
        ),
    ] {
        assert_eq!(a.get(k), Some(v), "kube-apiserver --{k}");
    }
    assert_eq!(
        a.get("cloud-provider"),
        None,
        "kube-apiserver has no --cloud-provider in 1.35"
    );
    let c = controller_manager_flags(&inp);
    assert_eq!(c.get("cluster-cidr"), Some("10.32.0.0/12"));
    assert_eq!(c.get("bind-address"), Some("127.0.0.1"));
    assert_eq!(c.get("cloud-provider"), Some("external"));
    assert!(
        c.get("controllers").unwrap().contains("bootstrapsigner")
            && c.get("controllers").unwrap().contains("tokencleaner")
    );
    assert_eq!(scheduler_flags(&inp).get("bind-address"), Some("127.0.0.1"));

    let k = kubelet_config(&inp);
    let kv = parse(&k);
    for (pointer, want) in [
        ("/readOnlyPort", json!(0)),
        ("/cgroupDriver", json!("systemd")),
        (
            "/containerRuntimeEndpoint",
            json!("unix:///run/containerd/containerd.sock"),
        ),
        ("/clusterDNS", json!(["10.96.0.10"])),
        ("/healthzBindAddress", json!("127.0.0.1")),
        ("/rotateCertificates", json!(true)),
        ("/authorization/mode", json!("Webhook")),
        (
            "/registerWithTaints/0/key",
            json!("node-role.kubernetes.io/control-plane"),
        ),
    ] {
        assert_eq!(
            kv.pointer(pointer),
            Some(&want),
            "kubelet config {pointer}:\n{k}"
        );
    }
    let kf = kubelet_flags(&inp);
    assert_eq!(
        kf.get("node-labels"),
        Some("disk=ssd,topology.kubernetes.io/zone=zone-a")
    );
    assert_eq!(kf.get("cloud-provider"), Some("external"));
    assert_eq!(kf.get("bootstrap-kubeconfig"), None);
}

#[test]
fn worker_units_and_configs() {
    let node = NodeConfig::parse("worker", WORKER).unwrap();
    let inp = inputs(&node, "worker-0", "10.133.0.20");
    let files = kubelet_files(&inp);
    golden_files("worker", &files);
    let all = firstboot::kube::node_files(&inp);
    assert!(
        all.iter().all(|f| !f.path.contains("kube-apiserver")),
        "no control plane on a worker"
    );
    let dir = tempfile::tempdir().unwrap();
    firstboot::kube::write_files(dir.path(), &all).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("etc/kubernetes/bootstrap-kubelet.conf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    golden_files("worker", &kube_proxy_files(&inp));
    let boot = files
        .iter()
        .find(|f| f.path == "/etc/kubernetes/bootstrap-kubelet.conf")
        .unwrap();
    assert_eq!(boot.mode, 0o600);
    assert!(boot.contents.contains("token: abcdef.0123456789abcdef"));
    assert!(boot
        .contents
        .contains("server: https://demo-k8s.example.com:443"));
    let k = kubelet_config(&inp);
    assert!(
        k.contains("serverTLSBootstrap: true") && !k.contains("registerWithTaints"),
        "{k}"
    );
    assert_eq!(
        kubelet_flags(&inp).get("bootstrap-kubeconfig"),
        Some("/etc/kubernetes/bootstrap-kubelet.conf")
    );
}

/// When the bootstrap master made the manifests (the token's expiration counts from it).
fn made_at() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_767_225_600).expect("2026-01-01T00:00:00Z")
}

#[test]
fn the_bootstrap_token_expires_after_its_ttl() {
    let node = NodeConfig::parse("master", MASTER).unwrap();
    let inp = inputs(&node, "master-0", "10.133.0.10");
    let ms = cluster_manifests(&inp, &images(), made_at()).unwrap();
    let token = parse(&ms[0].yaml);
    assert_eq!(
        token["stringData"]["expiration"],
        json!("2026-01-02T00:00:00Z"),
        "the default ttl is 24h"
    );
    for (ttl, want) in [("90m", json!("2026-01-01T01:30:00Z")), ("0", json!(null))] {
        let text = MASTER.replacen(
            "\ncluster:\n",
            &format!("\ncluster:\n  bootstrap_token_ttl: {ttl}\n"),
            1,
        );
        let node = NodeConfig::parse("master", &text).unwrap();
        let inp = inputs(&node, "master-0", "10.133.0.10");
        let ms = cluster_manifests(&inp, &images(), made_at()).unwrap();
        let v = parse(&ms[0].yaml);
        assert_eq!(v["stringData"]["expiration"], want, "ttl {ttl}");
    }
    let bad = MASTER.replacen(
        "\ncluster:\n",
        "\ncluster:\n  bootstrap_token_ttl: 1 day\n",
        1,
    );
    let e = NodeConfig::parse("master", &bad).unwrap_err().to_string();
    assert!(
        e.contains("cluster.bootstrap_token_ttl") && e.contains("`1 day`"),
        "{e}"
    );
}

#[test]
fn cluster_manifests_and_addons() {
    let node = NodeConfig::parse("master", MASTER).unwrap();
    let inp = inputs(&node, "master-0", "10.133.0.10");
    let ms = cluster_manifests(&inp, &images(), made_at()).unwrap();
    let plan = addon_manifests(&inp, &images());
    let mut all_kinds = Vec::new();
    for m in ms.iter().chain(plan.manifests.iter()) {
        golden(&format!("manifests/{}", m.name), &m.yaml);
        all_kinds.extend(check_documents(&m.name, &m.yaml));
    }
    assert!(ms
        .iter()
        .filter(|m| m.secret)
        .map(|m| m.name.as_str())
        .eq(["00-bootstrap-token.yaml", "10-weave-net.yaml"]));
    assert!(
        !format!("{ms:?}").contains("0123456789abcdef"),
        "Debug must not print secrets"
    );

    let token = &documents(&ms[0].yaml)[0];
    for (pointer, want) in [
        ("/metadata/name", "bootstrap-token-abcdef"),
        ("/type", "bootstrap.kubernetes.io/token"),
        ("/stringData/token-id", "abcdef"),
        ("/stringData/token-secret", "0123456789abcdef"),
        ("/stringData/usage-bootstrap-authentication", "true"),
        ("/stringData/usage-bootstrap-signing", "true"),
        (
            "/stringData/auth-extra-groups",
            "system:bootstrappers:kubeadm:default-node-token",
        ),
    ] {
        assert_eq!(
            token.pointer(pointer),
            Some(&json!(want)),
            "token secret {pointer}"
        );
    }
    let rbac = &ms[1].yaml;
    for role in [
        "system:node-bootstrapper",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        "system:node-proxier",
    ] {
        assert!(rbac.contains(&format!("name: {role}\n")), "{role}");
    }
    let weave = documents(&ms[2].yaml);
    let ds = find(&weave, "DaemonSet", "weave-net");
    let env = &ds["spec"]["template"]["spec"]["containers"][0]["env"];
    let var = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("weave has no {name}"))
            .clone()
    };
    assert_eq!(var("IPALLOC_RANGE")["value"], "10.32.0.0/12");
    assert_eq!(
        var("EXTRA_ARGS")["value"],
        "--trusted-subnets=10.133.0.0/16,172.31.0.0/16"
    );
    assert_eq!(
        var("WEAVE_PASSWORD")["valueFrom"]["secretKeyRef"],
        json!({"name": "weave-passwd", "key": "weave-passwd"})
    );
    let dns = &ms[3].yaml;
    assert!(dns.contains("clusterIP: 10.96.0.10"));

    for (kind, name) in [
        ("ClusterIssuer", "letsencrypt-staging"),
        ("DaemonSet", "ingress-nginx-controller"),
        ("Deployment", "ingress-nginx-default-backend"),
        ("DaemonSet", "kured"),
        ("Deployment", "kubernetes-dashboard"),
        ("Service", "kube-dns"),
        ("DaemonSet", "weave-net"),
    ] {
        assert!(
            all_kinds.contains(&(kind.to_string(), name.to_string())),
            "{kind}/{name} missing"
        );
    }
    let ingress = documents(
        &plan
            .manifests
            .iter()
            .find(|m| m.name == "30-ingress-nginx.yaml")
            .unwrap()
            .yaml,
    );
    assert_eq!(
        find(&ingress, "ConfigMap", "ingress-nginx-controller")["data"]["load-balance"],
        "least_conn"
    );
    assert_eq!(
        find(&ingress, "Deployment", "ingress-nginx-default-backend")["spec"]["template"]["spec"]
            ["containers"][0]["image"],
        "my-custom-image:latest"
    );
    assert_eq!(
        find(&ingress, "DaemonSet", "ingress-nginx-controller")["spec"]["template"]["spec"]
            ["nodeSelector"]["disk"],
        "ssd"
    );
    // With kured, host-upgrades needs no word: kured reboots into the update.
    assert!(
        !plan.notes.iter().any(|n| n.starts_with("host-upgrades")),
        "{:?}",
        plan.notes
    );
}

/// `network.provider: flannel`: flannel instead of Weave Net, no Weave password needed,
/// the VXLAN port and pod network from the port table and the cluster config.
#[test]
fn flannel_replaces_weave_net() {
    let node = master_with(
        "  network:\n    trusted_subnets:",
        "  network:\n    provider: flannel\n    pod_network_cidr: 10.244.0.0/16\n    trusted_subnets:",
    );
    let inp = inputs(&node, "master-0", "10.133.0.10");
    let ms = cluster_manifests(&inp, &images(), made_at()).unwrap();
    let names: Vec<&str> = ms.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "00-bootstrap-token.yaml",
            "01-rbac.yaml",
            "10-flannel.yaml",
            "20-coredns.yaml"
        ]
    );
    let m = &ms[2];
    assert!(!m.secret, "flannel's manifest holds no secret");
    golden("manifests-flannel/10-flannel.yaml", &m.yaml);
    check_documents(&m.name, &m.yaml);
    let docs = documents(&m.yaml);
    let cfg = find(&docs, "ConfigMap", "kube-flannel-cfg");
    let net: serde_json::Value =
        serde_json::from_str(cfg["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        net,
        json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": 8472}})
    );
    let ds = find(&docs, "DaemonSet", "kube-flannel");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/flannel-io/flannel:v0.28.10");
    assert_eq!(ds["spec"]["template"]["spec"]["hostNetwork"], true);
    assert_eq!(
        c["env"][2]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
}

/// `cluster.components`: the operator's flags replace or add to the product's, and
/// their configuration fields replace the kubelet's and kube-proxy's.
#[test]
fn components_extra_args_and_config() {
    let node = master_with(
        "  addons:\n",
        "  components:\n    kube-apiserver: {extra_args: {etcd-healthcheck-timeout: 30s, secure-port: \"7443\"}}\n    kube-scheduler: {extra_args: {leader-elect: \"false\"}}\n    kubelet:\n      extra_args: {v: \"2\"}\n      config: {nodeLeaseDurationSeconds: 120, runtimeRequestTimeout: 10m}\n    kube-proxy: {config: {mode: nftables}}\n  addons:\n",
    );
    let inp = inputs(&node, "master-0", "10.133.0.10");
    let a = apiserver_flags(&inp);
    assert_eq!(a.get("etcd-healthcheck-timeout"), Some("30s"));
    assert_eq!(a.get("secure-port"), Some("7443"), "replaces the product's");
    assert_eq!(
        a.get("authorization-mode"),
        Some("Node,RBAC"),
        "keeps the rest"
    );
    assert_eq!(scheduler_flags(&inp).get("leader-elect"), Some("false"));
    assert_eq!(kubelet_flags(&inp).get("v"), Some("2"));
    let k = parse(&kubelet_config(&inp));
    assert_eq!(k["nodeLeaseDurationSeconds"], 120);
    assert_eq!(k["runtimeRequestTimeout"], "10m");
    assert_eq!(k["kind"], "KubeletConfiguration", "keeps the rest");
    let files = kube_proxy_files(&inp);
    let proxy = files
        .iter()
        .find(|f| f.path.ends_with("config.yaml"))
        .unwrap();
    assert_eq!(parse(&proxy.contents)["mode"], "nftables");
    // Bad input names the key.
    for (bad, key) in [
        (
            "    kube-apiserver: {extra_args: {--v: \"2\"}}\n",
            "cluster.components.kube-apiserver.extra_args.--v",
        ),
        (
            "    kubelet: {extra_args: {v: \"2\\n--x=y\"}}\n",
            "cluster.components.kubelet.extra_args.v",
        ),
        (
            "    etcd: {config: {a: 1}}\n",
            "cluster.components.etcd.config",
        ),
        (
            "    kube-proxy: {extra_args: {v: \"2\"}}\n",
            "cluster.components.kube-proxy.extra_args",
        ),
    ] {
        let t = MASTER.replace("  addons:\n", &format!("  components:\n{bad}  addons:\n"));
        let e = NodeConfig::parse("master", &t).unwrap_err().to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
}

/// `cloud.provider` without a cloud-controller-manager leaves every Node tainted
/// `uninitialized`: the bootstrap master's report says so.
#[test]
fn a_cloud_provider_without_its_controller_is_reported() {
    let node = NodeConfig::parse("master", MASTER).unwrap();
    assert!(
        node.cluster.cloud.is_some(),
        "the fixture sets cloud.provider"
    );
    let inp = inputs(&node, "master-0", "10.133.0.10");
    let (_, notes) = firstboot::assemble::bootstrap_manifests(&inp, &images(), made_at()).unwrap();
    assert!(
        notes.iter().any(
            |n| n.contains("node.cloudprovider.kubernetes.io/uninitialized")
                && n.contains("cloud-controller-manager for `aws`")
        ),
        "{notes:?}"
    );
}

#[test]
fn node_roles_are_set_through_the_api() {
    let masters = vec!["10.133.0.10".to_string()];
    let p = node_role_patch(&BTreeMap::new(), &["10.133.0.10".into()], &masters).unwrap();
    assert_eq!(
        p,
        serde_json::json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/master": ""}}})
    );
    let p = node_role_patch(&BTreeMap::new(), &["10.133.0.20".into()], &masters).unwrap();
    assert_eq!(
        p,
        serde_json::json!({"metadata": {"labels": {"node-role.kubernetes.io/node": "true"}}})
    );
    let has = BTreeMap::from([(
        "node-role.kubernetes.io/node".to_string(),
        "true".to_string(),
    )]);
    assert_eq!(
        node_role_patch(&has, &["10.133.0.20".into()], &masters),
        None
    );
}

#[test]
fn etcd_env_and_unit() {
    let node = NodeConfig::parse("master", MASTER).unwrap();
    let spec =
        EtcdMemberSpec::from_node_config(&node, "master-0", "10.133.0.10", Path::new("/")).unwrap();
    let env = etcd_env(
        &spec,
        "master-0=https://10.133.0.10:2380",
        ClusterState::New,
    );
    golden("etcd/etcd.env", &env.to_env_file());
    golden("etcd/etcd.service", &etcd_unit("/usr/bin/etcd"));
    assert_eq!(
        spec.other_endpoints(),
        ["https://10.133.0.11:2379", "https://10.133.0.12:2379"]
    );
}

/// The bootstrap token's id and secret are `[a-z0-9]`, so an id like `123456` or
/// `12e345` looks like a number. The Secret's `stringData` must hold strings after the
/// YAML-to-JSON step (the API server refuses anything else), as yaml_serde reads it and
/// as Kubernetes' YAML 1.1 reader does: no value is left as a plain scalar that YAML 1.1
/// resolves to a number.
#[test]
fn bootstrap_token_values_stay_strings() {
    for token in [
        "123456.1234567890123456",
        "12e345.0000000000000000",
        "012345.1e10000000000000",
        "0x1234.0000000000000001",
        "1e1234.12345678901234e5",
        "000000.0000000000000000",
    ] {
        let t: BootstrapToken = token.parse().unwrap();
        let secret = bootstrap_token_secret(&t, None);
        let debug = format!("{secret:?}");
        assert!(
            !debug.contains(t.secret()),
            "Debug shows the secret: {debug}"
        );
        let yaml = nodeimage_core::yaml::to_string(&secret);
        let v = parse(&yaml);
        let (id, secret) = token.split_once('.').unwrap();
        assert_eq!(v["stringData"]["token-id"], json!(id), "{yaml}");
        assert_eq!(v["stringData"]["token-secret"], json!(secret), "{yaml}");
        assert_eq!(
            v["metadata"]["name"],
            json!(format!("bootstrap-token-{id}"))
        );
        for (k, val) in v["stringData"].as_object().unwrap() {
            assert!(val.is_string(), "{token}: stringData.{k} is {val}");
        }
        for line in yaml.lines().filter(|l| l.contains("token-")) {
            let scalar = line.split_once(": ").map_or("", |(_, s)| s);
            let quoted = scalar.starts_with(['\'', '"']);
            assert!(
                quoted || !nodeimage_core::yaml::misread_by_yaml11(scalar),
                "{token}: `{line}` is a number to YAML 1.1"
            );
        }
    }
}

/// A label value, ConfigMap value or hostname that YAML 1.1 reads as a boolean (`on`,
/// `no`) stays a string for Kubernetes: such a document is written as JSON.
#[test]
fn yaml11_booleans_stay_strings() {
    let node = NodeConfig::parse(
        "master",
        &MASTER
            .replace("load-balance: least_conn", "proxy-buffering: \"on\"")
            .replace("disk: ssd", "disk: \"yes\""),
    )
    .unwrap();
    let inp = inputs(&node, "no", "10.133.0.10");
    let plan = addon_manifests(&inp, &images());
    let ingress = &plan
        .manifests
        .iter()
        .find(|m| m.name == "30-ingress-nginx.yaml")
        .unwrap()
        .yaml;
    let docs = documents(ingress);
    let cm = find(&docs, "ConfigMap", "ingress-nginx-controller");
    assert_eq!(cm["data"]["proxy-buffering"], "on");
    let ds = find(&docs, "DaemonSet", "ingress-nginx-controller");
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"]["disk"],
        "yes"
    );
    for d in ingress
        .split("---\n")
        .filter(|d| d.contains("proxy-buffering") || d.contains("\"disk\""))
    {
        assert!(d.starts_with('{'), "written as JSON:\n{d}");
    }
    let proxy = kube_proxy_files(&inp);
    let config = parse(&proxy[0].contents);
    assert_eq!(config["hostnameOverride"], "no", "{}", proxy[0].contents);
}

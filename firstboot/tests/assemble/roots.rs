//! The cluster steps of a bootstrap master, a second master and a worker, run against
//! directory trees (`--root`, not live): every file they write, the bind addresses from
//! the port table, what a worker must never receive, missing binaries, idempotence, and
//! the same flow through the `firstboot` binary.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use firstboot::assemble::{self, NOT_LIVE};
use firstboot::run::RunOptions;
use nodeimage_core::config::{NodeConfig, Role};
use nodeimage_core::kubeconfig::Kubeconfig;
use nodeimage_core::ports::{PortPolicy, Service};

fn opts(root: &Path) -> RunOptions {
    RunOptions {
        root: root.to_path_buf(),
        live: false,
        platform: None,
        config_file: None,
        metadata_url: None,
    }
}

fn run(root: &Path, c: &NodeConfig) -> Vec<(String, String)> {
    assemble::run_steps_once(&opts(root), c, c.hostname.as_deref().unwrap()).unwrap()
}

fn policy(c: &NodeConfig) -> PortPolicy {
    PortPolicy::for_node(c).unwrap()
}

fn bind(p: &PortPolicy, s: Service) -> std::net::SocketAddr {
    p.bind_address(s).unwrap().unwrap()
}

fn unit_flag<'a>(unit: &'a str, flag: &str) -> Option<&'a str> {
    unit.lines()
        .map(|l| l.trim().trim_end_matches(" \\"))
        .find_map(|l| l.strip_prefix(&format!("--{flag}=")))
}

fn yaml(root: &Path, node_path: &str) -> yaml_serde::Value {
    yaml_serde::from_str(&read(root, node_path)).unwrap()
}

/// The kubelet and kube-proxy listen where the port table says, on any role.
fn assert_node_binds(root: &Path, p: &PortPolicy) {
    let k = yaml(root, "/var/lib/kubelet/config.yaml");
    let kubelet = bind(p, Service::Kubelet);
    assert_eq!(k["address"].as_str().unwrap(), kubelet.ip().to_string());
    assert_eq!(k["port"].as_u64().unwrap(), kubelet.port() as u64);
    let hz = bind(p, Service::KubeletHealthz);
    assert_eq!(
        k["healthzBindAddress"].as_str().unwrap(),
        hz.ip().to_string()
    );
    assert_eq!(k["healthzPort"].as_u64().unwrap(), hz.port() as u64);
    assert_eq!(p.bind_address(Service::KubeletReadOnly).unwrap(), None);
    assert_eq!(k["readOnlyPort"].as_u64(), Some(0));
    let kp = yaml(root, "/var/lib/kube-proxy/config.yaml");
    assert_eq!(
        kp["healthzBindAddress"].as_str().unwrap(),
        bind(p, Service::KubeProxyHealthz).to_string()
    );
    assert_eq!(
        kp["metricsBindAddress"].as_str().unwrap(),
        bind(p, Service::KubeProxyMetrics).to_string()
    );
}

#[test]
fn bootstrap_master_writes_pki_etcd_control_plane_kubelet_and_manifests() {
    let s = ClusterSecrets::new();
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    node_root(root, &ALL_BINARIES);
    let c = s.node(Role::Master, true, "master-1", MASTERS[0]);
    let steps = run(root, &c);
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "join-check",
            "pki",
            "etcd",
            "control-plane",
            "kubelet",
            "cluster-objects"
        ]
    );
    let detail = |n: &str| steps.iter().find(|(s, _)| s == n).unwrap().1.clone();
    assert!(
        detail("join-check")
            .starts_with("master (bootstrap) master-1 (10.10.0.11, from private_address)"),
        "{}",
        detail("join-check")
    );
    for s in ["control-plane", "kubelet"] {
        assert!(detail(s).ends_with(NOT_LIVE), "{s}: {}", detail(s));
    }
    assert!(
        detail("etcd").starts_with("etcd new cluster:"),
        "{}",
        detail("etcd")
    );
    assert!(detail("cluster-objects").contains("not applied (not live)"));

    // PKI: keys 0600, certificates 0644.
    for key in [
        "/etc/kubernetes/pki/ca.key",
        "/etc/kubernetes/pki/etcd/ca.key",
        "/etc/kubernetes/pki/front-proxy-ca.key",
        "/etc/kubernetes/pki/sa.key",
        "/etc/kubernetes/pki/apiserver.key",
        "/etc/kubernetes/pki/apiserver-kubelet-client.key",
        "/etc/kubernetes/pki/apiserver-etcd-client.key",
        "/etc/kubernetes/pki/etcd/server.key",
        "/etc/kubernetes/pki/etcd/peer.key",
        "/etc/kubernetes/pki/etcd/healthcheck-client.key",
        "/var/lib/kubelet/pki/kubelet.key",
        "/var/lib/kubelet/pki/kubelet-client-current.pem",
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/super-admin.conf",
        "/etc/kubernetes/controller-manager.conf",
        "/etc/kubernetes/scheduler.conf",
        "/etc/kubernetes/csr-approver.conf",
        "/etc/etcd/etcd.env",
    ] {
        assert_eq!(mode(root, key), 0o600, "{key}");
    }
    for cert in [
        "/etc/kubernetes/pki/ca.crt",
        "/etc/kubernetes/pki/apiserver.crt",
        "/etc/kubernetes/pki/etcd/server.crt",
        "/etc/kubernetes/pki/sa.pub",
    ] {
        assert_eq!(mode(root, cert), 0o644, "{cert}");
    }
    assert_eq!(read(root, "/etc/kubernetes/pki/ca.crt"), s.ca.cert_pem);

    // Bind addresses from the port table.
    let p = policy(&c);
    let api = read(root, "/etc/systemd/system/kube-apiserver.service");
    let a = bind(&p, Service::KubeApiserver);
    assert_eq!(
        unit_flag(&api, "bind-address"),
        Some(a.ip().to_string().as_str())
    );
    assert_eq!(
        unit_flag(&api, "secure-port"),
        Some(a.port().to_string().as_str())
    );
    assert_eq!(unit_flag(&api, "advertise-address"), Some("10.10.0.11"));
    let etcd_loopback = p
        .listen_addresses(Service::EtcdClient)
        .unwrap()
        .into_iter()
        .find(|a| a.ip().is_loopback())
        .unwrap();
    assert_eq!(
        unit_flag(&api, "etcd-servers").unwrap(),
        format!("https://{etcd_loopback}")
    );
    for (unit, svc) in [
        ("kube-scheduler", Service::KubeScheduler),
        ("kube-controller-manager", Service::KubeControllerManager),
    ] {
        let text = read(root, &format!("/etc/systemd/system/{unit}.service"));
        let b = bind(&p, svc);
        assert!(
            b.ip().is_loopback(),
            "{unit} is localhost-only in the table"
        );
        assert_eq!(
            unit_flag(&text, "bind-address"),
            Some(b.ip().to_string().as_str()),
            "{unit}"
        );
        assert_eq!(
            unit_flag(&text, "secure-port"),
            Some(b.port().to_string().as_str()),
            "{unit}"
        );
    }
    let env = read(root, "/etc/etcd/etcd.env");
    let line = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing:\n{env}"))
            .to_string()
    };
    assert_eq!(
        line("ETCD_LISTEN_CLIENT_URLS"),
        p.etcd_listen_client_urls().unwrap().join(",")
    );
    assert_eq!(
        line("ETCD_LISTEN_PEER_URLS"),
        p.etcd_listen_peer_urls().unwrap().join(",")
    );
    assert_eq!(line("ETCD_INITIAL_CLUSTER_STATE"), "new");
    assert_eq!(
        line("ETCD_INITIAL_CLUSTER"),
        "master-1=https://10.10.0.11:2380"
    );
    assert!(read(root, "/etc/systemd/system/etcd.service").contains("ExecStart=/usr/bin/etcd"));
    assert_node_binds(root, &p);

    // The master's kubelet uses the certificate it minted, against the local API server.
    let kc = Kubeconfig::parse(&read(root, "/etc/kubernetes/kubelet.conf")).unwrap();
    assert_eq!(
        kc.server(),
        Some(format!("https://127.0.0.1:{}", a.port()).as_str())
    );
    assert!(read(root, "/var/lib/kubelet/config.yaml")
        .contains("node-role.kubernetes.io/control-plane"));

    // Manifests for auditing: secret ones 0600.
    let dir = "/etc/kubernetes/manifests-applied";
    let token = read(root, &format!("{dir}/00-bootstrap-token.yaml"));
    assert!(token.contains("token-secret: 0123456789abcdef"));
    assert_eq!(mode(root, &format!("{dir}/00-bootstrap-token.yaml")), 0o600);
    assert_eq!(mode(root, &format!("{dir}/10-weave-net.yaml")), 0o600);
    assert!(read(root, &format!("{dir}/10-weave-net.yaml")).contains(WEAVE_PASSWORD));
    // Weave's status listener is the port table's.
    let weave = read(root, &format!("{dir}/10-weave-net.yaml"));
    let status = bind(&p, Service::WeaveStatus).to_string();
    assert!(
        yaml_serde::Deserializer::from_str(&weave).any(|d| {
            use serde::Deserialize;
            let v = yaml_serde::Value::deserialize(d).unwrap();
            v["kind"] == "DaemonSet"
                && v["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_sequence()
                    .is_some_and(|env| {
                        env.iter().any(|e| {
                            e["name"] == "WEAVE_STATUS_ADDR" && e["value"] == status.as_str()
                        })
                    })
        }),
        "no WEAVE_STATUS_ADDR {status}:\n{weave}"
    );
    for (m, wanted) in [
        ("01-rbac.yaml", "system:node-proxier"),
        (
            "02-nodeimage-csr-approver.yaml",
            "kubernetes.io/kubelet-serving",
        ),
        (
            "20-coredns.yaml",
            "registry.k8s.io/coredns/coredns:v1.13.1@sha256:",
        ),
        (
            "30-ingress-nginx.yaml",
            "registry.k8s.io/ingress-nginx/controller:",
        ),
        ("50-kured.yaml", "ghcr.io/kubereboot/kured:"),
    ] {
        let f = format!("{dir}/{m}");
        assert_eq!(mode(root, &f), 0o644, "{m}");
        assert!(read(root, &f).contains(wanted), "{m} lacks {wanted}");
    }
    // The approver: its own credential against the local API server, timer, roles file.
    let ak = Kubeconfig::parse(&read(root, "/etc/kubernetes/csr-approver.conf")).unwrap();
    assert_eq!(ak.users[0].name, "nodeimage:csr-approver");
    assert_eq!(ak.ca_pem().as_deref(), Some(s.ca.cert_pem.as_str()));
    assert!(
        read(root, "/etc/systemd/system/nodeimage-csr-approver.service")
            .contains("ExecStart=/usr/bin/firstboot approve-csrs")
    );
    assert!(read(root, "/etc/systemd/system/nodeimage-csr-approver.timer").contains("[Timer]"));
    let roles: serde_json::Value =
        serde_json::from_str(&read(root, "/etc/nodeimage/cluster-roles.json")).unwrap();
    assert_eq!(roles["masters"], serde_json::json!(MASTERS));
}

#[test]
fn second_master_mints_its_own_certificates_and_joins_etcd_later() {
    let s = ClusterSecrets::new();
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    // A joining master needs no kubectl.
    node_root(root, &ALL_BINARIES[..6]);
    let c = s.node(Role::Master, false, "master-2", MASTERS[1]);
    let steps = run(root, &c);
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["join-check", "pki", "etcd", "control-plane", "kubelet"]
    );
    assert_eq!(
        steps[2].1,
        format!("etcd joins https://10.10.0.11:2379,https://10.10.0.13:2379: 1 files changed; {NOT_LIVE}")
    );
    assert!(path(root, "/etc/systemd/system/etcd.service").exists());
    assert!(
        !path(root, "/etc/etcd/etcd.env").exists(),
        "the member list comes from a running member"
    );
    assert!(!path(root, "/etc/kubernetes/super-admin.conf").exists());
    assert!(!path(root, "/etc/kubernetes/manifests-applied").exists());
    assert!(!path(root, "/etc/kubernetes/csr-approver.conf").exists());
    assert_eq!(mode(root, "/etc/kubernetes/pki/ca.key"), 0o600);
    // Its serving certificates name its own address.
    let pem = read(root, "/etc/kubernetes/pki/etcd/peer.crt");
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = p.parse_x509().unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(
        sans.contains("10.10.0.12") || sans.contains("[10, 10, 0, 12]"),
        "{sans}"
    );
    let p = policy(&c);
    assert_node_binds(root, &p);
    let api = read(root, "/etc/systemd/system/kube-apiserver.service");
    assert_eq!(unit_flag(&api, "advertise-address"), Some("10.10.0.12"));
}

#[test]
fn worker_gets_kubelet_and_token_but_no_private_key() {
    let s = ClusterSecrets::new();
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    node_root(root, &["/usr/bin/kubelet", "/usr/bin/kube-proxy"]);
    let c = s.node(Role::Worker, false, "worker-1", WORKER_IP);
    let steps = run(root, &c);
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["join-check", "kubelet"]);
    assert!(steps[1].1.ends_with(NOT_LIVE));

    let boot = "/etc/kubernetes/bootstrap-kubelet.conf";
    assert_eq!(mode(root, boot), 0o600);
    let k = Kubeconfig::parse(&read(root, boot)).unwrap();
    assert_eq!(k.users[0].user.token.as_deref(), Some(TOKEN));
    assert_eq!(k.server(), Some("https://api.demo.example.com:6443"));
    assert_eq!(k.ca_pem().as_deref(), Some(s.ca.cert_pem.as_str()));
    assert_eq!(read(root, "/etc/kubernetes/pki/ca.crt"), s.ca.cert_pem);
    assert_eq!(mode(root, "/etc/kubernetes/pki/ca.crt"), 0o644);
    let cfg = read(root, "/var/lib/kubelet/config.yaml");
    assert!(cfg.contains("serverTLSBootstrap: true"), "{cfg}");
    assert!(!cfg.contains("registerWithTaints"), "{cfg}");
    let unit = read(root, "/etc/systemd/system/kubelet.service");
    assert_eq!(unit_flag(&unit, "node-ip"), Some(WORKER_IP));
    assert_eq!(unit_flag(&unit, "bootstrap-kubeconfig"), Some(boot));
    assert_node_binds(root, &policy(&c));

    // Nothing a worker holds is a private key, and no control plane is there.
    for (f, (_, _, _, data)) in snapshot(root) {
        let text = String::from_utf8_lossy(&data.0);
        assert!(!text.contains("PRIVATE KEY"), "{f} holds a private key");
        assert!(!text.contains(&s.ca.key_pem), "{f} holds the CA key");
    }
    for absent in [
        "/etc/kubernetes/pki/ca.key",
        "/etc/systemd/system/kube-apiserver.service",
        "/etc/systemd/system/etcd.service",
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/manifests-applied",
    ] {
        assert!(!path(root, absent).exists(), "{absent} on a worker");
    }
}

#[test]
fn a_missing_binary_is_named_with_the_profile_that_has_it() {
    let s = ClusterSecrets::new();
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let bins: Vec<&str> = ALL_BINARIES
        .iter()
        .copied()
        .filter(|b| *b != "/usr/bin/kube-apiserver")
        .collect();
    node_root(root, &bins);
    let c = s.node(Role::Master, true, "master-1", MASTERS[0]);
    let e = assemble::run_steps_once(&opts(root), &c, "master-1").unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "step join-check: kube-apiserver is not in this image (/usr/bin/kube-apiserver): build the image \
         from a profile that pins the Kubernetes payload (profiles/k8s-1.36-*.toml)"
    );
    // Nothing was written before the check failed.
    assert!(!path(root, "/etc/kubernetes").exists());
    // The step that needs it checks again (a resumed run skips join-check).
    let e = assemble::require_binaries(root, &["/usr/bin/kube-apiserver"]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("kube-apiserver is not in this image"),
        "{e}"
    );
    // Present but not executable.
    std::fs::write(path(root, "/usr/bin/kube-apiserver"), "").unwrap();
    let e = assemble::require_binaries(root, &["/usr/bin/kube-apiserver"]).unwrap_err();
    assert!(e.to_string().contains("is not an executable file"), "{e}");
}

#[test]
fn missing_join_secrets_and_unknown_address_are_reported_before_any_change() {
    let s = ClusterSecrets::new();
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    node_root(root, &["/usr/bin/kubelet", "/usr/bin/kube-proxy"]);
    let mut c = s.node(Role::Worker, false, "worker-1", WORKER_IP);
    c.secrets.bootstrap_token = None;
    let e = format!(
        "{:#}",
        assemble::run_steps_once(&opts(root), &c, "worker-1").unwrap_err()
    );
    assert!(
        e.contains("secrets: a worker needs: bootstrap_token"),
        "{e}"
    );
    let mut c = s.node(Role::Worker, false, "worker-1", WORKER_IP);
    c.address = None;
    c.private_address = None;
    let e = format!(
        "{:#}",
        assemble::run_steps_once(&opts(root), &c, "worker-1").unwrap_err()
    );
    assert!(e.contains("the node's internal address is unknown"), "{e}");
    assert!(!path(root, "/etc").exists() && !path(root, "/var").exists());
}

#[test]
fn a_second_run_changes_nothing() {
    let s = ClusterSecrets::new();
    for (role, bootstrap, host, ip) in [
        (Role::Master, true, "master-1", MASTERS[0]),
        (Role::Master, false, "master-2", MASTERS[1]),
        (Role::Worker, false, "worker-1", WORKER_IP),
    ] {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        node_root(root, &ALL_BINARIES);
        let c = s.node(role, bootstrap, host, ip);
        run(root, &c);
        let first = snapshot(root);
        let again = run(root, &c);
        let changed = changed_paths(&first, &snapshot(root));
        assert!(
            changed.is_empty(),
            "{host}: the second run changed {changed:?}"
        );
        for (step, detail) in &again {
            assert!(
                !detail.contains(" created") || detail.contains(" 0 created"),
                "{host} {step}: {detail}"
            );
            if detail.contains("changed") {
                assert!(
                    detail.contains("(0 changed)") || detail.contains(" 0 files changed"),
                    "{host} {step}: {detail}"
                );
            }
        }
    }
}

#[test]
fn external_etcd_writes_client_certificates_and_no_member() {
    let s = ClusterSecrets::new();
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    node_root(root, &ALL_BINARIES[1..]);
    let mut c = s.node(Role::Master, true, "master-1", MASTERS[0]);
    c.cluster.etcd = Some(nodeimage_core::config::NodeExternalEtcd {
        endpoints: vec!["https://etcd-1.example.com:2379".into()],
        certificate: "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n".into(),
        key: "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n".into(),
        ca_certificate: "-----BEGIN CERTIFICATE-----\nETCD CA\n-----END CERTIFICATE-----\n".into(),
    });
    c.secrets.etcd_ca_certificate = None;
    c.secrets.etcd_ca_key = None;
    let steps = run(root, &c);
    let etcd = &steps.iter().find(|(n, _)| n == "etcd").unwrap().1;
    assert!(
        etcd.starts_with("external etcd (https://etcd-1.example.com:2379)"),
        "{etcd}"
    );
    assert_eq!(
        mode(root, "/etc/kubernetes/pki/etcd-external/client.key"),
        0o600
    );
    assert!(!path(root, "/etc/systemd/system/etcd.service").exists());
    assert!(!path(root, "/etc/kubernetes/pki/etcd/ca.key").exists());
    let api = read(root, "/etc/systemd/system/kube-apiserver.service");
    assert_eq!(
        unit_flag(&api, "etcd-servers"),
        Some("https://etcd-1.example.com:2379")
    );
}

fn firstboot_run(root: &Path, c: &NodeConfig, extra: &[&str]) -> (i32, String) {
    let cfg = root.join("node.yaml");
    std::fs::write(&cfg, c.to_yaml()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firstboot"))
        .arg("--root")
        .arg(root)
        .arg("--config")
        .arg(&cfg)
        .args(extra)
        .env("FIRSTBOOT_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn status(root: &Path) -> serde_json::Value {
    serde_json::from_str(&read(root, "/var/lib/firstboot/status.json")).unwrap()
}

#[test]
fn the_firstboot_binary_assembles_each_role_under_a_root() {
    let s = ClusterSecrets::new();
    for (role, bootstrap, host, ip, last) in [
        (
            Role::Master,
            true,
            "master-1",
            MASTERS[0],
            "cluster-objects",
        ),
        (Role::Worker, false, "worker-1", WORKER_IP, "kubelet"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        node_root(root, &ALL_BINARIES);
        let c = s.node(role, bootstrap, host, ip);
        let (code, out) = firstboot_run(root, &c, &[]);
        assert_eq!(code, 0, "{host}: {out}");
        assert!(
            out.contains(&format!("firstboot: ok role={role} hostname={host}")),
            "{out}"
        );
        assert!(
            !out.contains(TOKEN) && !out.contains(WEAVE_PASSWORD),
            "secrets in the output: {out}"
        );
        let st = status(root);
        let steps: Vec<&str> = st["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(steps.last(), Some(&last), "{steps:?}");
        assert!(
            steps.contains(&"join-check") && steps.contains(&"firewall"),
            "{steps:?}"
        );
        assert!(path(root, "/var/lib/firstboot/done").exists());
        let text = read(root, "/var/lib/firstboot/status.json");
        assert!(!text.contains(TOKEN) && !text.contains(WEAVE_PASSWORD));
        // The kubelet's node IP is the configured address.
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(
            unit_flag(
                &read(root, "/etc/systemd/system/kubelet.service"),
                "node-ip"
            ),
            Some(ip.to_string().as_str())
        );
    }
}

#[test]
fn the_firstboot_binary_reports_a_missing_kubelet() {
    let s = ClusterSecrets::new();
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    node_root(root, &["/usr/bin/kube-proxy"]);
    let c = s.node(Role::Worker, false, "worker-1", WORKER_IP);
    let (code, out) = firstboot_run(root, &c, &[]);
    assert_eq!(code, 1, "{out}");
    let want =
        "step join-check: kubelet is not in this image (/usr/bin/kubelet): build the image from a \
                profile that pins the Kubernetes payload (profiles/k8s-1.36-*.toml)";
    assert!(out.contains(&format!("firstboot: error: {want}")), "{out}");
    let st = status(root);
    assert_eq!(st["state"], "failed");
    assert_eq!(st["error"].as_str(), Some(want));
    assert!(!path(root, "/var/lib/firstboot/done").exists());
    // Fix the image, run again: the journal resumes after the host steps.
    node_root(root, &["/usr/bin/kubelet"]);
    let (code, out) = firstboot_run(root, &c, &[]);
    assert_eq!(code, 0, "{out}");
    let st = status(root);
    let state = |name: &str| {
        st["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state("firewall"), "skipped");
    assert_eq!(state("join-check"), "done");
    assert_eq!(state("kubelet"), "done");
}

//! `nodeimage cluster new` and `nodeimage node-config`: secrets, per-role user data,
//! Ignition wrapping and Terraform hosts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use nodeimage::cluster::{
    cluster_new, hosts_from_terraform, node_config, secret_files, ClusterNewArgs, ClusterSecrets,
    NodeConfigArgs, NodeConfigFormat,
};
use nodeimage_core::config::{Host, NodeConfig, Role, NODE_CONFIG_IGNITION_PATH};

const CLUSTER_YML: &str = r#"
name: demo
api_endpoint: demo-k8s.example.com
hosts:
  - address: "203.0.113.10"
    private_address: "10.133.0.10"
    role: master
    hostname: master-0
  - address: "203.0.113.11"
    private_address: "10.133.0.11"
    role: master
  - address: "203.0.113.20"
    role: worker
    labels:
      disk: ssd
network:
  trusted_subnets: ["10.133.0.0/16"]
audit:
  server: "https://audit.example.com/webhook"
addons:
  ingress-nginx:
    enabled: true
    node_selector: {disk: ssd}
"#;

fn setup(yml: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let c = new_cluster(d.path(), yml);
    (d, c)
}

/// Write `yml` as `dir`/cluster.yml and run `cluster new` on it; the cluster.yml path.
fn new_cluster(dir: &Path, yml: &str) -> PathBuf {
    let c = dir.join("cluster.yml");
    std::fs::write(&c, yml).unwrap();
    cluster_new(&ClusterNewArgs {
        config: c.clone(),
        dir: None,
        force: false,
    })
    .unwrap();
    c
}

fn args(c: &Path) -> NodeConfigArgs {
    NodeConfigArgs {
        config: c.to_path_buf(),
        role: None,
        bootstrap: false,
        host: None,
        hostname: None,
        format: NodeConfigFormat::Yaml,
        output: None,
        hosts_from_tf: None,
        secrets: None,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn make(a: NodeConfigArgs, out: &Path) -> (NodeConfig, String) {
    let a = NodeConfigArgs {
        output: Some(out.to_path_buf()),
        ..a
    };
    node_config(&a).unwrap();
    assert_eq!(mode(out), 0o600);
    let text = std::fs::read_to_string(out).unwrap();
    (NodeConfig::parse("out", &text).unwrap(), text)
}

/// `make` for the host at `address` in cluster.yml `c`.
fn make_for(address: &str, c: &Path, out: &Path) -> (NodeConfig, String) {
    make(
        NodeConfigArgs {
            host: Some(address.into()),
            ..args(c)
        },
        out,
    )
}

#[test]
fn cluster_new_writes_a_private_complete_set_and_refuses_to_overwrite() {
    let (d, c) = setup(CLUSTER_YML);
    let dir = d.path().join("secrets");
    assert_eq!(mode(&dir), 0o700);
    for f in secret_files::ALL {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        secret_files::ALL.len()
    );
    let s = ClusterSecrets::load(&dir).unwrap();
    assert!(nodeimage_core::config::valid_bootstrap_token(
        &s.bootstrap_token
    ));
    assert!(!format!("{s:?}").contains("PRIVATE"));

    let e = cluster_new(&ClusterNewArgs {
        config: c.clone(),
        dir: None,
        force: false,
    })
    .unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(
        ClusterSecrets::load(&dir).unwrap(),
        s,
        "refused run leaves the secrets alone"
    );

    cluster_new(&ClusterNewArgs {
        config: c.clone(),
        dir: None,
        force: true,
    })
    .unwrap();
    let s2 = ClusterSecrets::load(&dir).unwrap();
    assert_ne!(s2.ca.cert_pem, s.ca.cert_pem);
    assert_ne!(s2.bootstrap_token, s.bootstrap_token);
    // No temporary or old directories are left beside it.
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Explicit --dir.
    let other = d.path().join("elsewhere/s");
    cluster_new(&ClusterNewArgs {
        config: c,
        dir: Some(other.clone()),
        force: false,
    })
    .unwrap();
    ClusterSecrets::load(&other).unwrap();
}

#[test]
fn worker_config_carries_no_private_key() {
    let (d, c) = setup(CLUSTER_YML);
    let s = ClusterSecrets::load(&d.path().join("secrets")).unwrap();
    let (w, text) = make_for("203.0.113.20", &c, &d.path().join("w.yaml"));
    assert_eq!(w.role, Role::Worker);
    assert!(
        !text.contains("PRIVATE KEY"),
        "a worker config must not contain a private key"
    );
    assert!(!text.contains(&s.weave_password));
    assert!(w.secrets.private_keys_present().is_empty());
    assert_eq!(
        w.secrets.ca_certificate.as_deref(),
        Some(s.ca.cert_pem.as_str())
    );
    assert_eq!(
        w.secrets.bootstrap_token.as_deref(),
        Some(s.bootstrap_token.as_str())
    );
    assert_eq!(w.cluster.api_endpoint, "demo-k8s.example.com");
    assert!(w.cluster.audit.is_none());
    assert_eq!(w.labels.get("disk").map(String::as_str), Some("ssd"));
    assert_eq!(w.cluster.masters, ["10.133.0.10", "10.133.0.11"]);

    // A worker not listed in cluster.yml (autoscaled): role from --role.
    let (w2, text2) = make(
        NodeConfigArgs {
            role: Some(Role::Worker),
            ..args(&c)
        },
        &d.path().join("w2.yaml"),
    );
    assert!(w2.address.is_none() && !text2.contains("PRIVATE KEY"));
    let e = node_config(&args(&c)).unwrap_err();
    assert!(e.to_string().contains("--role"), "{e}");
}

#[test]
fn master_configs_carry_the_cas_and_one_bootstraps() {
    let (d, c) = setup(CLUSTER_YML);
    let s = ClusterSecrets::load(&d.path().join("secrets")).unwrap();
    let (m0, _) = make_for("203.0.113.10", &c, &d.path().join("m0.yaml"));
    let (m1, _) = make(
        NodeConfigArgs {
            host: Some("10.133.0.11".into()),
            hostname: Some("master-1".into()),
            ..args(&c)
        },
        &d.path().join("m1.yaml"),
    );
    assert!(m0.bootstrap && !m1.bootstrap);
    assert_eq!(m0.hostname.as_deref(), Some("master-0"));
    assert_eq!(m1.hostname.as_deref(), Some("master-1"));
    for m in [&m0, &m1] {
        for (carried, secret) in [
            (&m.secrets.ca_key, &s.ca.key_pem),
            (&m.secrets.etcd_ca_key, &s.etcd_ca.key_pem),
            (&m.secrets.front_proxy_ca_key, &s.front_proxy_ca.key_pem),
            (
                &m.secrets.service_account_key,
                &s.service_account.private_pem,
            ),
            (&m.secrets.weave_password, &s.weave_password),
        ] {
            assert_eq!(carried.as_deref(), Some(secret.as_str()));
        }
        assert!(m.cluster.audit.is_some());
        m.require_join_secrets("m").unwrap();
    }
    // Role conflicts and a second bootstrap are refused.
    let e = node_config(&NodeConfigArgs {
        host: Some("203.0.113.20".into()),
        role: Some(Role::Master),
        ..args(&c)
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("lists 203.0.113.20 as a worker"),
        "{e}"
    );
    let e = node_config(&NodeConfigArgs {
        host: Some("203.0.113.11".into()),
        bootstrap: true,
        ..args(&c)
    })
    .unwrap_err();
    assert!(e.to_string().contains("bootstrap master"), "{e}");
}

#[test]
fn ignition_carries_the_node_config_as_a_private_file() {
    let (d, c) = setup(CLUSTER_YML);
    let out = d.path().join("w.ign");
    node_config(&NodeConfigArgs {
        host: Some("203.0.113.20".into()),
        format: NodeConfigFormat::Ignition,
        output: Some(out.clone()),
        ..args(&c)
    })
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let (cfg, warnings) = ignition_config::Config::parse_str(&text).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let ignition_config::Config::V3_4(cfg) = cfg else {
        panic!("expected an Ignition 3.4 config")
    };
    let files = cfg.storage.unwrap().files.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, NODE_CONFIG_IGNITION_PATH);
    assert_eq!(files[0].mode, Some(0o600));
    let src = files[0].contents.as_ref().unwrap().source.clone().unwrap();
    let b64 = src.strip_prefix("data:;base64,").unwrap();
    let yaml = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap();
    let n = NodeConfig::parse("ign", &yaml).unwrap();
    assert_eq!(n.role, Role::Worker);
    assert!(!yaml.contains("PRIVATE KEY"));
}

#[test]
fn external_etcd_files_are_inlined_for_masters_only() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("etcd_certs")).unwrap();
    for (f, body) in [
        ("client.pem", "CLIENT CERT"),
        ("client-key.pem", "CLIENT KEY"),
        ("ca.pem", "ETCD CA"),
    ] {
        std::fs::write(d.path().join("etcd_certs").join(f), body).unwrap();
    }
    let yml = format!(
        "{CLUSTER_YML}etcd:\n  endpoints: [\"https://etcd-1.example.com:2379\"]\n  certificate: ./etcd_certs/client.pem\n  key: ./etcd_certs/client-key.pem\n  ca_certificate: ./etcd_certs/ca.pem\n"
    );
    let c = new_cluster(d.path(), &yml);
    let (m, _) = make_for("203.0.113.10", &c, &d.path().join("m.yaml"));
    let e = m.cluster.etcd.unwrap();
    assert_eq!(
        (
            e.certificate.as_str(),
            e.key.as_str(),
            e.ca_certificate.as_str()
        ),
        ("CLIENT CERT", "CLIENT KEY", "ETCD CA")
    );
    assert!(
        m.secrets.etcd_ca_key.is_none(),
        "no stacked etcd: no etcd CA"
    );
    let (w, text) = make_for("203.0.113.20", &c, &d.path().join("w.yaml"));
    assert!(w.cluster.etcd.is_none() && !text.contains("CLIENT KEY"));
}

fn tf_json() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tf.json")
}

#[test]
fn terraform_hosts() {
    let hosts = hosts_from_terraform(&std::fs::read_to_string(tf_json()).unwrap()).unwrap();
    // Groups in name order, addresses in list order, the group's role, user and labels
    // on each host, nothing else set.
    let host = |address: &str, private: &str, role: Role, droplet: Option<&str>| Host {
        address: address.into(),
        private_address: Some(private.into()),
        role,
        labels: droplet
            .map(|d| [("droplet".parse().unwrap(), d.to_string())].into())
            .unwrap_or_default(),
        bootstrap: false,
        hostname: None,
        user: Some("root".into()),
        ssh_key_path: None,
        container_runtime: None,
    };
    assert_eq!(
        hosts,
        [
            host("203.0.113.10", "10.133.0.10", Role::Master, None),
            host("203.0.113.11", "10.133.0.11", Role::Master, None),
            host("203.0.113.12", "10.133.0.12", Role::Master, None),
            host("203.0.113.20", "10.133.0.20", Role::Worker, Some("2g")),
            host("203.0.113.30", "10.133.0.30", Role::Worker, Some("4g")),
            host("203.0.113.31", "10.133.0.31", Role::Worker, Some("4g")),
        ]
    );

    let e = hosts_from_terraform(r#"{"other": {"value": {}}}"#).unwrap_err();
    assert!(e.to_string().contains("no `pharos` output"), "{e}");
    let e = hosts_from_terraform(
        r#"{"pharos": {"value": {"m": {"address": ["a"], "role": "master", "colour": "x"}}}}"#,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("colour"), "{e:#}");
    let e = hosts_from_terraform(r#"{"pharos": {"value": {"m": {"address": ["a", "b"], "private_address": ["c"], "role": "master"}}}}"#).unwrap_err();
    assert!(e.to_string().contains("2 addresses but 1 private"), "{e}");
}

#[test]
fn hosts_from_tf_writes_one_config_per_host() {
    let d = tempfile::tempdir().unwrap();
    let c = new_cluster(
        d.path(),
        "network: {}\naddons:\n  ingress-nginx:\n    enabled: true\n",
    );
    let tf = tf_json();
    let out = d.path().join("out");
    node_config(&NodeConfigArgs {
        hosts_from_tf: Some(tf),
        output: Some(out.clone()),
        ..args(&c)
    })
    .unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "master-203.0.113.10.yaml",
            "master-203.0.113.11.yaml",
            "master-203.0.113.12.yaml",
            "worker-203.0.113.20.yaml",
            "worker-203.0.113.30.yaml",
            "worker-203.0.113.31.yaml"
        ]
    );
    let boots: Vec<_> = names
        .iter()
        .filter(|n| NodeConfig::load(&out.join(n)).unwrap().bootstrap)
        .collect();
    assert_eq!(boots, ["master-203.0.113.10.yaml"]);
    let w = NodeConfig::load(&out.join("worker-203.0.113.30.yaml")).unwrap();
    assert_eq!(w.private_address.as_deref(), Some("10.133.0.30"));
    assert_eq!(w.labels.get("droplet").map(String::as_str), Some("4g"));
    assert_eq!(w.cluster.api_endpoint, "203.0.113.10");
    assert_eq!(
        w.cluster.masters,
        ["10.133.0.10", "10.133.0.11", "10.133.0.12"]
    );
    assert!(w.secrets.private_keys_present().is_empty());
}

/// `cluster kubeconfig`: a 0600 kubeconfig for the API endpoint with a client
/// certificate the cluster CA signed (checked with `openssl verify`), CN the user, O the
/// cluster-admins group, valid for the hours asked.
#[test]
fn cluster_kubeconfig_signs_a_short_lived_admin_credential() {
    use nodeimage::cluster::{kubeconfig, KubeconfigArgs};
    if !test_support::needs_tool("cluster kubeconfig", "openssl", "openssl") {
        return;
    }
    let (d, c) = setup(CLUSTER_YML);
    let out = d.path().join("admin.conf");
    kubeconfig(&KubeconfigArgs {
        config: c.clone(),
        secrets: None,
        user: "alice".into(),
        group: nodeimage_core::layout::CLUSTER_ADMINS_GROUP.into(),
        server: None,
        valid_hours: 2,
        output: Some(out.clone()),
    })
    .unwrap();
    assert_eq!(mode(&out), 0o600);
    let k: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        k["clusters"][0]["cluster"]["server"].as_str(),
        Some("https://demo-k8s.example.com:6443")
    );
    let b64 = |v: &yaml_serde::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let ca = d.path().join("ca.pem");
    let cert = d.path().join("cert.pem");
    std::fs::write(
        &ca,
        b64(&k["clusters"][0]["cluster"]["certificate-authority-data"]),
    )
    .unwrap();
    std::fs::write(
        &cert,
        b64(&k["users"][0]["user"]["client-certificate-data"]),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        std::fs::read(d.path().join("secrets").join(secret_files::CA_CRT)).unwrap()
    );
    test_support::cmd::stdout_ok(
        "openssl verify",
        std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(&cert),
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-checkend", "3600", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&text.stdout);
    test_support::assert_contains(&s, &["O = kubeadm:cluster-admins", "CN = alice"]);
    assert!(text.status.success(), "valid for another hour: {s}");
    let later = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-checkend", "7300", "-in"])
        .arg(&cert)
        .status()
        .unwrap();
    assert!(!later.success(), "expires within about 2 h");
}

/// `cluster token` refuses a bad ttl, and when the API server does not answer it says
/// which URL and leaves the recorded token alone (the success path runs against the real
/// API server in the Kubernetes e2e).
#[test]
fn cluster_token_errors_name_the_ttl_or_the_url_and_keep_the_old_token() {
    use nodeimage::cluster::{cluster_token, TokenArgs};
    let (d, c) = setup(CLUSTER_YML);
    let token_file = d.path().join("secrets").join(secret_files::BOOTSTRAP_TOKEN);
    let before = std::fs::read_to_string(&token_file).unwrap();
    let args = |ttl: &str, server: &str| TokenArgs {
        config: c.clone(),
        secrets: None,
        ttl: Some(ttl.into()),
        server: Some(server.into()),
    };
    // A listener that closes at once: nothing answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    drop(l);
    let e = format!("{:#}", cluster_token(&args("1 day", &url)).unwrap_err());
    assert!(e.contains("--ttl") && e.contains("`1 day`"), "{e}");
    let e = format!("{:#}", cluster_token(&args("9000h", &url)).unwrap_err());
    assert!(e.contains("at most a year"), "{e}");
    let e = format!("{:#}", cluster_token(&args("2h", &url)).unwrap_err());
    assert!(
        e.contains(&format!("POST {url}/api/v1/namespaces/kube-system/secrets")),
        "{e}"
    );
    assert!(!e.contains(before.trim()), "the old token in an error: {e}");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), before);
}

//! Cluster objects the bootstrap master applies once the API server answers: the
//! bootstrap token, RBAC for TLS bootstrapping and automatic CSR approval, CoreDNS,
//! Weave Net, and the role labels of each Node.

use std::collections::BTreeMap;

use super::objects::*;
use super::KubeInputs;
use nodeimage_core::config::{
    bootstrap_token_expiration, BootstrapToken, CniProvider, BOOTSTRAP_TOKEN_SECRET_TYPE,
    DEFAULT_BOOTSTRAP_TOKEN_TTL,
};
use nodeimage_core::layout::CLUSTER_ADMINS_GROUP;
use nodeimage_core::yaml;

/// The group a bootstrap token authenticates into (kubeadm's name, so tooling that
/// knows kubeadm recognises it).
pub use nodeimage_core::config::BOOTSTRAPPERS_GROUP;

/// Container images of the cluster addons; the profile supplies them (pinned by digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub coredns: String,
    pub weave_kube: String,
    pub weave_npc: String,
    /// flannel (`network.provider: flannel`).
    pub flannel: String,
    pub ingress_nginx_controller: String,
    /// Used when cluster.yml sets no `default_backend.image`; none: the controller's
    /// built-in default backend.
    pub ingress_default_backend: Option<String>,
    pub kured: String,
    pub kubernetes_dashboard: String,
}

/// One manifest document set.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    /// File name (`10-coredns.yaml`); applied in name order.
    pub name: String,
    pub yaml: String,
    /// Holds secret material (bootstrap token, weave password): write 0600, never log.
    pub secret: bool,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Manifest({}, {} bytes, secret: {})",
            self.name,
            self.yaml.len(),
            self.secret
        )
    }
}

/// A manifest of `docs`, each a `---` document.
pub(crate) fn manifest(name: &str, docs: Vec<yaml_serde::Value>, secret: bool) -> Manifest {
    Manifest {
        name: name.into(),
        yaml: nodeimage_core::yaml::documents(&docs),
        secret,
    }
}

/// The bootstrap token as a `bootstrap.kubernetes.io/token` Secret, expiring at
/// `expiration` (`cluster.bootstrap_token_ttl` after the bootstrap master made it; `None`
/// for a ttl of `0`). Later workers join with a token from `nodeimage cluster token`.
pub fn bootstrap_token_secret(
    token: &BootstrapToken,
    expiration: Option<time::OffsetDateTime>,
) -> Secret {
    secret(
        meta_ns(&token.secret_name(), "kube-system"),
        BOOTSTRAP_TOKEN_SECRET_TYPE,
        Some(token.secret_string_data("Node join token made by nodeimage cluster new", expiration)),
        None,
    )
}

fn crb(name: &str, role: &str, kind: &str, subject: &str) -> yaml_serde::Value {
    yaml::value(&binding(
        "ClusterRoleBinding",
        meta(name),
        "ClusterRole",
        role,
        vec![rbac_subject(kind, subject)],
    ))
}

/// RBAC the cluster needs from the start:
/// * bootstrap-token holders may create CSRs (`system:node-bootstrapper`) and have them
///   approved automatically (`...:nodeclient`);
/// * nodes' renewal CSRs are approved automatically (`...:selfnodeclient`);
/// * `kubeadm:cluster-admins` (admin.conf, the API server's kubelet client) is
///   `cluster-admin`;
/// * nodes may run kube-proxy with their own credentials (`system:node-proxier`).
pub fn rbac() -> Vec<yaml_serde::Value> {
    vec![
        crb(
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            "Group",
            BOOTSTRAPPERS_GROUP,
        ),
        crb(
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "Group",
            BOOTSTRAPPERS_GROUP,
        ),
        crb(
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "Group",
            "system:nodes",
        ),
        crb(
            CLUSTER_ADMINS_GROUP,
            "cluster-admin",
            "Group",
            CLUSTER_ADMINS_GROUP,
        ),
        crb(
            "nodeimage:node-proxier",
            "system:node-proxier",
            "Group",
            "system:nodes",
        ),
    ]
}

/// CoreDNS's configuration for the cluster domain `domain`.
fn corefile(domain: &str) -> String {
    format!(
        ".:53 {{
    errors
    health {{
       lameduck 5s
    }}
    ready
    kubernetes {domain} in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    forward . /etc/resolv.conf {{
       max_concurrent 1000
    }}
    cache 30
    loop
    reload
    loadbalance
}}
"
    )
}

/// CoreDNS: ServiceAccount, RBAC, Corefile, Deployment (2 replicas, tolerating the
/// control-plane taint) and the `kube-dns` Service on the tenth service IP.
pub fn coredns(inp: &KubeInputs, image: &str) -> Vec<yaml_serde::Value> {
    let n = &inp.node.cluster.network;
    let domain = n.dns_domain.trim_end_matches('.');
    let ns = "kube-system";
    let app = map([("k8s-app", "kube-dns")]);
    let mut deployment = workload(
        "Deployment",
        meta_ns("coredns", ns).labels(app.clone()),
        app.clone(),
        PodSpec {
            service_account_name: Some("coredns".into()),
            priority_class_name: Some("system-cluster-critical".into()),
            dns_policy: Some("Default".into()),
            node_selector: linux(),
            tolerations: vec![
                Toleration {
                    key: Some("CriticalAddonsOnly".into()),
                    operator: Some("Exists".into()),
                    effect: None,
                },
                tolerate_control_plane(),
            ],
            affinity: Some(Affinity {
                pod_anti_affinity: PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: vec![
                        WeightedPodAffinityTerm {
                            weight: 100,
                            pod_affinity_term: PodAffinityTerm {
                                topology_key: "kubernetes.io/hostname".into(),
                                label_selector: LabelSelector {
                                    match_labels: app.clone(),
                                },
                            },
                        },
                    ],
                },
            }),
            containers: vec![Container {
                args: strings(["-conf", "/etc/coredns/Corefile"]),
                resources: Some(Resources {
                    limits: map([("memory", "170Mi")]),
                    requests: map([("cpu", "100m"), ("memory", "70Mi")]),
                }),
                ports: vec![
                    port("dns", 53, Some("UDP")),
                    port("dns-tcp", 53, Some("TCP")),
                    port("metrics", 9153, Some("TCP")),
                ],
                liveness_probe: Some(Probe {
                    http_get: HttpGet {
                        scheme: Some("HTTP".into()),
                        ..http_probe("/health", 8080).http_get
                    },
                    initial_delay_seconds: Some(60),
                    timeout_seconds: Some(5),
                    failure_threshold: Some(5),
                }),
                readiness_probe: Some(Probe {
                    http_get: HttpGet {
                        scheme: Some("HTTP".into()),
                        ..http_probe("/ready", 8181).http_get
                    },
                    ..Default::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: bind_service_only(),
                    ..Default::default()
                }),
                volume_mounts: vec![mount("config-volume", "/etc/coredns", true)],
                ..container("coredns", image)
            }],
            volumes: vec![Volume {
                name: "config-volume".into(),
                config_map: Some(ConfigMapVolume {
                    name: "coredns".into(),
                    items: vec![KeyToPath {
                        key: "Corefile".into(),
                        path: "Corefile".into(),
                    }],
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    deployment.body.spec.replicas = Some(2);
    deployment.body.spec.strategy = Some(rolling_update(Some(1)));
    [
        vec![yaml::value(&service_account("coredns", ns))],
        role_for_service_account(
            Scope::Cluster,
            meta("system:coredns"),
            vec![
                rule(
                    [""],
                    ["endpoints", "services", "pods", "namespaces"],
                    ["list", "watch"],
                ),
                rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
            ],
            "coredns",
            ns,
        )
        .into(),
        vec![
            yaml::value(&config_map(
                meta_ns("coredns", ns),
                Some([("Corefile".to_string(), corefile(domain))].into()),
            )),
            yaml::value(&deployment),
            yaml::value(&service(
                meta_ns("kube-dns", ns).labels(map([
                    ("k8s-app", "kube-dns"),
                    ("kubernetes.io/cluster-service", "true"),
                    ("kubernetes.io/name", "CoreDNS"),
                ])),
                app,
                Some(n.dns_service_ip().to_string()),
                [("dns", "UDP"), ("dns-tcp", "TCP"), ("metrics", "TCP")]
                    .into_iter()
                    .map(|(name, protocol)| ServicePort {
                        name: Some(name.into()),
                        port: if name == "metrics" { 9153 } else { 53 },
                        target_port: None,
                        protocol: Some(protocol.into()),
                    })
                    .collect(),
            )),
        ],
    ]
    .concat()
}

/// Weave Net: RBAC, the `weave-passwd` Secret and the DaemonSet (weave + weave-npc).
/// `IPALLOC_RANGE` is the pod network; traffic is encrypted with the shared password
/// except between peers in `trusted_subnets` (`--trusted-subnets` via `EXTRA_ARGS`,
/// which launch.sh passes to the weaver first).
pub fn weave(inp: &KubeInputs, images: &Images, password: &str) -> Vec<yaml_serde::Value> {
    let n = &inp.node.cluster.network;
    let ns = "kube-system";
    let name = map([("name", "weave-net")]);
    let node_name = || env_field("HOSTNAME", Some("v1"), "spec.nodeName");
    let mut vars = vec![
        node_name(),
        env("INIT_CONTAINER", "true"),
        env("IPALLOC_RANGE", &n.pod_network_cidr.to_string()),
    ];
    // The weave-status row of the port table (the same for every node).
    if let Some(a) = inp.binds.weave_status {
        vars.push(env("WEAVE_STATUS_ADDR", &a.to_string()));
    }
    vars.push(env_secret("WEAVE_PASSWORD", "weave-passwd", "weave-passwd"));
    if !n.trusted_subnets.is_empty() {
        let subnets: Vec<String> = n.trusted_subnets.iter().map(|s| s.to_string()).collect();
        vars.push(env(
            "EXTRA_ARGS",
            &format!("--trusted-subnets={}", subnets.join(",")),
        ));
    }
    let xtables = || mount("xtables-lock", "/run/xtables.lock", false);
    let requests = || {
        Some(Resources {
            requests: map([("cpu", "50m")]),
            ..Default::default()
        })
    };
    let mut daemonset = workload(
        "DaemonSet",
        meta_ns("weave-net", ns).labels(name.clone()),
        name.clone(),
        PodSpec {
            dns_policy: Some("ClusterFirstWithHostNet".into()),
            security_context: Some(PodSecurityContext::default()),
            init_containers: vec![Container {
                command: strings(["/home/weave/init.sh"]),
                security_context: privileged(),
                volume_mounts: vec![
                    mount("cni-bin", "/host/opt", false),
                    mount("cni-bin2", "/host/home", false),
                    mount("cni-conf", "/host/etc", false),
                    mount("lib-modules", "/lib/modules", false),
                    xtables(),
                ],
                ..container("weave-init", &images.weave_kube)
            }],
            containers: vec![
                Container {
                    command: strings(["/home/weave/launch.sh"]),
                    env: vars,
                    readiness_probe: Some(Probe {
                        http_get: HttpGet {
                            host: Some("127.0.0.1".into()),
                            ..http_probe("/status", 6784).http_get
                        },
                        ..Default::default()
                    }),
                    resources: requests(),
                    security_context: privileged(),
                    volume_mounts: vec![
                        mount("weavedb", "/weavedb", false),
                        mount("dbus", "/host/var/lib/dbus", true),
                        mount("cni-machine-id", "/host/etc/machine-id", true),
                        xtables(),
                    ],
                    ..container("weave", &images.weave_kube)
                },
                Container {
                    env: vec![node_name()],
                    resources: requests(),
                    security_context: privileged(),
                    volume_mounts: vec![xtables()],
                    ..container("weave-npc", &images.weave_npc)
                },
            ],
            volumes: vec![
                host_path("weavedb", "/var/lib/weave", None),
                host_path("cni-bin", "/opt", None),
                host_path("cni-bin2", "/home", None),
                host_path("cni-conf", "/etc", None),
                host_path("cni-machine-id", "/etc/machine-id", None),
                host_path("dbus", "/var/lib/dbus", None),
                host_path("lib-modules", "/lib/modules", None),
                host_path("xtables-lock", "/run/xtables.lock", Some("FileOrCreate")),
            ],
            ..node_network_daemon("weave-net")
        },
    );
    daemonset.body.spec.min_ready_seconds = Some(5);
    daemonset.body.spec.update_strategy = Some(rolling_update(None));
    [
        vec![yaml::value(&Object::new(
            "v1",
            "ServiceAccount",
            meta_ns("weave-net", ns).labels(name.clone()),
            NoBody {},
        ))],
        role_for_service_account(
            Scope::Cluster,
            meta("weave-net").labels(name.clone()),
            vec![
                rule(
                    [""],
                    ["pods", "namespaces", "nodes"],
                    ["get", "list", "watch"],
                ),
                rule(
                    ["networking.k8s.io"],
                    ["networkpolicies"],
                    ["get", "list", "watch"],
                ),
                rule([""], ["nodes/status"], ["patch", "update"]),
            ],
            "weave-net",
            ns,
        )
        .into(),
        role_for_service_account(
            Scope::Namespace,
            meta_ns("weave-net", ns).labels(name.clone()),
            vec![
                rule([""], ["configmaps"], ["get", "update"]).named(["weave-net"]),
                rule([""], ["configmaps"], ["create"]),
            ],
            "weave-net",
            ns,
        )
        .into(),
        vec![
            yaml::value(&secret(
                meta_ns("weave-passwd", ns),
                "Opaque",
                Some(map([("weave-passwd", password)])),
                None,
            )),
            yaml::value(&daemonset),
        ],
    ]
    .concat()
}

/// The manifests the bootstrap master applies at `now`, in order. `None` when the node
/// config lacks a secret they need (bootstrap token, weave password).
pub fn cluster_manifests(
    inp: &KubeInputs,
    images: &Images,
    now: time::OffsetDateTime,
) -> Option<Vec<Manifest>> {
    let s = &inp.node.secrets;
    let ttl = inp
        .node
        .cluster
        .bootstrap_token_ttl
        .as_deref()
        .unwrap_or(DEFAULT_BOOTSTRAP_TOKEN_TTL);
    let token = bootstrap_token_secret(
        s.bootstrap_token.as_ref()?,
        bootstrap_token_expiration(now, ttl),
    );
    let network = match inp.node.cluster.network.provider {
        CniProvider::Weave => {
            let password = s.weave_password.as_deref()?;
            manifest("10-weave-net.yaml", weave(inp, images, password), true)
        }
        CniProvider::Flannel => manifest(
            "10-flannel.yaml",
            super::flannel::flannel(inp, &images.flannel),
            false,
        ),
    };
    Some(vec![
        manifest("00-bootstrap-token.yaml", vec![yaml::value(&token)], true),
        manifest("01-rbac.yaml", rbac(), false),
        network,
        manifest("20-coredns.yaml", coredns(inp, &images.coredns), false),
    ])
}

/// The role labels a Node gets from the bootstrap master: masters (a Node whose
/// InternalIP is one of the configured master addresses) get
/// `node-role.kubernetes.io/master` and `.../control-plane`; every other Node gets
/// `node-role.kubernetes.io/node=true` (Tectonic's labels).
pub fn node_role_labels(internal_ips: &[String], masters: &[String]) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    if internal_ips.iter().any(|ip| masters.contains(ip)) {
        l.insert("node-role.kubernetes.io/master".to_string(), String::new());
        l.insert(
            "node-role.kubernetes.io/control-plane".to_string(),
            String::new(),
        );
    } else {
        l.insert(
            "node-role.kubernetes.io/node".to_string(),
            "true".to_string(),
        );
    }
    l
}

/// A JSON merge patch for a Node adding the role labels it lacks; `None` when it has them.
pub fn node_role_patch(
    current_labels: &BTreeMap<String, String>,
    internal_ips: &[String],
    masters: &[String],
) -> Option<serde_json::Value> {
    let want = node_role_labels(internal_ips, masters);
    let missing: serde_json::Map<String, serde_json::Value> = want
        .into_iter()
        .filter(|(k, v)| current_labels.get(k) != Some(v))
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    (!missing.is_empty()).then(|| serde_json::json!({ "metadata": { "labels": missing } }))
}

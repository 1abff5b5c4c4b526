//! Pharos Cluster's addons as minimal manifests; images are parameters ([`Images`]).
//!
//! * ingress-nginx: a DaemonSet on host ports 80/443 (on `node_selector` nodes), the
//!   operator's `configmap`, an IngressClass `nginx`, and a default backend Deployment
//!   when `default_backend.image` is set. The validating admission webhook of the
//!   upstream install is left out (it needs a certificate job).
//! * cert-manager: the ClusterIssuer from `issuer` (ACME, HTTP-01 through the `nginx`
//!   class). cert-manager itself (CRDs, controller, webhook, cainjector) is its release
//!   manifest, a pinned artifact of the profile applied before this one; generating its
//!   CRDs here would be a copy of upstream.
//! * kured: DaemonSet + RBAC. It reboots a node, one at a time, when the node's update
//!   sentinel `/run/nodeimage/reboot-required` exists (mounted from the host; written by
//!   `firstboot update` once a new image is in the other slot).
//! * kubernetes-dashboard: the single-image (v2-style) dashboard with its RBAC.
//! * host-upgrades: no manifest; every node gets a timer that installs the update bundle
//!   at `url` every `interval` (`crate::assemble::host_upgrade_units`).

use super::manifests::{manifest, Images, Manifest};
use super::objects::*;
use super::KubeInputs;
use nodeimage_core::config::{IngressNginx, Issuer};
use nodeimage_core::yaml;

/// Manifests to apply, and what could not be done (reported, never silent).
#[derive(Debug, Clone, Default)]
pub struct AddonPlan {
    pub manifests: Vec<Manifest>,
    pub notes: Vec<String>,
}

fn m(name: &str, docs: Vec<yaml_serde::Value>) -> Manifest {
    manifest(name, docs, false)
}

/// Every enabled addon.
pub fn addon_manifests(inp: &KubeInputs, images: &Images) -> AddonPlan {
    let a = &inp.node.cluster.addons;
    let mut plan = AddonPlan::default();
    if let Some(i) = a.ingress_nginx.as_ref().filter(|i| i.enabled) {
        plan.manifests.push(ingress_nginx(i, images));
    }
    if let Some(cm) = a.cert_manager.as_ref().filter(|c| c.enabled) {
        if let Some(is) = &cm.issuer {
            plan.manifests.push(m(
                "40-cert-manager-issuer.yaml",
                vec![yaml::value(&cluster_issuer(is))],
            ));
        }
        plan.notes.push(
            "cert-manager: the ClusterIssuer needs cert-manager's release manifest (CRDs, controller, webhook, cainjector) applied first"
                .into(),
        );
    }
    if a.kured.as_ref().is_some_and(|k| k.enabled) {
        plan.manifests.push(kured(&images.kured));
    }
    if a.kubernetes_dashboard.as_ref().is_some_and(|k| k.enabled) {
        plan.manifests.push(dashboard(&images.kubernetes_dashboard));
    }
    if a.host_upgrades.as_ref().is_some_and(|h| h.enabled)
        && !a.kured.as_ref().is_some_and(|k| k.enabled)
    {
        plan.notes.push(
            "host-upgrades: without kured, an installed update runs from the node's next reboot, which nothing schedules".into(),
        );
    }
    plan
}

/// cert-manager's ClusterIssuer (`cert-manager.io/v1`, a CRD): ACME with HTTP-01
/// through the `nginx` ingress class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IssuerBody {
    pub spec: IssuerSpec,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IssuerSpec {
    pub acme: Acme,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Acme {
    pub server: String,
    pub email: String,
    pub private_key_secret_ref: NameRef,
    pub solvers: Vec<Solver>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NameRef {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Solver {
    pub http01: Http01,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Http01 {
    pub ingress: Http01Ingress,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Http01Ingress {
    pub ingress_class_name: String,
}

fn cluster_issuer(is: &Issuer) -> Object<IssuerBody> {
    Object::new(
        "cert-manager.io/v1",
        "ClusterIssuer",
        meta(&is.name),
        IssuerBody {
            spec: IssuerSpec {
                acme: Acme {
                    server: is.server.clone(),
                    email: is.email.clone(),
                    private_key_secret_ref: NameRef {
                        name: format!("{}-account-key", is.name),
                    },
                    solvers: vec![Solver {
                        http01: Http01 {
                            ingress: Http01Ingress {
                                ingress_class_name: "nginx".into(),
                            },
                        },
                    }],
                },
            },
        },
    )
}

/// The IngressClass `nginx`, the cluster's default.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct IngressClassBody {
    spec: IngressClassSpec,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct IngressClassSpec {
    controller: String,
}

fn ingress_nginx(i: &IngressNginx, images: &Images) -> Manifest {
    let ns = "ingress-nginx";
    let backend_image = i
        .default_backend
        .as_ref()
        .and_then(|d| d.image.clone())
        .or(images.ingress_default_backend.clone());
    let mut docs = [
        vec![
            yaml::value(&Object::new(
                "v1",
                "Namespace",
                meta(ns).labels(map([("app.kubernetes.io/name", "ingress-nginx")])),
                NoBody {},
            )),
            yaml::value(&service_account("ingress-nginx", ns)),
        ],
        role_for_service_account(
            Scope::Cluster,
            meta("ingress-nginx"),
            vec![
                rule(
                    [""],
                    [
                        "configmaps",
                        "endpoints",
                        "nodes",
                        "pods",
                        "secrets",
                        "namespaces",
                    ],
                    ["list", "watch"],
                ),
                rule(["coordination.k8s.io"], ["leases"], ["list", "watch"]),
                rule([""], ["nodes"], ["get"]),
                rule([""], ["services"], ["get", "list", "watch"]),
                rule(
                    ["networking.k8s.io"],
                    ["ingresses", "ingressclasses"],
                    ["get", "list", "watch"],
                ),
                rule(["networking.k8s.io"], ["ingresses/status"], ["update"]),
                rule([""], ["events"], ["create", "patch"]),
                rule(
                    ["discovery.k8s.io"],
                    ["endpointslices"],
                    ["get", "list", "watch"],
                ),
            ],
            "ingress-nginx",
            ns,
        )
        .into(),
        role_for_service_account(
            Scope::Namespace,
            meta_ns("ingress-nginx", ns),
            vec![
                rule([""], ["namespaces"], ["get"]),
                rule(
                    [""],
                    ["configmaps", "pods", "secrets", "endpoints", "services"],
                    ["get", "list", "watch"],
                ),
                rule(["coordination.k8s.io"], ["leases"], ["get", "update"])
                    .named(["ingress-nginx-leader"]),
                rule(["coordination.k8s.io"], ["leases"], ["create"]),
                rule([""], ["events"], ["create", "patch"]),
            ],
            "ingress-nginx",
            ns,
        )
        .into(),
        vec![
            yaml::value(&config_map(
                meta_ns("ingress-nginx-controller", ns),
                Some(i.configmap.clone().into_iter().collect()),
            )),
            yaml::value(&Object::new(
                "networking.k8s.io/v1",
                "IngressClass",
                meta("nginx").annotations(map([(
                    "ingressclass.kubernetes.io/is-default-class",
                    "true",
                )])),
                IngressClassBody {
                    spec: IngressClassSpec {
                        controller: "k8s.io/ingress-nginx".into(),
                    },
                },
            )),
        ],
    ]
    .concat();
    let mut args = strings([
        "/nginx-ingress-controller",
        "--election-id=ingress-nginx-leader",
        "--controller-class=k8s.io/ingress-nginx",
        "--ingress-class=nginx",
        "--configmap=$(POD_NAMESPACE)/ingress-nginx-controller",
        "--watch-ingress-without-class=true",
    ]);
    if let Some(img) = &backend_image {
        args.push(format!(
            "--default-backend-service={ns}/ingress-nginx-default-backend"
        ));
        let backend = map([("app.kubernetes.io/component", "default-backend")]);
        let mut deployment = workload(
            "Deployment",
            meta_ns("ingress-nginx-default-backend", ns),
            backend.clone(),
            PodSpec {
                containers: vec![Container {
                    ports: vec![port("http", 8080, None)],
                    liveness_probe: Some(http_probe("/healthz", 8080)),
                    security_context: Some(SecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65534),
                        allow_privilege_escalation: Some(false),
                        ..Default::default()
                    }),
                    ..container("default-backend", img)
                }],
                ..Default::default()
            },
        );
        deployment.body.spec.replicas = Some(1);
        docs.push(yaml::value(&deployment));
        docs.push(yaml::value(&service(
            meta_ns("ingress-nginx-default-backend", ns),
            backend,
            None,
            vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: None,
            }],
        )));
    }
    // Deploy to the `node_selector` nodes, and to Linux ones in any case.
    let mut node_selector = linux();
    node_selector.extend(
        i.node_selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone())),
    );
    let controller = map([("app.kubernetes.io/component", "controller")]);
    let host_port = |name: &str, p: u16| ContainerPort {
        host_port: Some(p),
        ..port(name, p, Some("TCP"))
    };
    docs.push(yaml::value(&workload(
        "DaemonSet",
        meta_ns("ingress-nginx-controller", ns),
        controller,
        PodSpec {
            service_account_name: Some("ingress-nginx".into()),
            termination_grace_period_seconds: Some(300),
            node_selector,
            containers: vec![Container {
                args,
                env: vec![
                    env_field("POD_NAME", None, "metadata.name"),
                    env_field("POD_NAMESPACE", None, "metadata.namespace"),
                ],
                ports: vec![host_port("http", 80), host_port("https", 443)],
                liveness_probe: Some(Probe {
                    initial_delay_seconds: Some(10),
                    ..http_probe("/healthz", 10254)
                }),
                readiness_probe: Some(http_probe("/healthz", 10254)),
                lifecycle: Some(Lifecycle {
                    pre_stop: LifecycleHandler {
                        exec: ExecAction {
                            command: strings(["/wait-shutdown"]),
                        },
                    },
                }),
                security_context: Some(SecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(101),
                    allow_privilege_escalation: Some(false),
                    capabilities: bind_service_only(),
                    ..Default::default()
                }),
                ..container("controller", &images.ingress_nginx_controller)
            }],
            ..Default::default()
        },
    )));
    m("30-ingress-nginx.yaml", docs)
}

fn kured(image: &str) -> Manifest {
    let ns = "kube-system";
    let name = map([("name", "kured")]);
    let mut daemonset = workload(
        "DaemonSet",
        meta_ns("kured", ns),
        name,
        PodSpec {
            service_account_name: Some("kured".into()),
            priority_class_name: Some("system-node-critical".into()),
            host_pid: Some(true),
            restart_policy: Some("Always".into()),
            tolerations: vec![tolerate_control_plane()],
            containers: vec![Container {
                command: strings(["/usr/bin/kured"]),
                args: vec![
                    "--ds-name=kured".into(),
                    "--ds-namespace=kube-system".into(),
                    format!(
                        "--reboot-sentinel={}",
                        nodeimage_core::layout::REBOOT_SENTINEL
                    ),
                ],
                env: vec![env_field("KURED_NODE_ID", None, "spec.nodeName")],
                security_context: privileged(),
                // The same path in the container as on the host, however kured looks.
                volume_mounts: vec![mount(
                    "sentinel",
                    nodeimage_core::layout::REBOOT_SENTINEL_DIR,
                    true,
                )],
                ..container("kured", image)
            }],
            volumes: vec![host_path(
                "sentinel",
                nodeimage_core::layout::REBOOT_SENTINEL_DIR,
                Some("DirectoryOrCreate"),
            )],
            ..Default::default()
        },
    );
    daemonset.body.spec.update_strategy = Some(rolling_update(None));
    m(
        "50-kured.yaml",
        [
            vec![yaml::value(&service_account("kured", ns))],
            role_for_service_account(
                Scope::Cluster,
                meta("kured"),
                vec![
                    rule([""], ["nodes"], ["get", "patch"]),
                    rule([""], ["pods"], ["list", "delete", "get"]),
                    rule(["apps"], ["daemonsets"], ["get"]),
                    rule([""], ["pods/eviction"], ["create"]),
                ],
                "kured",
                ns,
            )
            .into(),
            role_for_service_account(
                Scope::Namespace,
                meta_ns("kured", ns),
                vec![rule(["apps"], ["daemonsets"], ["update", "patch"]).named(["kured"])],
                "kured",
                ns,
            )
            .into(),
            vec![yaml::value(&daemonset)],
        ]
        .concat(),
    )
}

fn dashboard(image: &str) -> Manifest {
    let ns = "kubernetes-dashboard";
    let app = map([("k8s-app", "kubernetes-dashboard")]);
    let opaque = |name: &str, data: Option<StringMap>| {
        yaml::value(&secret(meta_ns(name, ns), "Opaque", None, data))
    };
    let mut deployment = workload(
        "Deployment",
        meta_ns("kubernetes-dashboard", ns),
        app.clone(),
        PodSpec {
            service_account_name: Some("kubernetes-dashboard".into()),
            node_selector: linux(),
            containers: vec![Container {
                args: vec![
                    "--auto-generate-certificates".into(),
                    format!("--namespace={ns}"),
                ],
                ports: vec![ContainerPort {
                    container_port: 8443,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }],
                liveness_probe: Some(Probe {
                    http_get: HttpGet {
                        scheme: Some("HTTPS".into()),
                        ..http_probe("/", 8443).http_get
                    },
                    initial_delay_seconds: Some(30),
                    timeout_seconds: Some(30),
                    ..Default::default()
                }),
                security_context: Some(SecurityContext {
                    run_as_user: Some(1001),
                    run_as_group: Some(2001),
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    ..Default::default()
                }),
                volume_mounts: vec![
                    mount("kubernetes-dashboard-certs", "/certs", false),
                    mount("tmp-volume", "/tmp", false),
                ],
                ..container("kubernetes-dashboard", image)
            }],
            volumes: vec![
                Volume {
                    name: "kubernetes-dashboard-certs".into(),
                    secret: Some(SecretVolume {
                        secret_name: "kubernetes-dashboard-certs".into(),
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "tmp-volume".into(),
                    empty_dir: Some(NoBody {}),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    );
    deployment.body.spec.replicas = Some(1);
    m(
        "60-kubernetes-dashboard.yaml",
        [
            vec![
                yaml::value(&namespace(ns)),
                yaml::value(&service_account("kubernetes-dashboard", ns)),
                opaque("kubernetes-dashboard-certs", None),
                opaque("kubernetes-dashboard-csrf", Some(map([("csrf", "")]))),
                opaque("kubernetes-dashboard-key-holder", None),
                yaml::value(&config_map(
                    meta_ns("kubernetes-dashboard-settings", ns),
                    None,
                )),
            ],
            role_for_service_account(
                Scope::Namespace,
                meta_ns("kubernetes-dashboard", ns),
                vec![
                    rule([""], ["secrets"], ["get", "update", "delete"]).named([
                        "kubernetes-dashboard-key-holder",
                        "kubernetes-dashboard-certs",
                        "kubernetes-dashboard-csrf",
                    ]),
                    rule([""], ["configmaps"], ["get", "update"])
                        .named(["kubernetes-dashboard-settings"]),
                ],
                "kubernetes-dashboard",
                ns,
            )
            .into(),
            vec![
                yaml::value(&deployment),
                yaml::value(&service(
                    meta_ns("kubernetes-dashboard", ns),
                    app,
                    None,
                    vec![ServicePort {
                        port: 443,
                        target_port: Some(IntOrString::Int(8443)),
                        ..Default::default()
                    }],
                )),
            ],
        ]
        .concat(),
    )
}

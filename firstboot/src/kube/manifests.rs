//! Cluster objects the bootstrap master applies once the API server answers: the
//! bootstrap token, RBAC for TLS bootstrapping and automatic CSR approval, CoreDNS,
//! Weave Net, and the role labels of each Node.

use std::collections::BTreeMap;

use super::{q, split_token, KubeInputs};
use nodeimage_core::layout::CLUSTER_ADMINS_GROUP;

/// The group a bootstrap token authenticates into (kubeadm's name, so tooling that
/// knows kubeadm recognises it).
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// Container images of the cluster addons; the profile supplies them (pinned by digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub coredns: String,
    pub weave_kube: String,
    pub weave_npc: String,
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

fn manifest(name: &str, docs: &[String], secret: bool) -> Manifest {
    let mut yaml = String::new();
    for d in docs {
        yaml.push_str("---\n");
        yaml.push_str(d);
    }
    Manifest {
        name: name.into(),
        yaml,
        secret,
    }
}

/// The bootstrap token as a `bootstrap.kubernetes.io/token` Secret. It does not expire:
/// node configs carrying it may boot long after `cluster new` (autoscaling). Replace it
/// with `nodeimage cluster new --force` and new node configs.
pub fn bootstrap_token_secret(token: &str) -> Option<String> {
    let (id, secret) = split_token(token)?;
    Some(format!(
        "apiVersion: v1
kind: Secret
metadata:\n  name: bootstrap-token-{id}\n  namespace: kube-system
type: bootstrap.kubernetes.io/token
stringData:
  description: \"Node join token made by nodeimage cluster new\"
  token-id: {id}
  token-secret: {secret}
  usage-bootstrap-authentication: \"true\"
  usage-bootstrap-signing: \"true\"
  auth-extra-groups: {BOOTSTRAPPERS_GROUP}\n"
    ))
}

fn crb(name: &str, role: &str, kind: &str, subject: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:\n  name: {name}
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {role}
subjects:\n  - apiGroup: rbac.authorization.k8s.io\n    kind: {kind}\n    name: {subject}\n"
    )
}

/// RBAC the cluster needs from the start:
/// * bootstrap-token holders may create CSRs (`system:node-bootstrapper`) and have them
///   approved automatically (`...:nodeclient`);
/// * nodes' renewal CSRs are approved automatically (`...:selfnodeclient`);
/// * `kubeadm:cluster-admins` (admin.conf, the API server's kubelet client) is
///   `cluster-admin`;
/// * nodes may run kube-proxy with their own credentials (`system:node-proxier`).
pub fn rbac() -> String {
    [
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
    .iter()
    .map(|d| format!("---\n{d}"))
    .collect()
}

/// CoreDNS: ServiceAccount, RBAC, Corefile, Deployment (2 replicas, tolerating the
/// control-plane taint) and the `kube-dns` Service on the tenth service IP.
pub fn coredns(inp: &KubeInputs, image: &str) -> Vec<String> {
    let n = &inp.node.cluster.network;
    let domain = n.dns_domain.trim_end_matches('.');
    vec![
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: coredns\n  namespace: kube-system\n".to_string(),
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:\n  name: system:coredns
rules:
  - apiGroups: [\"\"]\n    resources: [endpoints, services, pods, namespaces]\n    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]\n    resources: [endpointslices]\n    verbs: [list, watch]\n"
            .to_string(),
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:\n  name: system:coredns
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: system:coredns
subjects:\n  - kind: ServiceAccount\n    name: coredns\n    namespace: kube-system\n"
            .to_string(),
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata:\n  name: coredns\n  namespace: kube-system
data:
  Corefile: |
    .:53 {{
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
    }}\n"
        ),
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:\n  name: coredns\n  namespace: kube-system\n  labels:\n    k8s-app: kube-dns
spec:
  replicas: 2
  strategy:\n    type: RollingUpdate\n    rollingUpdate:\n      maxUnavailable: 1
  selector:\n    matchLabels:\n      k8s-app: kube-dns
  template:
    metadata:\n      labels:\n        k8s-app: kube-dns
    spec:
      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      dnsPolicy: Default
      nodeSelector:\n        kubernetes.io/os: linux
      tolerations:
        - key: CriticalAddonsOnly\n          operator: Exists
        - key: node-role.kubernetes.io/control-plane\n          effect: NoSchedule
      affinity:\n        podAntiAffinity:\n          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100\n              podAffinityTerm:\n                topologyKey: kubernetes.io/hostname\n                labelSelector:\n                  matchLabels:\n                    k8s-app: kube-dns
      containers:
        - name: coredns
          image: {image}
          args: [\"-conf\", \"/etc/coredns/Corefile\"]
          resources:\n            limits:\n              memory: 170Mi\n            requests:\n              cpu: 100m\n              memory: 70Mi
          ports:
            - {{name: dns, containerPort: 53, protocol: UDP}}
            - {{name: dns-tcp, containerPort: 53, protocol: TCP}}
            - {{name: metrics, containerPort: 9153, protocol: TCP}}
          livenessProbe:\n            httpGet: {{path: /health, port: 8080, scheme: HTTP}}\n            initialDelaySeconds: 60\n            timeoutSeconds: 5\n            failureThreshold: 5
          readinessProbe:\n            httpGet: {{path: /ready, port: 8181, scheme: HTTP}}
          securityContext:\n            allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            capabilities:\n              add: [NET_BIND_SERVICE]\n              drop: [ALL]
          volumeMounts:\n            - {{name: config-volume, mountPath: /etc/coredns, readOnly: true}}
      volumes:
        - name: config-volume\n          configMap:\n            name: coredns\n            items:\n              - {{key: Corefile, path: Corefile}}\n",
            image = q(image)
        ),
        format!(
            "apiVersion: v1
kind: Service
metadata:\n  name: kube-dns\n  namespace: kube-system\n  labels:\n    k8s-app: kube-dns\n    kubernetes.io/cluster-service: \"true\"\n    kubernetes.io/name: CoreDNS
spec:
  selector:\n    k8s-app: kube-dns
  clusterIP: {ip}
  ports:
    - {{name: dns, port: 53, protocol: UDP}}
    - {{name: dns-tcp, port: 53, protocol: TCP}}
    - {{name: metrics, port: 9153, protocol: TCP}}\n",
            ip = n.dns_service_ip()
        ),
    ]
}

/// Weave Net: RBAC, the `weave-passwd` Secret and the DaemonSet (weave + weave-npc).
/// `IPALLOC_RANGE` is the pod network; traffic is encrypted with the shared password
/// except between peers in `trusted_subnets` (`--trusted-subnets` via `EXTRA_ARGS`,
/// which launch.sh passes to the weaver first).
pub fn weave(inp: &KubeInputs, images: &Images, password: &str) -> Vec<String> {
    let n = &inp.node.cluster.network;
    let mut env = format!(
        "            - name: HOSTNAME\n              valueFrom:\n                fieldRef:\n                  apiVersion: v1\n                  fieldPath: spec.nodeName
            - name: INIT_CONTAINER\n              value: \"true\"
            - name: IPALLOC_RANGE\n              value: {range}
{status}            - name: WEAVE_PASSWORD\n              valueFrom:\n                secretKeyRef:\n                  name: weave-passwd\n                  key: weave-passwd\n",
        range = q(&n.pod_network_cidr.to_string()),
        // The weave-status row of the port table (the same for every node).
        status = inp
            .binds
            .weave_status
            .map(|a| format!(
                "            - name: WEAVE_STATUS_ADDR\n              value: {}\n",
                q(&a.to_string())
            ))
            .unwrap_or_default(),
    );
    if !n.trusted_subnets.is_empty() {
        let subnets: Vec<String> = n.trusted_subnets.iter().map(|s| s.to_string()).collect();
        env.push_str(&format!(
            "            - name: EXTRA_ARGS\n              value: {}\n",
            q(&format!("--trusted-subnets={}", subnets.join(",")))
        ));
    }
    vec![
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: weave-net\n  namespace: kube-system\n  labels:\n    name: weave-net\n".to_string(),
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:\n  name: weave-net\n  labels:\n    name: weave-net
rules:
  - apiGroups: [\"\"]\n    resources: [pods, namespaces, nodes]\n    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]\n    resources: [networkpolicies]\n    verbs: [get, list, watch]
  - apiGroups: [\"\"]\n    resources: [nodes/status]\n    verbs: [patch, update]\n"
            .to_string(),
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:\n  name: weave-net\n  labels:\n    name: weave-net
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: weave-net
subjects:\n  - kind: ServiceAccount\n    name: weave-net\n    namespace: kube-system\n"
            .to_string(),
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:\n  name: weave-net\n  namespace: kube-system\n  labels:\n    name: weave-net
rules:
  - apiGroups: [\"\"]\n    resources: [configmaps]\n    resourceNames: [weave-net]\n    verbs: [get, update]
  - apiGroups: [\"\"]\n    resources: [configmaps]\n    verbs: [create]\n"
            .to_string(),
        "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:\n  name: weave-net\n  namespace: kube-system\n  labels:\n    name: weave-net
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: weave-net
subjects:\n  - kind: ServiceAccount\n    name: weave-net\n    namespace: kube-system\n"
            .to_string(),
        format!(
            "apiVersion: v1
kind: Secret
metadata:\n  name: weave-passwd\n  namespace: kube-system
type: Opaque
stringData:\n  weave-passwd: {}\n",
            q(password)
        ),
        format!(
            "apiVersion: apps/v1
kind: DaemonSet
metadata:\n  name: weave-net\n  namespace: kube-system\n  labels:\n    name: weave-net
spec:
  minReadySeconds: 5
  selector:\n    matchLabels:\n      name: weave-net
  updateStrategy:\n    type: RollingUpdate
  template:
    metadata:\n      labels:\n        name: weave-net
    spec:
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      priorityClassName: system-node-critical
      serviceAccountName: weave-net
      restartPolicy: Always
      securityContext:\n        seLinuxOptions: {{}}
      tolerations:\n        - effect: NoSchedule\n          operator: Exists\n        - effect: NoExecute\n          operator: Exists
      initContainers:
        - name: weave-init
          image: {kube}
          command: [/home/weave/init.sh]
          securityContext:\n            privileged: true
          volumeMounts:
            - {{name: cni-bin, mountPath: /host/opt}}
            - {{name: cni-bin2, mountPath: /host/home}}
            - {{name: cni-conf, mountPath: /host/etc}}
            - {{name: lib-modules, mountPath: /lib/modules}}
            - {{name: xtables-lock, mountPath: /run/xtables.lock}}
      containers:
        - name: weave
          image: {kube}
          command: [/home/weave/launch.sh]
          env:\n{env}
          readinessProbe:\n            httpGet:\n              host: 127.0.0.1\n              path: /status\n              port: 6784
          resources:\n            requests:\n              cpu: 50m
          securityContext:\n            privileged: true
          volumeMounts:
            - {{name: weavedb, mountPath: /weavedb}}
            - {{name: dbus, mountPath: /host/var/lib/dbus, readOnly: true}}
            - {{name: cni-machine-id, mountPath: /host/etc/machine-id, readOnly: true}}
            - {{name: xtables-lock, mountPath: /run/xtables.lock}}
        - name: weave-npc
          image: {npc}
          env:\n            - name: HOSTNAME\n              valueFrom:\n                fieldRef:\n                  apiVersion: v1\n                  fieldPath: spec.nodeName
          resources:\n            requests:\n              cpu: 50m
          securityContext:\n            privileged: true
          volumeMounts:\n            - {{name: xtables-lock, mountPath: /run/xtables.lock}}
      volumes:
        - {{name: weavedb, hostPath: {{path: /var/lib/weave}}}}
        - {{name: cni-bin, hostPath: {{path: /opt}}}}
        - {{name: cni-bin2, hostPath: {{path: /home}}}}
        - {{name: cni-conf, hostPath: {{path: /etc}}}}
        - {{name: cni-machine-id, hostPath: {{path: /etc/machine-id}}}}
        - {{name: dbus, hostPath: {{path: /var/lib/dbus}}}}
        - {{name: lib-modules, hostPath: {{path: /lib/modules}}}}
        - {{name: xtables-lock, hostPath: {{path: /run/xtables.lock, type: FileOrCreate}}}}\n",
            kube = q(&images.weave_kube),
            env = env.trim_end_matches('\n'),
            npc = q(&images.weave_npc),
        ),
    ]
}

/// The manifests the bootstrap master applies, in order. `None` when the node config
/// lacks a secret they need (bootstrap token, weave password).
pub fn cluster_manifests(inp: &KubeInputs, images: &Images) -> Option<Vec<Manifest>> {
    let s = &inp.node.secrets;
    let token = bootstrap_token_secret(s.bootstrap_token.as_deref()?)?;
    let password = s.weave_password.as_deref()?;
    Some(vec![
        manifest("00-bootstrap-token.yaml", &[token], true),
        Manifest {
            name: "01-rbac.yaml".into(),
            yaml: rbac(),
            secret: false,
        },
        manifest("10-weave-net.yaml", &weave(inp, images, password), true),
        manifest("20-coredns.yaml", &coredns(inp, &images.coredns), false),
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

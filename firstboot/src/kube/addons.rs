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
//! * kured: DaemonSet + RBAC. It reboots a node when `/var/run/reboot-required` exists.
//! * kubernetes-dashboard: the single-image (v2-style) dashboard with its RBAC.
//! * host-upgrades: not supported; an immutable image is upgraded by replacing it.

use super::manifests::{Images, Manifest};
use super::{q, KubeInputs};
use nodeimage_core::config::IngressNginx;

/// Manifests to apply, and what could not be done (reported, never silent).
#[derive(Debug, Clone, Default)]
pub struct AddonPlan {
    pub manifests: Vec<Manifest>,
    pub notes: Vec<String>,
}

fn m(name: &str, docs: Vec<String>) -> Manifest {
    let mut yaml = String::new();
    for d in docs {
        yaml.push_str("---\n");
        yaml.push_str(&d);
    }
    Manifest {
        name: name.into(),
        yaml,
        secret: false,
    }
}

fn map_block(indent: usize, map: &std::collections::BTreeMap<String, String>) -> String {
    let pad = " ".repeat(indent);
    map.iter()
        .map(|(k, v)| format!("{pad}{}: {}\n", q(k), q(v)))
        .collect()
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
                vec![format!(
                    "apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata:\n  name: {name}
spec:
  acme:
    server: {server}
    email: {email}
    privateKeySecretRef:\n      name: {key}
    solvers:\n      - http01:\n          ingress:\n            ingressClassName: nginx\n",
                    name = is.name,
                    server = q(&is.server),
                    email = q(&is.email),
                    key = format!("{}-account-key", is.name),
                )],
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
    if a.host_upgrades.as_ref().is_some_and(|h| h.enabled) {
        plan.notes.push(
            "host-upgrades: not supported; nodes run an immutable image and are upgraded by replacing the image".into(),
        );
    }
    plan
}

fn ingress_nginx(i: &IngressNginx, images: &Images) -> Manifest {
    let ns = "ingress-nginx";
    let backend_image = i
        .default_backend
        .as_ref()
        .and_then(|d| d.image.clone())
        .or(images.ingress_default_backend.clone());
    let mut docs = vec![
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    app.kubernetes.io/name: ingress-nginx\n"),
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: ingress-nginx\n  namespace: {ns}\n"),
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:\n  name: ingress-nginx
rules:
  - apiGroups: [\"\"]\n    resources: [configmaps, endpoints, nodes, pods, secrets, namespaces]\n    verbs: [list, watch]
  - apiGroups: [coordination.k8s.io]\n    resources: [leases]\n    verbs: [list, watch]
  - apiGroups: [\"\"]\n    resources: [nodes]\n    verbs: [get]
  - apiGroups: [\"\"]\n    resources: [services]\n    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]\n    resources: [ingresses, ingressclasses]\n    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]\n    resources: [ingresses/status]\n    verbs: [update]
  - apiGroups: [\"\"]\n    resources: [events]\n    verbs: [create, patch]
  - apiGroups: [discovery.k8s.io]\n    resources: [endpointslices]\n    verbs: [get, list, watch]\n"
            .to_string(),
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:\n  name: ingress-nginx
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: ingress-nginx
subjects:\n  - kind: ServiceAccount\n    name: ingress-nginx\n    namespace: {ns}\n"
        ),
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:\n  name: ingress-nginx\n  namespace: {ns}
rules:
  - apiGroups: [\"\"]\n    resources: [namespaces]\n    verbs: [get]
  - apiGroups: [\"\"]\n    resources: [configmaps, pods, secrets, endpoints, services]\n    verbs: [get, list, watch]
  - apiGroups: [coordination.k8s.io]\n    resources: [leases]\n    resourceNames: [ingress-nginx-leader]\n    verbs: [get, update]
  - apiGroups: [coordination.k8s.io]\n    resources: [leases]\n    verbs: [create]
  - apiGroups: [\"\"]\n    resources: [events]\n    verbs: [create, patch]\n"
        ),
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:\n  name: ingress-nginx\n  namespace: {ns}
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: ingress-nginx
subjects:\n  - kind: ServiceAccount\n    name: ingress-nginx\n    namespace: {ns}\n"
        ),
        {
            let data = if i.configmap.is_empty() { " {}\n".to_string() } else { format!("\n{}", map_block(2, &i.configmap)) };
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ingress-nginx-controller\n  namespace: {ns}\ndata:{data}")
        },
        "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:\n  name: nginx\n  annotations:\n    ingressclass.kubernetes.io/is-default-class: \"true\"
spec:\n  controller: k8s.io/ingress-nginx\n"
            .to_string(),
    ];
    let mut args = vec![
        "/nginx-ingress-controller".to_string(),
        "--election-id=ingress-nginx-leader".into(),
        "--controller-class=k8s.io/ingress-nginx".into(),
        "--ingress-class=nginx".into(),
        "--configmap=$(POD_NAMESPACE)/ingress-nginx-controller".into(),
        "--watch-ingress-without-class=true".into(),
    ];
    if let Some(img) = &backend_image {
        args.push(format!(
            "--default-backend-service={ns}/ingress-nginx-default-backend"
        ));
        docs.push(format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:\n  name: ingress-nginx-default-backend\n  namespace: {ns}
spec:
  replicas: 1
  selector:\n    matchLabels:\n      app.kubernetes.io/component: default-backend
  template:
    metadata:\n      labels:\n        app.kubernetes.io/component: default-backend
    spec:
      containers:
        - name: default-backend
          image: {img}
          ports:\n            - {{name: http, containerPort: 8080}}
          livenessProbe:\n            httpGet: {{path: /healthz, port: 8080}}
          securityContext:\n            runAsNonRoot: true\n            runAsUser: 65534\n            allowPrivilegeEscalation: false\n",
            img = q(img)
        ));
        docs.push(format!(
            "apiVersion: v1
kind: Service
metadata:\n  name: ingress-nginx-default-backend\n  namespace: {ns}
spec:
  selector:\n    app.kubernetes.io/component: default-backend
  ports:\n    - {{name: http, port: 80, targetPort: http}}\n"
        ));
    }
    let node_selector = if i.node_selector.is_empty() {
        "      nodeSelector:\n        kubernetes.io/os: linux\n".to_string()
    } else {
        let mut sel: std::collections::BTreeMap<String, String> = i
            .node_selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        sel.entry("kubernetes.io/os".into())
            .or_insert_with(|| "linux".into());
        format!("      nodeSelector:\n{}", map_block(8, &sel))
    };
    let args_yaml: String = args
        .iter()
        .map(|a| format!("            - {}\n", q(a)))
        .collect();
    let args_yaml = args_yaml.trim_end_matches('\n');
    let node_selector = node_selector.trim_end_matches('\n');
    docs.push(format!(
        "apiVersion: apps/v1
kind: DaemonSet
metadata:\n  name: ingress-nginx-controller\n  namespace: {ns}
spec:
  selector:\n    matchLabels:\n      app.kubernetes.io/component: controller
  template:
    metadata:\n      labels:\n        app.kubernetes.io/component: controller
    spec:
      serviceAccountName: ingress-nginx
      terminationGracePeriodSeconds: 300
{node_selector}
      containers:
        - name: controller
          image: {image}
          args:\n{args_yaml}
          env:
            - name: POD_NAME\n              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.name
            - name: POD_NAMESPACE\n              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.namespace
          ports:
            - {{name: http, containerPort: 80, hostPort: 80, protocol: TCP}}
            - {{name: https, containerPort: 443, hostPort: 443, protocol: TCP}}
          livenessProbe:\n            httpGet: {{path: /healthz, port: 10254}}\n            initialDelaySeconds: 10
          readinessProbe:\n            httpGet: {{path: /healthz, port: 10254}}
          lifecycle:\n            preStop:\n              exec:\n                command: [/wait-shutdown]
          securityContext:\n            runAsNonRoot: true\n            runAsUser: 101\n            allowPrivilegeEscalation: false\n            capabilities:\n              add: [NET_BIND_SERVICE]\n              drop: [ALL]\n",
        image = q(&images.ingress_nginx_controller),
    ));
    m("30-ingress-nginx.yaml", docs)
}

fn kured(image: &str) -> Manifest {
    m(
        "50-kured.yaml",
        vec![
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: kured\n  namespace: kube-system\n".to_string(),
            "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:\n  name: kured
rules:
  - apiGroups: [\"\"]\n    resources: [nodes]\n    verbs: [get, patch]
  - apiGroups: [\"\"]\n    resources: [pods]\n    verbs: [list, delete, get]
  - apiGroups: [apps]\n    resources: [daemonsets]\n    verbs: [get]
  - apiGroups: [\"\"]\n    resources: [pods/eviction]\n    verbs: [create]\n"
                .to_string(),
            "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:\n  name: kured
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: kured
subjects:\n  - kind: ServiceAccount\n    name: kured\n    namespace: kube-system\n"
                .to_string(),
            "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:\n  name: kured\n  namespace: kube-system
rules:
  - apiGroups: [apps]\n    resources: [daemonsets]\n    resourceNames: [kured]\n    verbs: [update, patch]\n"
                .to_string(),
            "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:\n  name: kured\n  namespace: kube-system
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: kured
subjects:\n  - kind: ServiceAccount\n    name: kured\n    namespace: kube-system\n"
                .to_string(),
            format!(
                "apiVersion: apps/v1
kind: DaemonSet
metadata:\n  name: kured\n  namespace: kube-system
spec:
  selector:\n    matchLabels:\n      name: kured
  updateStrategy:\n    type: RollingUpdate
  template:
    metadata:\n      labels:\n        name: kured
    spec:
      serviceAccountName: kured
      hostPID: true
      priorityClassName: system-node-critical
      tolerations:\n        - key: node-role.kubernetes.io/control-plane\n          effect: NoSchedule
      restartPolicy: Always
      containers:
        - name: kured
          image: {image}
          command: [/usr/bin/kured]
          args:\n            - --ds-name=kured\n            - --ds-namespace=kube-system\n            - --reboot-sentinel=/var/run/reboot-required
          env:\n            - name: KURED_NODE_ID\n              valueFrom:\n                fieldRef:\n                  fieldPath: spec.nodeName
          securityContext:\n            privileged: true\n",
                image = q(image)
            ),
        ],
    )
}

fn dashboard(image: &str) -> Manifest {
    let ns = "kubernetes-dashboard";
    m(
        "60-kubernetes-dashboard.yaml",
        vec![
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
            format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: kubernetes-dashboard\n  namespace: {ns}\n"),
            format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: kubernetes-dashboard-certs\n  namespace: {ns}\ntype: Opaque\n"),
            format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: kubernetes-dashboard-csrf\n  namespace: {ns}\ntype: Opaque\ndata:\n  csrf: \"\"\n"),
            format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: kubernetes-dashboard-key-holder\n  namespace: {ns}\ntype: Opaque\n"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kubernetes-dashboard-settings\n  namespace: {ns}\n"),
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:\n  name: kubernetes-dashboard\n  namespace: {ns}
rules:
  - apiGroups: [\"\"]\n    resources: [secrets]\n    resourceNames: [kubernetes-dashboard-key-holder, kubernetes-dashboard-certs, kubernetes-dashboard-csrf]\n    verbs: [get, update, delete]
  - apiGroups: [\"\"]\n    resources: [configmaps]\n    resourceNames: [kubernetes-dashboard-settings]\n    verbs: [get, update]\n"
            ),
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:\n  name: kubernetes-dashboard\n  namespace: {ns}
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: kubernetes-dashboard
subjects:\n  - kind: ServiceAccount\n    name: kubernetes-dashboard\n    namespace: {ns}\n"
            ),
            format!(
                "apiVersion: apps/v1
kind: Deployment
metadata:\n  name: kubernetes-dashboard\n  namespace: {ns}
spec:
  replicas: 1
  selector:\n    matchLabels:\n      k8s-app: kubernetes-dashboard
  template:
    metadata:\n      labels:\n        k8s-app: kubernetes-dashboard
    spec:
      serviceAccountName: kubernetes-dashboard
      nodeSelector:\n        kubernetes.io/os: linux
      containers:
        - name: kubernetes-dashboard
          image: {image}
          args:\n            - --auto-generate-certificates\n            - --namespace={ns}
          ports:\n            - {{containerPort: 8443, protocol: TCP}}
          livenessProbe:\n            httpGet: {{scheme: HTTPS, path: /, port: 8443}}\n            initialDelaySeconds: 30\n            timeoutSeconds: 30
          securityContext:\n            allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            runAsUser: 1001\n            runAsGroup: 2001
          volumeMounts:\n            - {{name: kubernetes-dashboard-certs, mountPath: /certs}}\n            - {{name: tmp-volume, mountPath: /tmp}}
      volumes:
        - name: kubernetes-dashboard-certs\n          secret:\n            secretName: kubernetes-dashboard-certs
        - name: tmp-volume\n          emptyDir: {{}}\n",
                image = q(image)
            ),
            format!(
                "apiVersion: v1
kind: Service
metadata:\n  name: kubernetes-dashboard\n  namespace: {ns}
spec:
  selector:\n    k8s-app: kubernetes-dashboard
  ports:\n    - {{port: 443, targetPort: 8443}}\n"
            ),
        ],
    )
}

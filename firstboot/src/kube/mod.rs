//! Kubernetes configuration generators: systemd units and flags for the control plane
//! and the kubelet, KubeletConfiguration, kubeconfigs, and the manifests the bootstrap
//! master applies (bootstrap token, RBAC, CoreDNS, Weave Net, addons).
//!
//! All of it is pure: values in, text out, golden-file tested. Written from the
//! Kubernetes v1.35 reference documentation.

pub mod kubeconfig;

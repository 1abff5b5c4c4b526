//! firstboot: brings a node built by `nodeimage` into its cluster on first boot.
//!
//! This library is the binary's own code, split out so its tests can reach it; no other
//! crate depends on it. What `nodeimage` shares with it (the config schema, the port
//! table and firewall rendering, the disk layout, FAT, images.json, the CA) lives in
//! `nodeimage-core`. The binary in `main.rs` wires the steps together.

pub mod assemble;
pub mod containerd;
pub mod etcd;
pub mod ignition;
pub mod kube;
pub mod kubeconfig;
pub mod pki;
pub mod preflight;
pub mod run;
pub mod source;
pub mod state;
pub mod yaml;

//! firstboot: brings a node built by `nodeimage` into its cluster on first boot.
//!
//! The library holds the pieces that are pure functions of their inputs (config schema,
//! port table, firewall rules, PKI, unit files) and small adapters at the edges
//! (data sources, block devices, processes). The binary in `main.rs` wires them together.

pub mod assemble;
pub mod config;
pub mod containerd;
pub mod etcd;
pub mod fat;
pub mod firewall;
pub mod ignition;
pub mod kube;
pub mod pki;
pub mod ports;
pub mod preflight;
pub mod run;
pub mod source;
pub mod state;
pub mod util;

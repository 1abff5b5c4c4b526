//! firstboot: brings a node built by `nodeimage` into its cluster on first boot.
//!
//! This library is the binary's own code, split out so its tests can reach it; no other
//! crate depends on it. What `nodeimage` shares with it (the config schema, the port
//! table and firewall rendering, the disk layout, FAT, images.json, the CA) lives in
//! `nodeimage-core`. `main.rs` is only the command line.
//!
//! * [`run`]: the run as a plan: [`run::steps_for`] lists the steps a node runs,
//!   [`run::run_steps`] runs them with the journal, [`run::dry_run`] says what they would
//!   do. [`step`]: the [`step::Step`] trait and what a step sees.
//! * [`source`]: finding the user data (data sources), [`ignition`]: staging and applying
//!   Ignition configs, [`net`]: the retrying HTTP client and the mTLS client.
//! * The steps: [`host`] (preflight, firewall, hostname, Ignition, files, containerd,
//!   images) and [`assemble`] (joining the cluster), with [`preflight`], [`containerd`],
//!   [`etcd`], [`pki`], [`kube`], [`kubeconfig`] and [`systemd`] doing the work.
//! * [`state`]: the state partition, set up from the initramfs; [`netroot`]: a network
//!   boot's root image (fetched, verified, mounted from RAM) and its state in RAM; [`fault`]: the power-cut
//!   points of the power-cut test (`firstboot.fault=` on the kernel command line).

pub mod assemble;
pub mod boot_entries;
pub mod containerd;
pub mod dm;
pub mod erase;
pub mod etcd;
pub mod fault;
pub mod host;
pub mod ignition;
pub mod kube;
pub mod net;
pub mod netroot;
pub mod pki;
pub mod preflight;
pub mod renew;
pub mod run;
pub mod source;
pub mod state;
pub mod step;
pub mod systemd;
pub mod update;
pub mod verity;

//! nodeimage-core: what the workstation program (`nodeimage`) and the on-node program
//! (`firstboot`) share. Everything here is a pure function of its inputs or a small,
//! atomic file operation; nothing talks to the network or starts a process.
//!
//! * [`config`]: the node config and cluster.yml schema (strict, with line/column errors).
//! * [`ports`] and [`firewall`]: the seeds' port table, the per-node port policy derived
//!   from it, and its nftables rendering.
//! * [`layout`]: partition names and labels, the kubeadm file layout.
//! * [`images`]: `images.json`, the index of the container images baked into an image.
//! * [`pki`]: certificate authorities and the issuing and checking of leaf certificates.
//! * [`fat`]: the FAT file systems of the ESP and the NODECONFIG partition.
//! * [`files`]: atomic, fsynced writes and root-prefixed paths.
//! * [`kubeconfig`] and [`yaml`]: the kubeconfig format, and YAML Kubernetes' readers read
//!   back as written (both programs write kubeconfigs).
//! * [`retry`]: backoff, deadlines and one `wait_until` for every retry and poll loop.
//! * [`verity`]: dm-verity hash trees as `veritysetup format` writes them.
//! * [`bundle`]: signed update bundles (Ed25519) and their keys.
//! * [`errors`]: printing an error with its causes.

pub mod bundle;
pub mod config;
pub mod errors;
pub mod fat;
pub mod files;
pub mod firewall;
pub mod images;
pub mod kubeconfig;
pub mod layout;
pub mod pki;
pub mod ports;
pub mod retry;
pub mod verity;
pub mod yaml;

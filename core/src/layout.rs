//! Where things live on a node, and the names both programs agree on: the partition
//! names and labels of the disk layout, and the kubeadm file layout of Kubernetes'
//! certificates and kubeconfigs (`/etc/kubernetes/...`), so operators find what they
//! expect.

use std::net::IpAddr;

/// The FAT label of the config partition (`nodeimage write-config` writes it, firstboot
/// reads `node.yaml` / `config.ign` from it).
pub const NODECONFIG_LABEL: &str = "NODECONFIG";
/// The GPT name of the state partition firstboot appends on first boot.
pub const STATE_PARTITION_NAME: &str = "nodeimage-state";
/// The ext4 label of the state file system.
pub const STATE_FS_LABEL: &str = "nodeimage-state";

/// The dm-verity root: the kernel parameters the loader entry carries and the initramfs
/// reads (`firstboot verity-open`), and the name of the device-mapper device the root is
/// mounted from.
pub mod verity {
    /// The root hash (hex) of the tree over the root partition's data: the trust anchor.
    pub const ROOT_HASH_PARAM: &str = "nodeimage.verity";
    /// The partition holding the hash tree (`PARTUUID=<guid>`).
    pub const HASH_DEVICE_PARAM: &str = "nodeimage.verity_hash";
    /// The number of 4 KiB data blocks the tree covers (the erofs image's size).
    pub const DATA_BLOCKS_PARAM: &str = "nodeimage.verity_blocks";
    /// `full` (the default: every block is read and checked before the root is mounted)
    /// or `lazy` (blocks are checked as they are read, as always).
    pub const CHECK_PARAM: &str = "nodeimage.verity_check";
    /// The device-mapper device: `/dev/mapper/nodeimage-root`.
    pub const DM_NAME: &str = "nodeimage-root";
    /// The image's version (`<SOURCE_DATE_EPOCH>-<inputs sha256[..12]>`), for status.
    pub const VERSION_PARAM: &str = "nodeimage.version";

    /// The kernel arguments of a slot: its root partition, read-only erofs, and the
    /// dm-verity parameters the initramfs opens it with (see `firstboot::verity`).
    pub fn kernel_args(
        root_partuuid: &str,
        verity_partuuid: &str,
        root_hash: &str,
        data_blocks: u64,
        version: &str,
    ) -> String {
        format!(
            "root=PARTUUID={root_partuuid} ro rootfstype=erofs {ROOT_HASH_PARAM}={root_hash} \
             {HASH_DEVICE_PARAM}=PARTUUID={verity_partuuid} {DATA_BLOCKS_PARAM}={data_blocks} \
             {VERSION_PARAM}={version}"
        )
    }
}

/// The boot loader's files on the ESP: one kernel and initrd per slot, one systemd-boot
/// entry per installed image. Entries are `nodeimage-<generation>-<slot>.conf`;
/// systemd-boot sorts them newest generation first, so the default pattern
/// [`LOADER_CONF`] boots the newest image, and an update's entry is written with a
/// boot counter (`+3`) that systemd-boot counts down on every try: once it reaches 0
/// the entry sorts last and the previous image boots again (rollback). A boot that
/// reaches firstboot's healthy state removes the counter (`firstboot bless-boot`).
pub mod esp {
    /// systemd-boot's config: the newest nodeimage entry, at once, no editor.
    pub const LOADER_CONF: &str = "default nodeimage-*\ntimeout 0\neditor no\n";
    /// The tries an update's entry gets before it is given up.
    pub const UPDATE_TRIES: u32 = 3;

    /// `nodeimage/<slot>/vmlinuz` and `.../initrd.img`.
    pub fn kernel(slot: &str) -> String {
        format!("nodeimage/{slot}/vmlinuz")
    }
    pub fn initrd(slot: &str) -> String {
        format!("nodeimage/{slot}/initrd.img")
    }

    /// `loader/entries/nodeimage-<generation>-<slot>[+<tries>].conf`.
    pub fn entry(generation: u32, slot: &str, tries: Option<u32>) -> String {
        match tries {
            Some(t) => format!("loader/entries/nodeimage-{generation}-{slot}+{t}.conf"),
            None => format!("loader/entries/nodeimage-{generation}-{slot}.conf"),
        }
    }

    /// An entry file's name → (generation, slot, has a boot counter).
    pub fn parse_entry(file: &str) -> Option<(u32, String, bool)> {
        let id = file.strip_prefix("nodeimage-")?.strip_suffix(".conf")?;
        let (id, counted) = match id.split_once('+') {
            Some((id, _)) => (id, true),
            None => (id, false),
        };
        let (generation, slot) = id.split_once('-')?;
        Some((generation.parse().ok()?, slot.to_string(), counted))
    }

    /// The entry's text.
    pub fn entry_text(title: &str, slot: &str, cmdline: &str) -> String {
        format!(
            "title {title}\nlinux /{}\ninitrd /{}\noptions {cmdline}\n",
            kernel(slot),
            initrd(slot)
        )
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn entries_name_generation_slot_and_counter() {
            assert_eq!(
                super::entry(1, "a", None),
                "loader/entries/nodeimage-1-a.conf"
            );
            assert_eq!(
                super::entry(2, "b", Some(3)),
                "loader/entries/nodeimage-2-b+3.conf"
            );
            assert_eq!(
                super::parse_entry("nodeimage-2-b+2-1.conf"),
                Some((2, "b".into(), true))
            );
            assert_eq!(
                super::parse_entry("nodeimage-12-a.conf"),
                Some((12, "a".into(), false))
            );
            assert_eq!(super::parse_entry("other.conf"), None);
            assert_eq!(super::parse_entry("nodeimage-x-a.conf"), None);
        }
    }
}

/// The public key (PEM) a node accepts update bundles from (`[update] public_key` of the
/// profile; absent: the node accepts none).
pub const UPDATE_KEY: &str = "/usr/share/nodeimage/update-key.pub.pem";
/// The reboot sentinel: written when an update is installed and the node should boot
/// it; kured (mounting `/run/nodeimage`) reboots the node within its cluster-wide lock.
pub const REBOOT_SENTINEL: &str = "/run/nodeimage/reboot-required";
pub const REBOOT_SENTINEL_DIR: &str = "/run/nodeimage";

/// The GPT names of the two root slots and their verity partitions.
pub const SLOTS: [(&str, &str, &str); 2] =
    [("a", "root-a", "verity-a"), ("b", "root-b", "verity-b")];

/// Group bound to `cluster-admin` by a ClusterRoleBinding of the same name (kubeadm ≥ 1.29
/// practice: admin credentials are not in the RBAC-bypassing `system:masters` group).
pub const CLUSTER_ADMINS_GROUP: &str = "kubeadm:cluster-admins";
/// The RBAC-bypassing group, used only by `super-admin.conf` on the bootstrap master to
/// create the first RBAC objects.
pub const SYSTEM_MASTERS_GROUP: &str = "system:masters";

/// Node paths (kubeadm layout).
pub mod paths {
    pub const PKI_DIR: &str = "/etc/kubernetes/pki";
    pub const CA_CRT: &str = "/etc/kubernetes/pki/ca.crt";
    pub const CA_KEY: &str = "/etc/kubernetes/pki/ca.key";
    pub const FRONT_PROXY_CA_CRT: &str = "/etc/kubernetes/pki/front-proxy-ca.crt";
    pub const FRONT_PROXY_CA_KEY: &str = "/etc/kubernetes/pki/front-proxy-ca.key";
    pub const ETCD_CA_CRT: &str = "/etc/kubernetes/pki/etcd/ca.crt";
    pub const ETCD_CA_KEY: &str = "/etc/kubernetes/pki/etcd/ca.key";
    pub const SA_KEY: &str = "/etc/kubernetes/pki/sa.key";
    pub const SA_PUB: &str = "/etc/kubernetes/pki/sa.pub";
    pub const APISERVER_CRT: &str = "/etc/kubernetes/pki/apiserver.crt";
    pub const APISERVER_KEY: &str = "/etc/kubernetes/pki/apiserver.key";
    pub const APISERVER_KUBELET_CLIENT_CRT: &str =
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt";
    pub const APISERVER_KUBELET_CLIENT_KEY: &str =
        "/etc/kubernetes/pki/apiserver-kubelet-client.key";
    pub const FRONT_PROXY_CLIENT_CRT: &str = "/etc/kubernetes/pki/front-proxy-client.crt";
    pub const FRONT_PROXY_CLIENT_KEY: &str = "/etc/kubernetes/pki/front-proxy-client.key";
    pub const APISERVER_ETCD_CLIENT_CRT: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
    pub const APISERVER_ETCD_CLIENT_KEY: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";
    pub const ETCD_SERVER_CRT: &str = "/etc/kubernetes/pki/etcd/server.crt";
    pub const ETCD_SERVER_KEY: &str = "/etc/kubernetes/pki/etcd/server.key";
    pub const ETCD_PEER_CRT: &str = "/etc/kubernetes/pki/etcd/peer.crt";
    pub const ETCD_PEER_KEY: &str = "/etc/kubernetes/pki/etcd/peer.key";
    /// Client certificate for health checks, `etcdctl` and firstboot's join protocol.
    pub const ETCD_HEALTHCHECK_CLIENT_CRT: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.crt";
    pub const ETCD_HEALTHCHECK_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.key";
    /// External etcd: the files of cluster.yml's `etcd:` section, inlined by nodeimage.
    pub const EXTERNAL_ETCD_CA_CRT: &str = "/etc/kubernetes/pki/etcd-external/ca.crt";
    pub const EXTERNAL_ETCD_CLIENT_CRT: &str = "/etc/kubernetes/pki/etcd-external/client.crt";
    pub const EXTERNAL_ETCD_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd-external/client.key";
    pub const KUBELET_SERVING_CRT: &str = "/var/lib/kubelet/pki/kubelet.crt";
    pub const KUBELET_SERVING_KEY: &str = "/var/lib/kubelet/pki/kubelet.key";
    /// The kubelet's client certificate and key in one file, where the kubelet's own
    /// rotation keeps it current.
    pub const KUBELET_CLIENT_CURRENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
    pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
    pub const SUPER_ADMIN_CONF: &str = "/etc/kubernetes/super-admin.conf";
    pub const CONTROLLER_MANAGER_CONF: &str = "/etc/kubernetes/controller-manager.conf";
    pub const SCHEDULER_CONF: &str = "/etc/kubernetes/scheduler.conf";
    pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
    pub const BOOTSTRAP_KUBELET_CONF: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
}

/// kube-apiserver's secure port, from the port table (the default when the endpoint names
/// no port).
pub fn apiserver_port() -> u16 {
    crate::ports::table_port(crate::ports::Service::KubeApiserver)
        .expect("the port table lists kube-apiserver")
}

/// The API server as the master's own components reach it: loopback, the table's port.
pub fn local_apiserver_url() -> String {
    format!("https://127.0.0.1:{}", apiserver_port())
}
/// `host` / `host:port` / `[v6]:port` / `https://...` → `https://host:port`.
pub fn api_server_url(endpoint: &str) -> String {
    if endpoint.starts_with("https://") {
        return endpoint.trim_end_matches('/').to_string();
    }
    let (host, port) = split_host_port(endpoint);
    let port = port.unwrap_or_else(apiserver_port);
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("https://[{host}]:{port}"),
        _ => format!("https://{host}:{port}"),
    }
}

/// Split `host:port` (also `[v6]:port`, bare v6, bare host).
pub fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    if s.parse::<IpAddr>().is_ok() {
        return (s, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse().ok()),
        _ => (s, None),
    }
}

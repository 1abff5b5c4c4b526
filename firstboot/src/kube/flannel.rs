//! flannel (`network.provider: flannel`): flanneld with its VXLAN backend on every node,
//! each node's pod subnet taken from its Node's `spec.podCIDR` (`--kube-subnet-mgr`; the
//! controller manager allocates them from `network.pod_network_cidr`).
//!
//! The pods' CNI configuration is written by the DaemonSet itself once flanneld has
//! leased the node's subnet (`/run/flannel/subnet.env`): the standard `bridge` plugin with
//! `host-local` addresses from that subnet, then `portmap`. Those plugins are pinned
//! files of the image (`/opt/cni/bin`), so no separate flannel CNI plugin image is needed;
//! the container only needs `/bin/sh` and flanneld at `/opt/bin/flanneld`, which
//! upstream's image (`ghcr.io/flannel-io/flannel`) has.
//!
//! VXLAN (UDP 8472) is neither encrypted nor authenticated: the firewall opens it to
//! cluster nodes only. Weave Net (the default provider) encrypts outside trusted subnets.
//! flanneld's health endpoint stays off (its default): no port beyond the table's.

use super::objects::*;
use super::KubeInputs;
use nodeimage_core::yaml;

/// The namespace flannel runs in.
const NS: &str = "kube-system";

/// What the `kube-flannel` container runs: write the CNI configuration from flanneld's
/// lease in the background, then become flanneld. POSIX sh (dash, busybox ash).
///
/// host-local wants the subnet's network address; flanneld's lease names the bridge's
/// gateway address (`10.32.1.1/24`), so the host bits are cleared first.
const LAUNCH: &str = r#"set -eu
conf=/etc/cni/net.d/10-flannel.conflist
write_conf() {
	while [ ! -s /run/flannel/subnet.env ]; do sleep 1; done
	. /run/flannel/subnet.env
	ip=${FLANNEL_SUBNET%/*}
	bits=${FLANNEL_SUBNET#*/}
	IFS=. read -r a b c d <<EOF
$ip
EOF
	n=$(( (a << 24) | (b << 16) | (c << 8) | d ))
	mask=$(( (0xffffffff << (32 - bits)) & 0xffffffff ))
	n=$(( n & mask ))
	net="$(( (n >> 24) & 255 )).$(( (n >> 16) & 255 )).$(( (n >> 8) & 255 )).$(( n & 255 ))/$bits"
	tmp="$conf.tmp.$$"
	cat > "$tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "cbr0",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "isDefaultGateway": true,
      "hairpinMode": true,
      "ipMasq": false,
      "mtu": ${FLANNEL_MTU},
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${net}", "gateway": "${ip}"}]],
        "routes": [{"dst": "${FLANNEL_NETWORK}"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
	mv -f "$tmp" "$conf"
	echo "flannel: wrote $conf for subnet $net (gateway $ip, network ${FLANNEL_NETWORK}, mtu ${FLANNEL_MTU})"
}
write_conf &
exec /opt/bin/flanneld --kube-subnet-mgr --ip-masq --iface="$NODE_IP" "$@"
"#;

/// `net-conf.json`: the pod network and the VXLAN backend.
fn net_conf(inp: &KubeInputs) -> String {
    let n = &inp.node.cluster.network;
    serde_json::to_string_pretty(&serde_json::json!({
        "Network": n.pod_network_cidr.to_string(),
        "Backend": { "Type": "vxlan", "Port": vxlan_port() },
    }))
    .expect("serializable")
}

/// The VXLAN port from the port table.
fn vxlan_port() -> u16 {
    nodeimage_core::ports::table_port(nodeimage_core::ports::Service::FlannelVxlan)
        .expect("the port table lists flannel-vxlan")
}

/// RBAC, the `kube-flannel-cfg` ConfigMap and the `kube-flannel` DaemonSet.
pub fn flannel(inp: &KubeInputs, image: &str) -> Vec<yaml_serde::Value> {
    let labels = map([("app", "flannel"), ("tier", "node")]);
    let mut ds = workload(
        "DaemonSet",
        meta_ns("kube-flannel", NS).labels(labels.clone()),
        labels.clone(),
        PodSpec {
            node_selector: linux(),
            containers: vec![Container {
                command: strings(["/bin/sh", "-c", LAUNCH, "flannel"]),
                env: vec![
                    env_field("POD_NAME", None, "metadata.name"),
                    env_field("POD_NAMESPACE", None, "metadata.namespace"),
                    env_field("NODE_IP", None, "status.hostIP"),
                ],
                resources: Some(Resources {
                    requests: map([("cpu", "50m"), ("memory", "50Mi")]),
                    ..Default::default()
                }),
                security_context: Some(SecurityContext {
                    privileged: Some(false),
                    capabilities: Some(Capabilities {
                        add: strings(["NET_ADMIN", "NET_RAW"]),
                        drop: Vec::new(),
                    }),
                    ..Default::default()
                }),
                volume_mounts: vec![
                    mount("run", "/run/flannel", false),
                    mount("cni", "/etc/cni/net.d", false),
                    mount("flannel-cfg", "/etc/kube-flannel/", true),
                    mount("xtables-lock", "/run/xtables.lock", false),
                ],
                ..container("kube-flannel", image)
            }],
            volumes: vec![
                host_path("run", "/run/flannel", Some("DirectoryOrCreate")),
                host_path("cni", "/etc/cni/net.d", Some("DirectoryOrCreate")),
                Volume {
                    name: "flannel-cfg".into(),
                    config_map: Some(ConfigMapVolume {
                        name: "kube-flannel-cfg".into(),
                        items: vec![KeyToPath {
                            key: "net-conf.json".into(),
                            path: "net-conf.json".into(),
                        }],
                    }),
                    ..Default::default()
                },
                host_path("xtables-lock", "/run/xtables.lock", Some("FileOrCreate")),
            ],
            ..node_network_daemon("flannel")
        },
    );
    ds.body.spec.update_strategy = Some(rolling_update(None));
    [
        vec![yaml::value(&service_account("flannel", NS))],
        role_for_service_account(
            Scope::Cluster,
            meta("flannel"),
            vec![
                rule([""], ["pods"], ["get"]),
                rule([""], ["nodes"], ["get", "list", "watch"]),
                rule([""], ["nodes/status"], ["patch"]),
            ],
            "flannel",
            NS,
        )
        .into(),
        vec![
            yaml::value(&config_map(
                meta_ns("kube-flannel-cfg", NS).labels(labels.clone()),
                Some(map([("net-conf.json", net_conf(inp).as_str())])),
            )),
            yaml::value(&ds),
        ],
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The launcher writes a CNI configuration host-local accepts (the subnet's network
    /// address, the lease's gateway) from a real-looking lease, with the system's sh.
    #[test]
    fn launcher_writes_the_bridge_configuration_from_the_lease() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("run/flannel")).unwrap();
        std::fs::create_dir_all(root.join("etc/cni/net.d")).unwrap();
        std::fs::write(
            root.join("run/flannel/subnet.env"),
            "FLANNEL_NETWORK=10.32.0.0/12\nFLANNEL_SUBNET=10.33.7.1/23\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        // The same script with the paths under the temp root and flanneld replaced by
        // `wait` for the background writer.
        let script = LAUNCH
            .replace(
                "/run/flannel",
                &root.join("run/flannel").display().to_string(),
            )
            .replace(
                "/etc/cni/net.d",
                &root.join("etc/cni/net.d").display().to_string(),
            )
            .replace(
                "exec /opt/bin/flanneld --kube-subnet-mgr --ip-masq --iface=\"$NODE_IP\" \"$@\"",
                "wait",
            );
        test_support::cmd::stdout_ok("sh", Command::new("sh").arg("-c").arg(&script));
        let conf: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join("etc/cni/net.d/10-flannel.conflist")).unwrap(),
        )
        .unwrap();
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["mtu"], 1450);
        assert_eq!(
            bridge["ipam"]["ranges"][0][0],
            serde_json::json!({"subnet": "10.33.6.0/23", "gateway": "10.33.7.1"})
        );
        assert_eq!(bridge["ipam"]["routes"][0]["dst"], "10.32.0.0/12");
        assert_eq!(conf["plugins"][1]["type"], "portmap");
    }
}

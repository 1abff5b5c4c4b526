use super::*;
use std::collections::BTreeMap;

use crate::config::{IngressNginx, NodeConfig, Role};

fn facts(role: Role) -> NodeFacts {
    let mut f = NodeFacts::defaults(role);
    f.node_address = Some("10.0.0.1".parse().unwrap());
    f.masters = vec![
        "10.0.0.1/32".parse().unwrap(),
        "10.0.0.2/32".parse().unwrap(),
    ];
    f.nodes = vec![
        "10.0.0.0/28".parse().unwrap(),
        "10.0.0.3/32".parse().unwrap(),
    ];
    f.network.trusted_subnets = vec!["172.31.0.0/16".parse().unwrap()];
    f
}

fn services(p: &PortPolicy) -> Vec<(Service, Sources)> {
    p.rules.iter().map(|r| (r.row.service, r.sources)).collect()
}

#[test]
fn every_row_names_a_seed_and_has_a_note() {
    for r in PORT_TABLE {
        assert!(!r.seeds.is_empty(), "{:?}", r.service);
        assert!(!r.note.is_empty() && r.note.len() < 200, "{:?}", r.service);
        assert_eq!(
            r.protocol == Protocol::Esp,
            r.port == PortSpec::None,
            "{:?}",
            r.service
        );
    }
}

#[test]
fn no_active_port_is_both_opened_and_restricted() {
    for role in [Role::Master, Role::Worker] {
        for localhost_etcd in [false, true] {
            let mut f = facts(role);
            f.network.etcd_localhost_only = localhost_etcd;
            f.ingress = Some(IngressNginx {
                enabled: true,
                ..Default::default()
            });
            f.taint_masters = false;
            let p = PortPolicy::new(f).unwrap();
            for a in p.rules.iter().filter(|r| r.is_restriction()) {
                for b in p.rules.iter().filter(|r| !r.is_restriction()) {
                    assert!(
                        !(a.row.protocol == b.row.protocol && a.ports == b.ports),
                        "{:?} and {:?}",
                        a.row.service,
                        b.row.service
                    );
                }
            }
        }
    }
}

#[test]
fn master_has_control_plane_worker_does_not() {
    let m = PortPolicy::new(facts(Role::Master)).unwrap();
    let w = PortPolicy::new(facts(Role::Worker)).unwrap();
    let ms = services(&m);
    let ws = services(&w);
    assert!(ms.contains(&(Service::KubeApiserver, Sources::Anyone)));
    assert!(ms.contains(&(Service::EtcdClient, Sources::Set(SourceSet::Masters))));
    assert!(ms.contains(&(Service::KubeScheduler, Sources::Localhost)));
    for s in [
        Service::KubeApiserver,
        Service::EtcdClient,
        Service::EtcdPeer,
        Service::KubeScheduler,
    ] {
        assert!(!ws.iter().any(|(x, _)| *x == s), "{s} on a worker");
    }
    assert!(ws.contains(&(Service::Kubelet, Sources::Set(SourceSet::Masters))));
    assert!(ws.contains(&(Service::KubeletReadOnly, Sources::Disabled)));
    // No inactive options (flannel, Calico) anywhere.
    assert!(!ms
        .iter()
        .chain(ws.iter())
        .any(|(s, _)| matches!(s, Service::FlannelUdp | Service::CalicoBgp)));
}

#[test]
fn etcd_localhost_only_and_external() {
    let mut f = facts(Role::Master);
    f.network.etcd_localhost_only = true;
    let p = PortPolicy::new(f).unwrap();
    assert!(services(&p).contains(&(Service::EtcdClient, Sources::Localhost)));
    assert!(!services(&p).contains(&(Service::EtcdClient, Sources::Set(SourceSet::Masters))));
    assert_eq!(
        p.etcd_listen_client_urls().unwrap(),
        vec!["https://127.0.0.1:2379"]
    );
    assert_eq!(
        p.etcd_listen_peer_urls().unwrap(),
        vec!["https://127.0.0.1:2380"]
    );

    let mut f = facts(Role::Master);
    f.external_etcd = true;
    let p = PortPolicy::new(f).unwrap();
    assert!(!services(&p).iter().any(|(s, _)| *s == Service::EtcdClient));
    assert!(p.etcd_listen_client_urls().unwrap().is_empty());
}

#[test]
fn bind_addresses_follow_the_rows() {
    let p = PortPolicy::new(facts(Role::Master)).unwrap();
    let b = |s| p.bind_address(s).unwrap().map(|a| a.to_string());
    for (service, want) in [
        (Service::KubeletHealthz, "127.0.0.1:10248"),
        (Service::KubeProxyMetrics, "127.0.0.1:10249"),
        (Service::KubeProxyHealthz, "0.0.0.0:10256"),
        (Service::KubeScheduler, "127.0.0.1:10259"),
        (Service::KubeControllerManager, "127.0.0.1:10257"),
        (Service::WeaveStatus, "0.0.0.0:6782"),
        (Service::WeaveApi, "127.0.0.1:6784"),
    ] {
        assert_eq!(b(service).as_deref(), Some(want), "{service:?}");
    }
    assert_eq!(b(Service::KubeletReadOnly), None);
    assert_eq!(
        b(Service::Kubelet).as_deref(),
        Some("0.0.0.0:10250"),
        "kubelet --address takes one address"
    );
    assert_eq!(b(Service::NodePorts), None, "a range is not a bind");
    assert_eq!(p.port(Service::KubeletReadOnly), None);
    assert_eq!(b(Service::EtcdClient).as_deref(), Some("10.0.0.1:2379"));
    assert_eq!(
        p.etcd_listen_client_urls().unwrap(),
        vec!["https://10.0.0.1:2379", "https://127.0.0.1:2379"]
    );
    assert_eq!(
        p.etcd_listen_peer_urls().unwrap(),
        vec!["https://10.0.0.1:2380", "https://127.0.0.1:2380"]
    );
    // Workers run no scheduler.
    let w = PortPolicy::new(facts(Role::Worker)).unwrap();
    assert_eq!(w.bind_address(Service::KubeScheduler).unwrap(), None);
    // Unknown address: a clear error for etcd, a placeholder in the plan.
    let mut f = facts(Role::Master);
    f.node_address = None;
    let p = PortPolicy::new(f).unwrap();
    assert!(matches!(
        p.bind_address(Service::EtcdClient),
        Err(PortsError::NodeAddressUnknown {
            service: Service::EtcdClient
        })
    ));
    let plan = p.bind_plan();
    let etcd = plan
        .iter()
        .find(|e| e.service == Service::EtcdClient)
        .unwrap();
    assert_eq!(etcd.listen, vec!["${node_address}:2379", "127.0.0.1:2379"]);
}

#[test]
fn ipv6_node_binds_unspecified_v6() {
    let mut f = facts(Role::Worker);
    f.node_address = Some("fd00::5".parse().unwrap());
    let p = PortPolicy::new(f).unwrap();
    assert_eq!(
        p.bind_address(Service::KubeProxyHealthz)
            .unwrap()
            .unwrap()
            .to_string(),
        "[::]:10256"
    );
}

#[test]
fn ingress_respects_selector_and_taints() {
    let sel: BTreeMap<String, String> = [("disk".to_string(), "ssd".to_string())].into();
    let ing = IngressNginx {
        enabled: true,
        node_selector: [("disk".parse().unwrap(), "ssd".to_string())].into(),
        ..Default::default()
    };
    let has_http = |p: &PortPolicy| {
        p.rules
            .iter()
            .any(|r| r.row.service == Service::IngressHttp)
    };

    let mut f = facts(Role::Worker);
    f.ingress = Some(ing.clone());
    assert!(
        !has_http(&PortPolicy::new(f.clone()).unwrap()),
        "labels do not match"
    );
    f.labels = sel.clone();
    let p = PortPolicy::new(f.clone()).unwrap();
    assert!(has_http(&p));
    assert!(p
        .rules
        .iter()
        .any(|r| r.row.service == Service::IngressStatus));
    f.ingress = Some(IngressNginx {
        enabled: false,
        ..ing.clone()
    });
    assert!(!has_http(&PortPolicy::new(f).unwrap()), "disabled");

    let mut m = facts(Role::Master);
    m.labels = sel;
    m.ingress = Some(ing);
    assert!(
        !has_http(&PortPolicy::new(m.clone()).unwrap()),
        "tainted master"
    );
    m.taint_masters = false;
    assert!(has_http(&PortPolicy::new(m).unwrap()));

    // Empty selector: every (schedulable) node.
    let mut w = facts(Role::Worker);
    w.ingress = Some(IngressNginx {
        enabled: true,
        ..Default::default()
    });
    assert!(has_http(&PortPolicy::new(w).unwrap()));
}

#[test]
fn sets_are_aggregated_and_include_own_address() {
    let p = PortPolicy::new(facts(Role::Master)).unwrap();
    let s = |set| p.set(set).iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(s(SourceSet::Masters), vec!["10.0.0.1/32", "10.0.0.2/32"]);
    // 10.0.0.{1,2,3} fold into 10.0.0.0/28; the pod network (10.32.0.0/12) is not a
    // cluster node.
    assert_eq!(s(SourceSet::ClusterNodes), vec!["10.0.0.0/28"]);
    assert_eq!(s(SourceSet::TrustedSubnets), vec!["172.31.0.0/16"]);
}

#[test]
fn decide_models_the_firewall() {
    let p = PortPolicy::new(facts(Role::Master)).unwrap();
    let from = |a: &str| Peer::Remote {
        addr: a.parse().unwrap(),
        ipsec: false,
    };
    assert!(p.decide(Protocol::Tcp, Some(22), from("192.0.2.1")));
    assert!(p.decide(Protocol::Tcp, Some(2379), from("10.0.0.2")));
    assert!(
        !p.decide(Protocol::Tcp, Some(2379), from("10.0.0.3")),
        "worker to etcd"
    );
    assert!(!p.decide(Protocol::Tcp, Some(10248), from("10.0.0.2")));
    assert!(p.decide(Protocol::Tcp, Some(10248), Peer::Loopback));
    assert!(p.decide(Protocol::Udp, Some(6784), from("172.31.4.4")));
    assert!(
        !p.decide(Protocol::Udp, Some(6784), from("10.0.0.3")),
        "plain fastdp from a node"
    );
    assert!(p.decide(
        Protocol::Udp,
        Some(6784),
        Peer::Remote {
            addr: "10.0.0.3".parse().unwrap(),
            ipsec: true
        }
    ));
    assert!(p.decide(Protocol::Esp, None, from("10.0.0.3")));
    assert!(!p.decide(Protocol::Esp, None, from("172.31.4.4")));
    assert!(p.decide(Protocol::Udp, Some(32767), from("192.0.2.1")));
    assert!(!p.decide(Protocol::Tcp, Some(12345), from("10.0.0.2")));
}

#[test]
fn node_port_range_overlap_and_bad_addresses_are_named() {
    let mut f = facts(Role::Master);
    f.network.node_port_range = "6000-7000".into();
    let e = PortPolicy::new(f).unwrap_err().to_string();
    assert!(
        e.contains("network.node_port_range 6000-7000 contains 6443/tcp (kube-apiserver)"),
        "{e}"
    );

    let cfg = NodeConfig::parse(
            "n",
            "version: 1\nrole: worker\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\n  masters: [master-1.example]\n",
        )
        .unwrap();
    let e = PortPolicy::for_node(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("cluster.masters[0]: expected an IP address or CIDR, found `master-1.example`"),
        "{e}"
    );
}

#[test]
fn from_node_config() {
    let cfg = NodeConfig::parse(
            "n",
            "version: 1\nrole: master\nprivate_address: 10.1.0.5\ncluster:\n  name: demo\n  api_endpoint: 10.1.0.5\n  masters: [10.1.0.5]\n  nodes: [10.1.0.0/24]\n  network:\n    etcd_localhost_only: true\n",
        )
        .unwrap();
    let p = PortPolicy::for_node(&cfg).unwrap();
    assert_eq!(p.role, Role::Master);
    assert_eq!(p.facts().node_address, Some("10.1.0.5".parse().unwrap()));
    assert_eq!(
        p.etcd_listen_client_urls().unwrap(),
        vec!["https://127.0.0.1:2379"]
    );
}

/// `network.provider: flannel` opens flannel's VXLAN port to cluster nodes and none of
/// Weave Net's; the default (weave) the other way round.
#[test]
fn the_pod_network_provider_picks_its_ports() {
    use crate::config::CniProvider;
    for role in [Role::Master, Role::Worker] {
        let weave = PortPolicy::new(facts(role)).unwrap();
        let mut f = facts(role);
        f.network.provider = CniProvider::Flannel;
        let flannel = PortPolicy::new(f).unwrap();
        let is_weave = |s: Service| format!("{s:?}").starts_with("Weave");
        assert!(services(&weave).iter().any(|(s, _)| is_weave(*s)));
        assert!(!services(&weave)
            .iter()
            .any(|(s, _)| *s == Service::FlannelVxlan));
        assert!(
            !services(&flannel).iter().any(|(s, _)| is_weave(*s)),
            "{role:?}"
        );
        let vxlan: Vec<_> = flannel
            .rules
            .iter()
            .filter(|r| r.row.service == Service::FlannelVxlan)
            .collect();
        assert_eq!(vxlan.len(), 1, "{role:?}");
        assert_eq!(vxlan[0].sources, Sources::Set(SourceSet::ClusterNodes));
        assert_eq!(
            vxlan[0].ports,
            Some(PortRange {
                first: 8472,
                last: 8472
            })
        );
    }
}

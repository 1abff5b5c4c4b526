//! The real firewall, in network namespaces.
//!
//! A "node" namespace gets the rendered ruleset (master role, then worker role) and a
//! listener on every port of the table (TCP accept, UDP echo, raw ESP echo). Probe
//! namespaces "master", "worker" (cluster nodes), "trusted" (inside
//! `network.trusted_subnets`, not a cluster node) and "outside" try every port over
//! IPv4 and IPv6; the node itself tries them over loopback. The observed reachability
//! matrix must equal what the port table says ([`PortPolicy::decide`]) and a few
//! hand-written expectations.
//!
//! Everything lives in namespaces created here (10.99.0.0/24, 10.98.0.0/24, fd99::/64,
//! fd98::/64 exist only inside them) and is removed by a Drop guard, also on failure.
//! Needs root, `ip` and `nft`; without them the test prints SKIP and passes, except under
//! CI (`CI=true`), where it fails naming what is missing.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeimage_core::config::NodeConfig;
use nodeimage_core::firewall;
use nodeimage_core::ports::{Activation, Peer, PortPolicy, PortSpec, Protocol, PORT_TABLE};

const TCP_TIMEOUT: Duration = Duration::from_millis(300);
const UDP_TIMEOUT: Duration = Duration::from_millis(200);
const UDP_TRIES: usize = 2;
const NOT_IN_TABLE: u16 = 12345;

// ---------------------------------------------------------------- environment

/// Root (network namespaces, nftables), `ip` and `nft`.
fn environment_ready(test: &str) -> bool {
    test_support::Needs::new(test)
        .root()
        .tool("ip", "iproute2")
        .tool("nft", "nftables")
        .met()
}

fn ip(args: &[&str]) {
    test_support::cmd::stdout_ok(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args),
    );
}

/// Namespaces created by this test; deleted on drop (also when a probe panics).
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: &str) -> String {
        // A namespace of a killed earlier run with the same pid would block the name.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        self.names.push(name.to_string());
        name.to_string()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Move the calling thread into a named network namespace. Sockets created by this
/// thread (and threads it spawns, and processes it starts) live in that namespace.
fn enter(ns: &str) {
    let f =
        File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    // SAFETY: a valid namespace fd; CLONE_NEWNET only affects this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Run `f` on a fresh thread inside `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    })
}

// ---------------------------------------------------------------- raw ESP sockets

fn esp_socket(v6: bool) -> std::io::Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ESP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn to_sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match ip {
        IpAddr::V4(a) => {
            let sin = &mut ss as *mut _ as *mut libc::sockaddr_in;
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            unsafe {
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_addr.s_addr = u32::from(a).to_be();
            }
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        IpAddr::V6(a) => {
            let sin6 = &mut ss as *mut _ as *mut libc::sockaddr_in6;
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_addr.s6_addr = a.octets();
            }
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: family says sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(IpAddr::V4(u32::from_be(sin.sin_addr.s_addr).into()))
        }
        libc::AF_INET6 => {
            // SAFETY: family says sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(sin6.sin6_addr.s6_addr.into()))
        }
        _ => None,
    }
}

fn esp_send(fd: &OwnedFd, to: IpAddr, payload: &[u8]) -> std::io::Result<()> {
    let (ss, len) = to_sockaddr(to);
    // SAFETY: valid fd, buffer and sockaddr of the given length.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One ESP packet (payload only: the IPv4 header a raw v4 socket sees is stripped).
fn esp_recv(fd: &OwnedFd, v6: bool, flags: i32) -> Option<(Vec<u8>, IpAddr)> {
    let mut buf = [0u8; 2048];
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and sockaddr storage.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
            &mut ss as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n <= 0 {
        return None;
    }
    let data = &buf[..n as usize];
    let payload = if v6 {
        data.to_vec()
    } else {
        let ihl = usize::from(data.first()? & 0x0f) * 4;
        data.get(ihl..)?.to_vec()
    };
    Some((payload, from_sockaddr(&ss)?))
}

fn set_rcv_timeout(fd: &OwnedFd, t: Duration) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: t.as_micros() as libc::suseconds_t,
    };
    // SAFETY: valid fd and a timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

// ---------------------------------------------------------------- listeners

/// Listeners in the node namespace, served by one polling thread until dropped.
struct Listeners {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const ECHO: &[u8] = b"echo:";

fn start_listeners(ns: &str, probes: &[ProbePort]) -> Listeners {
    let (tcp, udp, esp) = in_netns(ns, || {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for p in probes {
            match p.protocol {
                Protocol::Tcp => {
                    let l = TcpListener::bind(("::", p.port))
                        .unwrap_or_else(|e| panic!("bind tcp {}: {e}", p.port));
                    l.set_nonblocking(true).unwrap();
                    tcp.push(l);
                }
                Protocol::Udp => {
                    let s = UdpSocket::bind(("::", p.port))
                        .unwrap_or_else(|e| panic!("bind udp {}: {e}", p.port));
                    s.set_nonblocking(true).unwrap();
                    udp.push(s);
                }
                Protocol::Esp => {}
            }
        }
        let esp = [false, true].map(|v6| esp_socket(v6).expect("raw ESP socket"));
        (tcp, udp, esp)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stop2.load(Ordering::SeqCst) {
            let mut busy = false;
            for l in &tcp {
                while let Ok((mut s, _)) = l.accept() {
                    busy = true;
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
                    let _ = s.read(&mut buf);
                }
            }
            for s in &udp {
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    busy = true;
                    if !buf[..n].starts_with(ECHO) {
                        let reply = [ECHO, &buf[..n]].concat();
                        let _ = s.send_to(&reply, from);
                    }
                }
            }
            for (i, fd) in esp.iter().enumerate() {
                while let Some((payload, from)) = esp_recv(fd, i == 1, libc::MSG_DONTWAIT) {
                    busy = true;
                    if !payload.starts_with(ECHO) {
                        let _ = esp_send(fd, from, &[ECHO, &payload].concat());
                    }
                }
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    Listeners {
        stop,
        thread: Some(thread),
    }
}

// ---------------------------------------------------------------- probes

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ProbePort {
    protocol: Protocol,
    /// 0 for ESP.
    port: u16,
    service: String,
}

impl ProbePort {
    fn label(&self) -> String {
        match self.protocol {
            Protocol::Esp => "esp".into(),
            p => format!("{p}/{}", self.port),
        }
    }
    fn port_opt(&self) -> Option<u16> {
        (self.protocol != Protocol::Esp).then_some(self.port)
    }
}

/// Every port of the table (active rows of any role, options too, NodePort range by its
/// first and last port) plus one port that is in no row.
fn probe_ports() -> Vec<ProbePort> {
    let mut set = BTreeSet::new();
    for r in PORT_TABLE {
        let ports: Vec<u16> = match r.port {
            PortSpec::None => vec![0],
            PortSpec::Port(p) => vec![p],
            PortSpec::NodePortRange => vec![30000, 32767],
        };
        let service = match r.activation {
            Activation::Default => r.service.name().to_string(),
            Activation::Option(o) => format!("{} (option: {o})", r.service.name()),
        };
        for port in ports {
            if !set
                .iter()
                .any(|p: &ProbePort| p.protocol == r.protocol && p.port == port)
            {
                set.insert(ProbePort {
                    protocol: r.protocol,
                    port,
                    service: service.clone(),
                });
            }
        }
    }
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        set.insert(ProbePort {
            protocol,
            port: NOT_IN_TABLE,
            service: "(not in the table)".into(),
        });
    }
    let mut v: Vec<ProbePort> = set.into_iter().collect();
    v.sort_by_key(|p| (p.protocol != Protocol::Tcp, p.protocol, p.port));
    v
}

fn probe(p: &ProbePort, target: IpAddr, nonce: &str) -> bool {
    match p.protocol {
        Protocol::Tcp => {
            TcpStream::connect_timeout(&SocketAddr::new(target, p.port), TCP_TIMEOUT).is_ok()
        }
        Protocol::Udp => {
            let bind: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .unwrap();
            let s = UdpSocket::bind(bind).expect("probe socket");
            s.set_read_timeout(Some(UDP_TIMEOUT)).unwrap();
            let want = [ECHO, nonce.as_bytes()].concat();
            let mut buf = [0u8; 1500];
            for _ in 0..UDP_TRIES {
                if s.send_to(nonce.as_bytes(), (target, p.port)).is_err() {
                    return false;
                }
                let deadline = Instant::now() + UDP_TIMEOUT;
                while Instant::now() < deadline {
                    match s.recv_from(&mut buf) {
                        Ok((n, _)) if buf[..n] == want[..] => return true,
                        Ok(_) => continue,
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            break
                        }
                        Err(_) => break,
                    }
                }
            }
            false
        }
        Protocol::Esp => {
            let v6 = target.is_ipv6();
            let fd = esp_socket(v6).expect("raw ESP socket");
            set_rcv_timeout(&fd, UDP_TIMEOUT);
            // An ESP header needs SPI and sequence number; the nonce fills them.
            let payload = format!("SPIxSEQx{nonce}");
            let want = [ECHO, payload.as_bytes()].concat();
            for _ in 0..UDP_TRIES {
                if esp_send(&fd, target, payload.as_bytes()).is_err() {
                    return false;
                }
                let deadline = Instant::now() + UDP_TIMEOUT;
                while Instant::now() < deadline {
                    match esp_recv(&fd, v6, 0) {
                        Some((data, _)) if data == want => return true,
                        Some(_) => continue,
                        None => break,
                    }
                }
            }
            false
        }
    }
}

// ---------------------------------------------------------------- topology

struct PeerNs {
    label: &'static str,
    ns: String,
    v4: IpAddr,
    v6: IpAddr,
}

const NODE_V4: &str = "10.99.0.1";
const NODE_V6: &str = "fd99::1";

struct Lab {
    node: String,
    peers: Vec<PeerNs>,
    _guard: Namespaces,
}

/// A namespace `label` with `eth0` on the switch's bridge, addresses `v4`/24 and `v6`/64
/// and on-link `routes`.
fn attach(
    g: &mut Namespaces,
    sw: &str,
    label: &str,
    v4: &str,
    v6: &str,
    routes: &[&str],
) -> String {
    let pid = std::process::id();
    let ns = g.add(&format!("nifw{pid}-{label}"));
    let port = format!("v-{label}");
    ip(&[
        "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ]);
    ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    for r in routes {
        ip(&["-n", &ns, "route", "add", r, "dev", "eth0"]);
    }
    ns
}

/// The switch: a namespace holding bridge `br0` (`tag` tells apart the tests running at
/// once in this process).
fn switch(g: &mut Namespaces, tag: &str) -> String {
    let sw = g.add(&format!("nifw{}-{tag}", std::process::id()));
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &sw, "link", "set", "br0", "up"]);
    sw
}

fn build_lab() -> Lab {
    let mut g = Namespaces { names: Vec::new() };
    let sw = switch(&mut g, "sw");
    let mut attach = |label: &str, v4: &str, v6: &str, routes: &[&str]| {
        attach(&mut g, &sw, label, v4, v6, routes)
    };
    // The node reaches the trusted subnet on the same link (on-link routes).
    let node = attach("node", NODE_V4, NODE_V6, &["10.98.0.0/24", "fd98::/64"]);
    let mut peers = Vec::new();
    for (label, v4, v6, routes) in [
        ("master", "10.99.0.2", "fd99::2", &[][..]),
        ("worker", "10.99.0.3", "fd99::3", &[][..]),
        (
            "trusted",
            "10.98.0.5",
            "fd98::5",
            &["10.99.0.0/24", "fd99::/64"][..],
        ),
        ("outside", "10.99.0.100", "fd99::100", &[][..]),
    ] {
        let ns = attach(label, v4, v6, routes);
        peers.push(PeerNs {
            label,
            ns,
            v4: v4.parse().unwrap(),
            v6: v6.parse().unwrap(),
        });
    }
    Lab {
        node,
        peers,
        _guard: g,
    }
}

/// The node config the node namespace plays: `role`, in a cluster of the probe peers.
fn node_config(role: &str) -> NodeConfig {
    let (masters, nodes) = match role {
        "master" => (
            "[10.99.0.1, 10.99.0.2, fd99::1, fd99::2]",
            "[10.99.0.3, fd99::3]",
        ),
        _ => (
            "[10.99.0.2, fd99::2]",
            "[10.99.0.1, 10.99.0.3, fd99::1, fd99::3]",
        ),
    };
    let yaml = format!(
        "version: 1
role: {role}
private_address: {NODE_V4}
labels:
  ingress: \"yes\"
cluster:
  name: lab
  api_endpoint: 10.99.0.2
  masters: {masters}
  nodes: {nodes}
  network:
    trusted_subnets: [10.98.0.0/24, \"fd98::/64\"]
  addons:
    ingress-nginx:
      enabled: true
      node_selector:
        ingress: \"yes\"
"
    );
    NodeConfig::parse("lab.yaml", &yaml).expect("lab node config")
}

// ---------------------------------------------------------------- the test

/// Observed cell per (port, column): (IPv4, IPv6).
type Matrix = Vec<Vec<(bool, bool)>>;

fn run_probes(lab: &Lab, ports: &[ProbePort]) -> Matrix {
    let lo4: IpAddr = "127.0.0.1".parse().unwrap();
    let lo6: IpAddr = "::1".parse().unwrap();
    let node4: IpAddr = NODE_V4.parse().unwrap();
    let node6: IpAddr = NODE_V6.parse().unwrap();
    // Columns: every peer, then the node itself over loopback.
    let mut columns: Vec<(&str, IpAddr, IpAddr)> = lab
        .peers
        .iter()
        .map(|p| (p.ns.as_str(), node4, node6))
        .collect();
    columns.push((lab.node.as_str(), lo4, lo6));

    std::thread::scope(|s| {
        let handles: Vec<_> = columns
            .iter()
            .enumerate()
            .map(|(ci, (ns, t4, t6))| {
                let (ns, t4, t6) = (*ns, *t4, *t6);
                s.spawn(move || {
                    enter(ns);
                    // Warm up neighbour caches (ARP/ND) so the first probe is not lost.
                    for t in [t4, t6] {
                        let _ = TcpStream::connect_timeout(
                            &SocketAddr::new(t, 22),
                            Duration::from_secs(1),
                        );
                    }
                    // Threads spawned here inherit the namespace.
                    std::thread::scope(|s2| {
                        let hs: Vec<_> = ports
                            .iter()
                            .enumerate()
                            .map(|(pi, p)| {
                                s2.spawn(move || {
                                    let a = probe(p, t4, &format!("c{ci}p{pi}v4"));
                                    let b = probe(p, t6, &format!("c{ci}p{pi}v6"));
                                    (a, b)
                                })
                            })
                            .collect();
                        hs.into_iter()
                            .map(|h| h.join().expect("probe"))
                            .collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        let by_column: Vec<Vec<(bool, bool)>> = handles
            .into_iter()
            .map(|h| h.join().expect("column"))
            .collect();
        (0..ports.len())
            .map(|pi| by_column.iter().map(|c| c[pi]).collect())
            .collect()
    })
}

fn render(title: &str, ports: &[ProbePort], headers: &[&str], m: &Matrix) -> String {
    let mut s = format!("{title}\n  (cell = IPv4 IPv6; + reached, - blocked; lo = from the node itself via 127.0.0.1 / ::1)\n");
    s += &format!("  {:<11} {:<38}", "port", "service");
    for h in headers {
        s += &format!(" {h:>8}");
    }
    s += "\n";
    for (pi, p) in ports.iter().enumerate() {
        s += &format!("  {:<11} {:<38}", p.label(), p.service);
        for (a, b) in &m[pi] {
            let c = |x: &bool| if *x { '+' } else { '-' };
            s += &format!(" {:>8}", format!("{} {}", c(a), c(b)));
        }
        s += "\n";
    }
    s
}

fn cell<'a>(
    ports: &[ProbePort],
    headers: &[&str],
    m: &'a Matrix,
    label: &str,
    col: &str,
) -> &'a (bool, bool) {
    let pi = ports
        .iter()
        .position(|p| p.label() == label)
        .unwrap_or_else(|| panic!("no probe {label}"));
    let ci = headers
        .iter()
        .position(|h| *h == col)
        .unwrap_or_else(|| panic!("no column {col}"));
    &m[pi][ci]
}

#[test]
fn firewall_reachability_matrix_in_namespaces() {
    if !environment_ready("firewall_reachability_matrix_in_namespaces") {
        return;
    }
    let started = Instant::now();
    let lab = build_lab();
    let ports = probe_ports();
    let _listeners = start_listeners(&lab.node, &ports);
    let nft: PathBuf = firewall::nft_binary();
    let mut headers: Vec<&str> = lab.peers.iter().map(|p| p.label).collect();
    headers.push("lo");

    // Control: without a ruleset every peer reaches every listener, so each `-` below
    // is the firewall's doing, not the topology's.
    let open = run_probes(&lab, &ports);
    let unreachable: Vec<String> = ports
        .iter()
        .enumerate()
        .flat_map(|(pi, p)| {
            let open = &open;
            headers
                .iter()
                .enumerate()
                .filter(move |(ci, _)| open[pi][*ci] != (true, true))
                .map(move |(_, h)| format!("{} from {h}", p.label()))
        })
        .collect();
    assert!(
        unreachable.is_empty(),
        "without a firewall these failed: {unreachable:?}"
    );

    let mut failures = Vec::new();
    for (role, json) in [("master", false), ("worker", true)] {
        let policy = PortPolicy::for_node(&node_config(role)).expect("policy");
        // The master loads the text form, the worker the JSON form: both are real.
        let ruleset = if json {
            firewall::render_json(&policy)
        } else {
            firewall::render_nft(&policy)
        };
        in_netns(&lab.node, || {
            firewall::apply(&ruleset, &nft).expect("load ruleset");
            // Idempotent: loading the same ruleset again replaces the table.
            firewall::apply(&ruleset, &nft).expect("reload ruleset");
        });

        let t = Instant::now();
        let m = run_probes(&lab, &ports);
        let title = format!(
            "reachability, {role} node ({} ruleset, probed in {} ms)",
            if json { "JSON" } else { "text" },
            t.elapsed().as_millis()
        );
        let table = render(&title, &ports, &headers, &m);
        println!("{table}");

        // Expected: the port table's own model, per peer and family.
        for (pi, p) in ports.iter().enumerate() {
            for (ci, h) in headers.iter().enumerate() {
                let (peer4, peer6) = match lab.peers.get(ci) {
                    Some(peer) => (
                        Peer::Remote {
                            addr: peer.v4,
                            ipsec: false,
                        },
                        Peer::Remote {
                            addr: peer.v6,
                            ipsec: false,
                        },
                    ),
                    None => (Peer::Loopback, Peer::Loopback),
                };
                let want = (
                    policy.decide(p.protocol, p.port_opt(), peer4),
                    policy.decide(p.protocol, p.port_opt(), peer6),
                );
                if m[pi][ci] != want {
                    failures.push(format!(
                        "{role}: {} ({}) from {h}: observed {:?}, the table says {:?}",
                        p.label(),
                        p.service,
                        m[pi][ci],
                        want
                    ));
                }
            }
        }

        // Hand-written expectations, independent of the model.
        let c = |label: &str, col: &str| *cell(&ports, &headers, &m, label, col);
        let yes = (true, true);
        let no = (false, false);
        let mut expect = |label: &str, col: &str, want: (bool, bool)| {
            if c(label, col) != want {
                failures.push(format!(
                    "{role}: {label} from {col}: expected {want:?}, observed {:?}",
                    c(label, col)
                ));
            }
        };
        expect("tcp/22", "outside", yes);
        expect(&format!("tcp/{NOT_IN_TABLE}"), "master", no);
        expect(&format!("udp/{NOT_IN_TABLE}"), "worker", no);
        expect("tcp/10248", "master", no);
        expect("tcp/10248", "lo", yes);
        expect("tcp/10255", "master", no);
        expect("tcp/6784", "trusted", no);
        expect("udp/6784", "trusted", yes);
        expect("udp/6784", "master", no);
        expect("udp/6783", "worker", yes);
        expect("udp/6783", "trusted", no);
        expect("esp", "worker", yes);
        expect("esp", "outside", no);
        expect("tcp/30000", "outside", yes);
        expect("udp/32767", "outside", yes);
        expect("tcp/10250", "master", yes);
        expect("tcp/10250", "worker", no);
        expect("tcp/6782", "worker", yes);
        expect("tcp/6782", "outside", no);
        expect("udp/8472", "worker", no);
        if role == "master" {
            expect("tcp/6443", "outside", yes);
            expect("tcp/2379", "master", yes);
            expect("tcp/2380", "master", yes);
            expect("tcp/2379", "worker", no);
            expect("tcp/2379", "outside", no);
            expect("tcp/10259", "master", no);
            expect("tcp/10259", "lo", yes);
            // Tainted master: no ingress even though the labels match.
            expect("tcp/80", "outside", no);
            expect("tcp/18080", "worker", no);
        } else {
            expect("tcp/6443", "outside", no);
            expect("tcp/2379", "master", no);
            expect("tcp/80", "outside", yes);
            expect("tcp/443", "trusted", yes);
            expect("tcp/18080", "worker", yes);
            expect("tcp/18080", "outside", no);
        }
    }
    println!("matrix test done in {} ms", started.elapsed().as_millis());
    assert!(
        failures.is_empty(),
        "reachability differs from the port table:\n{}",
        failures.join("\n")
    );
}

/// The text and JSON renderings load to the same kernel ruleset.
#[test]
fn text_and_json_load_to_the_same_ruleset() {
    if !environment_ready("text_and_json_load_to_the_same_ruleset") {
        return;
    }
    let pid = std::process::id();
    let mut g = Namespaces { names: Vec::new() };
    let a = g.add(&format!("nifw{pid}-txt"));
    let b = g.add(&format!("nifw{pid}-json"));
    let nft = firewall::nft_binary();
    for role in ["master", "worker"] {
        let policy = PortPolicy::for_node(&node_config(role)).unwrap();
        let list = |ns: &str, ruleset: String| {
            in_netns(ns, || {
                firewall::apply(&ruleset, &nft).expect("load");
                let out = Command::new(&nft)
                    .args([
                        "list",
                        "table",
                        firewall::TABLE_FAMILY,
                        firewall::TABLE_NAME,
                    ])
                    .output()
                    .expect("nft list");
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
        };
        let from_text = list(&a, firewall::render_nft(&policy));
        let from_json = list(&b, firewall::render_json(&policy));
        assert!(from_text.contains("chain input"), "{from_text}");
        assert_eq!(
            from_text, from_json,
            "{role}: text and JSON rulesets differ once loaded"
        );
    }
}

/// Pods on the node reach neither the cloud metadata service nor the node-only ports of
/// the cluster's nodes, while the rest of the pod network passes.
///
/// A "pod" namespace behind the "node" namespace (its default gateway; the node forwards
/// and masquerades pod traffic like the pod network does: a stand-in nft NAT rule, named
/// as one) probes: a "meta" namespace answering on 169.254.169.254:80 (the metadata
/// service), a cluster node "peer" with a listener on every port of the table and no
/// firewall of its own, a host "outside" the cluster, and the node itself. Before the
/// node's ruleset is loaded every probe must pass (so each block below is the
/// firewall's); with it: metadata blocked from the pod but reached by the node; on the
/// peer exactly the ports some row opens to anyone; on the node what the port table
/// admits from a pod address (none of the cluster-only ports). IPv4; the forward rules
/// of both families are the same shape.
#[test]
fn pods_reach_neither_the_metadata_service_nor_node_only_ports() {
    if !environment_ready("pods_reach_neither_the_metadata_service_nor_node_only_ports") {
        return;
    }
    let pid = std::process::id();
    let mut g = Namespaces { names: Vec::new() };
    let sw = switch(&mut g, "fsw");
    let node = attach(&mut g, &sw, "fnode", NODE_V4, NODE_V6, &[]);
    let peer = attach(&mut g, &sw, "fpeer", "10.99.0.3", "fd99::3", &[]);
    let outside = attach(&mut g, &sw, "fout", "10.99.0.100", "fd99::100", &[]);
    let meta = attach(&mut g, &sw, "fmeta", "10.99.0.50", "fd99::50", &[]);
    ip(&[
        "-n",
        &meta,
        "addr",
        "add",
        "169.254.169.254/32",
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &node,
        "route",
        "add",
        "169.254.169.254/32",
        "via",
        "10.99.0.50",
    ]);
    // The pod: 10.32.0.2 in the default pod network 10.32.0.0/12, gateway the node.
    let pod = g.add(&format!("nifw{pid}-fpod"));
    ip(&[
        "-n", &node, "link", "add", "cni0", "type", "veth", "peer", "name", "eth0", "netns", &pod,
    ]);
    ip(&["-n", &node, "addr", "add", "10.32.0.1/12", "dev", "cni0"]);
    ip(&["-n", &node, "link", "set", "cni0", "up"]);
    ip(&["-n", &pod, "link", "set", "lo", "up"]);
    ip(&["-n", &pod, "addr", "add", "10.32.0.2/12", "dev", "eth0"]);
    ip(&["-n", &pod, "link", "set", "eth0", "up"]);
    ip(&["-n", &pod, "route", "add", "default", "via", "10.32.0.1"]);
    let nft = firewall::nft_binary();
    in_netns(&node, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward in the node");
        // Stand-in for the pod network's masquerade (flannel and Weave both masquerade
        // pod traffic leaving the pod network), in a table of its own.
        for cmd in [
            "add table ip podnat",
            "add chain ip podnat post { type nat hook postrouting priority srcnat; }",
            "add rule ip podnat post ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade",
        ] {
            test_support::cmd::stdout_ok(
                &format!("nft {cmd} (stand-in masquerade)"),
                Command::new(&nft).arg(cmd),
            );
        }
    });

    let ports = probe_ports();
    let _peer_listeners = start_listeners(&peer, &ports);
    let _node_listeners = start_listeners(&node, &ports);
    let web = |n: u16| ProbePort {
        protocol: Protocol::Tcp,
        port: n,
        service: "web".into(),
    };
    let _meta_listener = start_listeners(&meta, &[web(80)]);
    let _outside_listener = start_listeners(&outside, &[web(8080)]);
    let metadata: IpAddr = "169.254.169.254".parse().unwrap();
    let peer_ip: IpAddr = "10.99.0.3".parse().unwrap();
    let node_ip: IpAddr = NODE_V4.parse().unwrap();
    let outside_ip: IpAddr = "10.99.0.100".parse().unwrap();

    // (what, from namespace, port, target)
    type Probe<'a> = (String, &'a str, ProbePort, IpAddr);
    let mut probes: Vec<Probe> = vec![
        ("pod -> metadata".into(), &pod, web(80), metadata),
        ("node -> metadata".into(), &node, web(80), metadata),
        ("pod -> outside".into(), &pod, web(8080), outside_ip),
    ];
    for p in &ports {
        probes.push((
            format!("pod -> peer {}", p.label()),
            &pod,
            p.clone(),
            peer_ip,
        ));
        probes.push((
            format!("pod -> node {}", p.label()),
            &pod,
            p.clone(),
            node_ip,
        ));
    }
    let run_all = |probes: &[Probe]| -> Vec<bool> {
        std::thread::scope(|s| {
            let hs: Vec<_> = probes
                .iter()
                .enumerate()
                .map(|(i, (_, ns, p, t))| {
                    s.spawn(move || {
                        enter(ns);
                        probe(p, *t, &format!("f{i}"))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("probe")).collect()
        })
    };
    // Warm up neighbour caches along every path.
    let _ = run_all(&probes[..3]);
    let open = run_all(&probes);
    let blocked: Vec<&str> = probes
        .iter()
        .zip(&open)
        .filter(|(_, ok)| !**ok)
        .map(|(p, _)| p.0.as_str())
        .collect();
    assert!(
        blocked.is_empty(),
        "without a firewall these failed: {blocked:?}"
    );

    let policy = PortPolicy::for_node(&node_config("master")).expect("policy");
    let ruleset = firewall::render_nft(&policy);
    in_netns(&node, || {
        firewall::apply(&ruleset, &nft).expect("load ruleset")
    });
    let seen = run_all(&probes);
    let anyone: BTreeSet<(Protocol, u16)> = PORT_TABLE
        .iter()
        .filter(|r| r.reach == nodeimage_core::ports::Reach::Anyone)
        .flat_map(|r| match r.port {
            PortSpec::Port(p) => vec![(r.protocol, p)],
            PortSpec::NodePortRange => vec![(r.protocol, 30000), (r.protocol, 32767)],
            PortSpec::None => vec![],
        })
        .collect();
    let pod_peer = Peer::Remote {
        addr: "10.32.0.2".parse().unwrap(),
        ipsec: false,
    };
    let mut failures = Vec::new();
    let mut report = String::from("pod reachability with the master ruleset on the node:\n");
    for ((what, _, p, _), got) in probes.iter().zip(&seen) {
        let want = if what == "pod -> metadata" {
            false
        } else if what == "node -> metadata" || what == "pod -> outside" {
            true
        } else if what.starts_with("pod -> peer") {
            // The forward chain closes the table's node-only ports; a port in no row is
            // left to the destination's own input chain.
            anyone.contains(&(p.protocol, p.port)) || p.port == NOT_IN_TABLE
        } else {
            policy.decide(p.protocol, p.port_opt(), pod_peer)
        };
        report += &format!(
            "  {what:<28} {}\n",
            if *got { "reached" } else { "blocked" }
        );
        if *got != want {
            failures.push(format!(
                "{what} ({}): reached {got}, expected {want}",
                p.service
            ));
        }
    }
    println!("{report}");
    // The model itself must close the cluster-only ports to pods.
    for port in [6782, 10250, 10256, 2379] {
        assert!(
            !policy.decide(Protocol::Tcp, Some(port), pod_peer),
            "the port table admits a pod to tcp/{port}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The closed ruleset the firewall unit loads first (overlays/base) is valid, keeps SSH
/// open and closes everything else.
#[test]
fn the_closed_ruleset_admits_only_ssh() {
    if !environment_ready("the_closed_ruleset_admits_only_ssh") {
        return;
    }
    let closed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../overlays/base/usr/lib/nodeimage/firewall-closed.nft"),
    )
    .expect("overlays/base/usr/lib/nodeimage/firewall-closed.nft");
    let mut g = Namespaces { names: Vec::new() };
    let sw = switch(&mut g, "csw");
    let node = attach(&mut g, &sw, "cnode", NODE_V4, NODE_V6, &[]);
    let peer = attach(&mut g, &sw, "cpeer", "10.99.0.2", "fd99::2", &[]);
    let ports: Vec<ProbePort> = [22u16, 6443, 10250]
        .iter()
        .map(|&port| ProbePort {
            protocol: Protocol::Tcp,
            port,
            service: "probe".into(),
        })
        .collect();
    let _l = start_listeners(&node, &ports);
    let nft = firewall::nft_binary();
    in_netns(&node, || {
        firewall::apply(&closed, &nft).expect("load the closed ruleset")
    });
    let target: IpAddr = NODE_V4.parse().unwrap();
    let seen: Vec<bool> = in_netns(&peer, || {
        ports.iter().map(|p| probe(p, target, "c")).collect()
    });
    assert_eq!(seen, [true, false, false], "22, 6443, 10250 from a peer");
}

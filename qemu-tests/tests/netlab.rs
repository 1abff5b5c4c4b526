//! The lab network the multi-node tests use: a bridge in a network namespace with
//! dnsmasq, reachable from the test. Checks that dnsmasq answers DNS for the lab's hosts
//! (and nothing else: the lab has no upstream), hands out the fixed address of a known
//! MAC over DHCP (busybox's udhcpc on a veth in a second namespace stands in for a VM's
//! DHCP client), and that taps attach to the bridge.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use qemu_tests::netlab::{quiet, LabHost, NetLab};
use qemu_tests::run;

/// A DNS query for `name` type A; returns the addresses in the answer section.
fn resolve_a(server: Ipv4Addr, name: &str) -> Vec<Ipv4Addr> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.send_to(&q, (server, 53)).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a DNS answer");
    let r = &buf[..n];
    let answers = u16::from_be_bytes([r[6], r[7]]) as usize;
    // Skip the question (same bytes as ours), then read each answer's A record.
    let mut at = q.len();
    let mut out = Vec::new();
    for _ in 0..answers {
        at += 2; // name (a compression pointer)
        let rtype = u16::from_be_bytes([r[at], r[at + 1]]);
        let rdlen = u16::from_be_bytes([r[at + 8], r[at + 9]]) as usize;
        at += 10;
        if rtype == 1 && rdlen == 4 {
            out.push(Ipv4Addr::new(r[at], r[at + 1], r[at + 2], r[at + 3]));
        }
        at += rdlen;
    }
    out
}

#[test]
fn lab_network_serves_dhcp_and_dns_for_its_hosts() {
    if !test_support::Needs::new("lab network")
        .root()
        .tool("ip", "iproute2")
        .tool("dnsmasq", "dnsmasq-base")
        .tool("busybox", "busybox-static")
        .met()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = LabHost {
        mac: "52:54:00:aa:00:07".into(),
        ip: Ipv4Addr::new(10, 231, 7, 11),
        hostname: "node-a".into(),
    };
    let lab = NetLab::start(
        "t7",
        [10, 231, 7],
        std::slice::from_ref(&host),
        dir.path().join("lab"),
    )
    .unwrap();

    // DNS: the lab's names resolve, nothing else does (no upstream).
    assert_eq!(resolve_a(lab.gateway(), "node-a.lab"), vec![host.ip]);
    assert!(resolve_a(lab.gateway(), "example.com").is_empty());

    // A tap attaches to the bridge.
    let tap = lab.tap("t7vm").unwrap();
    let links =
        run(Command::new("ip").args(["-n", &lab.ns, "link", "show", "master", "br0"])).unwrap();
    assert!(links.contains(&tap), "{links}");

    // DHCP: a client with the host's MAC gets its fixed address, the router and the DNS
    // server. The client is busybox udhcpc on a veth in a namespace of its own.
    let client_ns = "ni-t7c";
    quiet(Command::new("ip").args(["netns", "del", client_ns]));
    run(Command::new("ip").args(["netns", "add", client_ns])).unwrap();
    let cleanup = scopeguard(client_ns);
    run(Command::new("ip").args([
        "-n", &lab.ns, "link", "add", "t7c-b", "type", "veth", "peer", "name", "eth0", "netns",
        client_ns,
    ]))
    .unwrap();
    run(Command::new("ip").args(["-n", &lab.ns, "link", "set", "t7c-b", "master", "br0", "up"]))
        .unwrap();
    run(Command::new("ip").args([
        "-n", client_ns, "link", "set", "eth0", "address", &host.mac, "up",
    ]))
    .unwrap();
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n[ \"$1\" = bound ] && echo \"ip=$ip router=$router dns=$dns\" > {}\nexit 0\n", dir.path().join("lease").display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    run(Command::new("ip")
        .args([
            "netns", "exec", client_ns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "5",
            "-s",
        ])
        .arg(&script))
    .unwrap();
    let lease = std::fs::read_to_string(dir.path().join("lease")).unwrap();
    assert_eq!(
        lease.trim(),
        format!(
            "ip={} router={} dns={}",
            host.ip,
            lab.gateway(),
            lab.gateway()
        ),
        "DHCP log:\n{}",
        lab.dhcp_log()
    );
    drop(cleanup);
}

struct NsGuard(&'static str);
impl Drop for NsGuard {
    fn drop(&mut self) {
        quiet(Command::new("ip").args(["netns", "del", self.0]));
    }
}
fn scopeguard(ns: &'static str) -> NsGuard {
    NsGuard(ns)
}

//! The ports of this node's role (from the port table): free, or held by the process
//! they are meant for.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::report::{read, Check, CheckResult};
use nodeimage_core::files::rooted;
use nodeimage_core::ports::{PortPolicy, Protocol, Service};

/// A socket bound to a local port, from `/proc/net/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundSocket {
    pub protocol: Protocol,
    pub port: u16,
    pub inode: u64,
}

/// Listening TCP sockets and bound UDP sockets of `<root>/proc/net/{tcp,tcp6,udp,udp6}`.
pub fn bound_sockets(root: &Path) -> Vec<BoundSocket> {
    let mut out = Vec::new();
    for (file, protocol) in [
        ("tcp", Protocol::Tcp),
        ("tcp6", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("udp6", Protocol::Udp),
    ] {
        let Ok(text) = read(root, &format!("/proc/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            // TCP: only LISTEN (0A) holds a port for a server; UDP: every bound socket.
            if protocol == Protocol::Tcp && *state != "0A" {
                continue;
            }
            let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            out.push(BoundSocket {
                protocol,
                port,
                inode: inode.parse().unwrap_or(0),
            });
        }
    }
    out
}

/// Socket inode → "comm (pid N)", from `<root>/proc/<pid>/fd/*` links `socket:[inode]`.
fn socket_owners(root: &Path) -> BTreeMap<u64, String> {
    let mut owners = BTreeMap::new();
    let Ok(procs) = fs::read_dir(rooted(root, "/proc")) else {
        return owners;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.chars().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let comm = fs::read_to_string(p.path().join("comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                if let Ok(inode) = inode.parse() {
                    owners.insert(inode, format!("{comm} (pid {pid})"));
                }
            }
        }
    }
    owners
}

/// The process a service's port is meant for when the OS already runs it.
fn expected_owner(service: Service) -> Option<&'static str> {
    match service {
        Service::Ssh => Some("sshd"),
        _ => None,
    }
}

pub(super) fn ports(root: &Path, policy: &PortPolicy) -> CheckResult {
    let r = CheckResult::new(
        Check::Ports,
        None,
        format!(
            "no other process bound to the ports of a {} node",
            policy.role
        ),
    );
    let sockets = bound_sockets(root);
    let owners = socket_owners(root);
    let mut conflicts: Vec<String> = Vec::new();
    for s in &sockets {
        let Some((rule, _)) = policy
            .listening()
            .find(|(rule, range)| rule.row.protocol == s.protocol && range.contains(s.port))
        else {
            continue;
        };
        let owner = owners.get(&s.inode).cloned();
        let comm = owner.as_deref().and_then(|o| o.split(" (pid").next());
        if let (Some(expected), Some(comm)) = (expected_owner(rule.row.service), comm) {
            if comm == expected {
                continue;
            }
        }
        let holder = owner.unwrap_or_else(|| format!("socket inode {}", s.inode));
        let c = format!(
            "{}/{} ({}) held by {holder}",
            s.port, s.protocol, rule.row.service
        );
        if !conflicts.contains(&c) {
            conflicts.push(c);
        }
    }
    if conflicts.is_empty() {
        let n = policy.listening().count();
        r.pass(format!("the {n} ports of the table are free"))
    } else {
        r.fail(
            conflicts.join(", "),
            "stop or remove the process holding the port; these ports belong to the node's Kubernetes and Weave components",
        )
    }
}

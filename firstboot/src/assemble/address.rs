//! The node's internal address: from the node config, else the address of the interface
//! that holds the default route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{bail, Context, Result};

use nodeimage_core::config::NodeConfig;
use nodeimage_core::files::rooted;

/// The node's internal address and where it came from (for the status line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub ip: IpAddr,
    /// `private_address`, `address`, or `default route via eth0`.
    pub source: String,
}

/// The address other nodes reach this one on: `private_address`, else `address` (when
/// they are IP addresses), else the first global address of the interface holding the
/// default route (IPv4 first, then IPv6). Detection reads `<root>/proc/net/route` and
/// the live interfaces, so under `--root` (not live) the config must name the address.
pub fn internal_ip(root: &Path, live: bool, config: &NodeConfig) -> Result<NodeAddress> {
    for (field, value) in [
        ("private_address", &config.private_address),
        ("address", &config.address),
    ] {
        if let Some(ip) = value
            .as_deref()
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return Ok(NodeAddress {
                ip,
                source: field.to_string(),
            });
        }
    }
    if !live {
        bail!(
            "the node's internal address is unknown: the node config has no private_address or address \
             that is an IP address, and detection (default route) needs a live node, not --root"
        );
    }
    let v4 = std::fs::read_to_string(rooted(root, "/proc/net/route")).unwrap_or_default();
    let v6 = std::fs::read_to_string(rooted(root, "/proc/net/ipv6_route")).unwrap_or_default();
    let addrs = interface_addresses().context("listing the interface addresses")?;
    for (iface, want_v4) in [
        (default_route_interface_v4(&v4), true),
        (default_route_interface_v6(&v6), false),
    ] {
        let Some(iface) = iface else { continue };
        if let Some(ip) = pick_address(&addrs, &iface, want_v4) {
            return Ok(NodeAddress {
                ip,
                source: format!("default route via {iface}"),
            });
        }
    }
    bail!(
        "the node's internal address is unknown: no private_address/address in the node config and no \
         default route with a global address (is the network up?)"
    )
}

/// The interface of the IPv4 default route with the lowest metric (`/proc/net/route`).
pub fn default_route_interface_v4(route: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            (f[1] == "00000000" && f[7] == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, f[0].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The interface of the IPv6 default route with the lowest metric (`/proc/net/ipv6_route`;
/// unreachable defaults on `lo` are skipped).
pub fn default_route_interface_v6(route: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    route
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let default = f[0].chars().all(|c| c == '0') && f[1] == "00";
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            (default && flags & RTF_UP != 0 && f[9] != "lo").then(|| (metric, f[9].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

fn is_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// The first global address of `iface` in the wanted family.
pub fn pick_address(addrs: &[(String, IpAddr)], iface: &str, v4: bool) -> Option<IpAddr> {
    addrs
        .iter()
        .filter(|(name, ip)| name == iface && ip.is_ipv4() == v4 && is_global(ip))
        .map(|(_, ip)| *ip)
        .next()
}

/// Every (interface, address) of the running system (getifaddrs(3)).
pub fn interface_addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null; its family says which sockaddr it is.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        let ip = match family {
            libc::AF_INET => {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6 addresses are sockaddr_in6.
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        out.push((name, ip));
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
";

    const ROUTE6: &str = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     ens3
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     ens3
";

    #[test]
    fn default_routes() {
        assert_eq!(default_route_interface_v4(ROUTE).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface_v4("Iface\tDestination\n"), None);
        assert_eq!(default_route_interface_v6(ROUTE6).as_deref(), Some("ens3"));
    }

    #[test]
    fn address_choice() {
        let addrs: Vec<(String, IpAddr)> = vec![
            ("lo".into(), "127.0.0.1".parse().unwrap()),
            ("eth0".into(), "fe80::1".parse().unwrap()),
            ("eth0".into(), "169.254.3.3".parse().unwrap()),
            ("eth0".into(), "10.0.0.5".parse().unwrap()),
            ("eth0".into(), "fd00::5".parse().unwrap()),
        ];
        assert_eq!(
            pick_address(&addrs, "eth0", true),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            pick_address(&addrs, "eth0", false),
            Some("fd00::5".parse().unwrap())
        );
        assert_eq!(pick_address(&addrs, "eth1", true), None);
        // The running system has at least loopback.
        assert!(interface_addresses()
            .unwrap()
            .iter()
            .any(|(_, ip)| ip.is_loopback()));
    }

    #[test]
    fn config_first_and_no_detection_under_root() {
        let mut c = NodeConfig::parse(
            "n",
            "version: 1\nrole: worker\ncluster:\n  name: d\n  api_endpoint: 10.0.0.1\n",
        )
        .unwrap();
        let e = internal_ip(Path::new("/nonexistent"), false, &c).unwrap_err();
        assert!(e.to_string().contains("needs a live node"), "{e}");
        c.address = Some("node.example.com".into());
        assert!(internal_ip(Path::new("/x"), false, &c).is_err());
        c.address = Some("203.0.113.5".into());
        assert_eq!(
            internal_ip(Path::new("/x"), false, &c).unwrap().source,
            "address"
        );
        c.private_address = Some("10.0.0.5".into());
        let a = internal_ip(Path::new("/x"), false, &c).unwrap();
        assert_eq!(
            (a.ip.to_string().as_str(), a.source.as_str()),
            ("10.0.0.5", "private_address")
        );
    }
}

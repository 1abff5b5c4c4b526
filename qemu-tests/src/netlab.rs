//! A private L2 network for several VMs: a Linux bridge inside a network namespace the
//! test creates, one tap device per VM on it, Debian's `dnsmasq` on the bridge as the
//! DHCP server (fixed addresses by MAC, a router and a DNS server option, its own DNS
//! for the lab's names and nothing else: the lab has no way out), and a veth pair so
//! the test itself (in the host's namespace) reaches every VM at its address.
//!
//! Everything is torn down on drop: dnsmasq is killed and the namespace deleted (which
//! removes the bridge, the taps and the namespace end of the veth; the host end goes
//! with its peer).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::run;

/// One machine of the lab: its MAC, fixed address and DHCP host name.
#[derive(Debug, Clone)]
pub struct LabHost {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub hostname: String,
}

/// A lab network. `subnet` is a /24: `.1` is the router/DNS (dnsmasq on the bridge),
/// `.254` the host's end of the veth.
pub struct NetLab {
    pub ns: String,
    pub bridge: String,
    pub prefix: [u8; 3],
    host_veth: String,
    dnsmasq: Option<Child>,
    pub dir: PathBuf,
}

impl NetLab {
    /// The address `.n` of the lab's /24.
    pub fn addr(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], n)
    }

    /// The router and DNS server the VMs get from DHCP.
    pub fn gateway(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// The address the test process has on the lab network.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.addr(254)
    }

    /// Create the namespace `ni-<name>`, its bridge, the veth to the host and dnsmasq.
    /// `dir` receives dnsmasq's lease file and log.
    pub fn start(name: &str, prefix: [u8; 3], hosts: &[LabHost], dir: PathBuf) -> Result<NetLab> {
        let ns = format!("ni-{name}");
        let host_veth = format!("nih-{name}");
        let peer = format!("nib-{name}");
        std::fs::create_dir_all(&dir)?;
        // A namespace left over from a killed run goes first (its links go with it).
        quiet(Command::new("ip").args(["netns", "del", &ns]));
        quiet(Command::new("ip").args(["link", "del", &host_veth]));
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        let mut lab = NetLab {
            ns: ns.clone(),
            bridge: "br0".into(),
            prefix,
            host_veth: host_veth.clone(),
            dnsmasq: None,
            dir,
        };
        let gw = lab.gateway();
        let host = lab.host_addr();
        let ipn = |args: &[&str]| run(Command::new("ip").arg("-n").arg(&ns).args(args));
        ipn(&["link", "set", "lo", "up"])?;
        ipn(&["link", "add", "br0", "type", "bridge"])?;
        ipn(&["addr", "add", &format!("{gw}/24"), "dev", "br0"])?;
        ipn(&["link", "set", "br0", "up"])?;
        run(Command::new("ip").args([
            "link", "add", &host_veth, "type", "veth", "peer", "name", &peer, "netns", &ns,
        ]))?;
        ipn(&["link", "set", &peer, "master", "br0", "up"])?;
        run(Command::new("ip").args(["addr", "add", &format!("{host}/24"), "dev", &host_veth]))?;
        run(Command::new("ip").args(["link", "set", &host_veth, "up"]))?;

        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, "dnsmasq", "--keep-in-foreground"])
            .arg("--conf-file=/dev/null")
            .arg("--interface=br0")
            .arg("--bind-interfaces")
            .arg("--except-interface=lo")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--domain=lab")
            .arg("--local=/lab/")
            .arg(format!(
                "--dhcp-range={},{},255.255.255.0,12h",
                lab.addr(100),
                lab.addr(200)
            ))
            .arg(format!("--dhcp-option=option:router,{gw}"))
            .arg(format!("--dhcp-option=option:dns-server,{gw}"))
            .arg(format!(
                "--dhcp-leasefile={}",
                lab.dir.join("dnsmasq.leases").display()
            ))
            .arg(format!(
                "--pid-file={}",
                lab.dir.join("dnsmasq.pid").display()
            ))
            .arg("--log-dhcp")
            .arg(format!(
                "--log-facility={}",
                lab.dir.join("dnsmasq.log").display()
            ));
        for h in hosts {
            cmd.arg(format!("--dhcp-host={},{},{}", h.mac, h.ip, h.hostname));
            cmd.arg(format!("--host-record={}.lab,{}", h.hostname, h.ip));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting dnsmasq (Debian package dnsmasq-base)")?;
        lab.dnsmasq = Some(child);
        // dnsmasq is ready when it answers on port 53 of the bridge address.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // From the host's end of the veth, which is on the lab's /24.
            let addr = std::net::SocketAddr::from((gw, 53));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Some(c) = lab.dnsmasq.as_mut() {
                if let Some(status) = c.try_wait()? {
                    let mut err = String::new();
                    if let Some(mut e) = c.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    bail!("dnsmasq exited ({status}): {err}");
                }
            }
            if Instant::now() > deadline {
                bail!("dnsmasq did not listen on {gw}:53 within 10 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(lab)
    }

    /// A tap device on the bridge for one VM; returns its name.
    pub fn tap(&self, name: &str) -> Result<String> {
        let tap = format!("tap-{name}");
        let ipn = |args: &[&str]| run(Command::new("ip").arg("-n").arg(&self.ns).args(args));
        ipn(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ipn(&["link", "set", &tap, "master", &self.bridge, "up"])?;
        Ok(tap)
    }

    /// QEMU arguments for a virtio NIC on `tap` with `mac` (QEMU must run in the
    /// namespace: see [`crate::VmOptions::netns`]).
    pub fn nic_args(tap: &str, mac: &str) -> Vec<String> {
        vec![
            "-netdev".into(),
            format!("tap,id=lab0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=lab0,mac={mac}"),
        ]
    }

    /// A stand-in for a cloud's metadata service: `169.254.169.254` on the lab bridge
    /// (the nodes' default gateway, so a node reaches it as it would in a cloud) with
    /// Python's `http.server` serving `body` at `/`. Each request it answers is a line of
    /// its log ([`MetadataServer::requests`]).
    pub fn serve_metadata(&self, body: &str) -> Result<MetadataServer> {
        let dir = self.dir.join("metadata");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("index.html"), body)?;
        run(Command::new("ip").args([
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{METADATA_ADDR}/32"),
            "dev",
            &self.bridge,
        ]))?;
        let log = self.dir.join("metadata.log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "python3",
                "-m",
                "http.server",
                "80",
            ])
            .arg("--bind")
            .arg(METADATA_ADDR)
            .arg("--directory")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting python3 -m http.server in the lab")?;
        let server = MetadataServer { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.listening(&self.ns) {
            if Instant::now() > deadline {
                bail!("the metadata stand-in did not listen on {METADATA_ADDR}:80 within 10 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }

    /// The DHCP log so far (for failure messages).
    pub fn dhcp_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        quiet(Command::new("ip").args(["link", "del", &self.host_veth]));
        quiet(Command::new("ip").args(["netns", "del", &self.ns]));
    }
}

/// The link-local address every supported cloud serves its metadata on.
pub const METADATA_ADDR: &str = "169.254.169.254";

/// The metadata stand-in of [`NetLab::serve_metadata`]; stopped on drop.
pub struct MetadataServer {
    child: Child,
    log: PathBuf,
}

impl MetadataServer {
    /// Requests answered so far (`http.server` logs one line per request).
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET "))
            .count()
    }

    fn listening(&self, ns: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-Hltn", "src", METADATA_ADDR])
            .output()
            .map(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
            .unwrap_or(false)
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a clean-up command whose failure (nothing to remove) does not matter.
pub fn quiet(cmd: &mut Command) {
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

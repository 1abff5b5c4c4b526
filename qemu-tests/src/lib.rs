//! A small harness for booting node images under QEMU in tests.
//!
//! * [`Accel::detect`]: KVM only when `/dev/kvm` opens *and* the CPU advertises hardware
//!   virtualisation (a paravirtual `/dev/kvm` cannot run stock kernels); TCG otherwise.
//!   `NODEIMAGE_QEMU_ACCEL=kvm|tcg` overrides.
//! * [`Vm`]: one QEMU process; the serial console is captured into memory and a log file,
//!   and [`Vm::wait_for`] waits for a line with a timeout. A second serial port is a
//!   report channel the test image's report unit writes JSON lines to.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
pub use test_support::cmd::{run, which};

pub mod k8s;
pub mod netlab;

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn detect() -> Accel {
        match std::env::var("NODEIMAGE_QEMU_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        let dev_ok = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let cpu_ok = std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| {
                c.lines()
                    .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
            })
            .unwrap_or(false);
        if dev_ok && cpu_ok {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    fn args(self) -> Vec<String> {
        match self {
            Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
            Accel::Tcg => vec![
                "-accel".into(),
                "tcg,thread=multi".into(),
                "-cpu".into(),
                "max".into(),
            ],
        }
    }
}

/// Firmware for UEFI boot of x86_64 images (Debian's `ovmf` package).
pub fn ovmf() -> Result<(PathBuf, PathBuf)> {
    for (code, vars) in [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ] {
        if Path::new(code).exists() && Path::new(vars).exists() {
            return Ok((code.into(), vars.into()));
        }
    }
    bail!("OVMF firmware not found: apt-get install ovmf")
}

/// Options for one boot.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The boot disk (virtio); `None` for a diskless network boot.
    pub disk: Option<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Directory for the firmware variables copy, console log and report file.
    pub work_dir: PathBuf,
    /// A name for the log files (e.g. "boot1").
    pub name: String,
    /// Extra QEMU arguments (e.g. `-fw_cfg`).
    pub extra: Vec<String>,
    /// Forward a guest port to the host (user networking `hostfwd`), if any.
    pub user_net: bool,
    /// Run QEMU inside this network namespace (for tap devices of a [`netlab::NetLab`]).
    pub netns: Option<String>,
    /// Let a guest reboot (QEMU restarts it) instead of exiting on reboot.
    pub allow_reboot: bool,
    /// Network boot through QEMU's own iPXE ROM (the NIC's default ROM, under SeaBIOS): user
    /// networking whose DHCP offers this boot file URL, the NIC first in the boot order.
    /// With it the machine boots from SeaBIOS, not OVMF (see docs/testing.md).
    pub netboot: Option<String>,
}

impl VmOptions {
    /// Options with what most boots use: user networking, no reboot, no network boot.
    pub fn new(disk: Option<PathBuf>, work_dir: &Path, name: &str) -> VmOptions {
        VmOptions {
            disk,
            memory_mib: 2048,
            cpus: 2,
            work_dir: work_dir.to_path_buf(),
            name: name.into(),
            extra: vec![],
            user_net: true,
            netns: None,
            allow_reboot: false,
            netboot: None,
        }
    }
}

/// A running QEMU.
pub struct Vm {
    child: Child,
    console: Arc<Mutex<String>>,
    pub started: Instant,
    pub console_log: PathBuf,
    pub report_path: PathBuf,
    /// QEMU's QMP control socket.
    pub qmp_path: PathBuf,
}

impl Vm {
    /// Start an x86_64 guest (q35): UEFI (OVMF) from its disk, or SeaBIOS and iPXE for
    /// a [`VmOptions::netboot`].
    pub fn start_x86_64(o: &VmOptions) -> Result<Vm> {
        let qemu = "qemu-system-x86_64";
        if which(qemu).is_none() {
            bail!("{qemu} not found: apt-get install qemu-system-x86 (from bookworm-backports on this machine, see .ci/run)");
        }
        std::fs::create_dir_all(&o.work_dir)?;
        let console_log = o.work_dir.join(format!("{}-console.log", o.name));
        let report_path = o.work_dir.join(format!("{}-report.jsonl", o.name));
        let qmp_path = o.work_dir.join(format!("{}.qmp", o.name));
        let _ = std::fs::remove_file(&qmp_path);
        let _ = std::fs::remove_file(&report_path);
        let accel = Accel::detect();
        let mut cmd = match &o.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, qemu]);
                c
            }
            None => Command::new(qemu),
        };
        // graphics=off: SeaBIOS (and through it iPXE) print on the serial console.
        let machine = if o.netboot.is_some() {
            "q35,graphics=off"
        } else {
            "q35"
        };
        cmd.args(["-machine", machine, "-nodefaults", "-display", "none"]);
        if !o.allow_reboot {
            cmd.arg("-no-reboot");
        }
        cmd.args(accel.args())
            .args(["-m", &o.memory_mib.to_string(), "-smp", &o.cpus.to_string()]);
        if o.netboot.is_none() {
            let (code, vars) = ovmf()?;
            let vars_copy = o.work_dir.join(format!("{}-OVMF_VARS.fd", o.name));
            std::fs::copy(&vars, &vars_copy).context("copying OVMF variables")?;
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    code.display()
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars_copy.display()
                ));
        }
        if let Some(disk) = &o.disk {
            cmd.arg("-drive").arg(format!(
                "if=virtio,format=raw,file={},cache=unsafe",
                disk.display()
            ));
        }
        cmd.args(["-serial", "stdio"])
            .arg("-serial")
            .arg(format!("file:{}", report_path.display()))
            .args(["-device", "virtio-rng-pci"]);
        if let Some(url) = &o.netboot {
            // The NIC's own option ROM, QEMU's default for virtio-net-pci (efi-virtio.rom
            // from ipxe-qemu: iPXE for BIOS and UEFI).
            cmd.arg("-netdev")
                .arg(format!("user,id=n0,bootfile={url}"))
                .args(["-device", "virtio-net-pci,netdev=n0,bootindex=1"]);
        } else if o.user_net {
            cmd.args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
            ]);
        }
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        cmd.args(&o.extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!(
            "qemu: starting {} ({accel:?}) with {}",
            o.name,
            match (&o.disk, &o.netboot) {
                (Some(d), _) => d.display().to_string(),
                (None, Some(url)) => format!("no disk, network boot from {url}"),
                (None, None) => "no disk".into(),
            }
        );
        let mut child = cmd.spawn().with_context(|| format!("starting {qemu}"))?;
        let console = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (c1, c2) = (console.clone(), console.clone());
        let log = std::fs::File::create(&console_log)?;
        let log2 = log.try_clone()?;
        std::thread::spawn(move || pump(out, c1, log));
        std::thread::spawn(move || pump(err, c2, log2));
        Ok(Vm {
            child,
            console,
            started: Instant::now(),
            console_log,
            report_path,
            qmp_path,
        })
    }

    /// Send one QMP command (`{"execute": NAME}`) and return QEMU's answer.
    pub fn qmp(&self, command: &str) -> Result<serde_json::Value> {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let s = UnixStream::connect(&self.qmp_path)
            .with_context(|| format!("connecting to {}", self.qmp_path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line)?; // the greeting
        let mut ask = |cmd: &str| -> Result<serde_json::Value> {
            writeln!(w, "{}", serde_json::json!({ "execute": cmd }))?;
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    bail!("QMP closed before answering {cmd}");
                }
                let v: serde_json::Value = serde_json::from_str(line.trim())?;
                if v.get("return").is_some() || v.get("error").is_some() {
                    return Ok(v);
                }
            }
        };
        ask("qmp_capabilities")?;
        let v = ask(command)?;
        if let Some(e) = v.get("error") {
            bail!("QMP {command}: {e}");
        }
        Ok(v)
    }

    /// Press the power button (ACPI): the guest shuts down cleanly and QEMU exits.
    pub fn powerdown(&mut self, timeout: Duration) -> Result<()> {
        self.qmp("system_powerdown")?;
        self.wait_exit(timeout)
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Wait for a console line containing `needle`; returns the line and the time since start.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<(String, Duration)> {
        self.wait_for_any(&[needle], timeout)
    }

    /// Wait for the first console line containing any of `needles` (e.g. a program's
    /// final `ok` or `error` line, not its progress lines); returns that line from the
    /// needle on, and the time since start.
    pub fn wait_for_any(
        &mut self,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<(String, Duration)> {
        let deadline = Instant::now() + timeout;
        let find = |text: &str| {
            text.lines().find_map(|l| {
                needles
                    .iter()
                    .find(|n| l.contains(**n))
                    .map(|n| from_needle(l, n))
            })
        };
        let shown = needles.join("` or `");
        loop {
            if let Some(line) = find(&self.console()) {
                return Ok((line, self.started.elapsed()));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the reader threads a moment to drain.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(line) = find(&self.console()) {
                    return Ok((line, self.started.elapsed()));
                }
                bail!(
                    "QEMU exited ({status}) before `{shown}` appeared; console log: {}\n{}",
                    self.console_log.display(),
                    tail(&self.console(), 40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "`{shown}` did not appear within {timeout:?}; console log: {}\n{}",
                    self.console_log.display(),
                    tail(&self.console(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait for QEMU to exit (the guest powers off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "the guest did not power off within {timeout:?}; console log: {}\n{}",
                    self.console_log.display(),
                    tail(&self.console(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// JSON lines the guest wrote to the report port.
    pub fn report(&self) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(&self.report_path).unwrap_or_default();
        text.lines()
            .map(|l| l.trim_matches(|c: char| c == '\r' || c.is_whitespace()))
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).with_context(|| format!("report line: {l}")))
            .collect()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pump(r: impl std::io::Read, sink: Arc<Mutex<String>>, mut log: std::fs::File) {
    use std::io::Write;
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    while let Ok(n) = r.read_until(b'\n', &mut buf) {
        if n == 0 {
            break;
        }
        let _ = log.write_all(&buf);
        sink.lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&buf));
        buf.clear();
    }
}

/// The line from `needle` on: drops the kernel's `[   18.13] ` timestamp and any
/// other prefix the console put before it.
fn from_needle(line: &str, needle: &str) -> String {
    let start = line.find(needle).unwrap_or(0);
    line[start..]
        .trim_matches(|c: char| c == '\r' || c.is_whitespace())
        .to_string()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The workspace root (qemu-tests/..).
pub fn workspace_root() -> PathBuf {
    // At run time first: `cargo test` sets it for the tests it runs, and a build
    // directory shared by two clones (CI's cache) may hold this library compiled in the
    // other one, whose path `env!` would give.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A binary of this workspace: `$NODEIMAGE_BIN`-style override, else target/<profile>/NAME.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    for profile in ["release", "debug"] {
        let p = target.join(profile).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} is not built: run `cargo build --release --workspace` first (or set {var})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_the_kernel_timestamp() {
        assert_eq!(
            from_needle("[   18.139310] firstboot: ok role=worker\r", "firstboot: "),
            "firstboot: ok role=worker"
        );
    }

    #[test]
    fn accel_override_is_honoured() {
        std::env::set_var("NODEIMAGE_QEMU_ACCEL", "tcg");
        assert_eq!(Accel::detect(), Accel::Tcg);
        std::env::remove_var("NODEIMAGE_QEMU_ACCEL");
    }
}

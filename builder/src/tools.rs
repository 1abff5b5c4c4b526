//! External tools are real dependencies: named, checked, and mapped to the Debian
//! package that provides them, so a missing one is a one-line fix for the user.

use std::path::PathBuf;
use std::process::Command;

/// A program the build runs, and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

impl Tool {
    pub const fn new(program: &'static str, package: &'static str) -> Self {
        Tool { program, package }
    }
}

pub const MMDEBSTRAP: Tool = Tool::new("mmdebstrap", "mmdebstrap");
pub const MKFS_EROFS: Tool = Tool::new("mkfs.erofs", "erofs-utils");
pub const TAR: Tool = Tool::new("tar", "tar");
pub const CHROOT: Tool = Tool::new("chroot", "coreutils");
pub const SYSTEMCTL: Tool = Tool::new("systemctl", "systemd");
pub const DPKG_QUERY: Tool = Tool::new("dpkg-query", "dpkg");
pub const QEMU_IMG: Tool = Tool::new("qemu-img", "qemu-utils");
pub const STRIP: Tool = Tool::new("strip", "binutils");
pub const QEMU_USER_AARCH64: Tool = Tool::new("qemu-aarch64-static", "qemu-user-static");

/// Tools every `nodeimage build` needs.
pub const BUILD_TOOLS: &[Tool] = &[
    MMDEBSTRAP, MKFS_EROFS, TAR, CHROOT, SYSTEMCTL, DPKG_QUERY, STRIP,
];

/// [`BUILD_TOOLS`] plus what the profile's output formats need (qcow2: qemu-img).
pub fn build_tools(formats: &[crate::profile::OutputFormat]) -> Vec<Tool> {
    let mut tools = BUILD_TOOLS.to_vec();
    if formats.contains(&crate::profile::OutputFormat::Qcow2) {
        tools.push(QEMU_IMG);
    }
    tools
}

/// Find `program` on PATH (plus the sbin directories, which a non-root PATH may lack).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The tools in `tools` that are not installed.
pub fn missing(tools: &[Tool]) -> Vec<Tool> {
    tools
        .iter()
        .copied()
        .filter(|t| which(t.program).is_none())
        .collect()
}

/// Fail with the exact `apt-get install` line when tools are missing.
pub fn require(tools: &[Tool]) -> anyhow::Result<()> {
    let missing = missing(tools);
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<_> = missing.iter().map(|t| t.program).collect();
    anyhow::bail!(
        "missing tools: {}; install them with: apt-get install {} (or rerun with --install-deps)",
        programs.join(", "),
        packages(&missing).join(" ")
    )
}

fn packages(tools: &[Tool]) -> Vec<&'static str> {
    let mut p: Vec<_> = tools.iter().map(|t| t.package).collect();
    p.sort_unstable();
    p.dedup();
    p
}

/// Install the Debian packages of the missing tools with apt-get (needs root).
pub fn install_missing(tools: &[Tool]) -> anyhow::Result<()> {
    let missing = missing(tools);
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs = packages(&missing);
    tracing::info!(packages = %pkgs.join(" "), "installing missing build tools with apt-get");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    require(tools)
}

/// Run a command, failing with its program name, exit status and the tail of stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let program = format!("{:?}", cmd.get_program());
    tracing::debug!(command = ?cmd, "running");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("running {program}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!("{program} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(())
}

/// Run a command and return its stdout.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let program = format!("{:?}", cmd.get_program());
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("running {program}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_package() {
        let t = Tool {
            program: "definitely-not-a-program-xyz",
            package: "xyz-tools",
        };
        let e = require(&[t, TAR]).unwrap_err().to_string();
        assert!(e.contains("definitely-not-a-program-xyz"), "{e}");
        assert!(e.contains("apt-get install xyz-tools"), "{e}");
        assert!(!e.contains(" tar"), "{e}");
    }
}

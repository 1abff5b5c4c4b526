//! The host steps every node runs before it joins its cluster: preflight, firewall,
//! hostname, the staged Ignition config, the node config's files, containerd's config
//! and the baked images.

use anyhow::{Context, Result};

use crate::containerd;
use crate::ignition::StagedIgnition;
use crate::preflight::{self, Check};
use crate::step::{FnStep, RunOptions, Step, StepContext};
use nodeimage_core::config::NodeConfig;
use nodeimage_core::files::{atomic_write, rooted};
use nodeimage_core::images::BakedImages;
use nodeimage_core::ports::PortPolicy;

/// Where the node's ruleset is kept; `nodeimage-firewall.service` loads it on every boot.
pub const FIREWALL_RULESET: &str = "/etc/nodeimage/firewall.nft";
/// The unit that loads it (closed ruleset first); every component unit requires it.
pub const FIREWALL_UNIT: &str = "nodeimage-firewall.service";

/// Nothing is changed before the host is known to meet the requirements.
pub const PREFLIGHT: FnStep = FnStep::new("preflight", preflight_plan, |c| {
    apply_preflight(c.opts, c.config)
});

fn preflight_plan(c: &StepContext) -> String {
    let s = &c.config.preflight;
    let checks: Vec<&str> = Check::ALL
        .iter()
        .map(|k| k.name())
        .filter(|n| !s.skip.iter().any(|k| k == n))
        .collect();
    let mut limits = Vec::new();
    if checks.contains(&Check::Memory.name()) {
        limits.push(format!("at least {} MiB of memory", s.min_memory_mib));
    }
    if checks.contains(&Check::Disk.name()) {
        limits.push(format!("{} GiB free for /var", s.min_disk_gib));
    }
    let mut line = format!("check {}", checks.join(", "));
    if !limits.is_empty() {
        line.push_str(&format!(" ({})", limits.join(", ")));
    }
    if !s.skip.is_empty() {
        line.push_str(&format!("; skip {}", s.skip.join(", ")));
    }
    line
}

/// The firewall is up before any component listens.
pub const FIREWALL: FnStep = FnStep::new("firewall", firewall_plan, |c| {
    apply_firewall(c.opts, c.config)
});

fn firewall_plan(c: &StepContext) -> String {
    match PortPolicy::for_node(c.config) {
        Ok(p) => format!(
            "write {} rules to {FIREWALL_RULESET}{}",
            p.rules.len(),
            if c.opts.live {
                " and load them"
            } else {
                " (not loaded: not live)"
            }
        ),
        Err(e) => format!("render the ruleset; it would fail: {e}"),
    }
}

pub const HOSTNAME: FnStep = FnStep::new("hostname", hostname_plan, |c| {
    apply_hostname(c.opts, c.hostname)
});

fn hostname_plan(c: &StepContext) -> String {
    format!(
        "set the hostname to {} in /etc/hostname{}",
        c.hostname,
        if c.opts.live {
            " and in the kernel"
        } else {
            ""
        }
    )
}

/// The Ignition config a data source staged.
pub struct Ignition<'a>(pub &'a StagedIgnition);

impl Step for Ignition<'_> {
    fn name(&self) -> &'static str {
        "ignition"
    }

    fn plan(&self, c: &StepContext) -> String {
        let st = self.0;
        let what = format!(
            "apply the Ignition config from {} (spec {}: {})",
            st.source_name,
            st.version,
            st.summary()
        );
        match st.plan(&c.opts.root) {
            Ok(p) => format!("{what}: {} changes", p.ops().len()),
            Err(e) => format!("{what}; it would fail: {e}"),
        }
    }

    fn apply(&self, c: &StepContext) -> Result<String> {
        self.0.apply(&c.opts.root)?;
        Ok("ignition config applied".into())
    }
}

pub const FILES: FnStep = FnStep::new("files", files_plan, |c| apply_files(c.opts, c.config));

fn files_plan(c: &StepContext) -> String {
    let paths: Vec<&str> = c.config.files.iter().map(|f| f.path.as_str()).collect();
    if paths.is_empty() {
        "no files to write".into()
    } else {
        format!("write {} files: {}", paths.len(), paths.join(", "))
    }
}

pub const CONTAINERD_CONFIG: FnStep =
    FnStep::new("containerd-config", containerd_config_plan, |c| {
        containerd::write_config(&c.opts.root, c.config, c.opts.live)
    });

fn containerd_config_plan(c: &StepContext) -> String {
    let mirrors = c.config.cluster.registry_mirrors.len();
    if c.opts.live {
        format!(
            "write {} for the installed containerd and {mirrors} registry mirror host(s); \
             restart containerd if that changed anything",
            containerd::CONFIG_PATH
        )
    } else {
        format!(
            "write {} (config version 3) and {mirrors} registry mirror host(s) \
             (not restarted: not live)",
            containerd::CONFIG_PATH
        )
    }
}

pub const IMAGES: FnStep = FnStep::new("images", images_plan, |c| {
    containerd::import_images(&c.opts.root, c.opts.live, c.config.role)
});

fn images_plan(c: &StepContext) -> String {
    let role = c.config.role;
    match BakedImages::load(&c.opts.root) {
        Ok(None) => "no baked images: nothing to import".into(),
        Ok(Some(b)) if c.opts.live => format!(
            "import the {} baked image(s) for {role} into containerd's {} namespace \
             (those present are kept)",
            b.for_role(role).count(),
            containerd::K8S_NAMESPACE
        ),
        Ok(Some(b)) => format!(
            "check the {} image archive(s) for {role} (not live: nothing imported)",
            b.for_role(role).count()
        ),
        Err(e) => format!("read images.json; it would fail: {e}"),
    }
}

/// Write `/etc/hostname` under the root, and set the kernel's hostname when live.
pub fn apply_hostname(opts: &RunOptions, hostname: &str) -> Result<String> {
    let path = rooted(&opts.root, "/etc/hostname");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.trim() != hostname {
        atomic_write(&path, format!("{hostname}\n").as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if opts.live {
        // SAFETY: sethostname(2) with a pointer and length of a valid buffer.
        let rc =
            unsafe { libc::sethostname(hostname.as_ptr() as *const libc::c_char, hostname.len()) };
        if rc != 0 {
            anyhow::bail!(
                "sethostname({hostname}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(hostname.to_string())
}

/// Write the files the node config lists (atomically, with their modes).
pub fn apply_files(opts: &RunOptions, config: &NodeConfig) -> Result<String> {
    for f in &config.files {
        let mode = f.mode_bits();
        let path = rooted(&opts.root, &f.path);
        atomic_write(&path, f.contents.as_bytes(), mode)
            .with_context(|| format!("writing {}", f.path))?;
    }
    Ok(format!("{} files", config.files.len()))
}

/// Check the seeds' host requirements before anything is changed.
pub fn apply_preflight(opts: &RunOptions, config: &NodeConfig) -> Result<String> {
    let policy = PortPolicy::for_node(config)?;
    let report = preflight::run(&opts.root, &config.preflight, &policy);
    if !report.passed {
        let failures: Vec<String> = report.failures().map(|c| c.line()).collect();
        anyhow::bail!("{}", failures.join("; "));
    }
    Ok(format!("{} checks passed", report.checks.len()))
}

/// Render this role's nftables ruleset from the port table, keep it under /etc, and load
/// it on a live node (before any Kubernetes component starts).
pub fn apply_firewall(opts: &RunOptions, config: &NodeConfig) -> Result<String> {
    let policy = PortPolicy::for_node(config)?;
    let ruleset = nodeimage_core::firewall::render_nft(&policy);
    let path = rooted(&opts.root, FIREWALL_RULESET);
    atomic_write(&path, ruleset.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    if opts.live {
        nodeimage_core::firewall::apply(&ruleset, &nodeimage_core::firewall::nft_binary())?;
        Ok(format!("{} rules loaded", policy.rules.len()))
    } else {
        Ok(format!("{} rules written", policy.rules.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_and_files_are_written_under_the_root() {
        let d = tempfile::tempdir().unwrap();
        let opts = RunOptions::for_root(d.path());
        let config = NodeConfig::parse(
            "t",
            "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\nfiles:\n  - {path: /etc/demo/motd, mode: \"0640\", contents: hello}\n",
        )
        .unwrap();
        apply_hostname(&opts, "node-1").unwrap();
        apply_files(&opts, &config).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("etc/hostname")).unwrap(),
            "node-1\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(d.path().join("etc/demo/motd")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
    }
}

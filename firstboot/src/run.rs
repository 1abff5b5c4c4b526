//! The first-boot run: acquire the node config, then apply an ordered list of idempotent
//! steps, journaling each so an interrupted run resumes, and report.
//!
//! Files (under the root prefix):
//! * `/var/lib/firstboot/journal.json`: steps completed, with the config digest they ran for;
//! * `/var/lib/firstboot/status.json`: the outcome, for people and tests;
//! * `/var/lib/firstboot/done`: the marker; when present firstboot does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use nodeimage_core::config::NodeConfig;
use nodeimage_core::files::{atomic_write, rooted};

pub const STATE_DIR: &str = "/var/lib/firstboot";

/// How and where to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `/` on a node; a directory tree in tests.
    pub root: PathBuf,
    /// Apply to the running system too (set the kernel hostname, load the firewall,
    /// start services). True only when `root` is `/`.
    pub live: bool,
    /// `firstboot.platform=` override.
    pub platform: Option<String>,
    /// Read the node config from this file instead of the data sources.
    pub config_file: Option<PathBuf>,
    /// Base URL override for the platform's metadata service.
    pub metadata_url: Option<String>,
}

/// The node config and where it came from.
pub struct Acquired {
    pub source: String,
    pub config: NodeConfig,
    /// The data source's hostname (used when the config names none).
    pub hostname: Option<String>,
    /// Further work the data source staged (e.g. Ignition files), applied as a step.
    pub staged: Option<Box<dyn StagedApply>>,
    pub elapsed_ms: u128,
}

/// Something staged by a data source and applied as one step.
pub trait StagedApply {
    fn apply(&self, root: &Path) -> Result<String>;
}

/// Outcome of one step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepStatus {
    pub name: String,
    /// `done`, `skipped` (already done in an earlier run), or `failed`.
    pub state: String,
    pub ms: u128,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// `status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// `ok` or `failed`.
    pub state: String,
    pub role: Option<String>,
    pub hostname: Option<String>,
    pub source: Option<String>,
    pub config_sha256: Option<String>,
    pub elapsed_ms: u128,
    pub steps: Vec<StepStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    /// Step name -> digest of the config it completed for.
    done: BTreeMap<String, String>,
}

/// Everything a step may read.
pub struct StepContext<'a> {
    pub opts: &'a RunOptions,
    pub config: &'a NodeConfig,
    pub hostname: &'a str,
}

/// One idempotent step of the run.
pub struct Step<'a> {
    pub name: &'static str,
    #[allow(clippy::type_complexity)]
    pub apply: Box<dyn Fn(&StepContext) -> Result<String> + 'a>,
}

fn state_path(root: &Path, file: &str) -> PathBuf {
    rooted(root, &format!("{STATE_DIR}/{file}"))
}

/// True when an earlier run finished (the marker exists).
pub fn already_done(root: &Path) -> bool {
    state_path(root, "done").exists()
}

fn load_journal(root: &Path) -> Journal {
    std::fs::read(state_path(root, "journal.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_journal(root: &Path, j: &Journal) -> Result<()> {
    atomic_write(
        &state_path(root, "journal.json"),
        &serde_json::to_vec_pretty(j)?,
        0o600,
    )
    .context("writing the firstboot journal")
}

pub fn write_status(root: &Path, s: &Status) -> Result<()> {
    atomic_write(
        &state_path(root, "status.json"),
        &serde_json::to_vec_pretty(s)?,
        0o644,
    )
    .context("writing status.json")
}

/// Digest of the config the steps run for: a changed config re-runs every step.
pub fn config_digest(c: &NodeConfig) -> String {
    hex::encode(Sha256::digest(c.to_yaml().as_bytes()))
}

/// Run `steps` in order, skipping those the journal records as done for this config.
/// Stops at the first failure; the status says which step and why.
pub fn run_steps(
    opts: &RunOptions,
    acquired: &Acquired,
    hostname: &str,
    steps: &[Step],
    started: Instant,
) -> Status {
    let digest = config_digest(&acquired.config);
    let mut journal = load_journal(&opts.root);
    let ctx = StepContext {
        opts,
        config: &acquired.config,
        hostname,
    };
    let mut status = Status {
        state: "ok".into(),
        role: Some(acquired.config.role.to_string()),
        hostname: Some(hostname.to_string()),
        source: Some(acquired.source.clone()),
        config_sha256: Some(digest.clone()),
        elapsed_ms: 0,
        steps: vec![StepStatus {
            name: "acquire".into(),
            state: "done".into(),
            ms: acquired.elapsed_ms,
            detail: acquired.source.clone(),
        }],
        error: None,
    };
    for step in steps {
        if journal.done.get(step.name) == Some(&digest) {
            status.steps.push(StepStatus {
                name: step.name.into(),
                state: "skipped".into(),
                ms: 0,
                detail: "done in an earlier run".into(),
            });
            continue;
        }
        let t = Instant::now();
        tracing::info!(step = step.name, "step starting");
        match (step.apply)(&ctx) {
            Ok(detail) => {
                tracing::info!(step = step.name, ms = t.elapsed().as_millis() as u64, detail = %detail, "step done");
                status.steps.push(StepStatus {
                    name: step.name.into(),
                    state: "done".into(),
                    ms: t.elapsed().as_millis(),
                    detail,
                });
                journal.done.insert(step.name.to_string(), digest.clone());
                if let Err(e) = save_journal(&opts.root, &journal) {
                    status.state = "failed".into();
                    status.error = Some(format!("{e:#}"));
                    break;
                }
            }
            Err(e) => {
                let msg = format!("step {}: {e:#}", step.name);
                tracing::error!(step = step.name, error = %format!("{e:#}"), "step failed");
                status.steps.push(StepStatus {
                    name: step.name.into(),
                    state: "failed".into(),
                    ms: t.elapsed().as_millis(),
                    detail: format!("{e:#}"),
                });
                status.state = "failed".into();
                status.error = Some(msg);
                break;
            }
        }
    }
    status.elapsed_ms = started.elapsed().as_millis();
    status
}

/// Mark the run complete: firstboot never runs again on this node.
pub fn mark_done(root: &Path) -> Result<()> {
    atomic_write(&state_path(root, "done"), b"", 0o644).context("writing the firstboot marker")
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

/// The console line: one line a person reads on the serial console or a screen.
pub fn console_line(status: &Status) -> String {
    if status.state == "ok" {
        format!(
            "firstboot: ok role={} hostname={} in {} ms",
            status.role.as_deref().unwrap_or("?"),
            status.hostname.as_deref().unwrap_or("?"),
            status.elapsed_ms
        )
    } else {
        format!(
            "firstboot: error: {}",
            status.error.as_deref().unwrap_or("unknown error")
        )
    }
}

/// Print the console line to stdout and, on a live node, to the kernel log (which reaches
/// the console reliably even when a getty owns the serial line).
pub fn announce(opts: &RunOptions, line: &str) {
    println!("{line}");
    if opts.live {
        if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            use std::io::Write;
            let _ = writeln!(k, "{line}");
        }
    }
}

/// Where the node's ruleset is kept; `nodeimage-firewall.service` loads it on every boot.
pub const FIREWALL_RULESET: &str = "/etc/nodeimage/firewall.nft";

/// Check the seeds' host requirements before anything is changed.
pub fn apply_preflight(opts: &RunOptions, config: &NodeConfig) -> Result<String> {
    let policy = nodeimage_core::ports::PortPolicy::for_node(config)?;
    let report = crate::preflight::run(&opts.root, &config.preflight, &policy);
    if !report.passed {
        let failures: Vec<String> = report.failures().map(|c| c.line()).collect();
        anyhow::bail!("{}", failures.join("; "));
    }
    Ok(format!("{} checks passed", report.checks.len()))
}

/// Render this role's nftables ruleset from the port table, keep it under /etc, and load
/// it on a live node (before any Kubernetes component starts).
pub fn apply_firewall(opts: &RunOptions, config: &NodeConfig) -> Result<String> {
    let policy = nodeimage_core::ports::PortPolicy::for_node(config)?;
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
    use std::cell::Cell;

    fn acquired() -> Acquired {
        let config = NodeConfig::parse(
            "t",
            "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\nfiles:\n  - {path: /etc/demo/motd, mode: \"0640\", contents: hello}\n",
        )
        .unwrap();
        Acquired {
            source: "test".into(),
            config,
            hostname: None,
            staged: None,
            elapsed_ms: 1,
        }
    }

    #[test]
    fn steps_are_journaled_and_skipped_on_rerun() {
        let d = tempfile::tempdir().unwrap();
        let opts = RunOptions {
            root: d.path().into(),
            live: false,
            platform: None,
            config_file: None,
            metadata_url: None,
        };
        let a = acquired();
        let calls = Cell::new(0);
        let fail_second = Cell::new(true);
        let steps = vec![
            Step {
                name: "one",
                apply: Box::new(|_| {
                    calls.set(calls.get() + 1);
                    Ok("1".into())
                }),
            },
            Step {
                name: "two",
                apply: Box::new(|_| {
                    if fail_second.get() {
                        anyhow::bail!("disk on fire")
                    } else {
                        Ok("2".into())
                    }
                }),
            },
        ];
        let s = run_steps(&opts, &a, "node-1", &steps, Instant::now());
        assert_eq!(s.state, "failed");
        assert_eq!(s.error.as_deref(), Some("step two: disk on fire"));
        assert_eq!(console_line(&s), "firstboot: error: step two: disk on fire");
        // Resume after the interruption: step one is not repeated.
        fail_second.set(false);
        let s = run_steps(&opts, &a, "node-1", &steps, Instant::now());
        assert_eq!(s.state, "ok");
        assert_eq!(calls.get(), 1);
        assert_eq!(s.steps[1].state, "skipped");
        assert_eq!(s.steps[2].state, "done");
        assert!(console_line(&s).starts_with("firstboot: ok role=worker hostname=node-1 in "));
    }

    #[test]
    fn hostname_and_files_are_written_under_the_root() {
        let d = tempfile::tempdir().unwrap();
        let opts = RunOptions {
            root: d.path().into(),
            live: false,
            platform: None,
            config_file: None,
            metadata_url: None,
        };
        let a = acquired();
        apply_hostname(&opts, "node-1").unwrap();
        apply_files(&opts, &a.config).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("etc/hostname")).unwrap(),
            "node-1\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(d.path().join("etc/demo/motd")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
    }
}

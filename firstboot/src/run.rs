//! The first-boot run: acquire the node config, then apply an ordered list of idempotent
//! steps ([`steps_for`]), journaling each so an interrupted run resumes, and report. The
//! same list, with what each step would do and which the journal already has, is the
//! plan `firstboot --dry-run` prints ([`dry_run`]).
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

use crate::host;
use crate::ignition::StagedIgnition;
use crate::source::{self, SourceContext};
pub use crate::step::{announce, error_line, RunOptions, Step, StepContext};
use nodeimage_core::config::{Hostname, NodeConfig, Role};
use nodeimage_core::files::{atomic_write, rooted};

pub const STATE_DIR: &str = "/var/lib/firstboot";

/// The node config, where it came from, and what the data source staged with it.
pub struct NodeInput {
    pub source: String,
    pub config: NodeConfig,
    /// The node's name, resolved once by [`node_name`].
    pub hostname: Hostname,
    /// The Ignition config the user data was, applied as the `ignition` step.
    pub ignition: Option<StagedIgnition>,
    pub elapsed_ms: u128,
}

impl NodeInput {
    /// The node's name (see [`node_name`]).
    pub fn hostname(&self) -> String {
        self.hostname.to_string()
    }
}

/// The node's name: the config's `hostname`; else the platform's (lower-cased, when it is
/// a valid DNS name); else one derived from the machine, so that nodes without a name
/// never collide in etcd or in the Node list: `node-<MAC>` of the first network
/// interface by name (the interface `{mac}` names in `firstboot.config_url=`; stable
/// across re-imaging the same machine), else `node-<first 12 digits of /etc/machine-id>`.
pub fn node_name(root: &Path, config: &NodeConfig, platform: Option<&str>) -> Result<Hostname> {
    if let Some(h) = &config.hostname {
        return Ok(h.clone());
    }
    if let Some(p) = platform {
        let lower = p.trim().trim_end_matches('.').to_ascii_lowercase();
        match Hostname::try_from(lower.as_str()) {
            Ok(h) => return Ok(h),
            Err(e) => {
                tracing::warn!(hostname = %p, error = %e, "the platform's hostname is not a DNS name; deriving one")
            }
        }
    }
    let ids = crate::source::MachineIds::from_root(root);
    if let Some(mac) = ids.mac {
        let name = format!("node-{}", mac.replace(':', ""));
        if let Ok(h) = Hostname::try_from(name.as_str()) {
            return Ok(h);
        }
    }
    let machine_id = std::fs::read_to_string(rooted(root, "/etc/machine-id")).unwrap_or_default();
    let machine_id = machine_id.trim();
    if machine_id.len() >= 12 && machine_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        let name = format!("node-{}", &machine_id[..12].to_ascii_lowercase());
        return Hostname::try_from(name.as_str()).map_err(|e| anyhow::anyhow!("{e}"));
    }
    anyhow::bail!(
        "no hostname: the node config names none, the platform gives none, and there is neither a \
         network interface's MAC nor an /etc/machine-id to derive one from; set `hostname` in the node config"
    )
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Done,
    /// Already done in an earlier run (the journal says so).
    Skipped,
    Failed,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Ok,
    Failed,
}

/// Outcome of one step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepStatus {
    pub name: String,
    pub state: StepState,
    pub ms: u128,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// `status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub role: Option<Role>,
    pub hostname: Option<String>,
    pub source: Option<String>,
    pub config_sha256: Option<String>,
    pub elapsed_ms: u128,
    pub steps: Vec<StepStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    /// A run that failed before any step (no node config).
    pub fn failed(started: Instant, e: &anyhow::Error) -> Self {
        Status {
            state: RunState::Failed,
            role: None,
            hostname: None,
            source: None,
            config_sha256: None,
            elapsed_ms: started.elapsed().as_millis(),
            steps: Vec::new(),
            error: Some(error_line(e)),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    /// Step name -> digest of the config it completed for.
    done: BTreeMap<String, String>,
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

/// `status.json`, 0640: its error line may name the config's source and fields.
pub fn write_status(root: &Path, s: &Status) -> Result<()> {
    atomic_write(
        &state_path(root, "status.json"),
        &serde_json::to_vec_pretty(s)?,
        0o640,
    )
    .context("writing status.json")
}

/// Digest of the config the steps run for: a changed config re-runs every step.
pub fn config_digest(c: &NodeConfig) -> String {
    hex::encode(Sha256::digest(c.to_yaml().as_bytes()))
}

/// The node config: from `--config`, else from the data sources. Writes nothing.
pub fn acquire(opts: &RunOptions) -> Result<NodeInput> {
    let t = Instant::now();
    if let Some(path) = &opts.config_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the node config {}", path.display()))?;
        let config = NodeConfig::parse_untrusted(&path.display().to_string(), &text)?;
        let hostname = node_name(&opts.root, &config, None)?;
        return Ok(NodeInput {
            source: format!("file:{}", path.display()),
            config,
            hostname,
            ignition: None,
            elapsed_ms: t.elapsed().as_millis(),
        });
    }
    let mut ctx = SourceContext::from_system(&opts.root, opts.platform)?;
    if let (Some(url), Some(p)) = (&opts.metadata_url, opts.platform) {
        ctx.endpoints.insert(p, url.clone());
    }
    let a = source::acquire(&ctx).context("acquiring the node config")?;
    let hostname = node_name(&opts.root, &a.node_config, a.metadata.hostname.as_deref())?;
    Ok(NodeInput {
        source: a.source,
        config: a.node_config,
        hostname,
        ignition: a.ignition,
        elapsed_ms: a.elapsed.as_millis(),
    })
}

/// The ordered steps a node with this config runs. The host comes first: nothing is
/// changed before preflight passes, and the firewall is up before any component
/// listens. The cluster steps ([`crate::assemble`]) follow when the config joins.
pub fn steps_for<'a>(
    config: &NodeConfig,
    ignition: Option<&'a StagedIgnition>,
) -> Vec<Box<dyn Step + 'a>> {
    let mut steps: Vec<Box<dyn Step + 'a>> = vec![
        Box::new(host::PREFLIGHT),
        Box::new(host::FIREWALL),
        Box::new(host::HOSTNAME),
    ];
    if let Some(staged) = ignition {
        steps.push(Box::new(host::Ignition(staged)));
    }
    steps.push(Box::new(host::FILES));
    steps.push(Box::new(host::CONTAINERD_CONFIG));
    steps.push(Box::new(host::IMAGES));
    if config.join {
        steps.extend(crate::assemble::steps(config));
    }
    steps
}

/// Run `steps` in order, skipping those the journal records as done for this config.
/// Stops at the first failure; the status says which step and why.
pub fn run_steps(
    opts: &RunOptions,
    input: &NodeInput,
    steps: &[Box<dyn Step + '_>],
    started: Instant,
) -> Status {
    let hostname = input.hostname();
    let digest = config_digest(&input.config);
    let mut journal = load_journal(&opts.root);
    let ctx = StepContext {
        opts,
        config: &input.config,
        hostname: &hostname,
    };
    let mut status = Status {
        state: RunState::Ok,
        role: Some(input.config.role),
        hostname: Some(hostname.clone()),
        source: Some(input.source.clone()),
        config_sha256: Some(digest.clone()),
        elapsed_ms: 0,
        steps: vec![StepStatus {
            name: "acquire".into(),
            state: StepState::Done,
            ms: input.elapsed_ms,
            detail: input.source.clone(),
        }],
        error: None,
    };
    let earlier: Vec<&str> = steps
        .iter()
        .map(|s| s.name())
        .filter(|n| journal.done.get(*n) == Some(&digest))
        .collect();
    if !earlier.is_empty() {
        announce(
            opts,
            &format!(
                "firstboot: resuming an interrupted run: {} done earlier",
                earlier.join(", ")
            ),
        );
    }
    for step in steps {
        let name = step.name();
        if journal.done.get(name) == Some(&digest) {
            status.steps.push(StepStatus {
                name: name.into(),
                state: StepState::Skipped,
                ms: 0,
                detail: "done in an earlier run".into(),
            });
            continue;
        }
        let t = Instant::now();
        tracing::info!(step = name, "step starting");
        match step.apply(&ctx) {
            Ok(detail) => {
                tracing::info!(step = name, ms = t.elapsed().as_millis() as u64, detail = %detail, "step done");
                status.steps.push(StepStatus {
                    name: name.into(),
                    state: StepState::Done,
                    ms: t.elapsed().as_millis(),
                    detail,
                });
                journal.done.insert(name.to_string(), digest.clone());
                if let Err(e) = save_journal(&opts.root, &journal) {
                    status.state = RunState::Failed;
                    status.error = Some(error_line(&e));
                    break;
                }
                if opts.live {
                    crate::fault::cut(&format!("after-step:{name}"));
                }
            }
            Err(e) => {
                let msg = format!("step {name}: {}", error_line(&e));
                tracing::error!(step = name, error = %error_line(&e), "step failed");
                status.steps.push(StepStatus {
                    name: name.into(),
                    state: StepState::Failed,
                    ms: t.elapsed().as_millis(),
                    detail: error_line(&e),
                });
                status.state = RunState::Failed;
                status.error = Some(msg);
                break;
            }
        }
    }
    status.elapsed_ms = started.elapsed().as_millis();
    status
}

/// The whole run for an acquired node config: its steps (see [`finish`] for what is
/// recorded after them).
pub fn run(opts: &RunOptions, input: &NodeInput, started: Instant) -> Status {
    let steps = steps_for(&input.config, input.ignition.as_ref());
    run_steps(opts, input, &steps, started)
}

/// Record the outcome, durably and in this order: `status.json`, then (when the run
/// succeeded) the `done` marker. A power cut between the two leaves a node that runs
/// again, finds every step in the journal and writes both; one with `done` always has
/// its `status.json`. Returns the status as recorded (failed when the marker could not
/// be written).
pub fn finish(opts: &RunOptions, mut status: Status) -> Status {
    if let Err(e) = write_status(&opts.root, &status) {
        tracing::error!(error = %error_line(&e), "could not write status.json");
        status.state = RunState::Failed;
        status.error = Some(error_line(&e));
        return status;
    }
    if status.state != RunState::Ok {
        return status;
    }
    if opts.live {
        crate::fault::cut("after-status");
    }
    if let Err(e) = mark_done(&opts.root) {
        status.state = RunState::Failed;
        status.error = Some(error_line(&e));
        if let Err(e) = write_status(&opts.root, &status) {
            tracing::error!(error = %error_line(&e), "could not write status.json");
        }
    }
    status
}

/// One step of a plan: what it would do, and whether the journal has it done already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedStep {
    pub name: String,
    pub would: String,
    /// Done in an earlier run for this config: a run skips it.
    pub done: bool,
}

/// What a run would do on this node, step by step, without doing any of it.
pub fn dry_run(opts: &RunOptions, input: &NodeInput) -> Vec<PlannedStep> {
    let hostname = input.hostname();
    let digest = config_digest(&input.config);
    let journal = load_journal(&opts.root);
    let ctx = StepContext {
        opts,
        config: &input.config,
        hostname: &hostname,
    };
    steps_for(&input.config, input.ignition.as_ref())
        .iter()
        .map(|s| PlannedStep {
            name: s.name().to_string(),
            would: s.plan(&ctx),
            done: journal.done.get(s.name()) == Some(&digest),
        })
        .collect()
}

/// The plan as people read it: a heading, then one line per step.
pub fn render_plan(opts: &RunOptions, input: &NodeInput, plan: &[PlannedStep]) -> String {
    let mut s = format!(
        "firstboot: dry run: {} {} (config from {}, sha256 {}); nothing is changed\n",
        input.config.role,
        input.hostname(),
        input.source,
        config_digest(&input.config)
    );
    if already_done(&opts.root) {
        s.push_str(&format!(
            "firstboot already ran on this node (marker {STATE_DIR}/done): a run does nothing \
             unless forced\n"
        ));
    }
    let width = plan.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for (i, p) in plan.iter().enumerate() {
        s.push_str(&format!(
            "{:>2}. {:<width$}  {}{}\n",
            i + 1,
            p.name,
            p.would,
            if p.done {
                " [done in an earlier run]"
            } else {
                ""
            }
        ));
    }
    s
}

/// Mark the run complete: firstboot never runs again on this node. Durable (the file
/// and its directory are synced) before it returns.
pub fn mark_done(root: &Path) -> Result<()> {
    atomic_write(&state_path(root, "done"), b"", 0o644).context("writing the firstboot marker")
}

/// The console line: one line a person reads on the serial console or a screen.
pub fn console_line(status: &Status) -> String {
    if status.state == RunState::Ok {
        format!(
            "firstboot: ok role={} hostname={} in {} ms",
            status.role.map(Role::as_str).unwrap_or("?"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn input() -> NodeInput {
        let config = NodeConfig::parse(
            "t",
            "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\nfiles:\n  - {path: /etc/demo/motd, mode: \"0640\", contents: hello}\n",
        )
        .unwrap();
        NodeInput {
            source: "test".into(),
            hostname: "node-1".parse().unwrap(),
            config,
            ignition: None,
            elapsed_ms: 1,
        }
    }

    fn unnamed() -> NodeConfig {
        NodeConfig::parse(
            "t",
            "version: 1\nrole: worker\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\n",
        )
        .unwrap()
    }

    /// A node without a name in its config or from its platform gets one derived from
    /// its first interface's MAC, else from its machine id; never a shared constant.
    #[test]
    fn unnamed_nodes_get_a_name_of_their_own() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let c = unnamed();
        // The config's name wins, then the platform's (lower-cased).
        assert_eq!(
            node_name(root, &input().config, Some("x"))
                .unwrap()
                .as_str(),
            "node-1"
        );
        assert_eq!(
            node_name(root, &c, Some("Ip-10-0-0-5.EC2.internal."))
                .unwrap()
                .as_str(),
            "ip-10-0-0-5.ec2.internal"
        );
        // Nothing to go by: a clear error, not "node".
        let e = node_name(root, &c, None).unwrap_err().to_string();
        assert!(e.contains("set `hostname` in the node config"), "{e}");
        // machine-id, then the MAC of the first interface by name (lo skipped); an
        // invalid platform name falls through to them.
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/machine-id"),
            "0123456789ABCDEF0123456789abcdef\n",
        )
        .unwrap();
        assert_eq!(
            node_name(root, &c, Some("not a name")).unwrap().as_str(),
            "node-0123456789ab"
        );
        for (iface, mac) in [
            ("lo", "00:00:00:00:00:00"),
            ("ens4", "52:54:00:AB:CD:02"),
            ("ens3", "52:54:00:ab:cd:01"),
        ] {
            let dir = root.join("sys/class/net").join(iface);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            node_name(root, &c, None).unwrap().as_str(),
            "node-525400abcd01"
        );
    }

    /// A step made of a closure.
    struct FnStep<'a> {
        name: &'static str,
        apply: Box<dyn Fn() -> Result<String> + 'a>,
    }

    impl Step for FnStep<'_> {
        fn name(&self) -> &'static str {
            self.name
        }
        fn plan(&self, _: &StepContext) -> String {
            format!("run {}", self.name)
        }
        fn apply(&self, _: &StepContext) -> Result<String> {
            (self.apply)()
        }
    }

    #[test]
    fn steps_are_journaled_and_skipped_on_rerun() {
        let d = tempfile::tempdir().unwrap();
        let opts = RunOptions::for_root(d.path());
        let a = input();
        let calls = Cell::new(0);
        let fail_second = Cell::new(true);
        let steps: Vec<Box<dyn Step>> = vec![
            Box::new(FnStep {
                name: "one",
                apply: Box::new(|| {
                    calls.set(calls.get() + 1);
                    Ok("1".into())
                }),
            }),
            Box::new(FnStep {
                name: "two",
                apply: Box::new(|| {
                    if fail_second.get() {
                        anyhow::bail!("disk on fire")
                    } else {
                        Ok("2".into())
                    }
                }),
            }),
        ];
        let s = run_steps(&opts, &a, &steps, Instant::now());
        assert_eq!(s.state, RunState::Failed);
        assert_eq!(s.error.as_deref(), Some("step two: disk on fire"));
        assert_eq!(console_line(&s), "firstboot: error: step two: disk on fire");
        // Resume after the interruption: step one is not repeated.
        fail_second.set(false);
        let s = run_steps(&opts, &a, &steps, Instant::now());
        assert_eq!(s.state, RunState::Ok);
        assert_eq!(calls.get(), 1);
        assert_eq!(s.steps[1].state, StepState::Skipped);
        assert_eq!(s.steps[2].state, StepState::Done);
        assert!(console_line(&s).starts_with("firstboot: ok role=worker hostname=node-1 in "));
    }

    /// The outcome is recorded status first, marker second: a node with `done` always
    /// has its `status.json`, and a failed run never gets the marker.
    #[test]
    fn finish_writes_status_then_the_marker() {
        let d = tempfile::tempdir().unwrap();
        let opts = RunOptions::for_root(d.path());
        let a = input();
        let s = run_steps(&opts, &a, &[], Instant::now());
        let mut failed = s.clone();
        failed.state = RunState::Failed;
        failed.error = Some("step x: no".into());
        assert_eq!(finish(&opts, failed).state, RunState::Failed);
        assert!(!already_done(d.path()));
        let status: Status =
            serde_json::from_slice(&std::fs::read(state_path(d.path(), "status.json")).unwrap())
                .unwrap();
        assert_eq!(status.state, RunState::Failed);
        assert_eq!(finish(&opts, s).state, RunState::Ok);
        assert!(already_done(d.path()));
        let status: Status =
            serde_json::from_slice(&std::fs::read(state_path(d.path(), "status.json")).unwrap())
                .unwrap();
        assert_eq!(status.state, RunState::Ok);
        // Nothing but the three files: no temporary left beside them.
        let mut names: Vec<String> = std::fs::read_dir(state_path(d.path(), ""))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["done", "status.json"]);
    }

    #[test]
    fn the_plan_lists_the_steps_of_the_role_and_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let opts = RunOptions::for_root(d.path());
        let mut a = input();
        a.config.join = false;
        let plan = dry_run(&opts, &a);
        let names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names.join(" "),
            "preflight firewall hostname files containerd-config images"
        );
        assert!(plan.iter().all(|p| !p.done && !p.would.is_empty()));
        assert_eq!(plan[3].would, "write 1 files: /etc/demo/motd");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // A step the journal has for this config is shown as done.
        let steps: Vec<Box<dyn Step>> = vec![Box::new(host::FILES)];
        assert_eq!(
            run_steps(&opts, &a, &steps, Instant::now()).state,
            RunState::Ok
        );
        let plan = dry_run(&opts, &a);
        assert!(plan[3].done && !plan[2].done);
        assert!(
            render_plan(&opts, &a, &plan).contains(" 4. files   "),
            "{}",
            render_plan(&opts, &a, &plan)
        );
        // Joining adds the cluster steps of the role.
        let join = input();
        assert!(join.config.join, "joining is the default");
        let names: Vec<String> = dry_run(&opts, &join).into_iter().map(|p| p.name).collect();
        assert_eq!(names[6..], ["join-check", "kubelet"]);
    }
}

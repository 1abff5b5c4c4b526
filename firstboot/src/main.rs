//! `firstboot`: runs once on a node's first boot (systemd `firstboot.service`), and from
//! the initramfs as `firstboot state-setup` to prepare the writable state partition.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use firstboot::run::{self, Acquired, RunOptions, Status, Step};
use nodeimage_core::config::NodeConfig;

#[derive(Parser, Debug)]
#[command(
    name = "firstboot",
    version,
    about = "Bring this node into its Kubernetes cluster on first boot"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Apply to this directory tree instead of the running system (for tests and image inspection).
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Data source to use (overrides `firstboot.platform=` and SMBIOS detection).
    #[arg(long, global = true, value_name = "PLATFORM")]
    platform: Option<String>,
    /// Read the node config from this file instead of a data source.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Base URL of the platform's metadata service (with --platform; for tests and proxies).
    #[arg(long, global = true, value_name = "URL")]
    metadata_url: Option<String>,
    /// Run even if the first-boot marker says it already ran.
    #[arg(long, global = true)]
    force: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Acquire the node config and apply it (the default).
    Run,
    /// Initramfs stage: create or grow the state partition, mount it on /var and overlay /etc.
    StateSetup {
        /// Where the initramfs mounted the root filesystem.
        #[arg(long, value_name = "DIR")]
        rootmnt: PathBuf,
    },
    /// Print status.json.
    Status,
    /// Approve pending kubelet serving CSRs that pass the policy and label Nodes with
    /// their roles (run every 30 s by nodeimage-csr-approver.timer on the bootstrap master).
    ApproveCsrs,
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::StateSetup { rootmnt } => match firstboot::state::setup(&rootmnt) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("nodeimage: state setup failed: {e:#}");
                1
            }
        },
        Command::Status => {
            let p = nodeimage_core::files::rooted(
                &cli.run.root,
                &format!("{}/status.json", run::STATE_DIR),
            );
            match std::fs::read_to_string(&p) {
                Ok(s) => {
                    print!("{s}");
                    0
                }
                Err(e) => {
                    eprintln!("firstboot: no status at {}: {e}", p.display());
                    1
                }
            }
        }
        Command::Run => run_firstboot(&cli.run),
        Command::ApproveCsrs => match firstboot::assemble::approve_csrs(&cli.run.root) {
            Ok(n) => {
                tracing::info!(approved = n, "approve-csrs done");
                0
            }
            Err(e) => {
                eprintln!("firstboot: approve-csrs: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("FIRSTBOOT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd, stderr goes to the journal; JSON keeps the fields structured.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }
}

fn run_firstboot(args: &RunArgs) -> i32 {
    let started = Instant::now();
    let opts = RunOptions {
        live: args.root == std::path::Path::new("/"),
        root: args.root.clone(),
        platform: args.platform.clone(),
        config_file: args.config.clone(),
        metadata_url: args.metadata_url.clone(),
    };
    if run::already_done(&opts.root) && !args.force {
        run::announce(
            &opts,
            "firstboot: already done on this node (marker /var/lib/firstboot/done); nothing to do",
        );
        return 0;
    }
    let status = match acquire(&opts) {
        Ok(acquired) => {
            let hostname = acquired
                .config
                .hostname
                .clone()
                .map(String::from)
                .or_else(|| acquired.hostname.clone())
                .unwrap_or_else(|| "node".to_string());
            let steps = steps_for(&acquired);
            let mut status = run::run_steps(&opts, &acquired, &hostname, &steps, started);
            if status.state == "ok" {
                if let Err(e) = run::mark_done(&opts.root) {
                    status.state = "failed".into();
                    status.error = Some(format!("{e:#}"));
                }
            }
            status
        }
        Err(e) => Status {
            state: "failed".into(),
            role: None,
            hostname: None,
            source: None,
            config_sha256: None,
            elapsed_ms: started.elapsed().as_millis(),
            steps: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    };
    if let Err(e) = run::write_status(&opts.root, &status) {
        tracing::error!(error = %format!("{e:#}"), "could not write status.json");
    }
    run::announce(&opts, &run::console_line(&status));
    if status.state == "ok" {
        0
    } else {
        1
    }
}

/// The node config: from `--config`, else from the data sources.
fn acquire(opts: &RunOptions) -> Result<Acquired> {
    let t = Instant::now();
    if let Some(path) = &opts.config_file {
        let config = NodeConfig::load(path)?;
        return Ok(Acquired {
            source: format!("file:{}", path.display()),
            config,
            hostname: None,
            staged: None,
            elapsed_ms: t.elapsed().as_millis(),
        });
    }
    let platform = opts
        .platform
        .as_deref()
        .map(str::parse::<firstboot::source::Platform>)
        .transpose()?;
    let mut ctx = firstboot::source::SourceContext::from_system(&opts.root, platform)?;
    if let (Some(url), Some(p)) = (&opts.metadata_url, platform) {
        ctx.endpoints.insert(p, url.clone());
    }
    let a = firstboot::source::acquire(&ctx).context("acquiring the node config")?;
    Ok(Acquired {
        source: a.source,
        config: a.node_config,
        hostname: a.metadata.hostname,
        staged: a
            .ignition
            .map(|i| Box::new(IgnitionStep(i)) as Box<dyn run::StagedApply>),
        elapsed_ms: a.elapsed.as_millis(),
    })
}

/// The Ignition config a data source staged, applied as the `ignition` step.
struct IgnitionStep(firstboot::ignition::StagedIgnition);

impl run::StagedApply for IgnitionStep {
    fn apply(&self, root: &std::path::Path) -> Result<String> {
        self.0.apply(root)?;
        Ok("ignition config applied".into())
    }
}

/// The ordered steps this node's role needs.
fn steps_for<'a>(acquired: &'a Acquired) -> Vec<Step<'a>> {
    let mut steps: Vec<Step> = Vec::new();
    // Nothing is changed before the host is known to meet the requirements.
    steps.push(Step {
        name: "preflight",
        apply: Box::new(|c| run::apply_preflight(c.opts, c.config)),
    });
    // The firewall is up before any component listens.
    steps.push(Step {
        name: "firewall",
        apply: Box::new(|c| run::apply_firewall(c.opts, c.config)),
    });
    steps.push(Step {
        name: "hostname",
        apply: Box::new(|c| run::apply_hostname(c.opts, c.hostname)),
    });
    if let Some(staged) = &acquired.staged {
        steps.push(Step {
            name: "ignition",
            apply: Box::new(move |c| staged.apply(&c.opts.root)),
        });
    }
    steps.push(Step {
        name: "files",
        apply: Box::new(|c| run::apply_files(c.opts, c.config)),
    });
    steps.push(Step {
        name: "containerd-config",
        apply: Box::new(|c| {
            firstboot::containerd::write_config(&c.opts.root, c.config, c.opts.live)
        }),
    });
    steps.push(Step {
        name: "images",
        apply: Box::new(|c| {
            firstboot::containerd::import_images(&c.opts.root, c.opts.live, c.config.role)
        }),
    });
    if acquired.config.join {
        steps.extend(firstboot::assemble::steps(&acquired.config));
    }
    steps
}

//! `firstboot`: runs once on a node's first boot (systemd `firstboot.service`), and from
//! the initramfs as `firstboot state-setup` to prepare the writable state partition.
//! The steps and the runner are in the library ([`firstboot::run`]); this is the CLI.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};

use firstboot::run::{self, NodeInput, RunOptions, RunState, Status};
use firstboot::source::Platform;

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
    /// Acquire the node config and print what each step would do (and which the journal
    /// has done already); change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
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
    /// Initramfs stage of a network boot (boot=nodeimage-net): fetch the root image named
    /// by nodeimage.root_url= on the kernel command line, verify it against
    /// nodeimage.root_sha256=, mount it from RAM at DIR and set the state up in RAM.
    Netroot {
        /// Where the initramfs wants the root filesystem.
        #[arg(long, value_name = "DIR")]
        rootmnt: PathBuf,
    },
    /// Initramfs stage (local-top): open the root partition through dm-verity as
    /// /dev/mapper/nodeimage-root, per nodeimage.verity= and its companions on the kernel
    /// command line, reading every block once unless nodeimage.verity_check=lazy; print
    /// the device to use as the root (nothing when the command line names no verity root).
    VerityOpen,
    /// Write a signed update bundle (a file or an http(s) URL, from `nodeimage build
    /// --sign-key`) into the root slot this node is not running from: signature and
    /// every hash checked before a byte reaches the slot.
    Update {
        /// The bundle: a path or a URL.
        #[arg(value_name = "FILE|URL")]
        source: String,
    },
    /// Keep the running slot's boot entry for good (drop its boot counter) once firstboot
    /// has succeeded on this node (run on every boot by nodeimage-bless-boot.service).
    BlessBoot,
    /// Print status.json.
    Status,
    /// Approve pending kubelet serving CSRs that pass the policy and label Nodes with
    /// their roles (run every 30 s by nodeimage-csr-approver.timer on the bootstrap master).
    ApproveCsrs,
    /// Reissue this master's certificates that are in their renewal window (the last 30
    /// days, or the last third of a shorter lifetime) and restart the components that
    /// read them (run daily by nodeimage-cert-renewal.timer on masters).
    RenewCerts,
    /// Once firstboot has succeeded: overwrite the boot disk's NODECONFIG partition (the
    /// join secrets, a master's CA keys) with a volume holding only a note, and remove the
    /// bootstrap kubeconfig once the kubelet has its own certificate (run by
    /// nodeimage-erase-secrets.service until it has finished once).
    EraseSecrets,
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::StateSetup { rootmnt } => match firstboot::state::setup(&rootmnt) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("nodeimage: state setup failed: {}", run::error_line(&e));
                1
            }
        },
        Command::Netroot { rootmnt } => {
            let result = std::fs::read_to_string("/proc/cmdline")
                .map_err(anyhow::Error::from)
                .and_then(|c| firstboot::netroot::setup(&rootmnt, &c));
            match result {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("nodeimage: network boot failed: {}", run::error_line(&e));
                    1
                }
            }
        }
        Command::VerityOpen => {
            let result = std::fs::read_to_string("/proc/cmdline")
                .map_err(anyhow::Error::from)
                .and_then(|c| firstboot::verity::open_from_cmdline(&c));
            match result {
                Ok(None) => 0,
                Ok(Some(o)) => {
                    match o.checked_in {
                        Some(t) => eprintln!(
                            "nodeimage: root verified: {} MiB read through dm-verity in {:.1} s",
                            o.bytes >> 20,
                            t.as_secs_f64()
                        ),
                        None => eprintln!(
                            "nodeimage: root opened through dm-verity ({} MiB, checked as read)",
                            o.bytes >> 20
                        ),
                    }
                    println!("{}", o.node.display());
                    0
                }
                Err(e) => {
                    eprintln!("nodeimage: verified root failed: {}", run::error_line(&e));
                    1
                }
            }
        }
        Command::Update { source } => match firstboot::update::run(&source, &cli.run.root) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("firstboot: update failed: {}", run::error_line(&e));
                1
            }
        },
        Command::BlessBoot => match firstboot::update::bless_boot(&cli.run.root) {
            Ok(Some(entry)) => {
                eprintln!("firstboot: boot entry {entry} is good: kept");
                0
            }
            Ok(None) => 0,
            Err(e) => {
                eprintln!("firstboot: bless-boot: {}", run::error_line(&e));
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
                    // The run's status, and what the root is now (its hash, its state).
                    match serde_json::from_str::<serde_json::Value>(&s) {
                        Ok(serde_json::Value::Object(mut m)) => {
                            let cmdline =
                                std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
                            m.insert("root".into(), firstboot::verity::root_status(&cmdline));
                            m.insert(
                                "slots".into(),
                                firstboot::update::slots_status(&cli.run.root, &cmdline),
                            );
                            println!("{}", serde_json::to_string_pretty(&m).unwrap_or(s));
                        }
                        _ => print!("{s}"),
                    }
                    0
                }
                Err(e) => {
                    eprintln!("firstboot: no status at {}: {e}", p.display());
                    1
                }
            }
        }
        Command::Run => run_firstboot(&cli.run),
        Command::EraseSecrets => {
            let devices = firstboot::source::DeviceSet::system(&cli.run.root);
            match firstboot::erase::erase_secrets(
                &cli.run.root,
                &devices,
                firstboot::erase::KUBELET_CERT_WAIT,
            ) {
                Ok(report) => {
                    eprintln!("firstboot: erase-secrets: {report}");
                    0
                }
                Err(e) => {
                    eprintln!("firstboot: erase-secrets: {}", run::error_line(&e));
                    1
                }
            }
        }
        Command::ApproveCsrs => match firstboot::assemble::approve_csrs(&cli.run.root) {
            Ok(n) => {
                tracing::info!(approved = n, "approve-csrs done");
                0
            }
            Err(e) => {
                eprintln!("firstboot: approve-csrs: {}", run::error_line(&e));
                1
            }
        },
        Command::RenewCerts => {
            let live = cli.run.root == std::path::Path::new("/");
            match firstboot::renew::renew_certs(&cli.run.root, live) {
                Ok(summary) => {
                    println!("firstboot: renew-certs: {summary}");
                    0
                }
                Err(e) => {
                    eprintln!("firstboot: renew-certs: {}", run::error_line(&e));
                    1
                }
            }
        }
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
    let mut opts = RunOptions {
        config_file: args.config.clone(),
        metadata_url: args.metadata_url.clone(),
        ..RunOptions::for_root(&args.root)
    };
    if args.dry_run {
        return dry_run(args, opts);
    }
    if run::already_done(&opts.root) && !args.force {
        run::announce(
            &opts,
            "firstboot: already done on this node (marker /var/lib/firstboot/done); nothing to do",
        );
        return 0;
    }
    let status = match acquire(args, &mut opts) {
        Ok(input) => run::run(&opts, &input, started),
        Err(e) => Status::failed(started, &e),
    };
    // status.json, then the marker, both durable before the console says so.
    let status = run::finish(&opts, status);
    run::announce(&opts, &run::console_line(&status));
    if status.state == RunState::Ok {
        0
    } else {
        1
    }
}

/// `--dry-run`: acquire the node config and print the plan; nothing is written.
fn dry_run(args: &RunArgs, mut opts: RunOptions) -> i32 {
    match acquire(args, &mut opts) {
        Ok(input) => {
            let plan = run::dry_run(&opts, &input);
            print!("{}", run::render_plan(&opts, &input, &plan));
            0
        }
        Err(e) => {
            println!("firstboot: dry run: error: {}", run::error_line(&e));
            1
        }
    }
}

/// The node config, with `--platform` parsed into `opts` first (an unknown name fails
/// the run like any acquisition error).
fn acquire(args: &RunArgs, opts: &mut RunOptions) -> anyhow::Result<NodeInput> {
    opts.platform = args
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    run::acquire(opts)
}

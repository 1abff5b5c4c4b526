//! The workstation side of a cluster: `nodeimage cluster new` makes the cluster secrets
//! once; `nodeimage node-config` projects cluster.yml plus those secrets into the user
//! data of one node (native YAML or an Ignition v3.4.0 config), giving each role only
//! what it needs: a worker gets the CA certificate, the API endpoint and the bootstrap
//! token, never a private key.
//!
//! * [`secrets`]: the secrets and their directory.
//! * [`node_config`]: one node's config from cluster.yml and the secrets.
//! * [`terraform`]: hosts from `terraform output -json`.
//! * [`token`]: `cluster token`, a new bootstrap token for later workers.
//! * this module: the commands' arguments and what they do (`cluster new`,
//!   `cluster kubeconfig`, `node-config`).

mod node_config;
mod secrets;
mod terraform;
mod token;

pub use node_config::{
    build_node_config, host_file_name, ignition_wrap, render, NodeConfigFormat, NodeSpec,
};
pub use secrets::{new_bootstrap_token, new_weave_password, secret_files, ClusterSecrets};
pub use terraform::hosts_from_terraform;
pub use token::{cluster_token, TokenArgs};

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimage_core::config::{ClusterConfig, Role};
use nodeimage_core::files::write_secret;

/// `nodeimage cluster new`
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterNewArgs {
    /// The cluster description (Pharos cluster.yml).
    #[arg(short = 'c', long = "config", value_name = "CLUSTER_YML")]
    pub config: PathBuf,
    /// Where to write the secrets [default: <cluster.yml's directory>/secrets].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Replace existing secrets (every node config made from the old ones stops working).
    #[arg(long)]
    pub force: bool,
}

/// `nodeimage node-config`
#[derive(Debug, Clone, clap::Args)]
pub struct NodeConfigArgs {
    /// The cluster description (Pharos cluster.yml).
    #[arg(short = 'c', long = "config", value_name = "CLUSTER_YML")]
    pub config: PathBuf,
    /// The node's role; taken from cluster.yml when --host names a listed host.
    #[arg(long, value_name = "master|worker")]
    pub role: Option<Role>,
    /// This master starts etcd and creates the cluster objects (default: the host marked
    /// `bootstrap: true`, else the first master of cluster.yml).
    #[arg(long)]
    pub bootstrap: bool,
    /// The node's address; a host of cluster.yml, or any address for a node not listed.
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// The node's name (hostname).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    #[arg(long, value_enum, default_value_t = NodeConfigFormat::Yaml)]
    pub format: NodeConfigFormat,
    /// Output file (stdout when absent); with --hosts-from-tf, an output directory.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Read the hosts from `terraform output -json` (output `pharos`) and write one
    /// config per host.
    #[arg(long = "hosts-from-tf", value_name = "TF_JSON")]
    pub hosts_from_tf: Option<PathBuf>,
    /// The secrets made by `cluster new` [default: <cluster.yml's directory>/secrets].
    #[arg(long, value_name = "DIR")]
    pub secrets: Option<PathBuf>,
}

/// `nodeimage cluster kubeconfig`
#[derive(Debug, Clone, clap::Args)]
pub struct KubeconfigArgs {
    /// The cluster description (Pharos cluster.yml).
    #[arg(short = 'c', long = "config", value_name = "CLUSTER_YML")]
    pub config: PathBuf,
    /// The secrets made by `cluster new` [default: <cluster.yml's directory>/secrets].
    #[arg(long, value_name = "DIR")]
    pub secrets: Option<PathBuf>,
    /// The user name (the certificate's common name).
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// The user's group (the certificate's organization); the default is bound to
    /// `cluster-admin` by the bootstrap master.
    #[arg(long, default_value = nodeimage_core::layout::CLUSTER_ADMINS_GROUP)]
    pub group: String,
    /// The API server [default: cluster.yml's api_endpoint, else the first master].
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// How long the credential is valid, in hours (at most a year).
    #[arg(long, value_name = "HOURS", default_value_t = 24)]
    pub valid_hours: u32,
    /// Output file, written 0600 (stdout when absent).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// `nodeimage cluster kubeconfig`: a kubeconfig for a person or a tool on the
/// workstation, with a client certificate signed by the cluster CA (so no file has to
/// be copied off a master).
pub fn kubeconfig(args: &KubeconfigArgs) -> Result<()> {
    use nodeimage_core::kubeconfig::{Kubeconfig, KubeconfigUser};
    use nodeimage_core::pki::{issue_valid_for, CaKind, CertSpec, Target, Usage};
    let cluster = ClusterConfig::load(&args.config)?;
    let secrets = ClusterSecrets::load(&secrets_dir(&args.secrets, &args.config))?;
    if args.valid_hours == 0 || args.valid_hours > 24 * 365 {
        bail!(
            "--valid-hours: expected 1 to 8760, found {}",
            args.valid_hours
        );
    }
    let server = api_server(&cluster, &args.config, &args.server)?;
    let spec = CertSpec {
        name: format!("kubeconfig for {}", args.user),
        ca: CaKind::Cluster,
        common_name: args.user.clone(),
        organizations: vec![args.group.clone()],
        dns_names: Vec::new(),
        ips: Vec::new(),
        usage: Usage::Client,
        target: Target::Kubeconfig {
            path: String::new(),
            server: server.clone(),
        },
    };
    let now = time::OffsetDateTime::now_utc();
    let issued = issue_valid_for(
        &spec,
        &secrets.ca,
        now,
        time::Duration::hours(args.valid_hours.into()),
    )?;
    let k = Kubeconfig::new(
        &cluster.name,
        &server,
        &secrets.ca.cert_pem,
        &args.user,
        KubeconfigUser::EmbeddedCert {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        },
    );
    let text = k.to_yaml();
    match &args.output {
        Some(p) => {
            write_secret(p, text.as_bytes()).with_context(|| format!("writing {}", p.display()))?;
            eprintln!(
                "{}: kubeconfig for {} ({}) at {server}, valid {} h",
                p.display(),
                args.user,
                args.group,
                args.valid_hours
            );
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

/// The API server's URL: `server` if given, else cluster.yml's `api_endpoint`, else the
/// first master's address.
fn api_server(cluster: &ClusterConfig, config: &Path, server: &Option<String>) -> Result<String> {
    if let Some(s) = server {
        return Ok(s.clone());
    }
    let endpoint = cluster
        .api_endpoint
        .clone()
        .or_else(|| {
            cluster
                .hosts
                .iter()
                .find(|h| h.role == Role::Master)
                .map(|h| {
                    h.private_address
                        .clone()
                        .unwrap_or_else(|| h.address.clone())
                })
        })
        .with_context(|| {
            format!(
                "{}: no api_endpoint and no master: give --server",
                config.display()
            )
        })?;
    Ok(nodeimage_core::layout::api_server_url(&endpoint))
}

fn cluster_dir(config: &Path) -> PathBuf {
    match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `nodeimage cluster new`: make the cluster secrets.
pub fn cluster_new(args: &ClusterNewArgs) -> Result<()> {
    let cluster = ClusterConfig::load(&args.config)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| cluster_dir(&args.config).join("secrets"));
    if dir.symlink_metadata().is_ok() && !args.force {
        bail!(
            "{} exists; refusing to replace cluster secrets without --force",
            dir.display()
        );
    }
    let secrets = ClusterSecrets::generate(time::OffsetDateTime::now_utc())?;
    secrets.write(&dir, args.force)?;
    tracing::info!(cluster = %cluster.name, dir = %dir.display(), "cluster secrets written");
    eprintln!(
        "cluster {}: secrets written to {} (keep them private)",
        cluster.name,
        dir.display()
    );
    Ok(())
}

fn secrets_dir(args_dir: &Option<PathBuf>, config: &Path) -> PathBuf {
    args_dir
        .clone()
        .unwrap_or_else(|| cluster_dir(config).join("secrets"))
}

/// `nodeimage node-config`: write the user data for one node, or for every host of a
/// Terraform output.
pub fn node_config(args: &NodeConfigArgs) -> Result<()> {
    let mut cluster = ClusterConfig::load(&args.config)?;
    let base = cluster_dir(&args.config);
    let secrets = ClusterSecrets::load(&secrets_dir(&args.secrets, &args.config))?;
    let src = args.config.display().to_string();

    if let Some(tf) = &args.hosts_from_tf {
        if !cluster.hosts.is_empty() {
            bail!("{src} lists hosts and --hosts-from-tf was given: use one source of hosts");
        }
        if args.host.is_some() || args.role.is_some() || args.hostname.is_some() || args.bootstrap {
            bail!("--hosts-from-tf makes a config for every host: --host, --role, --hostname and --bootstrap do not apply");
        }
        let text =
            std::fs::read_to_string(tf).with_context(|| format!("reading {}", tf.display()))?;
        cluster.hosts = hosts_from_terraform(&text).with_context(|| tf.display().to_string())?;
        cluster.validate(&format!("{src} with hosts from {}", tf.display()))?;
        let out = args.output.clone().unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let boot = cluster.bootstrap_master().map(|h| h.address.clone());
        for h in &cluster.hosts {
            let spec = NodeSpec::from_host(h, boot.as_deref() == Some(h.address.as_str()));
            let c = build_node_config(&cluster, &base, &secrets, &spec)
                .with_context(|| format!("host {}", h.address))?;
            let path = out.join(host_file_name(h, args.format));
            write_secret(&path, render(&c, args.format).as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{}: {} {}{}",
                path.display(),
                h.role,
                h.address,
                if spec.bootstrap { " (bootstrap)" } else { "" }
            );
        }
        return Ok(());
    }

    let listed = args.host.as_deref().and_then(|a| {
        cluster
            .hosts
            .iter()
            .find(|h| h.address == a || h.private_address.as_deref() == Some(a))
    });
    let boot_addr = cluster.bootstrap_master().map(|h| h.address.clone());
    let mut spec = match listed {
        Some(h) => {
            if let Some(r) = args.role {
                if r != h.role {
                    bail!("--role {r} but {src} lists {} as a {}", h.address, h.role);
                }
            }
            let is_boot = boot_addr.as_deref() == Some(h.address.as_str());
            if args.bootstrap && !is_boot {
                bail!(
                    "--bootstrap for {} but the bootstrap master of {src} is {}",
                    h.address,
                    boot_addr.as_deref().unwrap_or("-")
                );
            }
            NodeSpec::from_host(h, is_boot)
        }
        None => {
            if args.bootstrap && cluster.masters().next().is_some() {
                bail!(
                    "--bootstrap: {src} lists masters and its bootstrap master is {}; pass --host for it",
                    boot_addr.as_deref().unwrap_or("-")
                );
            }
            NodeSpec {
                role: args.role,
                bootstrap: args.bootstrap,
                address: args.host.clone(),
                ..Default::default()
            }
        }
    };
    if let Some(n) = &args.hostname {
        spec.hostname = Some(n.parse().context("--hostname")?);
    }
    let c = build_node_config(&cluster, &base, &secrets, &spec)?;
    let text = render(&c, args.format);
    match &args.output {
        Some(p) => {
            write_secret(p, text.as_bytes()).with_context(|| format!("writing {}", p.display()))?;
            eprintln!(
                "{}: {} node config{}",
                p.display(),
                c.role,
                if c.bootstrap {
                    " (bootstrap master)"
                } else {
                    ""
                }
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

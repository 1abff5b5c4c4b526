//! The workstation side of a cluster: `nodeimage cluster new` makes the cluster secrets
//! once; `nodeimage node-config` projects cluster.yml plus those secrets into the user
//! data of one node (native YAML or an Ignition v3.4.0 config), giving each role only
//! what it needs: a worker gets the CA certificate, the API endpoint and the bootstrap
//! token, never a private key.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nodeimage_core::config::{
    ClusterConfig, Host, NodeCluster, NodeConfig, NodeExternalEtcd, Role, Secrets,
    NODE_CONFIG_IGNITION_PATH, NODE_CONFIG_VERSION,
};
use nodeimage_core::files::write_secret;
use nodeimage_core::pki::{CaPair, ServiceAccountKey};
use rand::Rng;

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

/// Output format of `nodeimage node-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NodeConfigFormat {
    /// The native node config (YAML).
    #[default]
    Yaml,
    /// An Ignition v3.4.0 config carrying the node config as a file.
    Ignition,
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

/// The cluster-wide secrets `cluster new` makes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecrets {
    pub ca: CaPair,
    pub etcd_ca: CaPair,
    pub front_proxy_ca: CaPair,
    pub service_account: ServiceAccountKey,
    /// `[a-z0-9]{6}.[a-z0-9]{16}`
    pub bootstrap_token: String,
    pub weave_password: String,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecrets(<redacted>)")
    }
}

/// File names inside the secrets directory.
pub mod secret_files {
    pub const CA_CRT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    pub const ETCD_CA_CRT: &str = "etcd-ca.crt";
    pub const ETCD_CA_KEY: &str = "etcd-ca.key";
    pub const FRONT_PROXY_CA_CRT: &str = "front-proxy-ca.crt";
    pub const FRONT_PROXY_CA_KEY: &str = "front-proxy-ca.key";
    pub const SA_KEY: &str = "sa.key";
    pub const SA_PUB: &str = "sa.pub";
    pub const BOOTSTRAP_TOKEN: &str = "bootstrap-token";
    pub const WEAVE_PASSWORD: &str = "weave-password";
    pub const ALL: [&str; 10] = [
        CA_CRT,
        CA_KEY,
        ETCD_CA_CRT,
        ETCD_CA_KEY,
        FRONT_PROXY_CA_CRT,
        FRONT_PROXY_CA_KEY,
        SA_KEY,
        SA_PUB,
        BOOTSTRAP_TOKEN,
        WEAVE_PASSWORD,
    ];
}

const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

/// A bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}` from the operating system's CSPRNG.
pub fn new_bootstrap_token() -> String {
    format!(
        "{}.{}",
        random_string(6, TOKEN_ALPHABET),
        random_string(16, TOKEN_ALPHABET)
    )
}

/// A Weave Net password: 32 characters of [A-Za-z0-9] (≈190 bits).
pub fn new_weave_password() -> String {
    random_string(
        32,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    )
}

impl ClusterSecrets {
    pub fn generate(now: time::OffsetDateTime) -> Result<Self> {
        Ok(ClusterSecrets {
            ca: CaPair::generate("kubernetes", now)?,
            etcd_ca: CaPair::generate("etcd-ca", now)?,
            front_proxy_ca: CaPair::generate("front-proxy-ca", now)?,
            service_account: ServiceAccountKey::generate()?,
            bootstrap_token: new_bootstrap_token(),
            weave_password: new_weave_password(),
        })
    }

    fn files(&self) -> Vec<(&'static str, String)> {
        use secret_files::*;
        vec![
            (CA_CRT, self.ca.cert_pem.clone()),
            (CA_KEY, self.ca.key_pem.clone()),
            (ETCD_CA_CRT, self.etcd_ca.cert_pem.clone()),
            (ETCD_CA_KEY, self.etcd_ca.key_pem.clone()),
            (FRONT_PROXY_CA_CRT, self.front_proxy_ca.cert_pem.clone()),
            (FRONT_PROXY_CA_KEY, self.front_proxy_ca.key_pem.clone()),
            (SA_KEY, self.service_account.private_pem.clone()),
            (SA_PUB, self.service_account.public_pem.clone()),
            (BOOTSTRAP_TOKEN, format!("{}\n", self.bootstrap_token)),
            (WEAVE_PASSWORD, format!("{}\n", self.weave_password)),
        ]
    }

    /// Read a secrets directory made by [`ClusterSecrets::write`].
    pub fn load(dir: &Path) -> Result<Self> {
        use secret_files::*;
        let read = |name: &str| -> Result<String> {
            std::fs::read_to_string(dir.join(name)).with_context(|| {
                format!(
                    "reading {} (make the cluster secrets with `nodeimage cluster new` first)",
                    dir.join(name).display()
                )
            })
        };
        let s = ClusterSecrets {
            ca: CaPair {
                cert_pem: read(CA_CRT)?,
                key_pem: read(CA_KEY)?,
            },
            etcd_ca: CaPair {
                cert_pem: read(ETCD_CA_CRT)?,
                key_pem: read(ETCD_CA_KEY)?,
            },
            front_proxy_ca: CaPair {
                cert_pem: read(FRONT_PROXY_CA_CRT)?,
                key_pem: read(FRONT_PROXY_CA_KEY)?,
            },
            service_account: ServiceAccountKey {
                private_pem: read(SA_KEY)?,
                public_pem: read(SA_PUB)?,
            },
            bootstrap_token: read(BOOTSTRAP_TOKEN)?.trim().to_string(),
            weave_password: read(WEAVE_PASSWORD)?.trim().to_string(),
        };
        if !nodeimage_core::config::valid_bootstrap_token(&s.bootstrap_token) {
            bail!(
                "{}: not of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}",
                dir.join(BOOTSTRAP_TOKEN).display()
            );
        }
        Ok(s)
    }

    /// Write all files (0600) into `dir` (0700) as one set: they are written into a fresh
    /// sibling directory which then takes `dir`'s place in one rename (an atomic exchange
    /// with `--force`). An existing `dir` is refused unless `force`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let exists = dir.symlink_metadata().is_ok();
        if exists && !force {
            bail!(
                "{} exists; refusing to replace cluster secrets without --force",
                dir.display()
            );
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let base = dir
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a directory name", dir.display()))?
            .to_string_lossy()
            .into_owned();
        let tmp = parent.join(format!(".{base}.new.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        let cleanup = |e: anyhow::Error| {
            let _ = std::fs::remove_dir_all(&tmp);
            e
        };
        for (name, data) in self.files() {
            write_secret(&tmp.join(name), data.as_bytes())
                .with_context(|| format!("writing {}", tmp.join(name).display()))
                .map_err(cleanup)?;
        }
        std::fs::File::open(&tmp)
            .and_then(|d| d.sync_all())
            .map_err(|e| cleanup(e.into()))?;
        if exists {
            exchange(&tmp, dir)
                .with_context(|| format!("replacing {}", dir.display()))
                .map_err(cleanup)?;
            // `tmp` now holds the old secrets.
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("removing the old secrets in {}", tmp.display()))?;
        } else {
            std::fs::rename(&tmp, dir)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))
                .map_err(cleanup)?;
        }
        std::fs::File::open(&parent).and_then(|d| d.sync_all()).ok();
        Ok(())
    }
}

/// Atomically swap two paths (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both arguments are valid NUL-terminated paths; AT_FDCWD resolves them
    // relative to the working directory like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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

/// What `node-config` knows about the node it makes a config for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSpec {
    pub role: Option<Role>,
    pub bootstrap: bool,
    pub address: Option<String>,
    pub private_address: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    fn from_host(h: &Host, bootstrap: bool) -> Self {
        NodeSpec {
            role: Some(h.role),
            bootstrap,
            address: Some(h.address.clone()),
            private_address: h.private_address.clone(),
            hostname: h.hostname.clone(),
            labels: h.labels.clone(),
        }
    }
}

fn read_relative(base: &Path, p: &str, what: &str) -> Result<String> {
    let path = if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        base.join(p)
    };
    std::fs::read_to_string(&path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Build the node config for one node. `base` is cluster.yml's directory: external etcd
/// and token-webhook files named in cluster.yml are read relative to it and inlined
/// (masters only).
pub fn build_node_config(
    cluster: &ClusterConfig,
    base: &Path,
    secrets: &ClusterSecrets,
    node: &NodeSpec,
) -> Result<NodeConfig> {
    let role = node
        .role
        .ok_or_else(|| anyhow!("the node's role is unknown: pass --role master|worker"))?;
    if node.bootstrap && role != Role::Master {
        bail!("only a master can bootstrap");
    }
    let api_endpoint = cluster.resolved_api_endpoint().ok_or_else(|| {
        anyhow!(
            "cluster.yml has neither `api_endpoint` nor a master host: the API endpoint is unknown"
        )
    })?;
    let master = role == Role::Master;
    let masters: Vec<String> = cluster
        .masters()
        .map(|h| h.internal_address().to_string())
        .collect();
    let mut nodes: Vec<String> = cluster
        .hosts
        .iter()
        .map(|h| h.internal_address().to_string())
        .collect();
    nodes.extend(cluster.network.node_subnets.iter().map(|n| n.to_string()));
    nodes.dedup();
    // `cluster.nodes` is for firewall sources and must be addresses or CIDRs.
    nodes.retain(|n| n.parse::<std::net::IpAddr>().is_ok() || n.parse::<ipnet::IpNet>().is_ok());

    let etcd = match (&cluster.etcd, master) {
        (Some(e), true) => Some(NodeExternalEtcd {
            endpoints: e.endpoints.clone(),
            certificate: read_relative(base, &e.certificate, "etcd.certificate")?,
            key: read_relative(base, &e.key, "etcd.key")?,
            ca_certificate: read_relative(base, &e.ca_certificate, "etcd.ca_certificate")?,
        }),
        _ => None,
    };
    let authentication = match (&cluster.authentication, master) {
        (Some(a), true) => {
            let mut a = a.clone();
            if let Some(tw) = a.token_webhook.as_mut() {
                // Inline the PEM files: a node has no access to the workstation's paths.
                let c = &mut tw.config.cluster;
                if let Some(p) = c.certificate_authority.take() {
                    c.certificate_authority = Some(read_relative(
                        base,
                        &p,
                        "token webhook certificate_authority",
                    )?);
                }
                let u = &mut tw.config.user;
                if let Some(p) = u.client_certificate.take() {
                    u.client_certificate =
                        Some(read_relative(base, &p, "token webhook client_certificate")?);
                }
                if let Some(p) = u.client_key.take() {
                    u.client_key = Some(read_relative(base, &p, "token webhook client_key")?);
                }
            }
            Some(a)
        }
        _ => None,
    };
    let s = secrets;
    let node_secrets = if master {
        Secrets {
            ca_certificate: Some(s.ca.cert_pem.clone()),
            bootstrap_token: Some(s.bootstrap_token.clone()),
            ca_key: Some(s.ca.key_pem.clone()),
            etcd_ca_certificate: cluster.etcd.is_none().then(|| s.etcd_ca.cert_pem.clone()),
            etcd_ca_key: cluster.etcd.is_none().then(|| s.etcd_ca.key_pem.clone()),
            front_proxy_ca_certificate: Some(s.front_proxy_ca.cert_pem.clone()),
            front_proxy_ca_key: Some(s.front_proxy_ca.key_pem.clone()),
            service_account_key: Some(s.service_account.private_pem.clone()),
            service_account_public_key: Some(s.service_account.public_pem.clone()),
            weave_password: Some(s.weave_password.clone()),
        }
    } else {
        Secrets {
            ca_certificate: Some(s.ca.cert_pem.clone()),
            bootstrap_token: Some(s.bootstrap_token.clone()),
            ..Default::default()
        }
    };
    let c = NodeConfig {
        version: NODE_CONFIG_VERSION,
        role,
        hostname: node.hostname.clone(),
        bootstrap: node.bootstrap,
        address: node.address.clone(),
        private_address: node.private_address.clone(),
        cluster: NodeCluster {
            name: cluster.name.clone(),
            api_endpoint,
            network: cluster.network.clone(),
            masters,
            nodes,
            etcd,
            authentication,
            audit: if master { cluster.audit.clone() } else { None },
            // The kubelet needs `--cloud-provider=external` on every node.
            cloud: cluster.cloud.clone(),
            // Workers need the ingress node selector for their firewall.
            addons: cluster.addons.clone(),
            taint_masters: cluster.taint_masters,
            registry_mirrors: BTreeMap::new(),
        },
        labels: node.labels.clone(),
        taints: Vec::new(),
        files: Vec::new(),
        secrets: node_secrets,
        preflight: Default::default(),
        join: true,
    };
    // What we hand out must be what firstboot accepts.
    let text = c.to_yaml();
    let back = NodeConfig::parse("generated node config", &text)?;
    back.require_join_secrets("generated node config")?;
    Ok(back)
}

/// Render a node config in the requested format.
pub fn render(c: &NodeConfig, format: NodeConfigFormat) -> String {
    match format {
        NodeConfigFormat::Yaml => c.to_yaml(),
        NodeConfigFormat::Ignition => ignition_wrap(&c.to_yaml()),
    }
}

/// An Ignition v3.4.0 config with the node config as a 0600 file at
/// [`NODE_CONFIG_IGNITION_PATH`] (a base64 `data:` URL).
pub fn ignition_wrap(node_yaml: &str) -> String {
    let v = serde_json::json!({
        "ignition": { "version": "3.4.0" },
        "storage": {
            "files": [{
                "path": NODE_CONFIG_IGNITION_PATH,
                "mode": 0o600,
                "overwrite": true,
                "contents": { "source": format!("data:;base64,{}", B64.encode(node_yaml)) }
            }]
        }
    });
    let mut s = serde_json::to_string_pretty(&v).expect("json");
    s.push('\n');
    s
}

/// One group of Terraform's `pharos` output.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TfGroup {
    address: OneOrMany,
    #[serde(default)]
    private_address: Option<OneOrMany>,
    role: Role,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ssh_key_path: Option<String>,
    #[serde(default)]
    container_runtime: Option<String>,
    #[serde(default)]
    hostname: Option<OneOrMany>,
    #[serde(default, alias = "labels")]
    label: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Hosts from `terraform output -json`: the output named `pharos` whose `value` maps
/// group names to `{address: [..], private_address: [..], role, user, label: {..}}`.
/// Groups are taken in name order, addresses in list order.
pub fn hosts_from_terraform(json: &str) -> Result<Vec<Host>> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("terraform output is not JSON")?;
    let value = v
        .get("pharos")
        .ok_or_else(|| anyhow!("terraform output has no `pharos` output"))?
        .get("value")
        .ok_or_else(|| {
            anyhow!("terraform output `pharos` has no `value` (use `terraform output -json`)")
        })?;
    let groups: BTreeMap<String, serde_json::Value> = serde_json::from_value(value.clone())
        .context("`pharos.value` must map group names to host groups")?;
    let mut hosts = Vec::new();
    for (name, g) in groups {
        let g: TfGroup = serde_json::from_value(g)
            .with_context(|| format!("terraform output pharos.value.{name}"))?;
        let addresses = g.address.into_vec();
        let private = g
            .private_address
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        let hostnames = g.hostname.map(OneOrMany::into_vec).unwrap_or_default();
        if !private.is_empty() && private.len() != addresses.len() {
            bail!(
                "terraform output pharos.value.{name}: {} addresses but {} private addresses",
                addresses.len(),
                private.len()
            );
        }
        if !hostnames.is_empty() && hostnames.len() != addresses.len() {
            bail!(
                "terraform output pharos.value.{name}: {} addresses but {} hostnames",
                addresses.len(),
                hostnames.len()
            );
        }
        let labels: BTreeMap<String, String> = g
            .label
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
        for (i, address) in addresses.into_iter().enumerate() {
            hosts.push(Host {
                address,
                private_address: private.get(i).cloned().filter(|p| !p.is_empty()),
                role: g.role,
                labels: labels.clone(),
                bootstrap: false,
                hostname: hostnames.get(i).cloned(),
                user: g.user.clone(),
                ssh_key_path: g.ssh_key_path.clone(),
                container_runtime: g.container_runtime.clone(),
            });
        }
    }
    if hosts.is_empty() {
        bail!("terraform output `pharos` lists no hosts");
    }
    Ok(hosts)
}

/// File name for a host's config: `<role>-<address>.yaml` / `.ign`.
pub fn host_file_name(h: &Host, format: NodeConfigFormat) -> String {
    let addr: String = h
        .address
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let ext = match format {
        NodeConfigFormat::Yaml => "yaml",
        NodeConfigFormat::Ignition => "ign",
    };
    format!("{}-{addr}.{ext}", h.role)
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
        spec.hostname = Some(n.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_password_forms() {
        for _ in 0..50 {
            let t = new_bootstrap_token();
            assert!(nodeimage_core::config::valid_bootstrap_token(&t), "{t}");
        }
        assert_ne!(new_bootstrap_token(), new_bootstrap_token());
        let p = new_weave_password();
        assert_eq!(p.len(), 32);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn file_names() {
        let h = Host {
            address: "fd00::1".into(),
            private_address: None,
            role: Role::Worker,
            labels: Default::default(),
            bootstrap: false,
            hostname: None,
            user: None,
            ssh_key_path: None,
            container_runtime: None,
        };
        assert_eq!(
            host_file_name(&h, NodeConfigFormat::Ignition),
            "worker-fd00__1.ign"
        );
    }
}

//! `nodeimage cluster token`: a new bootstrap token for workers that boot after the
//! first one expired (`bootstrap_token_ttl`, 24 h by default, counted from the
//! bootstrap master's first boot).
//!
//! The workstation holds the cluster CA, so it signs itself a short-lived
//! `cluster-admin` client certificate (10 minutes), creates the token's
//! `bootstrap.kubernetes.io/token` Secret through the API server, and only then records
//! the token in the secrets directory, where `nodeimage node-config` takes it from. The
//! earlier token stays valid on the cluster until its own expiration. The token is
//! never printed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nodeimage_core::config::{
    bootstrap_token_expiration, check_bootstrap_token_ttl, BootstrapToken, ClusterConfig,
    BOOTSTRAP_TOKEN_SECRET_TYPE, DEFAULT_BOOTSTRAP_TOKEN_TTL,
};
use nodeimage_core::files::write_secret;
use nodeimage_core::pki::{issue_valid_for, CaKind, CertSpec, Target, Usage};

use super::secrets::{new_bootstrap_token, secret_files, ClusterSecrets};
use super::{api_server, secrets_dir};

/// `nodeimage cluster token`
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The cluster description (Pharos cluster.yml).
    #[arg(short = 'c', long = "config", value_name = "CLUSTER_YML")]
    pub config: PathBuf,
    /// The secrets made by `cluster new` [default: <cluster.yml's directory>/secrets].
    #[arg(long, value_name = "DIR")]
    pub secrets: Option<PathBuf>,
    /// How long the new token is valid, a Go duration such as `24h` or `90m` (`0`: never
    /// expires) [default: cluster.yml's bootstrap_token_ttl, else 24h].
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// The API server [default: cluster.yml's api_endpoint, else the first master].
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// How long the workstation's own admin certificate for this request is valid.
const ADMIN_CERT_VALIDITY: time::Duration = time::Duration::minutes(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `nodeimage cluster token`
pub fn cluster_token(args: &TokenArgs) -> Result<()> {
    let cluster = ClusterConfig::load(&args.config)?;
    let dir = secrets_dir(&args.secrets, &args.config);
    let secrets = ClusterSecrets::load(&dir)?;
    let ttl = args
        .ttl
        .clone()
        .or_else(|| cluster.bootstrap_token_ttl.clone())
        .unwrap_or_else(|| DEFAULT_BOOTSTRAP_TOKEN_TTL.to_string());
    if let Err(m) = check_bootstrap_token_ttl(&ttl) {
        bail!("--ttl: {m}");
    }
    let server = api_server(&cluster, &args.config, &args.server)?;
    let token: BootstrapToken = new_bootstrap_token()
        .parse()
        .context("a fresh bootstrap token")?;
    let now = time::OffsetDateTime::now_utc();
    let expiration = bootstrap_token_expiration(now, &ttl);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": token.secret_name(), "namespace": "kube-system"},
        "type": BOOTSTRAP_TOKEN_SECRET_TYPE,
        "stringData": token.secret_string_data(
            "Node join token made by nodeimage cluster token",
            expiration,
        ),
    });
    let url = format!(
        "{}/api/v1/namespaces/kube-system/secrets",
        server.trim_end_matches('/')
    );
    let client = admin_client(&secrets, &server, now)?;
    let resp = client
        .post(&url)
        .json(&body)
        .send()
        .with_context(|| format!("POST {url}: the API server did not answer"))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        // The API echoes objects in some errors: never let the token through.
        let message = message.replace(token.secret(), "<redacted>");
        bail!("POST {url}: {status}: {message}");
    }
    let path = dir.join(secret_files::BOOTSTRAP_TOKEN);
    write_secret(&path, format!("{}\n", token.as_str()).as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    let until = match expiration {
        Some(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        None => "never (ttl 0)".into(),
    };
    eprintln!(
        "bootstrap token {} created at {server}, expires {until}; recorded in {} for `nodeimage node-config` (the previous token stays valid until its own expiration)",
        token.id(),
        path.display()
    );
    Ok(())
}

/// An HTTPS client that trusts only the cluster CA and presents a `cluster-admin`
/// certificate the workstation signs itself.
fn admin_client(
    secrets: &ClusterSecrets,
    server: &str,
    now: time::OffsetDateTime,
) -> Result<reqwest::blocking::Client> {
    let spec = CertSpec {
        name: "nodeimage cluster token".into(),
        ca: CaKind::Cluster,
        common_name: "nodeimage-cluster-token".into(),
        organizations: vec![nodeimage_core::layout::CLUSTER_ADMINS_GROUP.into()],
        dns_names: Vec::new(),
        ips: Vec::new(),
        usage: Usage::Client,
        target: Target::Kubeconfig {
            path: String::new(),
            server: server.to_string(),
        },
    };
    let issued = issue_valid_for(&spec, &secrets.ca, now, ADMIN_CERT_VALIDITY)?;
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", issued.cert_pem, issued.key_pem).as_bytes())
            .context("the workstation's admin certificate")?;
    let ca = reqwest::Certificate::from_pem(secrets.ca.cert_pem.as_bytes())
        .context("the cluster CA certificate")?;
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(identity)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTPS client")
}

//! `nodeimage`: build immutable Kubernetes node images, and make the secrets and per-node
//! configs that let nodes booted from them assemble a cluster.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "nodeimage",
    version,
    about = "Bake immutable Kubernetes node images that assemble themselves into a cluster",
    long_about = "Bake immutable Kubernetes node images that assemble themselves into a cluster.\n\n\
A profile (profiles/*.toml) pins everything an image holds. `nodeimage build` turns it into a \
GPT disk image; `nodeimage cluster new` and `nodeimage node-config` make the secrets and the \
per-node configs; `nodeimage write-config` puts one into an image's NODECONFIG partition."
)]
struct Cli {
    /// Log more (-v debug, -vv trace); NODEIMAGE_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a node image from a profile: raw, raw.zst, qcow2, vhd (Azure), gce or pxe (network boot files) outputs, as its [outputs] formats say, with manifest.json and SHA256SUMS.
    Build(nodeimage::build::BuildArgs),
    /// Resolve a profile's container images to per-arch digests (writes NAME.lock.json beside it).
    Lock(nodeimage::oci::LockArgs),
    /// Put a node config (node.yaml or an Ignition config) into an image's NODECONFIG partition.
    WriteConfig(nodeimage::disk::WriteConfigArgs),
    /// Print an image's partitions, manifest and node config (secrets redacted).
    Inspect(nodeimage::disk::InspectArgs),
    /// Print the port policy (firewall and bind addresses) of a role, from the seeds' port tables.
    Ports(nodeimage::ports::PortsArgs),
    /// Cluster-wide secrets.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Make the user data (node config) for one node, or one per host of a Terraform output.
    NodeConfig(nodeimage::cluster::NodeConfigArgs),
    /// Make the Ed25519 key pair that signs update bundles (`build --sign-key`).
    Keygen(nodeimage::keygen::KeygenArgs),
    /// Upload a built image to a cloud (AWS: an EBS snapshot through the EBS direct APIs, then an AMI).
    #[command(subcommand)]
    Upload(nodeimage::upload::UploadCommand),
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Create the cluster's CAs, service-account keys, bootstrap token and Weave password (files 0600).
    New(nodeimage::cluster::ClusterNewArgs),
    /// Write a kubeconfig with a client certificate from the cluster CA (for kubectl on a workstation).
    Kubeconfig(nodeimage::cluster::KubeconfigArgs),
    /// Create a new bootstrap token on the running cluster (for workers that boot after the first token expired) and record it for node-config.
    Token(nodeimage::cluster::TokenArgs),
}

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NODEIMAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let result = match &cli.command {
        Command::Build(a) => nodeimage::build::build(a).map(|r| {
            println!("{}", r.raw.display());
        }),
        Command::Lock(a) => nodeimage::oci::run_lock(a),
        Command::WriteConfig(a) => nodeimage::disk::write_config(a),
        Command::Inspect(a) => nodeimage::disk::inspect(a),
        Command::Ports(a) => nodeimage::ports::run(a),
        Command::Cluster(ClusterCommand::New(a)) => nodeimage::cluster::cluster_new(a),
        Command::Cluster(ClusterCommand::Kubeconfig(a)) => nodeimage::cluster::kubeconfig(a),
        Command::Cluster(ClusterCommand::Token(a)) => nodeimage::cluster::cluster_token(a),
        Command::NodeConfig(a) => nodeimage::cluster::node_config(a),
        Command::Upload(c) => nodeimage::upload::run(c),
        Command::Keygen(a) => nodeimage::keygen::keygen(a),
    };
    if let Err(e) = result {
        eprintln!("nodeimage: error: {e:#}");
        std::process::exit(1);
    }
}

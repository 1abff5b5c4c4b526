//! `nodeimage ports` until it is wired into the main CLI:
//! `cargo run -p nodeimage --example ports -- --role worker --format nft`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "nodeimage-ports",
    about = "Show the host port table, firewall and bind addresses of a role"
)]
struct Cli {
    #[command(flatten)]
    ports: nodeimage::ports::PortsArgs,
}

fn main() -> anyhow::Result<()> {
    nodeimage::ports::run(&Cli::parse().ports)
}

//! Runs the router commands without the gateway binary:
//! `cargo run --release -p optiroute-router --example router_cli -- eval --data FILE --cv 5`.

use clap::Parser;
use optiroute_router::RouterCommand;

#[derive(Parser)]
#[command(name = "router", about = "OptiRoute complexity router: eval, score, train")]
struct Cli {
    #[command(subcommand)]
    cmd: RouterCommand,
}

fn main() -> anyhow::Result<()> {
    optiroute_router::run(Cli::parse().cmd)
}

//! Standalone `bench` CLI for trying the load generator before it is mounted in `optiroute`:
//! `cargo run -p optiroute-bench --example bench -- --url http://127.0.0.1:8000 --requests 100`

use clap::Parser;

#[derive(Parser)]
#[command(name = "bench", about = "OptiRoute load generator")]
struct Cli {
    #[command(flatten)]
    bench: optiroute_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    optiroute_bench::run_and_print(Cli::parse().bench).await?;
    Ok(())
}

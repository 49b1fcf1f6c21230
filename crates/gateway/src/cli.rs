//! Command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "optiroute",
    version,
    about = "OptiRoute: a cost-aware, resilient, OpenAI-compatible LLM gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (demo mode with simulated models when nothing is configured).
    Serve(ServeArgs),
    /// Validate a config file and print it resolved, with secrets masked.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long, short, env = "OPTIROUTE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run a scripted mock upstream (OpenAI, Anthropic and TGI routes) for demos, benchmarks and tests.
    Mock {
        #[arg(long, default_value_t = 9000)]
        port: u16,
        /// Delay before each response's headers, ms.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Delay between stream chunks, ms.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
    },
    /// Load generator: drive any OpenAI-compatible endpoint and report latency, throughput, cost.
    Bench(optiroute_bench::BenchArgs),
    /// Manage virtual API keys directly in the key store (create, list, update, revoke).
    Keys(crate::auth::KeysArgs),
    /// Routing research: evaluate, score and train complexity routers.
    #[command(subcommand)]
    Router(optiroute_router::RouterCommand),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML). Without one, provider keys from the environment are used, or demo mode.
    #[arg(long, short, env = "OPTIROUTE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "OPTIROUTE_HOST")]
    pub host: Option<String>,
    #[arg(long, env = "OPTIROUTE_PORT")]
    pub port: Option<u16>,
    /// Demo mode: latency of the simulated local model, ms (e.g. 2000 to reproduce the original load test).
    #[arg(long, env = "OPTIROUTE_DEMO_LATENCY_MS")]
    pub demo_latency_ms: Option<u64>,
    /// Log format: text or json.
    #[arg(long, env = "OPTIROUTE_LOG_FORMAT")]
    pub log_format: Option<String>,
}

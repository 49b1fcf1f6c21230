use std::process::ExitCode;

// mimalloc: measurably faster than glibc malloc on the request path and keeps RSS flatter with many
// concurrent streams (BENCHMARKS.md). Built without transparent huge pages (`no_thp`): with THP its
// arenas were backed by 2 MB pages, which cost ~7 MB idle and ~35 MB at 1,000 concurrent streams.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use optiroute::cli::{Cli, Command};
use optiroute::config::Config;

fn main() -> ExitCode {
    // A missing .env is fine; a broken one stops here rather than dropping the keys after the bad
    // line (which would fall back to demo mode without a word). It is read before the command line
    // (clap takes `OPTIROUTE_*` from the environment), and reported after it, so `--help` and
    // `--version` still answer.
    let dotenv = optiroute::config::load_dotenv();
    let cli = Cli::parse();
    if let Err(e) = dotenv {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<&std::path::Path>, demo_latency_ms: Option<u64>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => {
            let mut c = Config::from_env();
            if c.demo && demo_latency_ms.is_some() {
                c = Config::demo(demo_latency_ms);
            }
            c
        }
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let mut cfg = load(args.config.as_deref(), args.demo_latency_ms)?;
            if let Some(h) = args.host {
                cfg.server.host = h;
            }
            if let Some(p) = args.port {
                cfg.server.port = p;
            }
            if let Some(f) = args.log_format {
                cfg.server.log_format = f;
            }
            cfg.validate("command line")?;
            optiroute::telemetry::init_logging(&cfg.server.log_format);
            optiroute::server::serve(cfg).await
        }
        Command::CheckConfig { config } => {
            let cfg = load(config.as_deref(), None)?;
            cfg.validate(
                &config
                    .as_ref()
                    .map_or("environment".into(), |p| p.display().to_string()),
            )?;
            println!(
                "# config is valid{}",
                if cfg.demo {
                    " (demo mode: nothing configured)"
                } else {
                    ""
                }
            );
            print!("{}", cfg.to_masked_toml());
            Ok(())
        }
        Command::Mock {
            port,
            delay_ms,
            chunk_delay_ms,
        } => {
            optiroute::telemetry::init_logging("text");
            let server = optiroute::mock::MockServer::start(port).await?;
            server.handle.set_default(optiroute::mock::Behavior {
                delay_ms,
                chunk_delay_ms,
                ..Default::default()
            });
            eprintln!(
                "optiroute mock upstream: OpenAI /v1/chat/completions, Anthropic /v1/messages, TGI /generate[_stream]"
            );
            println!("OPTIROUTE_LISTENING {}", server.url());
            tokio::select! {
                () = server.wait() => {},
                () = optiroute::server::shutdown_signal() => {},
            }
            Ok(())
        }
        Command::Bench(args) => {
            let report = optiroute_bench::run_and_print(args).await?;
            let _ = report;
            Ok(())
        }
        Command::Keys(args) => {
            print!("{}", optiroute::auth::run_cli(args).await?);
            Ok(())
        }
        Command::Router(optiroute_router::RouterCommand::Export(args)) => {
            optiroute::store::feedback::export_cli(args).await
        }
        Command::Router(cmd) => tokio::task::spawn_blocking(move || optiroute_router::run(cmd)).await?,
    }
}

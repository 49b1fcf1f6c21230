//! Running the gateway: bind, banner, serve with graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;

use crate::config::Config;
use crate::state::{AppState, SharedState};

/// Binds, prints the banner and `OPTIROUTE_LISTENING http://ADDR` on stdout, and serves until
/// SIGINT/SIGTERM; in-flight requests get `shutdown_grace_secs` to finish.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let host = cfg.server.host.clone();
    let port = cfg.server.port;
    let state = AppState::new(cfg).await?;
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    banner(&state, addr);
    run(state, listener, shutdown_signal()).await
}

/// Serves on an already bound listener until `shutdown` completes, then drains for the grace period
/// and closes the connections still open after it.
///
/// The accept loop is ours rather than `axum::serve`, for one setting that does not expose: hyper's
/// header read timeout (`[server] header_timeout_secs`), which needs a timer. Without it a client
/// trickling a request's headers holds a connection slot for as long as it likes.
pub async fn run(
    state: SharedState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::serve::Listener;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let grace = crate::http::grace(&state);
    let limits = state.limits.clone();
    let request_log = state.request_log.clone();
    let max_connections = state.cfg.server.max_connections;
    let header_timeout = Duration::from_secs(state.cfg.server.header_timeout_secs);
    let app = crate::http::app(state);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut listener = crate::limits::ConnLimit::new(listener, max_connections);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let timer_floor = tokio::spawn(timer_floor());
    let mut shutdown = std::pin::pin!(shutdown);
    // The connections' tasks, so that those still open when the grace period ends can be closed.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            (io, _) = listener.accept() => {
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
                let conn = graceful.watch(conn);
                conns.spawn(async move {
                    // A connection's own errors (a client that vanished, headers too slow) end only it.
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    timer_floor.abort();
    tracing::info!("shutdown requested: no new connections; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing remaining connections"),
    }
    // Close what is left, and wait until it is dropped: a stream cut here settles its usage and
    // queues its request-log row (status 499) before the limits and the log are flushed below.
    conns.shutdown().await;
    // Usage settled by the last requests reaches Redis (bounded wait) and the key store before exit.
    if let Some(shared) = limits.shared() {
        shared.flush(Duration::from_secs(2)).await;
    }
    limits.flush().await;
    // The request log's last rows too (bounded: a dead store does not hold up the exit).
    request_log.close(Duration::from_secs(5)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Keeps a timer at most a second away, so that arming a later one never has to wake the runtime.
///
/// Tokio's time driver parks until its earliest timer; registering a timer earlier than that makes
/// it wake the I/O driver (an eventfd write and one more `epoll_wait`) to recompute the deadline.
/// On a keep-alive connection hyper re-arms its 30 s header-read timer after every response, while
/// the earliest timer is the previous request's upstream timeout (60 s), so each request paid those
/// two extra syscalls. With this tick the parked deadline is never more than 1 s out: the
/// cost is one wake-up per second when idle. Timers shorter than a second wake the driver as before.
async fn timer_floor() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

fn banner(st: &SharedState, addr: SocketAddr) {
    let cfg = &st.cfg;
    let mut out = String::new();
    out.push_str(&format!(
        "\nOptiRoute {} — OpenAI-compatible LLM gateway\n",
        env!("CARGO_PKG_VERSION")
    ));
    if cfg.demo {
        out.push_str(
            "\n  DEMO MODE: no config file and no provider keys found.\n  \
             Responses come from two built-in SIMULATED models (`local`: free, fast; `cloud`: priced, slower).\n  \
             To use real providers, set OPENAI_API_KEY / ANTHROPIC_API_KEY / OLLAMA_HOST (or OPTIROUTE_LOCAL_URL),\n  \
             or run `optiroute serve --config optiroute.toml` (see optiroute.example.toml).\n",
        );
    }
    out.push_str("\n  deployments:\n");
    for d in &st.deployments {
        out.push_str(&format!(
            "    {:<16} {:<12} {:<24} tier={}\n",
            d.name,
            d.provider.kind(),
            d.model,
            d.tier.as_deref().unwrap_or("-")
        ));
    }
    out.push_str(&format!(
        "\n  routing: `auto` uses the {} scorer over tiers [{}]\n  cache: {}\n  auth: {}\n",
        st.router.scorer_name(),
        cfg.routing.tiers.join(", "),
        if st.cache.enabled {
            st.cache.backend_name()
        } else {
            "off"
        },
        st.auth.describe(),
    ));
    if st.auth.enabled {
        let l = &cfg.limits;
        out.push_str(&match l.backend.as_str() {
            "redis" => format!(
                "  limits: shared in Redis (on_redis_error = {}, replicas = {})\n",
                l.on_redis_error, l.replicas
            ),
            _ => "  limits: in memory (this replica only)\n".to_owned(),
        });
    }
    out.push_str(&format!(
        "\n  API:     http://{addr}/v1  (chat/completions, models)\n  Chat UI: http://{addr}/\n  Metrics: http://{addr}/metrics\n"
    ));
    eprintln!("{out}");
    // Machine-readable readiness line for scripts and tests.
    println!("OPTIROUTE_LISTENING http://{addr}");
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

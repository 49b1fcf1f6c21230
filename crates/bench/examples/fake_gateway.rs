//! A tiny OpenAI-shaped server with OptiRoute headers, for trying the load generator:
//! `cargo run -p optiroute-bench --example fake_gateway -- 127.0.0.1:0 [latency_ms]`
//! It prints `OPTIROUTE_LISTENING http://ADDR` and answers every chat completion after
//! `latency_ms` (default 0). Prompts seen before are cache hits (no latency).
//! `"stream": true` gets SSE: four content chunks 10 ms apart, then a usage chunk carrying the
//! `optiroute` object, then `[DONE]`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use serde_json::{Value, json};

struct St {
    latency: Duration,
    seen: Mutex<HashSet<String>>,
}

async fn chat(State(st): State<Arc<St>>, Json(req): Json<Value>) -> Response {
    let key = req["messages"].to_string();
    let hit = !st.seen.lock().map(|mut s| s.insert(key)).unwrap_or(true);
    if !hit && !st.latency.is_zero() {
        tokio::time::sleep(st.latency).await;
    }
    let (cost, saved) = if hit { ("0", "0.0001") } else { ("0.0001", "0") };
    let cache = if hit { "hit" } else { "miss" };
    if req["stream"] == json!(true) {
        let meta = json!({"cache": cache, "tier": "local", "cost_usd": cost.parse::<f64>().unwrap_or(0.0),
                          "saved_usd": saved.parse::<f64>().unwrap_or(0.0)});
        let events = futures_util::stream::unfold(0u32, move |i| {
            let meta = meta.clone();
            async move {
                let text = match i {
                    0..4 => {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let c = json!({"object": "chat.completion.chunk",
                                       "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}}]});
                        format!("data: {c}\n\n")
                    }
                    4 => {
                        let c = json!({"object": "chat.completion.chunk", "choices": [],
                                       "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
                                       "optiroute": meta});
                        format!("data: {c}\n\ndata: [DONE]\n\n")
                    }
                    _ => return None,
                };
                Some((Ok::<_, std::convert::Infallible>(text), i + 1))
            }
        });
        let headers = [
            ("content-type", "text/event-stream"),
            ("x-optiroute-cache", cache),
            ("x-optiroute-tier", "local"),
        ];
        return (headers, Body::from_stream(events)).into_response();
    }
    let body = json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    });
    let headers = [
        ("x-optiroute-cache", cache),
        ("x-optiroute-tier", "local"),
        ("x-optiroute-cost-usd", cost),
        ("x-optiroute-saved-usd", saved),
    ];
    (headers, Json(body)).into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let latency = Duration::from_millis(args.next().map(|s| s.parse()).transpose()?.unwrap_or(0));
    let st = Arc::new(St {
        latency,
        seen: Mutex::new(HashSet::new()),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(st);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("OPTIROUTE_LISTENING http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

//! Test harness: start the gateway in-process on port 0 against mock upstreams.

use std::time::Duration;

use optiroute::config::{Config, DeploymentConfig, ProviderConfig, ProviderKind};
use optiroute::mock::MockServer;
use optiroute::state::{AppState, SharedState};

pub struct TestGateway {
    pub url: String,
    pub state: SharedState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    pub async fn start(cfg: Config) -> TestGateway {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let state = AppState::new(cfg).await.expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(optiroute::server::run(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        TestGateway {
            url,
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Signals shutdown (like SIGTERM) without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// `host:port` of the gateway, for raw TCP clients.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        body_text(client().get(format!("{}/metrics", self.url))).await
    }

    /// Posts `body` to the chat endpoint and returns the response body as text.
    pub async fn chat_text(&self, body: &serde_json::Value) -> String {
        body_text(client().post(self.chat_url()).json(body)).await
    }

    pub fn chat_url(&self) -> String {
        format!("{}/v1/chat/completions", self.url)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.signal_shutdown();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Sends a request and returns its response body as text.
async fn body_text(r: reqwest::RequestBuilder) -> String {
    r.send().await.unwrap().text().await.unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A config with one provider of `kind` pointing at the mock, and one deployment `name` on it.
pub fn config_with(providers: &[(&str, ProviderKind, &str)], deployments: &[(&str, &str, &str, &str)]) -> Config {
    let mut cfg = Config::test_default();
    cfg.providers.clear();
    cfg.deployments.clear();
    for (name, kind, url) in providers {
        let mut p = ProviderConfig::new(name, *kind, Some((*url).to_owned()), None);
        p.timeouts.first_byte_ms = 5_000;
        p.timeouts.idle_ms = 5_000;
        cfg.providers.push(p);
    }
    for (name, provider, model, tier) in deployments {
        let mut d = DeploymentConfig::new(name, provider, model, tier);
        d.input_usd_per_mtok = Some(1.0);
        d.output_usd_per_mtok = Some(2.0);
        cfg.deployments.push(d);
    }
    cfg.resilience.backoff_base_ms = 1;
    cfg.resilience.backoff_max_ms = 10;
    cfg
}

/// One OpenAI-compatible mock and a gateway with deployment `m` on it.
pub async fn openai_setup(edit: impl FnOnce(&mut Config)) -> (MockServer, TestGateway) {
    let mock = MockServer::start(0).await.unwrap();
    let mut cfg = config_with(
        &[("up", ProviderKind::Openai, &format!("{}/v1", mock.url()))],
        &[("m", "up", "upstream-model", "cloud")],
    );
    edit(&mut cfg);
    let gw = TestGateway::start(cfg).await;
    (mock, gw)
}

pub fn chat_body(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned))
        .collect()
}

/// The content of an SSE chat stream: its chunks' `delta.content`, concatenated.
pub fn sse_content(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

/// Polls `cond` until it holds or `within` passes (readiness-style waiting, not a fixed sleep).
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A real redis-server on a free port, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts redis-server, or returns None (with a notice) if it is not installed.
    pub fn start() -> Option<Redis> {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis { port, child: None, dir };
        r.spawn().then_some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    #[allow(clippy::disallowed_types)] // a synchronous readiness loop, not time logic under test
    fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("redis-server not installed: skipping (scripts/test.sh installs it)");
            return false;
        };
        self.child = Some(child);
        // Readiness: a PING answered.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 7];
                    if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                        return true;
                    }
                }
            }
            std::thread::yield_now();
        }
        false
    }

    /// Sends one inline command and returns its reply: a status line, or a bulk string's text.
    pub fn query(&self, cmd: &str) -> String {
        use std::io::{BufRead, Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        match line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(len) => {
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                String::from_utf8(body).unwrap()
            }
            None => line.to_owned(),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) -> bool {
        self.kill();
        self.spawn()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates a virtual key through the admin API with `master`; returns the response body
/// (`key` is shown this once, `id` names it).
pub async fn admin_create_key(gw: &TestGateway, master: &str, spec: serde_json::Value) -> serde_json::Value {
    let r = client()
        .post(format!("{}/admin/keys", gw.url))
        .bearer_auth(master)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

/// A math question whose cheap answer (from `cheap`) has no final number, so cascade mode escalates
/// it to `strong`, which answers 7. Returns the request body.
pub fn cascade_scenario(cheap: &MockServer, strong: &MockServer) -> serde_json::Value {
    cheap.handle.push(optiroute::mock::Behavior {
        text: Some("Let me think about the apples.".into()),
        ..Default::default()
    });
    strong.handle.push(optiroute::mock::Behavior {
        text: Some("3 + 4 = 7. The answer is 7.".into()),
        ..Default::default()
    });
    chat_body(
        "auto",
        "Tom has 3 apples and buys 4 more. How many apples does he have?",
    )
}

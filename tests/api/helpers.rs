//! What every test stands on: real redis-server processes on free ports, real cuebox nodes on
//! port 0, and a real WebSocket widget client.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use awc::ws;
use cuebox::alert::ReceiverId;
use cuebox::config::{DataArgs, RedisArgs, ServeArgs};
use cuebox::startup::{Application, StartError, Stopper};
use cuebox::store::embedded::disk::{Durability, OpenError};
use cuebox::store::embedded::EmbeddedStore;
use cuebox::store::redis::connection::Target;
use cuebox::store::redis::keys::Keys;
use cuebox::store::redis::RedisStore;
use cuebox::store::{Notice, Rules, Store};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub const PUBLISH_KEY: &str = "test-publish-key";
pub const SECRET: &str = "test-secret";

/// How long a test waits for something that should happen promptly before it fails.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A redis-server of the test's own, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// With extra redis-server arguments, such as `["--appendonly", "yes"]`.
    pub async fn spawn_with(extra: &[&str]) -> Self {
        // A free port can be taken again before redis-server binds it (by another test's
        // server, a client's ephemeral port, or a cluster's bus port at port + 10000): then
        // this server exits, and another port is tried.
        for _ in 0..10 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("cuebox-redis-{port}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a temp dir for redis");
            let mut server = Self {
                port,
                dir,
                child: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            if server.start().await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts redis-server; true once it answers `PING` on its port (not while it loads its
    /// data, which a restart with AOF takes a while to on a loaded machine), false if it exited
    /// first (its port was taken). Checking that our own child still runs keeps a test from
    /// talking to another test's server that happens to hold the port.
    async fn start(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        let child = self.child.insert(child);
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        loop {
            if !matches!(child.try_wait(), Ok(None)) {
                self.child = None;
                return false;
            }
            if answers_ping(self.port) {
                // Still ours: it did not exit on a bind error meanwhile.
                if matches!(child.try_wait(), Ok(None)) {
                    return true;
                }
                self.child = None;
                return false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether this cluster node still runs and listens on its cluster bus port.
    async fn has_its_bus(&mut self) -> bool {
        let bus = self.port + 10000;
        for _ in 0..50 {
            let Some(child) = self.child.as_mut() else {
                return false;
            };
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", bus)).is_ok() {
                // Still ours: another process may hold the port while ours exits.
                return matches!(child.try_wait(), Ok(None));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: Redis stalls with its connections open, as under a swap storm or a long fork.
    /// Calls written meanwhile sit in its socket and run once it resumes.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Starts it again on the same port and directory.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        while !self.start().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A raw command through redis-cli-like use of the redis crate.
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut con).await.unwrap()
    }
}

/// Whether a Redis on `port` answers `PING` with `PONG` (a Redis loading its data answers
/// `-LOADING`).
fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 5];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters, made of the test's own redis-server processes.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// With extra redis-server arguments for every node, such as AOF.
    ///
    /// A node also needs its cluster bus port (its port + 10000), which another test may hold:
    /// Redis then exits just after it began answering. So each node is checked for its bus
    /// port, and a failed `--cluster create` is tried again on new ports, three times at most.
    pub async fn spawn_with(extra: &[&str]) -> Self {
        let mut failure = String::new();
        for _ in 0..3 {
            let mut nodes = Vec::new();
            let mut tries = 0;
            while nodes.len() < 3 && tries < 10 {
                tries += 1;
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ];
                args.extend_from_slice(extra);
                let mut node = RedisServer::spawn_with(&args).await;
                if node.has_its_bus().await {
                    nodes.push(node);
                } else {
                    node.kill();
                }
            }
            assert_eq!(
                nodes.len(),
                3,
                "cluster nodes without a bus port in 10 tries"
            );
            let addrs: Vec<String> = nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port))
                .collect();
            let created = tokio::process::Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .await
                .expect("redis-cli runs");
            if created.status.success() {
                let cluster = Self { nodes };
                cluster.wait_until_ok().await;
                return cluster;
            }
            failure = format!(
                "{}{}",
                String::from_utf8_lossy(&created.stdout),
                String::from_utf8_lossy(&created.stderr)
            );
            eprintln!("redis-cli --cluster create failed; trying new ports:\n{failure}");
        }
        panic!("redis-cli --cluster create failed three times; the last said:\n{failure}");
    }

    /// Waits until every node says the cluster is whole.
    pub async fn wait_until_ok(&self) {
        eventually_within(Duration::from_secs(30), || async {
            let mut ok = true;
            for node in &self.nodes {
                let info = node.cmd(&["CLUSTER", "INFO"]).await;
                ok &= format!("{info:?}").contains("cluster_state:ok");
            }
            ok
        })
        .await;
    }

    /// The seed list `--redis-url` takes with `--redis-cluster`.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Rules short enough that timeout tests take a fraction of a second.
pub fn fast_rules() -> Rules {
    Rules {
        start_timeout: Duration::from_millis(300),
        ack_grace: Duration::from_millis(200),
        max_queue: 10_000,
        max_widgets: 16,
        history: 500,
    }
}

/// A data dir of a test's own, removed when dropped.
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// A path no other test uses; not made yet (the node makes it).
    pub fn fresh() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cuebox-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which store a test node or conformance case runs on.
#[derive(Clone)]
pub enum Backing {
    /// The embedded store kept in memory only (`--in-memory`).
    Memory,
    /// The embedded store in a data dir of its own.
    Sqlite,
    Redis(String),
    /// Comma-separated seed nodes.
    Cluster(String),
}

/// The serve arguments tests use; `redis_url` None is the embedded store, in a data dir of the
/// test's own that [`TestApp`] removes when it is dropped.
pub fn serve_args(redis_url: Option<String>) -> ServeArgs {
    let data = DataDir::fresh();
    let data_dir = data.0.clone();
    // The TestApp that runs these arguments removes it.
    std::mem::forget(data);
    ServeArgs {
        bind: "127.0.0.1:0".into(),
        redis: RedisArgs {
            url: redis_url,
            cluster: false,
            key_prefix: "cuebox".into(),
        },
        data: DataArgs {
            data_dir,
            durability: Durability::Normal,
            in_memory: false,
        },
        publish_keys: vec![PUBLISH_KEY.into()],
        secret: Some(SECRET.into()),
        start_timeout_ms: 5000,
        ack_grace_ms: 15000,
        max_queue: 10_000,
        max_connections: 20_000,
        max_widgets_per_receiver: 16,
        history: 500,
        publish_rate: 0,
        body_timeout_ms: 10_000,
        // Two, so widgets and publishers of one receiver may meet on different threads.
        workers: 2,
        ingest_claim_idle_ms: 30_000,
        tts_command: None,
        tts_url: None,
        // Most tests are of other rules, and wait for each next alert; the gap has its own.
        alert_gap_ms: 0,
        topic_history: 100,
        topic_history_ttl: Duration::from_secs(600),
        public_topics: Vec::new(),
        bridge: Vec::new(),
        max_connections_per_ip: 256,
    }
}

/// A running node and typed ways to talk to it.
pub struct TestApp {
    pub base: String,
    pub stopper: Stopper,
    pub http: awc::Client,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The embedded store's data dir, removed on drop.
    _data: Option<DataDir>,
}

impl TestApp {
    pub async fn spawn(args: ServeArgs) -> Self {
        // Logs only when asked for (`CUEBOX_LOG=debug cargo test ...`): they go around the
        // harness's capture.
        if std::env::var_os("CUEBOX_LOG").is_some() {
            cuebox::telemetry::init(cuebox::config::LogFormat::Pretty);
        }
        let data = (args.redis.url.is_none() && !args.data.in_memory)
            .then(|| DataDir(args.data.data_dir.clone()));
        // A node stopped in this process lets go of its data dir once its last tasks are
        // dropped, a moment after it stops (a process that exits lets go at once).
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        let app = loop {
            match Application::build(args.clone()).await {
                Err(StartError::DataDir(OpenError::InUse(_)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                built => break built.expect("the node builds"),
            }
        };
        let base = app.base_url();
        let stopper = app.stopper();
        let server = Some(tokio::spawn(app.run_until_stopped()));
        Self {
            base,
            stopper,
            http: awc::Client::builder().timeout(PROMPTLY).finish(),
            server,
            _data: data,
        }
    }

    pub async fn memory() -> Self {
        Self::spawn(serve_args(None)).await
    }

    /// A node of the embedded store on `dir`, which outlives it: a node started again on the
    /// same dir finds what this one kept.
    pub async fn embedded_in(dir: &DataDir) -> Self {
        let mut args = serve_args(None);
        let _ = std::fs::remove_dir_all(&args.data.data_dir);
        args.data.data_dir = dir.0.clone();
        let mut app = Self::spawn(args).await;
        // Not this node's to remove.
        std::mem::forget(app._data.take());
        app
    }

    /// `POST` to a control of the receiver's, with the publish key, or with `token` as the
    /// query's dashboard token.
    pub async fn control(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        match token {
            Some(t) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                let path = format!("{path}{sep}token={t}");
                self.post_raw(&path, None, "application/json", "").await
            }
            None => {
                self.post_raw(path, Some(PUBLISH_KEY), "application/json", "")
                    .await
            }
        }
    }

    /// The receiver's dashboard token.
    pub fn dashboard_token(&self, receiver: &str) -> String {
        cuebox::auth::ReceiverTokens::new(SECRET).token_for(
            cuebox::auth::Purpose::Dashboard,
            &ReceiverId::parse(receiver).unwrap(),
            0,
        )
    }

    pub async fn redis(redis: &RedisServer) -> Self {
        Self::spawn(serve_args(Some(redis.url()))).await
    }

    pub async fn stop(mut self) {
        self.stopper.stop().await;
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    pub fn token(&self, receiver: &str) -> String {
        cuebox::auth::ReceiverTokens::new(SECRET).token(&ReceiverId::parse(receiver).unwrap())
    }

    /// `POST /publish` with the test key; answers the status and the JSON body.
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        self.post_raw(
            "/publish",
            Some(PUBLISH_KEY),
            "application/json",
            body.to_string(),
        )
        .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        key: Option<&str>,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .insert_header(("Content-Type", content_type));
        if let Some(key) = key {
            req = req.insert_header(("Authorization", format!("Bearer {key}")));
        }
        let mut res = req.send_body(body.into()).await.expect("the node answers");
        let status = res.status().as_u16();
        let body = res.body().limit(1 << 20).await.expect("a body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.insert_header(("Authorization", format!("Bearer {key}")));
        }
        let mut res = req.send().await.expect("the node answers");
        let status = res.status().as_u16();
        let body = res.body().limit(1 << 20).await.expect("a body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `GET` of a text page (`/metrics`): the status and the text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let mut res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the node answers");
        let status = res.status().as_u16();
        let body = res.body().limit(1 << 22).await.expect("a body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `DELETE /receivers/{receiver}/queue` with the publish key.
    pub async fn clear(&self, receiver: &str) -> (u16, Value) {
        let mut res = self
            .http
            .delete(format!("{}/receivers/{receiver}/queue", self.base))
            .insert_header(("Authorization", format!("Bearer {PUBLISH_KEY}")))
            .send()
            .await
            .expect("the node answers");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `PUT /receivers/{receiver}/settings` with the receiver's dashboard token.
    pub async fn put_settings(&self, receiver: &str, body: Value) -> (u16, Value) {
        let mut res = self
            .http
            .put(format!("{}/receivers/{receiver}/settings", self.base))
            .insert_header((
                "Authorization",
                format!("Bearer {}", self.dashboard_token(receiver)),
            ))
            .send_body(body.to_string())
            .await
            .expect("the node answers");
        let status = res.status().as_u16();
        let body = res.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `PUT /receivers/{receiver}/designs` with the publish key; the body as given.
    pub async fn put_designs(&self, receiver: &str, body: &str) -> (u16, Value) {
        let mut res = self
            .http
            .put(format!("{}/receivers/{receiver}/designs", self.base))
            .insert_header(("Authorization", format!("Bearer {PUBLISH_KEY}")))
            .insert_header(("Content-Type", "application/json"))
            .send_body(body.to_owned())
            .await
            .expect("the node answers");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Publishes a minimal alert and returns its id.
    pub async fn publish_alert(&self, receiver: &str, message: &str) -> String {
        let (status, body) = self
            .publish(json!({ "receiver": receiver, "message": message }))
            .await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn status(&self, receiver: &str) -> Value {
        let (status, body) = self
            .get(&format!("/receivers/{receiver}"), Some(PUBLISH_KEY))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Connects a widget with a valid token and reads its hello.
    pub async fn widget(&self, receiver: &str) -> WidgetClient {
        let url = format!(
            "{}/ws/{receiver}?token={}",
            self.base.replace("http://", "ws://"),
            self.token(receiver)
        );
        let mut w = WidgetClient::connect(&url)
            .await
            .expect("the widget connects");
        let hello = w.next_json().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["receiver"], receiver);
        w
    }

    /// Waits until the store sees `n` live widgets for the receiver.
    pub async fn wait_for_widgets(&self, receiver: &str, n: u64) {
        eventually(|| async { self.status(receiver).await["widgets"] == n }).await;
    }
}

/// Retries a check until it holds, failing after [`PROMPTLY`].
/// The events of a history entry's trail, by name.
pub fn trail_of(entry: &Value) -> Vec<String> {
    entry["trail"]
        .as_array()
        .expect("a trail")
        .iter()
        .map(|step| step["event"].as_str().unwrap().to_owned())
        .collect()
}

pub async fn eventually<F, Fut>(check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(PROMPTLY, check).await
}

/// Retries a check until it holds, failing after `within`.
pub async fn eventually_within<F, Fut>(within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a test body once on each store: `None` is the embedded store, `Some(url)` a Redis of
/// the test's own.
#[macro_export]
macro_rules! on_both_stores {
    ($case:ident) => {
        mod $case {
            #[actix_web::test]
            async fn on_the_embedded_store() {
                super::$case(None).await;
            }

            #[actix_web::test]
            async fn on_redis() {
                let redis = $crate::helpers::RedisServer::spawn().await;
                super::$case(Some(redis.url())).await;
            }
        }
    };
}

/// Writes `request` as it is and reads the answer until the node closes the connection: for
/// requests a well-behaved client never makes, and for answers whose framing matters.
pub async fn raw_http(app: &TestApp, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    stream.write_all(request).await.expect("writes");
    let mut answer = Vec::new();
    tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut answer))
        .await
        .expect("the node answers and closes")
        .expect("reads");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A WebSocket client written by hand on a raw TCP socket, for what a well-behaved client never
/// does: a small receive buffer it never reads.
pub struct RawWidget {
    pub stream: tokio::net::TcpStream,
}

impl RawWidget {
    /// Connects with a `recv_buffer` byte receive buffer and completes the upgrade.
    pub async fn connect(app: &TestApp, receiver: &str, recv_buffer: u32) -> Self {
        let path = format!("/ws/{receiver}?token={}", app.token(receiver));
        Self::connect_to(app, &path, recv_buffer).await
    }

    /// As [`RawWidget::connect`], to any WebSocket path (with its query) of the node.
    pub async fn connect_to(app: &TestApp, path: &str, recv_buffer: u32) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr: std::net::SocketAddr = app
            .base
            .trim_start_matches("http://")
            .parse()
            .expect("a socket address");
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let mut stream = socket.connect(addr).await.expect("connects");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("writes");
        // Up to the end of the response's head, a byte at a time so no frame is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tokio::time::timeout(PROMPTLY, stream.read_u8())
                .await
                .expect("the upgrade is answered")
                .expect("reads");
            head.push(byte);
            assert!(head.len() < 4096, "an endless response head");
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Self { stream }
    }

    /// `count` masked client text frames of `text`, back to back.
    pub fn text_frames(text: &str, count: usize) -> Vec<u8> {
        assert!(text.len() < 126, "a short frame");
        let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
        // A zero mask leaves the payload as it is.
        frame.extend_from_slice(text.as_bytes());
        frame.repeat(count)
    }
}

/// A widget as a test drives it: a real WebSocket client.
pub struct WidgetClient {
    framed: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
}

/// What a widget saw come in.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Closed(Option<u16>),
}

impl WidgetClient {
    /// Connects to a node that may still be starting, retrying until it listens.
    pub async fn connect_when_listening(url: &str) -> Self {
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        loop {
            match Self::connect(url).await {
                Ok(w) => return w,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "never listened: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub async fn connect(url: &str) -> Result<Self, awc::error::WsClientError> {
        let (_res, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(1 << 20)
            .connect()
            .await?;
        Ok(Self { framed })
    }

    pub async fn send_text(&mut self, text: &str) {
        let _ = self
            .framed
            .send(ws::Message::Text(text.to_owned().into()))
            .await;
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_raw(&mut self, msg: ws::Message) {
        let _ = self.framed.send(msg).await;
    }

    /// The next text frame or the close, skipping pings; None if nothing comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.framed.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(ws::Frame::Text(t))) => {
                    return Some(Incoming::Json(
                        serde_json::from_slice(&t).expect("frames are JSON"),
                    ))
                }
                Some(Ok(ws::Frame::Ping(p))) => {
                    let _ = self.framed.send(ws::Message::Pong(p)).await;
                }
                Some(Ok(ws::Frame::Close(reason))) => {
                    return Some(Incoming::Closed(reason.map(|r| r.code.into())))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(Incoming::Closed(None)),
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next_within(PROMPTLY).await {
            Some(Incoming::Json(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next alert frame: (id, attempt, alert).
    pub async fn next_alert(&mut self) -> (String, u64, Value) {
        let v = self.next_json().await;
        assert_eq!(v["type"], "alert", "{v}");
        (
            v["alert"]["id"].as_str().unwrap().to_owned(),
            v["attempt"].as_u64().unwrap(),
            v["alert"].clone(),
        )
    }

    /// Asserts nothing arrives for a while.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(x) = self.next_within(wait).await {
            panic!("expected nothing, got {x:?}");
        }
    }

    pub async fn started(&mut self, id: &str) {
        self.send_json(json!({ "type": "started", "id": id })).await
    }

    pub async fn done(&mut self, id: &str) {
        self.send_json(json!({ "type": "done", "id": id })).await
    }

    /// `started` then `done` in one write. awc cannot set TCP_NODELAY, so two small writes in a
    /// row would wait out Nagle's algorithm against the server's delayed ACK (about 40 ms), a
    /// delay no browser has.
    pub async fn show(&mut self, id: &str) {
        for kind in ["started", "done"] {
            let frame = json!({ "type": kind, "id": id }).to_string();
            let _ = self.framed.feed(ws::Message::Text(frame.into())).await;
        }
        let _ = self.framed.flush().await;
    }

    /// Closes the connection cleanly.
    pub async fn close(mut self) {
        let _ = self.framed.send(ws::Message::Close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(frame)) = self.framed.next().await {
                if matches!(frame, ws::Frame::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// A store as the conformance suite drives it, with the notices it would give its hub.
pub struct StoreUnderTest {
    pub store: Arc<dyn Store>,
    pub notices: mpsc::UnboundedReceiver<Notice>,
    /// Last, so it is removed after the store closes.
    pub _data: Option<DataDir>,
}

pub async fn make_store(backing: &Backing, rules: Rules, node: &str) -> StoreUnderTest {
    let (tx, notices) = mpsc::unbounded_channel();
    let target = match backing {
        Backing::Memory => {
            let store = Arc::new(EmbeddedStore::in_memory(rules));
            return StoreUnderTest {
                store,
                notices,
                _data: None,
            };
        }
        Backing::Sqlite => {
            let data = DataDir::fresh();
            let (store, _) = EmbeddedStore::open(&data.0, Durability::Normal, rules)
                .expect("the data dir opens");
            return StoreUnderTest {
                store: Arc::new(store),
                notices,
                _data: Some(data),
            };
        }
        Backing::Redis(url) => Target::new(url, false),
        Backing::Cluster(seeds) => Target::new(seeds, true),
    };
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(
            &target,
            Keys::new("cuebox").unwrap(),
            rules,
            node,
            tx,
            Arc::new(cuebox::store::Unobserved),
        )
        .await
        .expect("the Redis store connects"),
    );
    StoreUnderTest {
        store,
        notices,
        _data: None,
    }
}

pub fn receiver(s: &str) -> ReceiverId {
    ReceiverId::parse(s).unwrap()
}

/// An accepted alert record for the store tests.
pub fn record(receiver: &str, message: &str) -> cuebox::alert::AlertRecord {
    record_with(json!({ "receiver": receiver, "message": message }))
}

pub fn record_with(body: Value) -> cuebox::alert::AlertRecord {
    cuebox::alert::NewAlert::parse(body.to_string().as_bytes(), None)
        .expect("a valid alert")
        .into_record()
}

/// The `cuebox` binary, with none of the operator's `CUEBOX_*` variables, killed when dropped.
pub fn cuebox() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cuebox"));
    for var in [
        "CUEBOX_SECRET",
        "CUEBOX_REDIS_URL",
        "CUEBOX_PUBLISH_KEYS",
        "CUEBOX_BIND",
        "CUEBOX_DATA_DIR",
        "CUEBOX_DURABILITY",
        "CUEBOX_IN_MEMORY",
    ] {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// Waits for a port to be free again after a node on it went away.
pub async fn port_free(port: u16) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} never came free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `cuebox` started as a user starts it, with no flags, in `cwd` (where it makes
/// ./cuebox-data), listening on `port`: the process, and the publish key and demo widget URL it
/// printed. The rest of what it prints is read, as a terminal would.
pub async fn bare_start(
    cwd: &std::path::Path,
    port: u16,
) -> (tokio::process::Child, String, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = cuebox()
        .current_dir(cwd)
        .env("CUEBOX_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let read = tokio::time::timeout(PROMPTLY, async {
        while let Ok(Some(line)) = lines.next_line().await {
            printed.push(line.trim().to_owned());
            if printed.iter().any(|l| l.contains("/widget/demo?token=")) {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no demo URL in {printed:?}");
    actix_web::rt::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let key = printed
        .iter()
        .find(|l| l.starts_with("pk_"))
        .expect("a key");
    let url = printed
        .iter()
        .find(|l| l.contains("/widget/demo?token="))
        .unwrap();
    (child, key.clone(), url.clone())
}

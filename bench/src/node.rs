//! What the harness measures: a cuebox node and its Redis, either started here (and stopped
//! when dropped) or already running and named on the command line; and what their processes
//! cost, read from `/proc`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cuebox::alert::ReceiverId;
use cuebox::auth::ReceiverTokens;

use crate::Error;

/// How long a process the harness starts may take to answer.
const STARTUP: Duration = Duration::from_secs(20);

/// Which store a node the harness starts uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Redis,
    /// The embedded store, in a data dir of the harness's own.
    Sqlite,
    /// The embedded store kept in memory only.
    Memory,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
        }
    }
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process killed when dropped, so that nothing the harness starts outlives it.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A redis-server of the harness's own, or one named by URL.
pub struct Redis {
    pub url: String,
    pub pid: Option<u32>,
    child: Option<Owned>,
    dir: Option<PathBuf>,
}

impl Redis {
    pub fn external(url: &str, pid: Option<u32>) -> Self {
        Self {
            url: url.to_owned(),
            pid,
            child: None,
            dir: None,
        }
    }

    /// Starts `redis-server` on a free loopback port, without persistence.
    pub async fn spawn() -> Result<Self, Error> {
        let mut last = String::new();
        // A free port may be taken before redis-server binds it; then another is tried.
        for _ in 0..5 {
            let port = free_port()?;
            let dir = std::env::temp_dir().join(format!("cuebox-bench-redis-{port}"));
            std::fs::create_dir_all(&dir)?;
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run redis-server (is it installed?): {e}"))?;
            let mut redis = Self {
                url: format!("redis://127.0.0.1:{port}/"),
                pid: Some(child.id()),
                child: Some(Owned(child)),
                dir: Some(dir),
            };
            match redis.wait_until_up(port).await {
                Ok(()) => return Ok(redis),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("redis-server did not start: {last}").into())
    }

    async fn wait_until_up(&mut self, port: u16) -> Result<(), Error> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(Owned(child)) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    return Err(format!("redis-server exited: {status}").into());
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.child.take();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// How the harness reaches a cuebox node.
pub struct Node {
    pub addr: SocketAddr,
    pub publish_key: String,
    pub tokens: ReceiverTokens,
    /// For CPU and RSS; unknown for a node named by URL without `--pid`.
    pub pid: Option<u32>,
    pub store: &'static str,
    /// Declared before `redis` and `data_dir` so the node stops first: fields drop in order.
    child: Option<Owned>,
    /// The Redis the node uses, if any.
    pub redis: Option<Redis>,
    /// The embedded store's data dir, removed when the node is dropped.
    data_dir: Option<DataDir>,
    /// How it was started, to start it again.
    command: Option<Started>,
}

/// A node's binary, arguments and environment variables, as it was started.
type Started = (
    PathBuf,
    Vec<std::ffi::OsString>,
    Vec<(String, std::ffi::OsString)>,
);

/// A data dir of the harness's own, removed when dropped.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start a node.
pub struct Spawn {
    pub binary: PathBuf,
    pub store: StoreKind,
    /// Extra `serve` flags.
    pub args: Vec<String>,
}

pub const PUBLISH_KEY: &str = "bench-publish-key";
pub const SECRET: &str = "bench-secret";

impl Node {
    /// A node already running at `addr`.
    pub fn external(
        addr: SocketAddr,
        publish_key: &str,
        secret: &str,
        pid: Option<u32>,
        redis: Option<Redis>,
    ) -> Self {
        Self {
            addr,
            publish_key: publish_key.to_owned(),
            tokens: ReceiverTokens::new(secret),
            pid,
            store: if redis.is_some() { "redis" } else { "unknown" },
            redis,
            child: None,
            data_dir: None,
            command: None,
        }
    }

    /// Starts a cuebox node (and a Redis for it, with the Redis store) on free loopback ports.
    pub async fn spawn(spec: &Spawn) -> Result<Self, Error> {
        let redis = match spec.store {
            StoreKind::Redis => Some(Redis::spawn().await?),
            StoreKind::Sqlite | StoreKind::Memory => None,
        };
        let port = free_port()?;
        let data_dir = (spec.store == StoreKind::Sqlite)
            .then(|| DataDir(std::env::temp_dir().join(format!("cuebox-bench-data-{port}"))));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(&spec.binary);
        cmd.arg("serve")
            .args(["--bind", &addr.to_string()])
            .args(["--publish-key", PUBLISH_KEY, "--secret", SECRET])
            // Room for the growth scenario's 100,000 queued alerts and 10,000 widgets.
            .args(["--max-queue", "1000000", "--max-connections", "20000"])
            .args(&spec.args)
            .env("CUEBOX_LOG", "warn")
            // The benchmarks measure the dispatcher, not the pause a streamer wants between
            // alerts (500 ms by default); a variable, so builds from before it still start.
            .env("CUEBOX_ALERT_GAP_MS", "0")
            // Every subscriber of the broadcast scenario comes from 127.0.0.1.
            .env("CUEBOX_MAX_CONNECTIONS_PER_IP", "0")
            .env_remove("CUEBOX_REDIS_URL")
            .env_remove("CUEBOX_DATA_DIR")
            .env_remove("CUEBOX_IN_MEMORY")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(redis) = &redis {
            cmd.args(["--redis-url", &redis.url]);
        }
        // As variables, not flags, so a build from before the SQLite store (in memory with no
        // Redis, and knowing neither) still starts for an old-against-new comparison.
        match (&data_dir, spec.store) {
            (Some(dir), _) => {
                let _ = std::fs::remove_dir_all(&dir.0);
                cmd.env("CUEBOX_DATA_DIR", &dir.0);
            }
            (None, StoreKind::Memory) => {
                cmd.env("CUEBOX_IN_MEMORY", "true");
            }
            (None, _) => {}
        }
        let command = (
            spec.binary.clone(),
            cmd.get_args().map(ToOwned::to_owned).collect(),
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_string_lossy().into_owned(), v?.to_owned())))
                .collect(),
        );
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", spec.binary.display()))?;
        let mut node = Self {
            addr,
            publish_key: PUBLISH_KEY.to_owned(),
            tokens: ReceiverTokens::new(SECRET),
            pid: Some(child.id()),
            store: spec.store.name(),
            redis,
            child: Some(Owned(child)),
            data_dir,
            command: Some(command),
        };
        node.wait_until_ready().await?;
        Ok(node)
    }

    /// The embedded store's data dir, for a node started here with it.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_ref().map(|d| d.0.as_path())
    }

    /// Kills the node (SIGKILL) and starts it again as it was first started, on the same port
    /// and data dir; answers how long it took from the start of the new process until it
    /// listened.
    pub async fn restart(&mut self) -> Result<Duration, Error> {
        let (binary, args, envs) = self
            .command
            .clone()
            .ok_or("only a node started here can be restarted")?;
        self.child.take();
        let deadline = Instant::now() + STARTUP;
        while std::net::TcpListener::bind(self.addr).is_err() {
            if Instant::now() > deadline {
                return Err("the old node's port never came free".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_remove("CUEBOX_REDIS_URL")
            .env_remove("CUEBOX_DATA_DIR")
            .env_remove("CUEBOX_IN_MEMORY")
            .envs(envs)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let started = Instant::now();
        let child = cmd.spawn()?;
        self.pid = Some(child.id());
        self.child = Some(Owned(child));
        self.wait_until_ready().await?;
        Ok(started.elapsed())
    }

    async fn wait_until_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(Owned(child)) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    return Err(format!("cuebox exited at start: {status}").into());
                }
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("cuebox did not listen on {}", self.addr).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn token(&self, receiver: &str) -> Result<String, Error> {
        let receiver = ReceiverId::parse(receiver).map_err(|e| e.message)?;
        Ok(self.tokens.token(&receiver))
    }

    /// What the node's process has used so far.
    pub fn usage(&self) -> Option<Usage> {
        self.pid.and_then(Usage::of)
    }

    /// What the node, its Redis and the harness have used so far.
    pub fn readings(&self) -> Readings {
        Readings::take(self.pid, self.redis.as_ref().and_then(|r| r.pid))
    }
}

/// The usage of the three processes that share the machine, read at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Readings {
    pub node: Option<Usage>,
    pub redis: Option<Usage>,
    pub harness: Option<Usage>,
}

impl Readings {
    /// Readings of the node and Redis by pid (when known), and of this process.
    pub fn take(node: Option<u32>, redis: Option<u32>) -> Self {
        Self {
            node: node.and_then(Usage::of),
            redis: redis.and_then(Usage::of),
            harness: Usage::of(std::process::id()),
        }
    }

    /// CPU seconds per 1,000 alerts since `before`, of the node, Redis and the harness.
    pub fn cpu_per_1k(&self, before: &Readings, alerts: f64) -> [serde_json::Value; 3] {
        [
            cpu_per_1k(before.node, self.node, alerts),
            cpu_per_1k(before.redis, self.redis, alerts),
            cpu_per_1k(before.harness, self.harness, alerts),
        ]
    }
}

/// CPU seconds a process spent per 1,000 alerts between two readings of it; null when either
/// reading, or any alert, is missing.
pub fn cpu_per_1k(before: Option<Usage>, after: Option<Usage>, alerts: f64) -> serde_json::Value {
    match (before, after) {
        (Some(a), Some(b)) if alerts > 0.0 => {
            crate::report::num(b.cpu_since(&a) * 1000.0 / alerts, 4)
        }
        _ => serde_json::Value::Null,
    }
}

/// A process's CPU time and resident memory, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu: Duration,
    pub rss_kib: u64,
}

impl Usage {
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses; the fields start after its last ')'.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        // utime and stime are fields 14 and 15 of stat(5); 3 is the first after the name.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())?;
        Some(Self {
            cpu: Duration::from_secs_f64(ticks as f64 / per_second as f64),
            rss_kib,
        })
    }

    /// CPU seconds spent between `before` and `self`.
    pub fn cpu_since(&self, before: &Usage) -> f64 {
        self.cpu.saturating_sub(before.cpu).as_secs_f64()
    }
}

/// Raises this process's open-file limit to its hard limit, for 10,000 widgets. Processes the
/// harness starts inherit it.
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

//! The command line: every setting is a flag and an environment variable, in one place.

use clap::{Args, Parser, Subcommand};

use crate::store::embedded::disk::Durability;
use crate::store::redis::connection::Target;

#[derive(Parser, Debug)]
#[command(
    name = "cuebox",
    version,
    about = "A queued alert dispatcher for live streams",
    long_about = "A queued alert dispatcher for live streams.\n\nPlatforms POST alerts to /publish; \
                  each receiver's OBS widget shows them one at a time, in order, and never loses \
                  one. With no subcommand, cuebox runs `serve`.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log lines as JSON (one object a line, with the receiver and alert id of the request
    /// they concern) or for people to read.
    #[arg(long, global = true, env = "CUEBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a cuebox node (the default).
    Serve(ServeArgs),
    /// Print the widget URL to paste into OBS for a receiver.
    WidgetUrl(WidgetUrlArgs),
    /// Print the dock URL of a receiver, for an OBS custom browser dock. Its dashboard token
    /// controls the receiver's queue (pause, skip...): keep it off stream.
    DockUrl(WidgetUrlArgs),
    /// Print a subscribe token for broadcast topics: it lets its holder subscribe to the topics
    /// the patterns name (`trending:*`, `news:PL`), on `GET /ws/topics?token=...`.
    TopicToken(TopicTokenArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TopicTokenArgs {
    /// The topics it grants: topic names, or prefixes ending in `*`.
    #[arg(required = true)]
    pub patterns: Vec<String>,

    #[command(flatten)]
    pub signer: SignerArgs,
}

/// The secret the nodes sign tokens with, for the commands that print a token: given, or read
/// where the nodes keep it.
#[derive(Args, Debug, Clone)]
pub struct SignerArgs {
    /// The secret the nodes sign tokens with.
    #[arg(long, env = "CUEBOX_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// With no --secret, the secret is read from the Redis the nodes share, or with no Redis
    /// from the data dir.
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "CUEBOX_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub data: DataArgs,

    /// A key platforms must present to publish (repeat the flag, or comma-separate in the
    /// variable). None: one is made and printed at start.
    #[arg(
        long = "publish-key",
        env = "CUEBOX_PUBLISH_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub publish_keys: Vec<String>,

    /// Secret that signs widget tokens. Unset: kept in Redis (shared by every node), or in the
    /// data dir with the embedded store.
    #[arg(long, env = "CUEBOX_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// An alert sent but not started within this many ms is sent again.
    #[arg(long, env = "CUEBOX_START_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub start_timeout_ms: u64,

    /// An alert started but not done within its duration plus this many ms expires.
    #[arg(long, env = "CUEBOX_ACK_GRACE_MS", default_value_t = 15000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub ack_grace_ms: u64,

    /// Most alerts that may wait in one receiver's queue; past it, publish answers 429.
    #[arg(long, env = "CUEBOX_MAX_QUEUE", default_value_t = 10000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_queue: u64,

    /// Most widget connections this node holds; past it, the upgrade answers 503 so the load
    /// balancer can try another node.
    #[arg(long, env = "CUEBOX_MAX_CONNECTIONS", default_value_t = 20000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Most widgets one receiver may have connected, over all nodes; past it, 429.
    #[arg(long, env = "CUEBOX_MAX_WIDGETS_PER_RECEIVER", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_widgets_per_receiver: u32,

    /// Alerts each receiver's history keeps (the newest; Redis holds up to 64 more, as it trims
    /// in steps, and shows only these).
    #[arg(long, env = "CUEBOX_HISTORY", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub history: u32,

    /// An ingest stream entry another node has held unacknowledged this long is taken over:
    /// that node is taken to be gone.
    #[arg(long, env = "CUEBOX_INGEST_CLAIM_IDLE_MS", default_value_t = 30000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub ingest_claim_idle_ms: u64,

    /// The pause between the end of one alert and the start of the next, for receivers whose
    /// designs set no `alert_gap_ms`.
    #[arg(long, env = "CUEBOX_ALERT_GAP_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(0..=3_000))]
    pub alert_gap_ms: u64,

    /// Messages each broadcast topic keeps for subscribers that reconnect.
    #[arg(long, env = "CUEBOX_TOPIC_HISTORY", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub topic_history: u64,

    /// How long a broadcast topic keeps each message (`10m`, `90s`).
    #[arg(long, env = "CUEBOX_TOPIC_HISTORY_TTL", default_value = "10m",
          value_parser = humantime::parse_duration)]
    pub topic_history_ttl: std::time::Duration,

    /// Broadcast topics anyone may subscribe to with no token: patterns, comma-separated
    /// (`trending:*,news:PL`).
    #[arg(long, env = "CUEBOX_PUBLIC_TOPICS", value_delimiter = ',')]
    pub public_topics: Vec<String>,

    /// Republish Redis pub/sub messages to broadcast topics: `CHANNELS*=TOPIC_PREFIX`, such as
    /// `tvs:*=trending:` (`tvs:PL` goes to `trending:PL`). Repeat the flag, or separate with
    /// spaces in the variable. Needs the Redis store.
    #[arg(long, env = "CUEBOX_BRIDGE", value_delimiter = ' ')]
    pub bridge: Vec<String>,

    /// Most subscriber connections to broadcast topics from one address (429 past it; 0: no
    /// limit). The peer's address: behind a proxy, limit there.
    #[arg(long, env = "CUEBOX_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: u32,

    /// Text-to-speech by a local program: a command line, `{voice}` and `{rate}` where they go,
    /// given the text on its standard input, writing audio (WAV) on its standard output.
    /// Unset: `espeak-ng --stdout -v {voice} -s {rate}` when espeak-ng is installed. "" turns
    /// speech off.
    #[arg(long, env = "CUEBOX_TTS_COMMAND")]
    pub tts_command: Option<String>,

    /// Text-to-speech by an HTTP service instead (an http:// URL): `POST {"text","voice","rate"}`,
    /// answered with the audio.
    #[arg(long, env = "CUEBOX_TTS_URL")]
    pub tts_url: Option<String>,

    /// Threads serving HTTP and widgets. 0: one per core.
    #[arg(long, env = "CUEBOX_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// A request body that has not fully arrived this many ms after its headers is answered 408
    /// and its connection closed, so a client trickling a body cannot hold a socket forever.
    #[arg(long, env = "CUEBOX_BODY_TIMEOUT_MS", default_value_t = 10000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub body_timeout_ms: u64,

    /// Alerts per second each publish key may publish on this node (bursts of one second's
    /// worth); past it, 429 with Retry-After. 0: no limit.
    #[arg(long, env = "CUEBOX_PUBLISH_RATE", default_value_t = 0)]
    pub publish_rate: u32,
}

#[derive(Args, Debug, Clone)]
pub struct WidgetUrlArgs {
    /// The receiver (streamer) id.
    pub receiver: String,

    #[command(flatten)]
    pub signer: SignerArgs,

    /// Where streamers reach cuebox.
    #[arg(long, env = "CUEBOX_BASE_URL", default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
}

/// Where Redis is, the same for `serve` and `widget-url`.
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL (redis://host:port/db), or with --redis-cluster the comma-separated seed
    /// nodes. `serve` without it uses the embedded store, for one node, kept in --data-dir.
    #[arg(long = "redis-url", env = "CUEBOX_REDIS_URL")]
    pub url: Option<String>,

    /// Treat --redis-url as a comma-separated list of seed nodes of a Redis Cluster.
    #[arg(long = "redis-cluster", env = "CUEBOX_REDIS_CLUSTER",
          value_parser = clap::builder::BoolishValueParser::new(),
          default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub cluster: bool,

    /// Prefix of every Redis key.
    #[arg(long, env = "CUEBOX_KEY_PREFIX", default_value = "cuebox")]
    pub key_prefix: String,
}

/// Where the embedded store keeps its data, the same for `serve` and `widget-url`.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// The embedded store's directory (used with no --redis-url): its SQLite database, and the
    /// lock that keeps it to one node.
    #[arg(long, env = "CUEBOX_DATA_DIR", default_value = "./cuebox-data")]
    pub data_dir: std::path::PathBuf,

    /// `normal`: a commit survives the process being killed; the last moments before a power
    /// cut may be lost. `full`: every commit is synced to disk before it is answered.
    #[arg(long, env = "CUEBOX_DURABILITY", value_enum, default_value_t = Durability::Normal)]
    pub durability: Durability,

    /// Keep nothing on disk (for tests and benchmarks): queued alerts, the publish key and the
    /// widget secret are lost when the process ends.
    #[arg(long = "in-memory", env = "CUEBOX_IN_MEMORY",
          value_parser = clap::builder::BoolishValueParser::new(),
          default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub in_memory: bool,
}

impl RedisArgs {
    /// The Redis to connect to, if one was given.
    pub fn target(&self) -> Option<Target> {
        self.url
            .as_deref()
            .map(|url| Target::new(url, self.cluster))
    }
}

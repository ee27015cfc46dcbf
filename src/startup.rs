//! Building a node: the store, the hub, the keys and the HTTP server, bound before it runs so
//! that port 0 works and the caller learns the port.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::alert::ReceiverId;
use crate::auth::{random_publish_key, random_secret, PublishKeys, Purpose, ReceiverTokens};
use crate::config::{ServeArgs, TopicTokenArgs, WidgetUrlArgs};
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::ingest::Ingest;
use crate::limits::{Connections, PublishRate};
use crate::metrics::Metrics;
use crate::migrate::{self, MigrateError};
use crate::moderation::SettingsCache;
use crate::speech::{Engine, Speech};
use crate::store::embedded::disk::{self, OpenError};
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::keys::Keys;
use crate::store::redis::RedisStore;
use crate::store::{Rules, Store, StoreError};

/// How long a stopping node waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach Redis: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(transparent)]
    DataDir(#[from] OpenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

pub struct Application {
    addr: SocketAddr,
    server: Server,
    shutdown: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    /// The publish key made when none was configured: kept in the data dir with the embedded
    /// store, made at each start otherwise.
    pub generated_publish_key: Option<String>,
    /// Where the embedded store keeps its data, if it does.
    pub data_dir: Option<std::path::PathBuf>,
    pub tokens: ReceiverTokens,
    store: Arc<dyn Store>,
}

impl Application {
    pub async fn build(args: ServeArgs) -> Result<Self, StartError> {
        let rules = Rules {
            start_timeout: Duration::from_millis(args.start_timeout_ms),
            ack_grace: Duration::from_millis(args.ack_grace_ms),
            max_queue: args.max_queue,
            max_widgets: args.max_widgets_per_receiver,
            history: args.history,
        };
        let keys = Keys::new(&args.redis.key_prefix).map_err(StartError::Config)?;
        let node = uuid::Uuid::new_v4().simple().to_string();
        let (notices, notices_rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());

        let target = args.redis.target();
        // The Redis store, if any, as itself: its transitions' connection is made on a worker.
        let mut redis_store: Option<Arc<RedisStore>> = None;
        // With the embedded store on disk, the publish key to make if none is configured.
        let mut kept_publish_key = None;
        let mut data_dir = None;
        let (store, secret): (Arc<dyn Store>, String) = match &target {
            None if args.data.in_memory => {
                tracing::warn!(
                    "--in-memory: queued alerts, the publish key and the widget secret are lost \
                     when this process ends"
                );
                let secret = args.secret.clone().unwrap_or_else(random_secret);
                let store = EmbeddedStore::in_memory(rules).observed_by(metrics.clone());
                (Arc::new(store), secret)
            }
            None => {
                let (dir, durability) = (args.data.data_dir.clone(), args.data.durability);
                // Loading every receiver reads the whole database: off the runtime's threads.
                let opened = tokio::task::spawn_blocking(move || {
                    EmbeddedStore::open(&dir, durability, rules)
                })
                .await
                .map_err(|e| StartError::Config(format!("opening the data dir: {e}")))??;
                let (store, secrets) = opened;
                kept_publish_key = Some(secrets.publish_key);
                data_dir = Some(args.data.data_dir.clone());
                let secret = args.secret.clone().unwrap_or(secrets.widget_secret);
                (Arc::new(store.observed_by(metrics.clone())), secret)
            }
            Some(target) => {
                let store = RedisStore::connect(
                    target,
                    keys.clone(),
                    rules,
                    &node,
                    notices,
                    metrics.clone(),
                )
                .await?;
                let version = migrate::run(&mut store.connection(), &keys).await?;
                let secret = match &args.secret {
                    Some(s) => s.clone(),
                    None => store.shared_secret().await?,
                };
                tracing::info!(
                    redis = %redacted(args.redis.url.as_deref().unwrap_or_default()),
                    cluster = target.is_cluster(), prefix = keys.prefix(), layout = version,
                    "using the Redis store"
                );
                let store = Arc::new(store);
                redis_store = Some(store.clone());
                (store, secret)
            }
        };
        if secret.is_empty() {
            return Err(StartError::Config("the secret must not be empty".into()));
        }

        let generated_publish_key = args
            .publish_keys
            .iter()
            .all(|k| k.trim().is_empty())
            .then(|| kept_publish_key.unwrap_or_else(random_publish_key));
        let publish_keys = match &generated_publish_key {
            Some(k) => PublishKeys::new(std::slice::from_ref(k)),
            None => PublishKeys::new(&args.publish_keys),
        };
        let tokens = ReceiverTokens::new(&secret);
        let publish_rate = PublishRate::new(args.publish_rate, publish_keys.len());

        let settings = SettingsCache::new(store.clone());
        let hub = Hub::new(store.clone(), metrics.clone());
        let engine = Engine::from_flags(args.tts_command.as_deref(), args.tts_url.as_deref());
        match &engine {
            Some(engine) => tracing::info!(?engine, "text-to-speech"),
            None => tracing::info!("no text-to-speech engine (espeak-ng is not installed, and neither --tts-command nor --tts-url is set)"),
        }
        let speech = Speech::new(engine);
        hub.set_speech(speech.clone());
        hub.set_default_gap(Duration::from_millis(args.alert_gap_ms));
        let mut background = hub.spawn_background(notices_rx);
        if let Some(target) = &target {
            let ingest = Ingest {
                keys: keys.clone(),
                node: node.clone(),
                claim_idle: Duration::from_millis(args.ingest_claim_idle_ms),
                hub: hub.clone(),
                metrics: metrics.clone(),
                settings: settings.clone(),
            };
            background.push(ingest.spawn(target).await?);
        }
        let public_topics = args
            .public_topics
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                crate::topics::Pattern::parse(p.trim())
                    .map_err(|e| StartError::Config(format!("--public-topics: {}", e.message)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Redis, which every node shares; with the embedded store, this node's memory (it is
        // the only node).
        let topic_log: Arc<dyn crate::topics::TopicLog> = match &redis_store {
            Some(redis) => Arc::new(redis.topic_log(args.topic_history, args.topic_history_ttl)),
            None => Arc::new(crate::topics::MemoryLog::new(
                args.topic_history as usize,
                args.topic_history_ttl,
                hub.topics.clone(),
            )),
        };
        let rules = args
            .bridge
            .iter()
            .filter(|r| !r.trim().is_empty())
            .map(|r| crate::topics::bridge::Rule::parse(r.trim()).map_err(StartError::Config))
            .collect::<Result<Vec<_>, _>>()?;
        if !rules.is_empty() {
            let Some(target) = &target else {
                return Err(StartError::Config(
                    "--bridge republishes Redis pub/sub: it needs the Redis store (--redis-url)"
                        .into(),
                ));
            };
            let bridge = crate::topics::bridge::Bridge {
                rules,
                target: target.clone(),
                keys: keys.clone(),
                node: node.as_str().into(),
                log: topic_log.clone(),
                metrics: metrics.clone(),
            };
            background.push(bridge.spawn().await?);
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = web::Data::new(AppState {
            hub,
            publish_keys,
            tokens: tokens.clone(),
            publish_rate,
            connections: Connections::new(args.max_connections),
            body_timeout: Duration::from_millis(args.body_timeout_ms),
            metrics,
            shutdown: shutdown_rx,
            refusals: Default::default(),
            settings,
            speech,
            topic_log,
            public_topics,
            per_address: crate::limits::PerAddress::new(args.max_connections_per_ip),
        });

        let listener = TcpListener::bind(&args.bind).map_err(|source| StartError::Bind {
            addr: args.bind.clone(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: args.bind.clone(),
            source,
        })?;
        let workers = match args.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let server = HttpServer::new(move || {
            // Runs on each worker's thread as it starts: the worker's transitions get a
            // connection of their own, driven there.
            if let Some(redis) = &redis_store {
                redis.drive_calls_here();
            }
            App::new().app_data(state.clone()).configure(http::routes)
        })
        .workers(workers)
        .on_connect(http::socket::on_connect)
        .listen(listener)
        .map_err(|source| StartError::Bind {
            addr: args.bind.clone(),
            source,
        })?
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .run();

        Ok(Self {
            addr,
            server,
            shutdown,
            background,
            generated_publish_key,
            data_dir,
            tokens,
            store,
        })
    }

    /// The URL of a receiver's widget or dock, with its token of the current generation.
    pub async fn receiver_url(
        &self,
        purpose: Purpose,
        receiver: &ReceiverId,
    ) -> Result<String, StoreError> {
        let generation = self.store.generations(receiver).await?.of(purpose);
        Ok(receiver_url(
            &self.base_url(),
            &self.tokens,
            purpose,
            receiver,
            generation,
        ))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A base URL for this node as seen from this machine.
    pub fn base_url(&self) -> String {
        let host = if self.addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            self.addr.ip().to_string()
        };
        match self.addr {
            SocketAddr::V6(_) if host != "127.0.0.1" => format!("http://[{host}]:{}", self.port()),
            _ => format!("http://{host}:{}", self.port()),
        }
    }

    /// Stops the node from elsewhere (tests, signals): widgets are closed with 1012 so they
    /// reconnect, then the server drains.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shutdown: self.shutdown.clone(),
            server: self.server.handle(),
        }
    }

    /// Serves until stopped by [`Stopper::stop`], SIGTERM or SIGINT.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let stopper = self.stopper();
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            stopper.stop().await;
        });
        let result = self.server.await;
        signals.abort();
        for task in self.background {
            task.abort();
        }
        result
    }
}

#[derive(Clone)]
pub struct Stopper {
    shutdown: watch::Sender<bool>,
    server: ServerHandle,
}

impl Stopper {
    pub async fn stop(&self) {
        // Stop accepting first, then let the widgets go: they reconnect to another node.
        let stopped = self.server.stop(true);
        let _ = self.shutdown.send(true);
        stopped.await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A receiver's page with its token of `generation`: the widget (a browser source) or the dock
/// (a custom browser dock, with the dashboard token).
pub fn receiver_url(
    base_url: &str,
    tokens: &ReceiverTokens,
    purpose: Purpose,
    receiver: &ReceiverId,
    generation: u64,
) -> String {
    let page = match purpose {
        Purpose::Widget => "widget",
        Purpose::Dashboard => "dock",
    };
    format!(
        "{}/{page}/{}?token={}",
        base_url.trim_end_matches('/'),
        receiver,
        tokens.token_for(purpose, receiver, generation)
    )
}

/// `cuebox topic-token PATTERN...`: a subscribe token for those topics, signed with the secret
/// the nodes share (given, or read as `widget-url` reads it).
pub async fn topic_token_command(args: TopicTokenArgs) -> Result<String, StartError> {
    let patterns = args
        .patterns
        .iter()
        .map(|p| crate::topics::Pattern::parse(p).map_err(|e| StartError::Config(e.message)))
        .collect::<Result<Vec<_>, _>>()?;
    let signer = &args.signer;
    let secret = match (&signer.secret, signer.redis.target()) {
        (Some(s), _) => s.clone(),
        (None, Some(target)) => {
            let keys = Keys::new(&signer.redis.key_prefix).map_err(StartError::Config)?;
            let mut con = target.connect(None).await?;
            crate::store::redis::shared_secret(&mut con, &keys).await?
        }
        (None, None) => kept_secret(&signer.data.data_dir)?,
    };
    Ok(ReceiverTokens::new(&secret).topic_token(&patterns))
}

/// `cuebox widget-url` and `cuebox dock-url`: the secret from the flag, or the one the nodes
/// keep in Redis, or the one the embedded store keeps in its data dir.
pub async fn receiver_url_command(
    args: WidgetUrlArgs,
    purpose: Purpose,
) -> Result<String, StartError> {
    let receiver = ReceiverId::parse(&args.receiver).map_err(|e| StartError::Config(e.message))?;
    let signer = &args.signer;
    // The secret (unless given) and the token's generation: both from Redis, over one
    // connection, or both from the data dir.
    let (secret, generations) = match signer.redis.target() {
        Some(target) => {
            let keys = Keys::new(&signer.redis.key_prefix).map_err(StartError::Config)?;
            let mut con = target.connect(None).await?;
            let generations = crate::store::redis::generations(&mut con, &keys, &receiver).await?;
            let secret = match &signer.secret {
                Some(s) => s.clone(),
                None => crate::store::redis::shared_secret(&mut con, &keys).await?,
            };
            (secret, generations)
        }
        None => {
            let dir = &signer.data.data_dir;
            let generations =
                disk::read_generations_of(dir, &receiver).map_err(StartError::Config)?;
            let secret = match &signer.secret {
                Some(s) => s.clone(),
                None => kept_secret(dir)?,
            };
            (secret, generations)
        }
    };
    Ok(receiver_url(
        &args.base_url,
        &ReceiverTokens::new(&secret),
        purpose,
        &receiver,
        generations.of(purpose),
    ))
}

/// The secret the embedded store keeps in data dir `dir`, for the commands that print a token.
fn kept_secret(dir: &std::path::Path) -> Result<String, StartError> {
    disk::read_secret(dir)
        .map_err(StartError::Config)?
        .ok_or_else(|| {
            StartError::Config(format!(
                "no widget secret in the data dir {}: start the node once (it makes one), or \
                 give --data-dir (CUEBOX_DATA_DIR), --redis-url (CUEBOX_REDIS_URL) or --secret \
                 (CUEBOX_SECRET)",
                dir.display()
            ))
        })
}

/// A Redis URL for the log, without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

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
use crate::auth::{random_publish_key, random_secret, PublishKeys, WidgetTokens};
use crate::config::{ServeArgs, WidgetUrlArgs};
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::ingest::Ingest;
use crate::limits::{Connections, PublishRate};
use crate::metrics::Metrics;
use crate::migrate::{self, MigrateError};
use crate::store::memory::MemoryStore;
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
    /// The publish key made at start when none was configured.
    pub generated_publish_key: Option<String>,
    pub tokens: WidgetTokens,
}

impl Application {
    pub async fn build(args: ServeArgs) -> Result<Self, StartError> {
        let rules = Rules {
            start_timeout: Duration::from_millis(args.start_timeout_ms),
            ack_grace: Duration::from_millis(args.ack_grace_ms),
            max_queue: args.max_queue,
            max_widgets: args.max_widgets_per_receiver,
        };
        let keys = Keys::new(&args.redis.key_prefix).map_err(StartError::Config)?;
        let node = uuid::Uuid::new_v4().simple().to_string();
        let (notices, notices_rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());

        let target = args.redis.target();
        // The Redis store, if any, as itself: its transitions' connection is made on a worker.
        let mut redis_store: Option<Arc<RedisStore>> = None;
        let (store, secret): (Arc<dyn Store>, String) = match &target {
            None => {
                tracing::warn!(
                    "no CUEBOX_REDIS_URL: using the embedded in-memory store for this node only; \
                     queued alerts do not survive a restart"
                );
                let secret = args.secret.clone().unwrap_or_else(|| {
                    tracing::warn!(
                        "no CUEBOX_SECRET: widget URLs are signed with a per-process secret and \
                         change at every restart"
                    );
                    random_secret()
                });
                (
                    Arc::new(MemoryStore::observed(rules, metrics.clone())),
                    secret,
                )
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
            .then(random_publish_key);
        let publish_keys = match &generated_publish_key {
            Some(k) => PublishKeys::new(std::slice::from_ref(k)),
            None => PublishKeys::new(&args.publish_keys),
        };
        let tokens = WidgetTokens::new(&secret);
        let publish_rate = PublishRate::new(args.publish_rate, publish_keys.len());

        let hub = Hub::new(store, metrics.clone());
        let mut background = hub.spawn_background(notices_rx);
        if let Some(target) = &target {
            let ingest = Ingest {
                keys: keys.clone(),
                node: node.clone(),
                claim_idle: Duration::from_millis(args.ingest_claim_idle_ms),
                hub: hub.clone(),
                metrics: metrics.clone(),
            };
            background.push(ingest.spawn(target).await?);
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
            // Runs on each worker's thread as it starts; the first makes the store's
            // connection for transitions there.
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
            tokens,
        })
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

/// The URL to paste into OBS for a receiver.
pub fn widget_url(base_url: &str, tokens: &WidgetTokens, receiver: &ReceiverId) -> String {
    format!(
        "{}/widget/{}?token={}",
        base_url.trim_end_matches('/'),
        receiver,
        tokens.token(receiver)
    )
}

/// `cuebox widget-url`: the secret from the flag, or the one the nodes keep in Redis.
pub async fn widget_url_command(args: WidgetUrlArgs) -> Result<String, StartError> {
    let receiver = ReceiverId::parse(&args.receiver).map_err(|e| StartError::Config(e.message))?;
    let secret = match (&args.secret, args.redis.target()) {
        (Some(s), _) => s.clone(),
        (None, Some(target)) => {
            let keys = Keys::new(&args.redis.key_prefix).map_err(StartError::Config)?;
            let mut con = target.connect(None).await?;
            crate::store::redis::shared_secret(&mut con, &keys).await?
        }
        (None, None) => {
            return Err(StartError::Config(
                "give --secret (CUEBOX_SECRET) or --redis-url (CUEBOX_REDIS_URL) to read the \
                 secret the nodes share"
                    .into(),
            ))
        }
    };
    Ok(widget_url(
        &args.base_url,
        &WidgetTokens::new(&secret),
        &receiver,
    ))
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

//! Connections to Redis, a single server or a Redis Cluster, behind one type, so the store, the
//! migrations and the ingest reader never care which.
//!
//! Both kinds multiplex: one connection serves any number of concurrent callers, and
//! reconnects by itself. In a cluster, every script touches one slot (a receiver's keys share
//! the hash tag `{receiver}`), and notifications use sharded pub/sub, so they scale with the
//! cluster rather than reaching every node of it.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};

use crate::store::StoreError;

/// How long a call may wait for Redis before the caller is told the store is unavailable.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is: one URL, or the seed nodes of a cluster.
#[derive(Clone, Debug)]
pub struct Target {
    urls: Vec<String>,
    cluster: bool,
}

impl Target {
    /// `url` is one Redis URL, or with `cluster` a comma-separated list of seed nodes.
    pub fn new(url: &str, cluster: bool) -> Self {
        let urls = if cluster {
            url.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        } else {
            vec![url.to_owned()]
        };
        Self { urls, cluster }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The first URL alone, as a single server: one node of a cluster.
    pub fn first_node(&self) -> Target {
        Target {
            urls: self.urls.iter().take(1).cloned().collect(),
            cluster: false,
        }
    }

    /// A connection for commands. `push`, if given, receives pub/sub messages; the connection
    /// then speaks RESP3.
    pub async fn connect(&self, push: Option<Pusher>) -> Result<Connection, StoreError> {
        self.connect_with(push, RESPONSE_TIMEOUT).await
    }

    /// A connection of its own for blocking reads (`XREADGROUP ... BLOCK`), which hold it for
    /// up to `block`: never the shared one, whose other callers would wait behind them.
    pub async fn connect_for_blocking(&self, block: Duration) -> Result<Connection, StoreError> {
        self.connect_with(None, block + RESPONSE_TIMEOUT).await
    }

    async fn connect_with(
        &self,
        push: Option<Pusher>,
        response_timeout: Duration,
    ) -> Result<Connection, StoreError> {
        if self.cluster {
            let mut builder = ClusterClientBuilder::new(self.urls.clone())
                .connection_timeout(RESPONSE_TIMEOUT)
                .response_timeout(response_timeout);
            if let Some(push) = push {
                builder = builder
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(push);
            }
            let client = builder.build()?;
            return Ok(Connection::Cluster(client.get_async_connection().await?));
        }
        let url = self
            .urls
            .first()
            .ok_or_else(|| StoreError::Unavailable("no Redis URL given".into()))?;
        // RESP3 on every connection, not only the subscriber: over RESP3 the manager hears its
        // connection drop the moment it does and starts reconnecting, so a call made after a
        // drop waits for the new connection (and fails as refused while Redis is down) instead
        // of being handed to the dead one. That is what lets a failed call say that nothing
        // reached Redis (`StoreError::Unavailable`) rather than that its outcome is unknown.
        let info = Client::open(url.as_str())?.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(resp3))?;
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_millis(500));
        if let Some(push) = push {
            config = config.set_push_sender(push);
        }
        Ok(Connection::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }
}

/// Receives pub/sub pushes on a subscribing connection.
pub type Pusher = Box<dyn Fn(PushInfo) -> Result<(), redis::aio::SendError> + Send + Sync>;

/// One multiplexed connection to a server or a cluster; cheap to clone.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Subscribes to a receiver's notification channel: sharded pub/sub on a cluster, so the
    /// message stays on the shard that owns the receiver.
    pub async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Connection::Single(c) => c.subscribe(channel).await,
            Connection::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Connection::Single(c) => c.unsubscribe(channel).await,
            Connection::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    /// The command scripts publish notifications with, to match [`Connection::subscribe`].
    pub fn publish_command(&self) -> &'static str {
        match self {
            Connection::Single(_) => "PUBLISH",
            Connection::Cluster(_) => "SPUBLISH",
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

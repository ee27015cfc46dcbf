//! Ingest from Redis: producers that already talk to Redis (a PHP or Python cron) add alerts
//! with `XADD {prefix}:ingest * alert <json>`, the JSON being a `POST /publish` body.
//!
//! Every node reads the stream through one consumer group, so each entry goes to one node. An
//! entry is acknowledged only once it is queued, a duplicate, or refused into
//! `{prefix}:ingest:dead` with the reason; entries a dead node held are claimed again
//! (XAUTOCLAIM). An entry without its own idempotency key is published under `ingest:<entry id>`,
//! so an entry processed twice (its node died between queueing and acknowledging) is a
//! duplicate the second time: nothing is lost and nothing is doubled.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;
use tokio::task::JoinHandle;

use crate::alert::NewAlert;
use crate::hub::Hub;
use crate::metrics::{Metrics, PublishOutcome};
use crate::moderation::{moderate, SettingsCache, Verdict};
use crate::store::redis::connection::{Connection, Target};
use crate::store::redis::keys::Keys;
use crate::store::{Publish, StoreError};

/// The consumer group every node reads the stream through.
pub const GROUP: &str = "cuebox";
/// How long one read waits for new entries before the loop looks at its other work.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries taken per read.
const BATCH: usize = 100;
/// How soon an entry that could not be queued (the store is away) is tried again.
const RETRY: Duration = Duration::from_millis(500);

pub struct Ingest {
    pub keys: Keys,
    /// This node's consumer name in the group.
    pub node: String,
    /// An entry pending this long with another consumer is taken over: that node is gone.
    pub claim_idle: Duration,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<SettingsCache>,
}

impl Ingest {
    /// Creates the group if needed and starts reading; the task runs until aborted.
    pub async fn spawn(self, target: &Target) -> Result<JoinHandle<()>, StoreError> {
        let mut con = target.connect(None).await?;
        let reader = target.connect_for_blocking(BLOCK).await?;
        self.create_group(&mut con).await?;
        Ok(tokio::spawn(self.run(con, reader)))
    }

    /// Creates the stream and its group if either is missing: at start, and whenever Redis
    /// answers `NOGROUP` (it restarted without them, or failed over to a replica that lacks
    /// them). From the stream's start, so entries added before the group are not skipped; one
    /// read twice is a duplicate by its idempotency key, never a second alert.
    async fn create_group(&self, con: &mut Connection) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.ingest())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(con)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// After a failed stream command: makes the group again if Redis lost it.
    async fn recover(&self, con: &mut Connection, e: &redis::RedisError) {
        if e.code() != Some("NOGROUP") {
            return;
        }
        match self.create_group(con).await {
            Ok(()) => tracing::warn!("the ingest group was missing (Redis lost it); made it again"),
            Err(e) => tracing::warn!(error = %e, "could not make the ingest group again"),
        }
    }

    async fn run(self, mut con: Connection, mut reader: Connection) {
        let mut claimed_at: Option<tokio::time::Instant> = None;
        // A read never outwaits the next claim.
        let block = BLOCK.min(self.claim_idle / 2);
        loop {
            if claimed_at.is_none_or(|at| at.elapsed() >= self.claim_idle / 2) {
                if let Err(e) = self.claim(&mut con).await {
                    tracing::warn!(error = %e, "could not claim ingest entries");
                    self.recover(&mut con, &e).await;
                }
                claimed_at = Some(tokio::time::Instant::now());
            }
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.node)
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(self.keys.ingest())
                .arg(">")
                .query_async(&mut reader)
                .await;
            match read {
                Ok(Some(reply)) => {
                    for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                        self.process(&mut con, entry).await;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the ingest stream failed");
                    self.recover(&mut con, &e).await;
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Takes over, and processes, entries other consumers have held for `claim_idle`.
    async fn claim(&self, con: &mut Connection) -> redis::RedisResult<()> {
        let mut start = "0-0".to_owned();
        // Bounded: each round moves `start` forward through a finite pending list.
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(self.keys.ingest())
                .arg(GROUP)
                .arg(&self.node)
                .arg(self.claim_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(con)
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(entries = reply.claimed.len(), "claimed ingest entries");
            }
            for entry in reply.claimed {
                self.process(con, entry).await;
            }
            if reply.next_stream_id == "0-0" {
                return Ok(());
            }
            start = reply.next_stream_id;
        }
    }

    /// Queues one entry, or refuses it into the dead stream, then acknowledges it. While the
    /// store is away the same entry is retried, so entries keep their order.
    #[tracing::instrument(name = "ingest", skip_all, fields(entry = %entry.id, receiver, alert_id))]
    async fn process(&self, con: &mut Connection, entry: StreamId) {
        let alert = match entry.map.get("alert") {
            Some(Value::BulkString(json)) => NewAlert::parse(json, None),
            _ => {
                return self
                    .refuse(con, &entry, "missing_field: the entry has no `alert` field")
                    .await
            }
        };
        let mut alert = match alert {
            Ok(a) => a,
            Err(e) => {
                let field = e.field.as_deref().unwrap_or("-");
                let why = format!("{}: {} (field {field})", e.code, e.message);
                return self.refuse(con, &entry, &why).await;
            }
        };
        let key = alert
            .idempotency_key
            .clone()
            .unwrap_or_else(|| format!("ingest:{}", entry.id));
        // The receiver's moderation, as for `POST /publish`; the settings are read again until
        // the store answers.
        let moderated = std::time::Instant::now();
        let settings = loop {
            match self.settings.get(&alert.receiver).await {
                Ok(settings) => break settings,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read a receiver's settings; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        if let Verdict::Filtered(why) = moderate(&settings, &mut alert) {
            tracing::debug!(receiver = %alert.receiver, why, "ingest entry filtered");
            let record = alert.into_record();
            // Bounded by the node's life, as the publish below.
            while let Err(e) = self.hub.filtered(&record).await {
                tracing::warn!(error = %e, "could not record a filtered entry; retrying");
                tokio::time::sleep(RETRY).await;
            }
            self.metrics
                .publish(PublishOutcome::Filtered, moderated.elapsed());
            self.ack(con, &entry).await;
            return;
        }
        let designs = self.settings.designs(&alert.receiver);
        let record = alert.into_record_with(&designs);
        let span = tracing::Span::current();
        span.record("receiver", record.receiver.as_str());
        span.record("alert_id", record.id.as_str());
        let started = std::time::Instant::now();
        // Bounded by the node's life: the task is aborted when the node stops.
        let outcome = loop {
            match self.hub.admit(&record, Some(&key), settings.hold()).await {
                Ok(outcome) => break outcome,
                Err(e) => {
                    tracing::warn!(error = %e, "could not queue an ingest entry; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        match outcome {
            Publish::Accepted { .. } | Publish::Held { .. } => {
                self.metrics
                    .publish(PublishOutcome::Published, started.elapsed());
                self.ack(con, &entry).await;
            }
            Publish::Duplicate { .. } => {
                self.metrics
                    .publish(PublishOutcome::Duplicate, started.elapsed());
                self.ack(con, &entry).await;
            }
            Publish::QueueFull => {
                self.metrics
                    .publish(PublishOutcome::Refused, started.elapsed());
                self.refuse(con, &entry, "queue_full: the receiver's queue is full")
                    .await;
            }
        }
    }

    async fn ack(&self, con: &mut Connection, entry: &StreamId) {
        let acked: redis::RedisResult<i64> = redis::cmd("XACK")
            .arg(self.keys.ingest())
            .arg(GROUP)
            .arg(&entry.id)
            .query_async(con)
            .await;
        if let Err(e) = acked {
            // It stays pending and is claimed again later; its idempotency key makes that a
            // duplicate.
            tracing::warn!(error = %e, "could not acknowledge an ingest entry");
        }
    }

    /// Moves an entry to the dead stream with the reason, then acknowledges it. Two steps, not a
    /// transaction: on a cluster the two streams live in different slots. A node that dies in
    /// between leaves the entry to be claimed and refused again: a second dead copy, never a
    /// lost entry.
    async fn refuse(&self, con: &mut Connection, entry: &StreamId, why: &str) {
        tracing::info!(why, "refused an ingest entry");
        let raw = match entry.map.get("alert") {
            Some(Value::BulkString(b)) => b.clone(),
            _ => Vec::new(),
        };
        let moved: redis::RedisResult<()> = redis::cmd("XADD")
            .arg(self.keys.ingest_dead())
            .arg("*")
            .arg("entry")
            .arg(&entry.id)
            .arg("error")
            .arg(why)
            .arg("alert")
            .arg(raw)
            .query_async(con)
            .await;
        match moved {
            Ok(()) => self.ack(con, entry).await,
            Err(e) => tracing::warn!(error = %e, "could not move a refused ingest entry"),
        }
    }
}

//! A bridge from Redis pub/sub to broadcast topics: `--bridge 'tvs:*=trending:'` subscribes to
//! the channels `tvs:*` and republishes each message on `tvs:PL` to the topic `trending:PL`,
//! the message (a JSON object) as its `data` and the channel as its `event`.
//!
//! Producers that `PUBLISH` from a cron job keep doing so; their subscribers move to topics. One
//! node of those sharing a Redis bridges at a time, so each message is republished once: the
//! holder of a lease (`{prefix}:bridge:leader`, renewed every [`RENEW_EVERY`] for [`LEASE`]);
//! when it stops, another takes over within the lease. Pub/sub keeps nothing, so what is
//! published while no node holds the lease is not bridged.
//!
//! A message that is not a JSON object of at most 16 KiB, or on a channel that makes no valid
//! topic, is counted (`cuebox_bridge_rejected_total`) and logged at most once a minute; it is
//! never fatal.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Outgoing, Topic, TopicLog};
use crate::metrics::Metrics;
use crate::store::redis::connection::{Connection, Target};
use crate::store::redis::keys::Keys;
use crate::store::StoreError;

/// How long a node holds the bridge without renewing it.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often the holder renews it, and the others try to take it.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// The most a message may hold, as for `POST /broadcast`'s `data`.
const MAX_DATA: usize = 16 * 1024;
/// How often a rejected message is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// One `--bridge` rule: channels under `channels` (a prefix) go to topics under `topics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    channels: String,
    topics: String,
}

impl Rule {
    /// `CHANNELS*=TOPIC_PREFIX`, such as `tvs:*=trending:`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (pattern, topics) = s
            .split_once('=')
            .ok_or_else(|| format!("--bridge {s:?}: expected CHANNELS*=TOPIC_PREFIX"))?;
        let channels = pattern
            .strip_suffix('*')
            .filter(|p| !p.contains(['*', '?', '[', ']']))
            .ok_or_else(|| {
                format!("--bridge {s:?}: the channel pattern is a prefix ending in '*'")
            })?;
        // The prefix must itself be able to start a topic.
        if !topics.is_empty() && super::Pattern::parse(&format!("{topics}*")).is_err() {
            return Err(format!("--bridge {s:?}: {topics:?} cannot start a topic"));
        }
        Ok(Self {
            channels: channels.to_owned(),
            topics: topics.to_owned(),
        })
    }

    /// The topic a message on `channel` goes to, if this rule takes the channel.
    fn topic_of(&self, channel: &str) -> Option<Result<Topic, ()>> {
        let rest = channel.strip_prefix(&self.channels)?;
        Some(Topic::parse(&format!("{}{rest}", self.topics)).map_err(drop))
    }
}

/// The bridge of one node.
pub struct Bridge {
    pub rules: Vec<Rule>,
    pub target: Target,
    pub keys: Keys,
    pub node: Arc<str>,
    pub log: Arc<dyn TopicLog>,
    pub metrics: Arc<Metrics>,
}

/// Something the subscriber connection heard.
enum Heard {
    Message { channel: String, payload: Vec<u8> },
    Dropped,
}

impl Bridge {
    /// Connects and runs until aborted.
    pub async fn spawn(self) -> Result<JoinHandle<()>, StoreError> {
        let (heard, mut inbox) = mpsc::unbounded_channel();
        let pusher: crate::store::redis::connection::Pusher = Box::new(move |push: PushInfo| {
            match push.kind {
                PushKind::PMessage => {
                    if let [_, channel, payload] = push.data.as_slice() {
                        if let (Value::BulkString(c), Value::BulkString(p)) = (channel, payload) {
                            let _ = heard.send(Heard::Message {
                                channel: String::from_utf8_lossy(c).into_owned(),
                                payload: p.clone(),
                            });
                        }
                    }
                }
                PushKind::Disconnection => {
                    let _ = heard.send(Heard::Dropped);
                }
                _ => {}
            }
            Ok(())
        });
        // Classic pub/sub: a message published on any node of a cluster reaches every node, so
        // one connection to the first one hears them all.
        let mut con = self.target.first_node().connect(Some(pusher)).await?;
        let mut commands = self.target.connect(None).await?;
        Ok(tokio::spawn(async move {
            let mut leading = false;
            let mut renew = tokio::time::interval(RENEW_EVERY);
            let mut last_logged: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = renew.tick() => {
                        let lead = self.hold_lease(&mut commands).await;
                        if lead != leading {
                            leading = lead && self.subscribe(&mut con, true).await;
                            if !lead {
                                self.subscribe(&mut con, false).await;
                            }
                            tracing::info!(leading, "the pub/sub bridge");
                        }
                    }
                    heard = inbox.recv() => match heard {
                        None => return,
                        Some(Heard::Dropped) => {
                            // Its subscriptions went with the connection.
                            leading = false;
                        }
                        Some(Heard::Message { channel, payload }) if leading => {
                            if let Err(why) = self.bridge(&channel, &payload).await {
                                self.metrics.bridge_rejected();
                                if last_logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                                    last_logged = Some(Instant::now());
                                    tracing::warn!(channel, why, "a bridged message was not republished (logged once a minute)");
                                }
                            }
                        }
                        Some(Heard::Message { .. }) => {}
                    }
                }
            }
        }))
    }

    async fn subscribe(&self, con: &mut Connection, on: bool) -> bool {
        for rule in &self.rules {
            let pattern = format!("{}*", rule.channels);
            let result = match (&mut *con, on) {
                (Connection::Single(c), true) => c.psubscribe(&pattern).await,
                (Connection::Single(c), false) => c.punsubscribe(&pattern).await,
                (Connection::Cluster(_), _) => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, pattern, "the bridge could not (un)subscribe");
                return false;
            }
        }
        true
    }

    /// Takes or renews the lease; answers whether this node holds it.
    async fn hold_lease(&self, con: &mut Connection) -> bool {
        // Renewed only by its holder; taken only when nobody holds it.
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
             if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end \
             return 0";
        let held: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(1)
            .arg(self.keys.bridge_leader())
            .arg(&*self.node)
            .arg(LEASE.as_millis() as u64)
            .query_async(con)
            .await;
        held.is_ok_and(|n| n == 1)
    }

    async fn bridge(&self, channel: &str, payload: &[u8]) -> Result<(), &'static str> {
        let topic = self
            .rules
            .iter()
            .find_map(|r| r.topic_of(channel))
            .ok_or("no rule takes the channel")?
            .map_err(|()| "the channel makes no valid topic")?;
        if payload.len() > MAX_DATA {
            return Err("the message is over 16 KiB");
        }
        let data: serde_json::Value =
            serde_json::from_slice(payload).map_err(|_| "the message is not JSON")?;
        if !data.is_object() {
            return Err("the message is not a JSON object");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let message = Outgoing::new(channel, &data, now);
        self.log
            .append(&topic, &message)
            .await
            .map_err(|_| "the store did not take it")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_maps_its_channels_onto_topics() {
        let rule = Rule::parse("tvs:*=trending:").unwrap();
        assert_eq!(
            rule.topic_of("tvs:PL"),
            Some(Ok(Topic::parse("trending:PL").unwrap()))
        );
        assert_eq!(rule.topic_of("news:PL"), None);
        assert_eq!(rule.topic_of("tvs:a b"), Some(Err(())));
        for bad in ["tvs:*", "tvs=trending:", "t*v*=x", "tvs:*=a b"] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }
}

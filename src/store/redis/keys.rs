//! Every Redis key and channel name cuebox uses, in one place.
//!
//! All keys of one receiver share the hash tag `{receiver}`, so they live in one Redis Cluster
//! slot and one script can touch them all. The receiver id's character set has no braces, and
//! the prefix is checked for none, so the tag is always the receiver.
//!
//! | key                             | type   | holds                                             |
//! |---------------------------------|--------|---------------------------------------------------|
//! | `P:{r}:receiver`                | hash   | `seq`, `flight`, `alert`, `live`, `hold` (see `receiver.lua`) |
//! | `P:{r}:queue`                   | list   | waiting alerts, head first: `"<id> <duration_ms> <times sent> <alert json>"` |
//! | `P:{r}:ids`                     | set    | each alert queued or in flight                     |
//! | `P:{r}:widgets`                 | hash   | node id -> `"<widgets> <live until, ms>"`         |
//! | `P:{r}:priority`                | list   | the priority lane, entries as in the queue; before it |
//! | `P:{r}:started:<id>:<attempt>`  | string | `"<started at> <started at + grace>"`: that send of the alert in flight started; expires after a day |
//! | `P:{r}:idem:<key>`              | string | `"<alert id> <position>"`, expires after 24 h    |
//! | `P:{r}:settings`                | string | the receiver's moderation settings, JSON          |
//! | `P:{r}:designs`                 | list   | `"<version> <put at, ms> <designs JSON>"`, newest first, the last 50 versions |
//! | `P:{r}:tokens`                  | hash   | `widget`, `dashboard`: token generations, absent for 0 |
//! | `P:{r}:events` (channel)        | pubsub | snapshots for other nodes                          |
//! | `P:secret`                      | string | the shared widget token secret                     |
//! | `P:nodes`                       | set    | node ids, until a dead one is swept                |
//! | `P:node:<id>`                   | string | a node's heartbeat, expires 15 s after it stops    |
//! | `P:node:<id>:receivers`         | set    | receivers the node holds widgets for               |
//! | `P:ingest`, `P:ingest:dead`     | stream | alerts added by producers; entries refused, with why |
//! | `P:schema:version`, `P:schema:lock` | string | the key layout version and its migration lock |

use crate::alert::ReceiverId;
use crate::topics::Topic;

/// Buckets of broadcast topics, each with its hash tag and channel: enough to spread topics over
/// a cluster's shards, few enough that every node subscribes to all.
pub const TOPIC_BUCKETS: u32 = 16;

/// The bucket of a topic: FNV-1a of its name.
fn topic_bucket(topic: &Topic) -> u32 {
    let hash = topic.as_str().bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % TOPIC_BUCKETS
}

/// Key names under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// The keys of one receiver every function call takes, in the order `receiver.lua` takes them as
/// KEYS. After these, the widgets hash for the functions that read it every time, or the
/// idempotency key for a publish that has one.
pub const RECEIVER_KEYS: [&str; 4] = ["receiver", "queue", "ids", "priority"];
const WIDGETS: &str = "widgets";

impl Keys {
    /// Fails on a prefix that would break hash tags or read badly in `redis-cli`.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(format!(
                "key prefix {prefix:?} must be 1 to 64 printable ASCII characters without braces"
            ))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hands `each` the keys of one receiver's script call, in KEYS order: its own four, then
    /// the widgets hash `with_widgets`, then the idempotency key if there is one. They are built
    /// in one buffer, one after another, because a call is made for every transition and
    /// formatting each key cost an allocation.
    pub fn receiver(
        &self,
        r: &ReceiverId,
        with_widgets: bool,
        idempotency_key: Option<&str>,
        mut each: impl FnMut(&str),
    ) {
        let r = r.as_str();
        let mut key = String::with_capacity(
            self.prefix.len() + r.len() + 16 + idempotency_key.map_or(0, str::len),
        );
        key.push_str(&self.prefix);
        key.push_str(":{");
        key.push_str(r);
        key.push_str("}:");
        let base = key.len();
        let widgets = with_widgets.then_some(WIDGETS);
        for name in RECEIVER_KEYS.into_iter().chain(widgets) {
            key.truncate(base);
            key.push_str(name);
            each(&key);
        }
        if let Some(k) = idempotency_key {
            key.truncate(base);
            key.push_str("idem:");
            key.push_str(k);
            each(&key);
        }
    }

    /// The receiver's token generations: `widget`, `dashboard` (see `rotate()` in receiver.lua).
    pub fn tokens(&self, r: &ReceiverId) -> String {
        format!("{}:{{{}}}:tokens", self.prefix, r)
    }

    /// The receiver's moderation settings (JSON), read and written whole with GET and SET.
    pub fn settings(&self, r: &ReceiverId) -> String {
        format!("{}:{{{}}}:settings", self.prefix, r)
    }

    /// The receiver's designs, version by version (see `RedisStore::put_designs`).
    pub fn designs(&self, r: &ReceiverId) -> String {
        format!("{}:{{{}}}:designs", self.prefix, r)
    }

    /// The receiver's history: a list of `<id> <status> <trail> <json>`, newest first (see
    /// `remember()` in receiver.lua, and `store::history`).
    pub fn history(&self, r: &ReceiverId) -> String {
        format!("{}:{{{}}}:history", self.prefix, r)
    }

    /// The mark that alert `id`, sent for the `attempt`th time, started: `"<started at, ms>
    /// <started at + ack grace, ms>"`, written once with `SET NX` (see `Store::started`), taken
    /// by the library when the alert leaves flight.
    pub fn started(&self, r: &ReceiverId, id: &str, attempt: u32) -> String {
        format!("{}:{{{}}}:started:{}:{}", self.prefix, r, id, attempt)
    }

    pub fn events(&self, r: &ReceiverId) -> String {
        format!("{}:{{{}}}:events", self.prefix, r)
    }

    /// The receiver a channel from [`Keys::events`] belongs to.
    pub fn receiver_of_events(&self, channel: &str) -> Option<ReceiverId> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        let r = rest.strip_suffix("}:events")?;
        ReceiverId::parse(r).ok()
    }

    /// The receivers whose alert ids carry `route` (see [`crate::alert::route`]): a set, one
    /// per route, written once a node per receiver.
    pub fn route(&self, route: u32) -> String {
        format!("{}:route:{:08x}", self.prefix, route)
    }

    /// A broadcast topic's keys: its hash (`last`, the offset it last gave) and its log (a list
    /// of `"<at, ms> <offset> <frame>"`, oldest first). They share the hash tag of the topic's
    /// bucket with the bucket's channel ([`Keys::topic_channel`]), so one function call keeps a
    /// message and publishes it, on a Redis Cluster too.
    pub fn topic(&self, topic: &Topic) -> (String, String) {
        let bucket = topic_bucket(topic);
        let base = format!("{}:{{topics{bucket}}}:topic:{topic}", self.prefix);
        let log = format!("{base}:log");
        (base, log)
    }

    /// The channel of a bucket of topics: every node subscribes to all [`TOPIC_BUCKETS`] and
    /// picks out the topics its subscribers want.
    pub fn topic_channel(&self, bucket: u32) -> String {
        format!("{}:{{topics{bucket}}}:messages", self.prefix)
    }

    /// The channel of `topic`'s bucket.
    pub fn channel_of_topic(&self, topic: &Topic) -> String {
        self.topic_channel(topic_bucket(topic))
    }

    /// Whether a channel is one of [`Keys::topic_channel`]'s.
    pub fn is_topic_channel(&self, channel: &str) -> bool {
        channel
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix(":{topics"))
            .is_some_and(|rest| rest.ends_with("}:messages"))
    }

    /// Held by the node that bridges Redis pub/sub to topics (see `crate::topics::bridge`).
    pub fn bridge_leader(&self) -> String {
        format!("{}:bridge:leader", self.prefix)
    }

    /// Where a broadcast's idempotency key is remembered.
    pub fn broadcast_idempotency(&self, key: &str) -> String {
        format!("{}:broadcast:idem:{key}", self.prefix)
    }

    /// The stream producers `XADD` alerts to.
    pub fn ingest(&self) -> String {
        format!("{}:ingest", self.prefix)
    }

    /// Where refused ingest entries go, with the reason.
    pub fn ingest_dead(&self) -> String {
        format!("{}:ingest:dead", self.prefix)
    }

    /// A node's heartbeat; it expires when the node stops.
    pub fn node(&self, node: &str) -> String {
        format!("{}:node:{}", self.prefix, node)
    }

    /// The receivers a node holds widgets for, to sweep if it dies.
    pub fn node_receivers(&self, node: &str) -> String {
        format!("{}:node:{}:receivers", self.prefix, node)
    }

    /// Every node that has run, until swept.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    pub fn secret(&self) -> String {
        format!("{}:secret", self.prefix)
    }

    pub fn schema_version(&self) -> String {
        format!("{}:schema:version", self.prefix)
    }

    pub fn schema_lock(&self) -> String {
        format!("{}:schema:lock", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_receiver_shares_its_hash_tag() {
        let keys = Keys::new("cb").unwrap();
        let r = ReceiverId::parse("alice").unwrap();
        let mut all = Vec::new();
        keys.receiver(&r, false, Some("x{y}"), |k| all.push(k.to_owned()));
        assert_eq!(
            all,
            [
                "cb:{alice}:receiver",
                "cb:{alice}:queue",
                "cb:{alice}:ids",
                "cb:{alice}:priority",
                "cb:{alice}:idem:x{y}",
            ]
        );
        let mut with_widgets = Vec::new();
        keys.receiver(&r, true, None, |k| with_widgets.push(k.to_owned()));
        assert_eq!(
            with_widgets.last().map(String::as_str),
            Some("cb:{alice}:widgets")
        );
        // receiver.lua finds the widgets hash from the receiver's key when it is not given.
        let hash = with_widgets[0].clone();
        assert_eq!(hash.replace(":receiver", ":widgets"), "cb:{alice}:widgets");
        assert_eq!(keys.receiver_of_events(&keys.events(&r)), Some(r.clone()));
        // receiver.lua finds the channel from the receiver's key.
        assert_eq!(
            hash.strip_suffix("receiver"),
            keys.events(&r).strip_suffix("events")
        );
    }

    #[test]
    fn a_prefix_with_braces_is_refused() {
        assert!(Keys::new("a{b}").is_err());
        assert!(Keys::new("").is_err());
    }
}

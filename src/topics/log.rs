//! Where each topic keeps its last messages, for subscribers that come back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Outgoing, Sent, Topic, Topics};
use crate::store::StoreError;

/// What a subscriber coming back with an offset missed.
#[derive(Clone, Debug, PartialEq)]
pub enum Missed {
    /// These, oldest first (none if it missed nothing).
    Messages(Vec<Sent>),
    /// More than the log keeps, or the log was lost since (its epoch changed): it goes on live.
    Reset,
}

/// A topic's log of recent messages.
#[async_trait]
pub trait TopicLog: Send + Sync + 'static {
    /// Keeps `message` as the next message of `topic`, and has it delivered to the topic's
    /// subscribers on every node in the order of its offsets: a log hands each message on as
    /// it keeps it (in memory, under its lock; Redis, through the one channel every node,
    /// this one included, hears), never out of order, since a subscriber drops what comes
    /// after a later offset as already seen (the seam of its recovery). Answers it sent.
    async fn append(&self, topic: &Topic, message: &Outgoing) -> Result<Sent, StoreError>;

    /// What a subscriber that last got offset `since` of `topic` missed.
    async fn since(&self, topic: &Topic, since: u64) -> Result<Missed, StoreError>;

    /// Claims idempotency key `key` for message `id` (for a day), unless a message claimed it
    /// first: then answers that one, with its offsets once they are known.
    async fn remember(&self, key: &str, id: &str) -> Result<Option<First>, StoreError>;

    /// The offsets message `id`, which claimed `key`, was given: what a repeat is answered.
    async fn answered(
        &self,
        key: &str,
        id: &str,
        offsets: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError>;
}

/// The message that claimed an idempotency key first.
#[derive(Clone, Debug, PartialEq)]
pub struct First {
    pub id: String,
    /// `{topic: offset}`; empty while it is still being published.
    pub offsets: serde_json::Map<String, serde_json::Value>,
}

/// How long an idempotency key of a broadcast is remembered, as a publish's is.
pub const IDEMPOTENCY_TTL: Duration = crate::store::IDEMPOTENCY_TTL;

/// What a log answers a subscriber that last got `since`, from its last offset (0 for a topic
/// it does not know) and the messages it still keeps, oldest first. Shared by every log, so
/// they agree on when a subscriber is reset.
pub fn missed(since: u64, last: u64, kept: impl IntoIterator<Item = Sent>) -> Missed {
    if since == last {
        return Missed::Messages(Vec::new());
    }
    // Past the last offset: the log it counted from is gone (a new epoch).
    if since > last {
        return Missed::Reset;
    }
    let mut kept = kept
        .into_iter()
        .skip_while(|s| s.offset <= since)
        .peekable();
    match kept.peek() {
        // The next one it needs is kept.
        Some(next) if next.offset == since + 1 => Missed::Messages(kept.collect()),
        _ => Missed::Reset,
    }
}

/// The first offset of a new epoch: past any offset a log of this topic gave before, as long as
/// fewer than a thousand messages a millisecond were published to it.
pub fn epoch_base(now_ms: u64) -> u64 {
    now_ms * 1000
}

/// Node memory: the log of the embedded store's single node (lost with it: a restart is a new
/// epoch for every topic).
pub struct MemoryLog {
    keep: usize,
    ttl: Duration,
    topics: Mutex<Logs>,
    /// This node's subscribers: it is the only node.
    subscribers: Arc<Topics>,
}

#[derive(Default)]
struct Logs {
    by_topic: HashMap<Topic, Kept>,
    /// Idempotency key -> when it was claimed, and the message that claimed it.
    keys: HashMap<String, (Instant, First)>,
    /// Appends since the last sweep of idle topics.
    since_sweep: usize,
}

struct Kept {
    last: u64,
    messages: VecDeque<(Instant, Sent)>,
}

/// Appends between two sweeps of the topics no message is kept for any more.
const SWEEP_EVERY: usize = 1024;

impl MemoryLog {
    /// Keeps each topic's last `keep` messages, each for `ttl`, and hands each to
    /// `subscribers`.
    pub fn new(keep: usize, ttl: Duration, subscribers: Arc<Topics>) -> Self {
        Self {
            keep,
            ttl,
            topics: Mutex::default(),
            subscribers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Logs> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expire(&self, kept: &mut Kept, now: Instant) {
        while kept
            .messages
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= self.ttl)
        {
            kept.messages.pop_front();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl TopicLog for MemoryLog {
    async fn append(&self, topic: &Topic, message: &Outgoing) -> Result<Sent, StoreError> {
        let now = Instant::now();
        let mut logs = self.lock();
        logs.since_sweep += 1;
        if logs.since_sweep >= SWEEP_EVERY {
            logs.since_sweep = 0;
            // A topic with nothing kept is forgotten: its next message starts a new epoch.
            let ttl = self.ttl;
            logs.by_topic.retain(|_, kept| {
                kept.messages
                    .back()
                    .is_some_and(|(at, _)| now.duration_since(*at) < ttl)
            });
        }
        if logs.since_sweep == 0 {
            logs.keys
                .retain(|_, (at, _)| now.duration_since(*at) < IDEMPOTENCY_TTL);
        }
        let kept = logs.by_topic.entry(topic.clone()).or_insert_with(|| Kept {
            last: epoch_base(now_ms()),
            messages: VecDeque::new(),
        });
        kept.last += 1;
        let sent = Sent {
            topic: topic.clone(),
            offset: kept.last,
            frame: message.frame(topic, kept.last),
        };
        kept.messages.push_back((now, sent.clone()));
        while kept.messages.len() > self.keep {
            kept.messages.pop_front();
        }
        // Under the lock, so two publishes to one topic reach each subscriber in order.
        self.subscribers.deliver(&sent);
        Ok(sent)
    }

    async fn since(&self, topic: &Topic, since: u64) -> Result<Missed, StoreError> {
        let now = Instant::now();
        let mut logs = self.lock();
        let Some(kept) = logs.by_topic.get_mut(topic) else {
            return Ok(missed(since, 0, None));
        };
        self.expire(kept, now);
        let messages = kept.messages.iter().map(|(_, s)| s.clone());
        Ok(missed(since, kept.last, messages))
    }

    async fn remember(&self, key: &str, id: &str) -> Result<Option<First>, StoreError> {
        let now = Instant::now();
        let mut logs = self.lock();
        if let Some((at, first)) = logs.keys.get(key) {
            if now.duration_since(*at) < IDEMPOTENCY_TTL {
                return Ok(Some(first.clone()));
            }
        }
        let first = First {
            id: id.to_owned(),
            offsets: Default::default(),
        };
        logs.keys.insert(key.to_owned(), (now, first));
        Ok(None)
    }

    async fn answered(
        &self,
        key: &str,
        id: &str,
        offsets: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        if let Some((_, first)) = self.lock().keys.get_mut(key).filter(|(_, f)| f.id == id) {
            first.offsets = offsets.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_subscriber_gets_what_it_missed_or_a_reset_past_what_is_kept() {
        let log = MemoryLog::new(3, Duration::from_secs(60), Arc::default());
        let t = topic("trending:PL");
        let message = Outgoing::new("new_trending", &serde_json::json!({"n": 1}), 1);
        let mut offsets = Vec::new();
        for _ in 0..5 {
            offsets.push(log.append(&t, &message).await.unwrap().offset);
        }
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
        // Kept: the last three. From the second to last, one missed; from the last, none.
        let missed = |m: Missed| match m {
            Missed::Messages(v) => Some(v.iter().map(|s| s.offset).collect::<Vec<_>>()),
            Missed::Reset => None,
        };
        assert_eq!(
            missed(log.since(&t, offsets[3]).await.unwrap()),
            Some(vec![offsets[4]])
        );
        assert_eq!(
            missed(log.since(&t, offsets[4]).await.unwrap()),
            Some(vec![])
        );
        assert_eq!(
            missed(log.since(&t, offsets[1]).await.unwrap()),
            Some(offsets[2..].to_vec()),
            "the first kept follows it"
        );
        assert_eq!(
            missed(log.since(&t, offsets[0]).await.unwrap()),
            None,
            "past what is kept"
        );
        assert_eq!(
            missed(log.since(&t, offsets[4] + 9).await.unwrap()),
            None,
            "a new epoch"
        );
        assert_eq!(missed(log.since(&topic("other"), 7).await.unwrap()), None);
        let frame = log.append(&t, &message).await.unwrap().frame;
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["topic"], "trending:PL");
        assert_eq!(v["data"]["n"], 1);
    }

    #[tokio::test]
    async fn messages_past_their_time_are_not_kept() {
        let log = MemoryLog::new(100, Duration::from_millis(30), Arc::default());
        let t = topic("t");
        let message = Outgoing::new("e", &serde_json::json!({}), 1);
        let first = log.append(&t, &message).await.unwrap().offset;
        tokio::time::sleep(Duration::from_millis(60)).await;
        let second = log.append(&t, &message).await.unwrap().offset;
        assert_eq!(second, first + 1);
        assert_eq!(log.since(&t, first - 1).await.unwrap(), Missed::Reset);
        assert!(matches!(log.since(&t, first).await.unwrap(), Missed::Messages(v) if v.len() == 1));
    }
}

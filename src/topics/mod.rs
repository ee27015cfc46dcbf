//! Broadcast topics: live notifications to every open page, with recovery after a reconnect.
//!
//! A message published to a topic (`POST /broadcast`) is kept in the topic's log ([`TopicLog`]:
//! node memory with the embedded store, Redis with the Redis store) under the next offset, and
//! fanned out to every subscriber of the topic on every node: by the node that took it to its
//! own subscribers ([`Topics::deliver`]), through the store's notices to the others. There are
//! no acks and no queue: a subscriber too slow to take what comes is closed, and recovers by
//! offset when it reconnects.
//!
//! Offsets only grow. A topic whose log was lost (expired, or a store restarted) starts again
//! from its first publish's time in ms times a thousand, past any offset it gave before: its
//! *epoch* changed, and a subscriber that comes back with an offset from before learns it was
//! reset rather than getting a wrong "nothing missed".

pub mod bridge;
pub mod log;
pub mod name;

use std::collections::HashMap;
use std::sync::Mutex;

use bytestring::ByteString;
use futures_channel::mpsc;

pub use log::{First, MemoryLog, Missed, TopicLog};
pub use name::{Pattern, Topic};

/// A message as published, before its topics give it offsets: serialized once, the part of
/// every frame after the topic and the offset (`"id":..,"event":..,"data":..,"at":..`).
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub id: String,
    /// When it was published, ms since the Unix epoch.
    pub at: u64,
    pub body: String,
}

impl Outgoing {
    /// `data` is a JSON object as the publisher sent it, already checked.
    pub fn new(event: &str, data: &serde_json::Value, at: u64) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        // unwrap: a string and a JSON value always serialize.
        let event = serde_json::to_string(event).expect("a string serializes");
        let data = serde_json::to_string(data).expect("JSON serializes");
        let body = format!(r#""id":"{id}","event":{event},"data":{data},"at":{at}"#);
        Self { id, at, body }
    }

    /// The frame subscribers of `topic` get, at `offset`.
    pub fn frame(&self, topic: &Topic, offset: u64) -> ByteString {
        frame(topic, offset, &self.body)
    }
}

/// `{"type":"message","topic":T,"offset":N,<body>}`. A topic needs no escaping (its characters).
pub fn frame(topic: &Topic, offset: u64, body: &str) -> ByteString {
    format!(r#"{{"type":"message","topic":"{topic}","offset":{offset},{body}}}"#).into()
}

/// One message of one topic, as every subscriber gets it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    pub topic: Topic,
    pub offset: u64,
    pub frame: ByteString,
}

/// Messages one subscriber may have waiting to be written before it counts as too slow.
pub const OUTBOX: usize = 256;

/// This node's subscribers, and the fan-out to them.
#[derive(Default)]
pub struct Topics {
    subscribers: Mutex<Subscribers>,
    /// Counts deliveries and drops, if set.
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

#[derive(Default)]
struct Subscribers {
    next: u64,
    /// Subscribers of the topics clients name.
    public: HashMap<u64, Subscriber>,
    /// Subscribers of the node's own topics (a dock of a receiver's feed, [`Topic::feed`]): kept
    /// apart so that a dock's event is not matched against every page's patterns, nor a
    /// broadcast against every dock's.
    own: HashMap<u64, Subscriber>,
}

impl Subscribers {
    /// The subscribers a message of `topic` may be for.
    fn of(&mut self, topic: &Topic) -> &mut HashMap<u64, Subscriber> {
        if topic.is_internal() {
            &mut self.own
        } else {
            &mut self.public
        }
    }
}

struct Subscriber {
    patterns: Vec<Pattern>,
    outbox: mpsc::Sender<Sent>,
}

/// One subscriber's registration: what it is sent arrives on `messages`. The channel closes when
/// the subscriber fell [`OUTBOX`] messages behind. (futures' channel, not tokio's: it allocates
/// per message waiting, where tokio's allocates a block of 32 up front, 2 KiB per idle subscriber.)
pub struct Subscription {
    pub id: u64,
    pub messages: mpsc::Receiver<Sent>,
}

impl Topics {
    pub fn new(metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        Self {
            subscribers: Mutex::default(),
            metrics: Some(metrics),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a subscriber of `patterns` (a client's, or one of the node's own topics, which
    /// no client pattern matches); it gets every message delivered from now on.
    pub fn subscribe(&self, patterns: Vec<Pattern>) -> Subscription {
        // Its capacity is the buffer plus one per sender: OUTBOX in all.
        let (outbox, messages) = mpsc::channel(OUTBOX - 1);
        let own = matches!(patterns.as_slice(), [Pattern::Exactly(t)] if t.is_internal());
        let mut s = self.lock();
        s.next += 1;
        let id = s.next;
        let subscriber = Subscriber { patterns, outbox };
        if own {
            s.own.insert(id, subscriber);
        } else {
            s.public.insert(id, subscriber);
        }
        Subscription { id, messages }
    }

    /// Changes what subscriber `id` (a client's) gets.
    pub fn set_patterns(&self, id: u64, patterns: Vec<Pattern>) {
        if let Some(s) = self.lock().public.get_mut(&id) {
            s.patterns = patterns;
        }
    }

    pub fn unsubscribe(&self, id: u64) {
        let mut s = self.lock();
        if s.public.remove(&id).is_none() {
            s.own.remove(&id);
        }
    }

    /// Whether subscriber `id` is still here: not once it fell behind, or unsubscribed.
    pub fn contains(&self, id: u64) -> bool {
        let s = self.lock();
        s.public.contains_key(&id) || s.own.contains_key(&id)
    }

    /// Hands `sent` to every subscriber of its topic here, counting how many got it and how
    /// many were dropped for falling behind (their outbox full: it closes, and they recover by
    /// offset when they reconnect). Never waits.
    pub fn deliver(&self, sent: &Sent) {
        let mut s = self.lock();
        let subscribers = s.of(&sent.topic);
        let (mut delivered, mut behind) = (0, Vec::new());
        for (id, sub) in subscribers.iter_mut() {
            if !sub.patterns.iter().any(|p| p.matches(&sent.topic)) {
                continue;
            }
            match sub.outbox.try_send(sent.clone()) {
                Ok(()) => delivered += 1,
                Err(e) if e.is_full() => behind.push(*id),
                // Gone: its connection ended and will unsubscribe.
                Err(_) => {}
            }
        }
        for id in &behind {
            subscribers.remove(id);
        }
        drop(s);
        if let Some(metrics) = self.metrics.as_ref().filter(|_| !sent.topic.is_internal()) {
            metrics.broadcast_delivered((delivered, behind.len()));
        }
    }
}

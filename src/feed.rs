//! The live feed of a receiver, for docks: `GET /ws/{receiver}/feed?token=<dashboard
//! token>[&since=<event id>]` pushes every event of the receiver the moment it happens, to every
//! dock at once (a broadcast: no acks).
//!
//! The node that ran a command makes its events, from the command and what the store answered
//! ([`Feed::events_of`]), serializes each once, and hands them to the docks on this node. Docks on
//! other nodes hear them through the store ([`crate::store::Store::publish_feed`]), which the
//! node calls only when the store says some node has a dock for the receiver: a receiver nobody
//! watches costs the store nothing.
//!
//! Each node keeps the last [`RECENT`] events of each receiver its docks watch, and keeps them
//! [`KEEP_FOR`] after the last dock leaves, so a dock that reconnects with `since` first gets what
//! it missed, then the live events, with no gap and no repeat at the seam (both are taken under
//! one lock). Past what is kept (or on another node) it gets `{"type":"reset"}` and reads the
//! receiver afresh.
//!
//! The docks are reached through the same fan-out as broadcast topics ([`crate::topics`]): each
//! receiver's feed is a topic of the node's own ([`Topic::feed`]), and a dock a subscriber of it
//! with an outbox that its socket's response reads. A dock that falls behind is closed (1013)
//! like any subscriber, and comes back with `since`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytestring::ByteString;
use serde_json::{json, Value};

use crate::alert::ReceiverId;
use crate::store::{Event as Happened, Snapshot};
use crate::topics::{Pattern, Sent, Topic, Topics};

/// Events kept per receiver for docks that reconnect.
pub const RECENT: usize = 256;
/// How long a receiver's recent events are kept after its last dock here leaves.
pub const KEEP_FOR: Duration = Duration::from_secs(120);
/// Sent on a receiver's live channel when its dashboard token is rotated: not an event (no JSON
/// starts with a NUL), but the end of each feed that hears it.
pub const REVOKED: &str = "\0revoked";

/// One event of a receiver, before it is numbered.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event: &'static str,
    pub alert_id: Option<Arc<str>>,
    pub attempt: Option<u32>,
    /// Widgets connected (widget events), or alerts cleared (cleared).
    pub count: Option<u64>,
}

impl Event {
    pub fn of(event: &'static str, alert_id: Option<&str>) -> Self {
        Self {
            event,
            alert_id: alert_id.map(Into::into),
            attempt: None,
            count: None,
        }
    }
}

/// What a dock gets when it subscribes.
pub struct Subscription {
    /// What it missed since the event it named, oldest first; `None`: more than is kept, so it
    /// must read the receiver afresh.
    pub missed: Option<Vec<ByteString>>,
    /// The live events (and [`REVOKED`]), as a subscriber of the receiver's feed topic.
    pub live: crate::topics::Subscription,
}

/// The feeds of this node's docks.
pub struct Feed {
    receivers: Mutex<HashMap<ReceiverId, Watched>>,
    /// Receivers whose events this node keeps: 0 makes every transition skip the feed.
    kept: AtomicUsize,
    last_id: AtomicU64,
    /// The fan-out the docks are subscribers of.
    topics: Arc<Topics>,
}

struct Watched {
    docks: usize,
    recent: VecDeque<(u64, ByteString)>,
    /// The receiver's feed topic.
    topic: Topic,
    /// When the last dock left, while none is here.
    idle_since: Option<Instant>,
}

impl Feed {
    pub fn new(topics: Arc<Topics>) -> Self {
        Self {
            receivers: Mutex::default(),
            kept: AtomicUsize::new(0),
            last_id: AtomicU64::new(0),
            topics,
        }
    }

    /// Whether this node keeps the receiver's events: a dock watches it here, or did within
    /// [`KEEP_FOR`].
    pub fn watched_here(&self, receiver: &ReceiverId) -> bool {
        self.kept.load(Ordering::Relaxed) > 0 && self.lock().contains_key(receiver)
    }

    /// Receivers with a dock on this node, or one within [`KEEP_FOR`], for the store to be told
    /// now and then (events are kept for docks that reconnect); forgets the others.
    pub fn watched(&self) -> Vec<ReceiverId> {
        let mut map = self.lock();
        map.retain(|_, w| w.docks > 0 || w.idle_since.is_some_and(|t| t.elapsed() < KEEP_FOR));
        self.kept.store(map.len(), Ordering::Relaxed);
        map.keys().cloned().collect()
    }

    /// A dock of the receiver opens: what it missed since event `since` (nothing without one),
    /// and the live events from then on.
    pub fn subscribe(&self, receiver: &ReceiverId, since: Option<u64>) -> Subscription {
        let mut map = self.lock();
        let w = map.entry(receiver.clone()).or_insert_with(|| Watched {
            docks: 0,
            recent: VecDeque::new(),
            topic: Topic::feed(receiver),
            idle_since: None,
        });
        w.docks += 1;
        w.idle_since = None;
        self.kept.store(map.len(), Ordering::Relaxed);
        let w = &map[receiver];
        let missed = match since {
            None => Some(Vec::new()),
            Some(since) => w.recent.iter().position(|(id, _)| *id == since).map(|at| {
                w.recent
                    .iter()
                    .skip(at + 1)
                    .map(|(_, e)| e.clone())
                    .collect()
            }),
        };
        // Subscribed under the lock that `deliver` takes: nothing between what it missed and
        // what comes live.
        let live = self
            .topics
            .subscribe(vec![Pattern::Exactly(w.topic.clone())]);
        Subscription { missed, live }
    }

    /// A dock of the receiver closed (`subscriber`: its [`Subscription`]'s `live.id`).
    pub fn unsubscribe(&self, receiver: &ReceiverId, subscriber: u64) {
        self.topics.unsubscribe(subscriber);
        let mut map = self.lock();
        if let Some(w) = map.get_mut(receiver) {
            w.docks = w.docks.saturating_sub(1);
            if w.docks == 0 {
                w.idle_since = Some(Instant::now());
            }
        }
    }

    /// The receiver's dashboard token was rotated: every feed open here closes (with 4001), and
    /// its dock, reconnecting with the old token, is refused.
    pub fn revoke(&self, receiver: &ReceiverId) {
        if let Some(w) = self.lock().get(receiver) {
            self.topics.deliver(&Sent {
                topic: w.topic.clone(),
                offset: 0,
                frame: REVOKED.into(),
            });
        }
    }

    /// Numbers and serializes events made here, hands them to this node's docks, and answers
    /// them as one payload for other nodes' docks (a JSON array), if there were any.
    pub fn emit(&self, receiver: &ReceiverId, events: &[Event]) -> Option<String> {
        if events.is_empty() {
            return None;
        }
        let at = now_ms();
        let frames: Vec<Value> = events
            .iter()
            .map(|e| {
                let mut frame = json!({
                    "type": "event",
                    "id": self.next_id(at),
                    "event": e.event,
                    "alert_id": e.alert_id.as_deref(),
                    "at": at,
                });
                if let Some(attempt) = e.attempt {
                    frame["attempt"] = json!(attempt);
                }
                if let Some(count) = e.count {
                    let field = if e.event == "cleared" {
                        "count"
                    } else {
                        "widgets"
                    };
                    frame[field] = json!(count);
                }
                frame
            })
            .collect();
        self.deliver(receiver, &frames);
        Some(Value::Array(frames).to_string())
    }

    /// Events another node made (the payload [`Feed::emit`] answered there).
    pub fn heard(&self, receiver: &ReceiverId, payload: &str) {
        if let Ok(Value::Array(frames)) = serde_json::from_str::<Value>(payload) {
            self.deliver(receiver, &frames);
        }
    }

    fn deliver(&self, receiver: &ReceiverId, frames: &[Value]) {
        let mut map = self.lock();
        let Some(w) = map.get_mut(receiver) else {
            return;
        };
        for frame in frames {
            let id = frame["id"].as_u64().unwrap_or(0);
            let text = ByteString::from(frame.to_string());
            if w.recent.len() == RECENT {
                w.recent.pop_front();
            }
            w.recent.push_back((id, text.clone()));
            // Under the lock `subscribe` takes (see there); no dock here is not an error.
            self.topics.deliver(&Sent {
                topic: w.topic.clone(),
                offset: id,
                frame: text,
            });
        }
    }

    /// Increasing on this node, and near the time (ms × 1000) on every node, so ids of events
    /// from several nodes roughly agree in order.
    fn next_id(&self, at: u64) -> u64 {
        let floor = at * 1000;
        let mut last = self.last_id.load(Ordering::Relaxed);
        loop {
            let id = floor.max(last + 1);
            match self
                .last_id
                .compare_exchange(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(now) => last = now,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ReceiverId, Watched>> {
        self.receivers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The events of what this node did, from what it did and what the store answered:
    /// `flight_was` is the alert in flight before it, where this node knows it (for a requeue).
    pub fn events_of(
        did: &Did<'_>,
        snapshot: Option<&Snapshot>,
        flight_was: Option<&str>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        match *did {
            Did::Published { id, held: false } => events.push(Event::of("queued", Some(id))),
            Did::Published { id, held: true } => events.push(Event::of("held", Some(id))),
            Did::Filtered { id } => events.push(Event::of("filtered", Some(id))),
            Did::Approved { id } => events.push(Event::of("approved", Some(id))),
            Did::Denied { id } => events.push(Event::of("denied", Some(id))),
            Did::Paused(true) => events.push(Event::of("paused", None)),
            Did::Paused(false) => events.push(Event::of("resumed", None)),
            Did::Cleared { count } => events.push(Event {
                count: Some(count),
                ..Event::of("cleared", None)
            }),
            Did::Widgets { joined, count } => events.push(Event {
                count,
                ..Event::of(
                    if joined {
                        "widget_connected"
                    } else {
                        "widget_disconnected"
                    },
                    None,
                )
            }),
            Did::Started { id } => {
                let applied = snapshot
                    .and_then(|s| s.flight.as_ref())
                    .is_some_and(|f| &*f.id == id && f.started);
                if applied {
                    events.push(Event::of("started", Some(id)));
                }
            }
            Did::Done { .. } | Did::Check { .. } | Did::Other => {}
        }
        let Some(snapshot) = snapshot else {
            return events;
        };
        // What the rules did after it.
        let ended = match *did {
            Did::Done { id } | Did::Check { id } => Some(id),
            _ => flight_was,
        };
        for happened in &snapshot.events {
            let flight = snapshot.flight.as_ref();
            let event = match happened {
                Happened::Sent | Happened::Resent => Event {
                    attempt: flight.map(|f| f.attempt),
                    ..Event::of("sent", flight.map(|f| &*f.id))
                },
                Happened::Done => Event::of("done", ended),
                Happened::Expired => Event::of("expired", ended),
                Happened::Skipped => Event::of("skipped", snapshot.skipped.as_deref()),
                Happened::Requeued => Event::of("requeued", flight_was),
            };
            events.push(event);
        }
        events
    }
}

/// What a node did to a receiver, as its docks hear of it.
#[derive(Clone, Copy, Debug)]
pub enum Did<'a> {
    /// Queued (or held for approval).
    Published {
        id: &'a str,
        held: bool,
    },
    Filtered {
        id: &'a str,
    },
    Approved {
        id: &'a str,
    },
    Denied {
        id: &'a str,
    },
    Paused(bool),
    Cleared {
        count: u64,
    },
    /// A widget joined or left here; `count` is how many are connected in all, if read.
    Widgets {
        joined: bool,
        count: Option<u64>,
    },
    Started {
        id: &'a str,
    },
    Done {
        id: &'a str,
    },
    /// A deadline check of alert `id`.
    Check {
        id: &'a str,
    },
    /// Anything else (skip, wake, a refresh): what the rules did is in the snapshot.
    Other,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

//! The queue of each receiver and its state machine, behind one trait.
//!
//! # The rules
//!
//! Every store keeps these, atomically per receiver; `tests/api/conformance.rs` checks each
//! store against them. They are written once as a pure state machine, [`machine`], which the
//! embedded store runs as it is; the Redis store writes the same rules in `redis/receiver.lua`.
//! The names in brackets are the rule letters.
//!
//! - **Queue.** Each receiver has a FIFO queue of waiting alerts and at most one alert *in
//!   flight* (a, b). An alert is in flight from the moment it is sent to widgets until it is
//!   `done`, expires, or goes back to the queue.
//! - **Dispatch** (free to busy) happens in one place, whenever something could make it
//!   possible: a publish, a widget joining, a completion. It takes the head of the queue only
//!   while the receiver is free *and* at least one widget is live on some node (d): alerts never
//!   go out to nobody. A dispatched alert's `attempt` is one more than the times it was sent
//!   before.
//! - **Completion** (busy to free) also happens in one place: the first `done` whose id matches
//!   the alert in flight (c), or expiry. A `done` or `started` for any other id changes nothing,
//!   and only the first `started` of each send counts. (A node passes on a `started` only for
//!   the alert in flight as it last heard of it, with its attempt: see [`Showing`].)
//! - **Widgets.** Each node reports how many widgets it holds for a receiver; a node's report
//!   lives for [`PRESENCE_TTL`] unless refreshed. When the live count falls to zero while an
//!   alert is in flight, that alert goes back to the head of the queue (f), to be sent again
//!   with `attempt + 1` when a widget returns. A widget that joins while an alert is in flight
//!   is given that alert (e); the [`Snapshot`] every call returns carries it. A widget that a
//!   stopping node lets go is *withdrawn*, not gone: its alert stays in flight for it to get
//!   again when it reconnects to another node.
//! - **Off air.** A node's report also says how many of its widgets are *off air* (in OBS, on a
//!   scene that is not live; reported only for receivers that hold alerts while inactive). Off
//!   air widgets are live: they keep the alert in flight, show it silently and say `done`. But
//!   dispatch also needs some live widget *on air*, so an audience off air alone holds the queue,
//!   and the first widget on air releases it ([`Store::audience`]). *Previews* are no audience at
//!   all: a node reports only that it has some open ([`Store::report`]), which the rules ignore
//!   and the Redis store uses to tell that node of every change.
//! - **Timeouts** (g). A sent alert not `started` within the start timeout is sent again with
//!   `attempt + 1`. A `started` alert not `done` within `duration_ms` plus the ack grace completes
//!   as expired. Nodes learn deadlines from snapshots and call [`Store::check`] when one passes;
//!   the store decides, so any number of nodes may check at once.
//! - **Sequence.** Every change of the alert in flight bumps the receiver's `seq`, so a node can
//!   tell a stale snapshot from a new one whatever path each arrived by. A store that can lose
//!   a receiver's keys while nodes run (Redis without persistence, restarted) starts a new
//!   receiver's `seq` from its clock, so `seq` still moves past what the nodes saw before.
//! - **Idempotency.** A publish that repeats an idempotency key of the last 24 hours for the same
//!   receiver returns the first alert's id and queues nothing. A publish of an alert id that is
//!   already queued or in flight queues nothing either, and answers as the first did: a node
//!   makes an alert's id before its first try, so a retry of a call whose answer was lost can
//!   never queue the alert twice.
//!
//! - **Controls, holds and history** (the streamer's): pause, skip, clear, replay, alerts held
//!   for approval, and the history every alert that leaves goes into; see [`machine`].
//!
//! All stores share the shape: a node calls a transition, the store answers with the receiver's
//! [`Snapshot`] after it, and the node hands that to its hub. The Redis store also tells the
//! other nodes with widgets for that receiver, through pub/sub, in the same function call.
//!
//! # How to add a transition
//!
//! 1. A variant of [`machine::Command`], and its rule in [`machine::apply`], with unit tests that
//!    give it the time it needs.
//! 2. A variant of [`Call`] (its index and label) and its arm in [`machine::Command::call`]:
//!    both stores then time and count the command under it.
//! 3. Its function in `redis/receiver.lua`, registered under the library's version, and its name
//!    in `redis/functions.rs`.
//! 4. Its arm in the Redis store's [`Store::apply`] (the embedded store answers every command
//!    with `machine::apply` as it is), and, if the hub calls it, a provided method on [`Store`].
//! 5. If the rule changes the queue or keeps something new, a [`machine::Change`] the machine
//!    records as it does it, and its rows in `embedded/mod.rs` (`Kept::rows_of`), with a
//!    migration in `migrations/sqlite/` for a new table or column.
//! 6. One conformance case in `tests/api/conformance.rs`, and the command in the generator of
//!    `tests/api/differential.rs`, which then holds the Lua and the SQLite store (restarted at
//!    random) to the machine.
//!
//! A rule that can change how a publish or a `done` goes must also make `publish_at_once()` and
//! `done_at_once()` in `receiver.lua` decline the receivers it applies to (they run the common
//! case straight, and decline anything with a `hold` field, for one): the differential test
//! finds a straight path that answers what the general one would not.

pub mod embedded;
pub mod history;
pub mod machine;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::alert::{AlertRecord, ReceiverId};
use crate::auth::{Generations, Purpose};

/// How long a node's report of its widgets counts as live without a refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// How often a node refreshes its reports, well inside [`PRESENCE_TTL`].
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(10);
/// Most alerts one step of a clear removes: a few hundred `LPOP`ped and `SREM`ed in one function
/// call hold Redis well under a millisecond, so clearing 10,000 never blocks it for long.
pub const CLEAR_CHUNK: u32 = 500;
/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A kind of store call: one per transition of the rules, and the status read. Metrics time and
/// count calls keyed by it, so a new transition is measured by adding its variant here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Publish,
    Widgets,
    Started,
    Done,
    Check,
    Sweep,
    Status,
    Pause,
    Skip,
    Clear,
    Queue,
    Settings,
    Tokens,
    Filtered,
    History,
    Approval,
    Feed,
    Designs,
    /// A broadcast topic's log: a message kept, what a subscriber missed, an idempotency key.
    Topics,
}

impl Call {
    /// Every call, in order of [`Call::index`].
    pub const ALL: [Call; 19] = [
        Call::Publish,
        Call::Widgets,
        Call::Started,
        Call::Done,
        Call::Check,
        Call::Sweep,
        Call::Status,
        Call::Pause,
        Call::Skip,
        Call::Clear,
        Call::Queue,
        Call::Settings,
        Call::Tokens,
        Call::Filtered,
        Call::History,
        Call::Approval,
        Call::Feed,
        Call::Designs,
        Call::Topics,
    ];

    /// Its place in [`Call::ALL`]. Exhaustive, so a new variant must be given one.
    pub fn index(self) -> usize {
        match self {
            Call::Publish => 0,
            Call::Widgets => 1,
            Call::Started => 2,
            Call::Done => 3,
            Call::Check => 4,
            Call::Sweep => 5,
            Call::Status => 6,
            Call::Pause => 7,
            Call::Skip => 8,
            Call::Clear => 9,
            Call::Queue => 10,
            Call::Settings => 11,
            Call::Tokens => 12,
            Call::Filtered => 13,
            Call::History => 14,
            Call::Approval => 15,
            Call::Feed => 16,
            Call::Designs => 17,
            Call::Topics => 18,
        }
    }

    /// As metrics label it.
    pub fn label(self) -> &'static str {
        match self {
            Call::Publish => "publish",
            Call::Widgets => "widgets",
            Call::Started => "started",
            Call::Done => "done",
            Call::Check => "check",
            Call::Sweep => "sweep",
            Call::Status => "status",
            Call::Pause => "pause",
            Call::Skip => "skip",
            Call::Clear => "clear",
            Call::Queue => "queue",
            Call::Settings => "settings",
            Call::Tokens => "tokens",
            Call::Filtered => "filtered",
            Call::History => "history",
            Call::Approval => "approval",
            Call::Feed => "feed",
            Call::Designs => "designs",
            Call::Topics => "topics",
        }
    }
}

/// Hears how long each store call took. The store reports; what listens (the node's metrics)
/// is given to it at start, so the store depends on no metrics of its own.
pub trait CallObserver: Send + Sync {
    fn observe(&self, call: Call, took: Duration, failed: bool);
}

/// Hears nothing: for stores made without metrics (tests, benchmarks).
pub struct Unobserved;

impl CallObserver for Unobserved {
    fn observe(&self, _: Call, _: Duration, _: bool) {}
}

/// The parameters of the rules, the same on every node that shares a store.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub start_timeout: Duration,
    pub ack_grace: Duration,
    pub max_queue: u64,
    /// Most widgets of one receiver, over all nodes.
    pub max_widgets: u32,
    /// Alerts a receiver's history keeps at least (the newest).
    pub history: u32,
}

/// A call that did not get its answer. Every transition is atomic, so a call either happened
/// whole or not at all; these say which the caller can know.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing reached the store: no connection, a refused one, or the store refused the call
    /// before running it. Nothing happened; the caller may retry.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The call was (or may have been) written, and no answer came in time: a stalled store, or
    /// a connection that dropped under it. It may have happened, or may still happen once the
    /// store resumes. Retrying is safe only where the call is idempotent: a publish with the
    /// same alert id or idempotency key.
    #[error("the store did not answer; the call may have taken effect: {0}")]
    OutcomeUnknown(String),
    #[error("the store answered something unexpected: {0}")]
    Protocol(String),
    /// Not a failure but a refusal: a widget joined a receiver that already has the most
    /// widgets the rules allow.
    #[error("the receiver already has {0} widgets connected")]
    TooManyWidgets(u32),
}

/// The alert in flight, as a snapshot says it.
#[derive(Clone, Debug, PartialEq)]
pub struct Flight {
    pub id: Arc<str>,
    /// 1 on the first send, one more on each send after it.
    pub attempt: u32,
    pub started: bool,
    /// Time until its deadline: the start timeout while only sent, `duration_ms` plus the ack
    /// grace once started.
    pub remaining: Duration,
    /// The alert's JSON. Present when the call changed the alert in flight, and always from
    /// [`Store::widgets`]; absent when the caller already has it.
    pub alert: Option<Arc<str>>,
    /// The alert's `duration_ms`, given with its JSON.
    pub duration: Option<Duration>,
}

/// What the node a widget reported `started` to knows of the alert it showed: the alert in
/// flight as the node last heard of it (a node passes on a `started` only for that alert), and
/// the snapshot it heard it in. The Redis store writes the mark from it alone; see
/// [`Store::started`].
#[derive(Clone, Copy, Debug)]
pub struct Showing<'a> {
    pub id: &'a str,
    pub attempt: u32,
    /// The alert's `duration_ms`.
    pub duration: Duration,
    /// The `seq` and the docks' mark of the snapshot the node last applied.
    pub seq: u64,
    pub docks: bool,
}

/// A receiver's in-flight state after a call.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub seq: u64,
    pub flight: Option<Flight>,
    /// What the call did, in order. Only the caller hears of them (notices carry none), so
    /// each happening is counted once over all nodes.
    pub events: Vec<Event>,
    /// The alert the call skipped, if it did: every widget showing it stops at once, so
    /// notices carry it too.
    pub skipped: Option<Arc<str>>,
    /// Time until the first held alert approves itself, if any will: the node wakes the
    /// receiver then ([`machine::Command::Wake`]). Notices, and `started`, carry none.
    pub wake: Option<Duration>,
    /// Some node has a dock open on the receiver's feed ([`Store::docks`]): what the call did is
    /// worth telling other nodes ([`Store::publish_feed`]). Always false from a store of one
    /// node, and in notices.
    pub docks: bool,
}

/// Something that happened to an alert in one transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Went out to the widgets (the first time, or again after going back to the queue).
    Sent,
    /// Sent again because it was never started.
    Resent,
    /// Back to the head of the queue: no widget was left to show it.
    Requeued,
    /// A widget finished it.
    Done,
    /// Started but never done in time.
    Expired,
    /// The streamer skipped it while it was in flight.
    Skipped,
}

impl Event {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sent" => Event::Sent,
            "resent" => Event::Resent,
            "requeued" => Event::Requeued,
            "done" => Event::Done,
            "expired" => Event::Expired,
            "skipped" => Event::Skipped,
            _ => return None,
        })
    }
}

/// What became of a publish.
#[derive(Clone, Debug, PartialEq)]
pub enum Publish {
    /// Queued. `position` is how many alerts are ahead of it, the one in flight included: 0
    /// means it went out at once. `eta`: how soon it can show.
    Accepted {
        position: u64,
        eta: machine::Eta,
        snapshot: Snapshot,
    },
    /// The idempotency key was seen before: the first alert's id and position, nothing queued.
    Duplicate { id: String, position: u64 },
    /// The queue holds `max_queue` alerts already.
    QueueFull,
    /// Held for the streamer's approval.
    Held { snapshot: Snapshot },
}

/// A change in the number of this node's widgets for a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WidgetChange {
    Joined,
    Left,
    /// The node still holds this many: keeps its report live and corrects any drift.
    Refresh(u32),
    /// The node is shutting down and let the widget go to reconnect elsewhere: it leaves
    /// without the alert in flight going back to the queue, since it will be given it again
    /// where it reconnects.
    Withdrawn,
}

/// What `GET /receivers/{receiver}` shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub queued: u64,
    /// Alerts held for approval (not counted in `queued`).
    pub held: u64,
    pub paused: bool,
    pub in_flight: Option<Arc<str>>,
    /// The trail of the alert in flight so far (when it was sent, and started).
    pub in_flight_trail: Option<history::Trail>,
    pub widgets: u64,
    /// Of them, on air (see [`Store::audience`]).
    pub widgets_on_air: u64,
    /// Previews open besides (see [`Store::report`]).
    pub previews: u64,
}

/// How many of a receiver's newest history entries a lookup of one alert reads, at most.
pub const HISTORY_SEARCHED: usize = 2_000;

/// Where one alert is ([`Store::whereabouts`]).
#[derive(Clone, Debug, PartialEq)]
pub enum AlertWhere {
    /// Its receiver still has it.
    Here(machine::Whereabouts),
    /// It left, ending so (done, expired, skipped, cleared, filtered, denied); it showed from
    /// `shown_at` (ms on the store's clock) if it ever started.
    Ended {
        status: history::Mark,
        shown_at: Option<machine::Millis>,
    },
}

/// A page of a receiver's waiting alerts.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    /// Alerts waiting in all.
    pub total: u64,
    /// The page, each alert's JSON.
    pub alerts: Vec<Arc<str>>,
    /// Every alert held for approval, oldest first (a short list: the streamer empties it).
    pub held: Vec<Arc<str>>,
}

/// A snapshot that another node caused, for this node's hub.
#[derive(Clone, Debug)]
pub enum Notice {
    Changed {
        receiver: ReceiverId,
        snapshot: Snapshot,
    },
    /// Notices may have been missed (the notification connection dropped): re-read every
    /// receiver this node holds widgets for.
    Resync,
    /// Another node rotated the receiver's `purpose` token: what holds the old one is closed.
    Revoked {
        receiver: ReceiverId,
        purpose: Purpose,
    },
    /// Events another node told the receiver's docks (`crate::feed`), as it serialized them.
    Feed {
        receiver: ReceiverId,
        payload: String,
    },
    /// Another node kept a new version of the receiver's designs.
    Designs { receiver: ReceiverId },
    /// A message broadcast to a topic, by any node (this one too: every node delivers from the
    /// store's one stream, so each subscriber gets a topic's messages in order).
    Broadcast(crate::topics::Sent),
}

/// Versions of a receiver's designs a store keeps: the newest, and the ones before it to go
/// back to.
pub const DESIGN_VERSIONS_KEPT: usize = 50;

/// One version of a receiver's designs, as [`crate::design::Designs::to_json`] wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub version: u64,
    /// When it was put, in ms since the epoch.
    pub at_ms: u64,
    pub json: Arc<str>,
}

/// What [`Store::put_designs`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DesignsPut {
    /// Kept, as this version.
    Kept(u64),
    /// Not kept: the newest version is this one, not the one expected.
    Stale(u64),
}

/// What a store answers a command with: what it came to, and the receiver's snapshot after it
/// (absent where the answer needs none: a duplicate, a full queue, a refused join).
#[derive(Clone, Debug, PartialEq)]
pub struct Answered {
    pub answer: machine::Answer,
    pub snapshot: Option<Snapshot>,
}

impl Answered {
    /// As [`Store::publish`] answers it.
    pub fn into_publish(self) -> Result<Publish, StoreError> {
        Ok(match self.answer {
            machine::Answer::Accepted { position, eta } => Publish::Accepted {
                position,
                eta,
                snapshot: self.snapshot.ok_or_else(missing_snapshot)?,
            },
            machine::Answer::Duplicate { id, position } => Publish::Duplicate { id, position },
            machine::Answer::QueueFull => Publish::QueueFull,
            machine::Answer::Held => Publish::Held {
                snapshot: self.snapshot.ok_or_else(missing_snapshot)?,
            },
            other => {
                return Err(StoreError::Protocol(format!(
                    "a publish answered {other:?}"
                )))
            }
        })
    }

    /// As the other transitions answer it: a join past the limit is an error.
    pub fn into_snapshot(self) -> Result<Snapshot, StoreError> {
        match self.answer {
            machine::Answer::TooManyWidgets(max) => Err(StoreError::TooManyWidgets(max)),
            _ => self.snapshot.ok_or_else(missing_snapshot),
        }
    }
}

fn missing_snapshot() -> StoreError {
    StoreError::Protocol("an answer without its snapshot".into())
}

/// One receiver queue store. A store implements [`Store::apply`], one atomic transition of one
/// receiver for any [`machine::Command`], and a few reads; the transitions the hub calls are
/// written once, here, on top of it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies one command to a receiver, atomically.
    async fn apply(
        &self,
        receiver: &ReceiverId,
        command: machine::Command<'_>,
    ) -> Result<Answered, StoreError>;

    /// The node this store reports widgets as.
    fn node(&self) -> &str;

    /// Queues an alert and dispatches it if the receiver is free.
    async fn publish(
        &self,
        alert: &AlertRecord,
        idempotency_key: Option<&str>,
    ) -> Result<Publish, StoreError> {
        self.admit(alert, idempotency_key, None).await
    }

    /// Queues an alert as [`Store::publish`] does, or with `hold` holds it for approval.
    async fn admit(
        &self,
        alert: &AlertRecord,
        idempotency_key: Option<&str>,
        hold: Option<machine::Hold>,
    ) -> Result<Publish, StoreError> {
        let lane = match alert.priority {
            crate::alert::Priority::High => machine::Lane::Priority,
            crate::alert::Priority::Normal => machine::Lane::Normal,
        };
        let command = machine::Command::Publish {
            alert: machine::Stored::of(alert),
            idempotency_key,
            lane,
            hold,
        };
        self.apply(&alert.receiver, command).await?.into_publish()
    }

    /// Records a change in this node's widgets for the receiver, then dispatches or requeues as
    /// the live count requires. The snapshot always carries the alert in flight, if any. A
    /// join past `max_widgets` is refused with [`StoreError::TooManyWidgets`] and counts nothing.
    async fn widgets(
        &self,
        receiver: &ReceiverId,
        change: WidgetChange,
    ) -> Result<Snapshot, StoreError> {
        self.audience(receiver, change, 0).await
    }

    /// As [`Store::widgets`], saying how many of this node's widgets for the receiver are off
    /// air after the change: they keep the alert in flight but release nothing new.
    async fn audience(
        &self,
        receiver: &ReceiverId,
        change: WidgetChange,
        inactive: u32,
    ) -> Result<Snapshot, StoreError> {
        self.report(receiver, change, inactive, 0).await
    }

    /// As [`Store::audience`], saying also how many previews of the receiver this node has open:
    /// previews are no audience (they hold and release nothing), but they are counted, and a
    /// store of many nodes must tell this node of every change all the same.
    async fn report(
        &self,
        receiver: &ReceiverId,
        change: WidgetChange,
        inactive: u32,
        previews: u32,
    ) -> Result<Snapshot, StoreError> {
        let command = machine::Command::Widgets {
            node: self.node(),
            change,
            inactive,
            previews,
        };
        self.apply(receiver, command).await?.into_snapshot()
    }

    /// A widget began to show the alert in flight, `showing` (the stores that run the machine
    /// need only its id). The Redis store only marks it started, once per send, and answers from
    /// `showing` what the machine would have: the same `seq`, the alert started, its deadline
    /// its duration plus the ack grace from now.
    async fn started(
        &self,
        receiver: &ReceiverId,
        showing: &Showing<'_>,
    ) -> Result<Snapshot, StoreError> {
        let command = machine::Command::Started { id: showing.id };
        self.apply(receiver, command).await?.into_snapshot()
    }

    /// A widget finished alert `id`: completes it and dispatches the next.
    async fn done(&self, receiver: &ReceiverId, id: &str) -> Result<Snapshot, StoreError> {
        self.done_unspoken(receiver, id, None).await
    }

    /// As [`Store::done`], the alert shown without its speech for the reason `unspoken` says
    /// (a mark of its trail).
    async fn done_unspoken(
        &self,
        receiver: &ReceiverId,
        id: &str,
        unspoken: Option<history::Mark>,
    ) -> Result<Snapshot, StoreError> {
        let command = machine::Command::Done { id, unspoken };
        self.apply(receiver, command).await?.into_snapshot()
    }

    /// The deadline of alert `id` may have passed: resends or expires it if so.
    async fn check(&self, receiver: &ReceiverId, id: &str) -> Result<Snapshot, StoreError> {
        let command = machine::Command::Check { id };
        self.apply(receiver, command).await?.into_snapshot()
    }

    /// Removes every alert waiting now, never the one in flight, in chunks of [`CLEAR_CHUNK`],
    /// each atomic; alerts published meanwhile stay. Answers the ids removed, in queue order.
    /// An error part way leaves the rest waiting: clearing again removes them.
    async fn clear(&self, receiver: &ReceiverId) -> Result<Vec<Arc<str>>, StoreError> {
        Ok(self.clear_with_snapshot(receiver).await?.0)
    }

    /// [`Store::clear`], with the snapshot of its last step.
    async fn clear_with_snapshot(
        &self,
        receiver: &ReceiverId,
    ) -> Result<(Vec<Arc<str>>, Option<Snapshot>), StoreError> {
        let (mut left, mut cleared) = (None, Vec::new());
        loop {
            let command = machine::Command::Clear {
                left,
                most: CLEAR_CHUNK,
            };
            let answered = self.apply(receiver, command).await?;
            match answered.answer {
                machine::Answer::Cleared { ids, left: l } => {
                    cleared.extend(ids);
                    if l.priority == 0 && l.normal == 0 {
                        return Ok((cleared, answered.snapshot));
                    }
                    left = Some(l);
                }
                other => return Err(StoreError::Protocol(format!("a clear answered {other:?}"))),
            }
        }
    }

    /// Queues an alert from history again, at the head: it goes out next.
    async fn replay(&self, alert: &AlertRecord) -> Result<Publish, StoreError> {
        let command = machine::Command::Replay {
            alert: machine::Stored::of(alert),
        };
        self.apply(&alert.receiver, command).await?.into_publish()
    }

    /// Records an alert moderation kept off screen in the receiver's history; answers the
    /// receiver's snapshot, unchanged but for whether some node has a dock.
    async fn filtered(&self, alert: &AlertRecord) -> Result<Option<Snapshot>, StoreError> {
        let command = machine::Command::Filtered {
            alert: machine::Stored::of(alert),
        };
        Ok(self.apply(&alert.receiver, command).await?.snapshot)
    }

    /// Reads up to `limit` of the receiver's history, newest first, starting after the entry
    /// of alert `before` (from the newest when `None`, or when `before` is not in history).
    async fn history(
        &self,
        receiver: &ReceiverId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<history::Page, StoreError>;

    /// Reads the receiver's queue length, alert in flight and live widgets.
    async fn status(&self, receiver: &ReceiverId) -> Result<Status, StoreError>;

    /// Keeps that the receiver's alert ids carry its route ([`crate::alert::route`]), for
    /// [`Store::routed`]; called before each publish, and done once (a store of one node knows
    /// its receivers already).
    async fn route(&self, _receiver: &ReceiverId) -> Result<(), StoreError> {
        Ok(())
    }

    /// The receivers whose alert ids may carry `route`.
    async fn routed(&self, route: u32) -> Result<Vec<ReceiverId>, StoreError>;

    /// Where alert `id` is while the receiver has it (queued, held or in flight); `None` once it
    /// left, when its history says how it ended (see [`Store::whereabouts`]). Measured as a
    /// status read.
    async fn locate(
        &self,
        receiver: &ReceiverId,
        id: &str,
    ) -> Result<Option<machine::Whereabouts>, StoreError>;

    /// Where alert `id` of the receiver is, or how it ended: from its place in the receiver,
    /// else from the history kept (the newest [`HISTORY_SEARCHED`] entries); `None` for an alert
    /// found in neither.
    async fn whereabouts(
        &self,
        receiver: &ReceiverId,
        id: &str,
    ) -> Result<Option<AlertWhere>, StoreError> {
        if let Some(found) = self.locate(receiver, id).await? {
            return Ok(Some(AlertWhere::Here(found)));
        }
        let mut before: Option<Arc<str>> = None;
        let mut searched = 0;
        while searched < HISTORY_SEARCHED {
            let page = self.history(receiver, before.as_deref(), 200).await?;
            if let Some(r) = page.records.iter().find(|r| &*r.id == id) {
                return Ok(Some(AlertWhere::Ended {
                    status: r.status,
                    shown_at: r
                        .trail
                        .steps()
                        .iter()
                        .rev()
                        .find(|s| s.mark == history::Mark::Started)
                        .map(|s| s.at),
                }));
            }
            searched += page.records.len();
            match page.records.last() {
                Some(last) if page.more => before = Some(last.id.clone()),
                _ => break,
            }
        }
        // Moved on from queued to history between the two reads: read once more.
        Ok(self.locate(receiver, id).await?.map(AlertWhere::Here))
    }

    /// Reads up to `limit` waiting alerts from the `offset`th, in the order they will go out
    /// (the priority lane, then the normal one), as their JSON; and how many wait in all.
    async fn waiting(
        &self,
        receiver: &ReceiverId,
        offset: u64,
        limit: u64,
    ) -> Result<Waiting, StoreError>;

    /// The receiver's moderation settings as last put (JSON), if ever.
    async fn settings(&self, receiver: &ReceiverId) -> Result<Option<Arc<str>>, StoreError>;

    /// Keeps the receiver's moderation settings (JSON, checked by the caller).
    async fn put_settings(&self, receiver: &ReceiverId, json: &str) -> Result<(), StoreError>;

    /// The receiver's designs, newest version first, up to `limit` versions (the store keeps
    /// [`DESIGN_VERSIONS_KEPT`]); none before the first put.
    async fn designs(
        &self,
        receiver: &ReceiverId,
        limit: usize,
    ) -> Result<Vec<Versioned>, StoreError>;

    /// Keeps a new version of the receiver's designs (JSON, checked by the caller), numbered one
    /// past the newest, unless `expected` is given and is not the newest version: then nothing
    /// is kept. Other nodes are told ([`Notice::Designs`]).
    async fn put_designs(
        &self,
        receiver: &ReceiverId,
        json: &str,
        expected: Option<u64>,
    ) -> Result<DesignsPut, StoreError>;

    /// The current generation of each of the receiver's tokens (0 until first rotated).
    async fn generations(&self, receiver: &ReceiverId) -> Result<Generations, StoreError>;

    /// A new generation of the receiver's `purpose` token, after which the old one opens
    /// nothing. Other nodes are told ([`Notice::Revoked`]), to close the widgets holding it.
    async fn rotate(
        &self,
        receiver: &ReceiverId,
        purpose: Purpose,
    ) -> Result<Generations, StoreError>;

    /// This node has a dock open on the receiver's feed, until `until` from now unless marked
    /// again: answers then say [`Snapshot::docks`] on every node. A store of one node has no
    /// one to tell.
    async fn docks(&self, _receiver: &ReceiverId, _until: Duration) -> Result<(), StoreError> {
        Ok(())
    }

    /// Hands feed events to the other nodes' docks of the receiver (they arrive as
    /// [`Notice::Feed`] where the receiver is watched). A store of one node has no one to tell.
    async fn publish_feed(&self, _receiver: &ReceiverId, _payload: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Starts or stops telling this node about changes other nodes make to the receiver.
    /// Calls are counted: each `watch` is paired with one `unwatch`.
    async fn watch(&self, receiver: &ReceiverId) -> Result<(), StoreError>;
    async fn unwatch(&self, receiver: &ReceiverId);

    /// Answers while the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::Call;

    /// Metrics index their series by `Call::index`: a variant missing from `Call::ALL`, or out
    /// of its place, would index past them.
    #[test]
    fn every_call_sits_at_its_index_in_all() {
        for (i, call) in Call::ALL.iter().enumerate() {
            assert_eq!(call.index(), i, "{call:?}");
        }
        let highest = Call::ALL.iter().map(|c| c.index()).max();
        assert_eq!(highest, Some(Call::ALL.len() - 1));
    }
}

//! The Redis store: the rules run as a Redis Functions library (`receiver.lua`), one `FCALL` per
//! transition, over multiplexed connections: each HTTP worker drives one on its own thread,
//! where its calls are made ([`RedisStore::drive_calls_here`]); start-up and background work
//! share another.
//!
//! A second connection carries only pub/sub: it hears the snapshots other nodes publish for the
//! receivers this node holds widgets for, and turns them into [`Notice`]s for the hub. It is
//! separate so that a dropped subscriber (say `CLIENT KILL TYPE pubsub`) never fails a publish.
//!
//! The parts, by job:
//! - `functions`: the library, its functions, and the calls to them;
//! - `clock`: Redis's time as this node reads it, passed with every call;
//! - `presence`: this node's heartbeat, and the sweep of dead nodes' widgets;
//! - `watches`: the pub/sub subscriptions to receivers' events;
//! - `replies`: what Redis answers, read into snapshots and notices;
//! - `secret`: the widget token secret every node shares;
//! - [`keys`]: every key name; [`connection`]: a server or a cluster behind one type.

mod clock;
pub mod connection;
mod functions;
pub mod keys;
mod presence;
mod replies;
mod secret;
pub mod topics;
mod watches;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::{ErrorKind, Value};
use tokio::sync::mpsc;

use self::clock::RedisClock;
use self::connection::{Connection, Target};
use self::functions::{load_library, Core, APPROVE, DENY, DOCKS, WAKE};
use self::keys::Keys;
use self::presence::sweep_dead_nodes;
use self::replies::{
    alert_json, int, kind_of, parse_eta, parse_snapshot, protocol, read_versioned, tagged, text,
};
pub use self::secret::shared_secret;
use self::watches::Watches;
use super::history::{Mark, Page, Record, Trail};
use super::machine::{Answer, Command, Hold, Lane, Left, Stored, Whereabouts};
use super::{
    Answered, Call, CallObserver, DesignsPut, Flight, Notice, Rules, Showing, Snapshot, Status,
    Store, StoreError, Versioned, Waiting, WidgetChange, DESIGN_VERSIONS_KEPT, IDEMPOTENCY_TTL,
    PRESENCE_TTL,
};
use crate::alert::ReceiverId;
use crate::auth::{Generations, Purpose};

/// How long a started mark outlives its write. The library removes it when its alert leaves
/// flight; this bounds the rare one written after that (a widget's late `started`, passed on by
/// a node that had not yet heard the alert was done).
const STARTED_MARK_TTL: Duration = Duration::from_secs(24 * 60 * 60);

pub struct RedisStore {
    core: Arc<Core>,
    watches: Watches,
    /// Stopped with the store.
    sweeper: tokio::task::AbortHandle,
    /// Receivers whose route this node has kept (see [`Store::route`]): each is written once a
    /// node, not once an alert. Forgotten whole when it grows past [`ROUTES_REMEMBERED`].
    routed: std::sync::Mutex<std::collections::HashSet<ReceiverId>>,
}

/// Most receivers a node remembers having kept the route of.
const ROUTES_REMEMBERED: usize = 100_000;

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl From<redis::RedisError> for StoreError {
    /// Whether the call may have reached Redis. A refused connection, or an error reply (Redis
    /// answers those before a script runs: OOM, BUSY, LOADING, CLUSTERDOWN), means it did not.
    /// Any other I/O error came after the call was handed to the connection: a timeout while
    /// Redis stalls (the call sits in its socket and runs once Redis resumes) or a connection
    /// that dropped under it. The driver of the connection does not say whether it had written
    /// the call, so those are unknown, never "nothing happened".
    fn from(e: redis::RedisError) -> Self {
        let nothing_reached = e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Server(_)
                    | ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::InvalidClientConfig
                    | ErrorKind::AuthenticationFailed
            );
        if nothing_reached {
            StoreError::Unavailable(e.to_string())
        } else if e.is_io_error() {
            StoreError::OutcomeUnknown(e.to_string())
        } else {
            StoreError::Protocol(e.to_string())
        }
    }
}

impl RedisStore {
    /// Connects both connections. Snapshots other nodes publish arrive on `notices`.
    pub async fn connect(
        target: &Target,
        keys: Keys,
        rules: Rules,
        node: &str,
        notices: mpsc::UnboundedSender<Notice>,
        observer: Arc<dyn CallObserver>,
    ) -> Result<Self, StoreError> {
        let mut con = target.connect(None).await?;
        load_library(&mut con).await?;
        let clock = RedisClock::read(&mut con).await?;
        let watches = Watches::start(target, keys.clone(), node.into(), notices.clone()).await?;
        let core = Arc::new(Core {
            id: Core::new_id(),
            con,
            driven: Default::default(),
            target: target.clone(),
            keys,
            rules,
            node: node.into(),
            observer,
            clock,
        });
        let sweeper = tokio::spawn(sweep_dead_nodes(core.clone(), notices)).abort_handle();
        Ok(Self {
            core,
            watches,
            routed: Default::default(),
            sweeper,
        })
    }

    /// The command connection, for start-up work such as migrations.
    pub fn connection(&self) -> Connection {
        self.core.con.clone()
    }

    /// The widget token secret every node shares.
    pub async fn shared_secret(&self) -> Result<String, StoreError> {
        shared_secret(&mut self.core.con.clone(), &self.core.keys).await
    }

    /// The log of broadcast topics on this Redis: each keeps its last `keep` messages, each for
    /// `ttl`; every node on the Redis hears each message (see [`Notice::Broadcast`]).
    pub fn topic_log(&self, keep: u64, ttl: Duration) -> topics::RedisTopicLog {
        topics::RedisTopicLog {
            core: self.core.clone(),
            keep,
            ttl,
        }
    }

    /// Tests only: every call runs at `now` (ms) instead of at Redis's clock, so the library's
    /// timing rules can be held to the pure machine's without sleeping. `None`: Redis's clock.
    #[doc(hidden)]
    pub fn set_clock_for_tests(&self, now: Option<u64>) {
        self.core.clock.fix(now);
    }

    /// Makes a connection for the calls made on the calling thread, driven by its runtime; each
    /// HTTP worker calls it as it starts.
    ///
    /// A multiplexed connection is driven by a task on the thread that made it, and a call from
    /// another thread is handed to that task and its reply handed back: two cross-thread
    /// wake-ups a call, the largest single cost of a node on the Redis path (docs/benchmarks.md).
    /// With a connection of its own, a worker's widgets and publishers never leave its thread,
    /// and its calls pipeline on that connection. Each worker needs its own: a worker that stops
    /// ends its runtime, and with it what the runtime drove.
    pub fn drive_calls_here(&self) {
        let core = self.core.clone();
        // Ends when the connection is made or the worker's runtime stops.
        tokio::spawn(async move {
            loop {
                match core.target.connect(None).await {
                    Ok(con) => {
                        core.drive_here(con);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not connect for transitions; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

impl RedisStore {
    async fn publish_call(
        &self,
        receiver: &ReceiverId,
        alert: Stored,
        idempotency_key: Option<&str>,
        place: Option<Lane>,
        hold: Option<Hold>,
    ) -> Result<Answered, StoreError> {
        // The queue entry carries what the library needs without decoding JSON: the id, the
        // duration, how many times the alert was sent (none yet), and its trail: received now,
        // and held now if it is.
        let now = self.core.clock.now();
        let mut trail = Trail::received(now);
        if hold.is_some() {
            trail.push(Mark::Held, now, None);
        }
        let entry = queue_entry(&alert, &trail);
        let max_queue = self.core.rules.max_queue.to_string();
        let ttl = IDEMPOTENCY_TTL.as_secs().to_string();
        // The lane only when it is not the back of the normal one: an argument costs Redis
        // about 1k instructions, and most publishes are normal.
        let (lane, mut given) = match place {
            Some(Lane::Priority) => ("priority", 5),
            Some(Lane::Normal) => ("normal", 4),
            None => ("replay", 5),
        };
        let approve_at = match hold.map(|h| h.approve_after) {
            None => String::new(),
            Some(None) => "-".into(),
            Some(Some(after)) => (now + after).to_string(),
        };
        if hold.is_some() {
            given = 6;
        }
        let args = [&*alert.id, &entry, &max_queue, &ttl, lane, &approve_at];
        let (reply, now) = self
            .core
            .run(receiver, Call::Publish, idempotency_key, &args[..given])
            .await?;
        let (kind, mut items) = tagged(reply)?;
        let (answer, snapshot) = match (kind.as_str(), items.next(), items.next()) {
            ("accepted", Some(position), Some(snapshot)) => (
                Answer::Accepted {
                    position: int(&position)?,
                    eta: parse_eta(items.next())?,
                },
                Some(parse_snapshot(snapshot, now)?),
            ),
            ("duplicate", Some(id), Some(position)) => (
                Answer::Duplicate {
                    id: text(&id)
                        .ok_or_else(|| protocol("publish", &id))?
                        .to_owned(),
                    position: int(&position)?,
                },
                None,
            ),
            ("full", _, _) => (Answer::QueueFull, None),
            ("held", Some(snapshot), _) => (Answer::Held, Some(parse_snapshot(snapshot, now)?)),
            _ => return Err(StoreError::Protocol(format!("publish: unexpected {kind}"))),
        };
        Ok(Answered { answer, snapshot })
    }

    async fn widgets_call(
        &self,
        receiver: &ReceiverId,
        change: WidgetChange,
        inactive: u32,
        previews: u32,
    ) -> Result<Answered, StoreError> {
        let (change, count) = match change {
            WidgetChange::Joined => ("joined", 0),
            WidgetChange::Left => ("left", 0),
            WidgetChange::Refresh(n) => ("refresh", n),
            WidgetChange::Withdrawn => ("withdrawn", 0),
        };
        let max = self.core.rules.max_widgets.to_string();
        let ttl = PRESENCE_TTL.as_millis().to_string();
        let (count, off_air, shown) = (
            count.to_string(),
            inactive.to_string(),
            previews.to_string(),
        );
        // Off-air widgets and previews are rare: the common call leaves them out.
        let args: &[&str] = match (inactive, previews) {
            (0, 0) => &[change, &count, &max, &ttl],
            (_, 0) => &[change, &count, &max, &ttl, &off_air],
            _ => &[change, &count, &max, &ttl, &off_air, &shown],
        };
        let (reply, now) = self.core.run(receiver, Call::Widgets, None, args).await?;
        if kind_of(&reply) == Some("too_many") {
            let answer = Answer::TooManyWidgets(self.core.rules.max_widgets);
            return Ok(Answered {
                answer,
                snapshot: None,
            });
        }
        changed(parse_snapshot(reply, now)?)
    }

    /// The most frequent call, and the only one made without the library: one `SET NX` of the
    /// mark of the alert's send (see [`Keys::started`]). The library reads the mark where it
    /// needs the alert's phase, and removes it when the alert leaves flight. Only the first
    /// mark of a send counts (a second widget's start changes nothing), and a node marks only
    /// the alert in flight as it last heard of it: a mark of a send the receiver is past is
    /// never read, since every send has an attempt of its own.
    async fn mark_started(
        &self,
        receiver: &ReceiverId,
        showing: &Showing<'_>,
    ) -> Result<Snapshot, StoreError> {
        let now = self.core.clock.now();
        let grace = self.core.rules.ack_grace;
        let graced = now + grace.as_millis() as u64;
        let mut call = redis::cmd("SET");
        call.arg(
            self.core
                .keys
                .started(receiver, showing.id, showing.attempt),
        )
        .arg(format!("{now} {graced}"))
        .arg("NX")
        .arg("PX")
        .arg(STARTED_MARK_TTL.as_millis() as u64);
        self.core.call(Call::Started, call).await?;
        // Answered as the machine would: nothing moved but the alert's phase.
        Ok(Snapshot {
            seq: showing.seq,
            flight: Some(Flight {
                id: showing.id.into(),
                attempt: showing.attempt,
                started: true,
                remaining: showing.duration + grace,
                alert: None,
                duration: None,
            }),
            events: Vec::new(),
            skipped: None,
            wake: None,
            docks: showing.docks,
        })
    }
}

impl RedisStore {
    async fn clear_call(
        &self,
        receiver: &ReceiverId,
        left: Option<Left>,
        most: u32,
    ) -> Result<Answered, StoreError> {
        let (priority, normal) = match left {
            Some(l) => (l.priority.to_string(), l.normal.to_string()),
            None => (String::new(), String::new()),
        };
        let most = most.to_string();
        let keep = self.core.rules.history.to_string();
        let (reply, now) = self
            .core
            .run(
                receiver,
                Call::Clear,
                None,
                &[&most, &priority, &normal, &keep],
            )
            .await?;
        let (kind, mut items) = tagged(reply)?;
        match (
            kind.as_str(),
            items.next(),
            items.next(),
            items.next(),
            items.next(),
        ) {
            ("cleared", Some(priority), Some(normal), Some(Value::Array(ids)), Some(snapshot)) => {
                let ids = ids
                    .iter()
                    .map(|id| {
                        text(id)
                            .map(Into::into)
                            .ok_or_else(|| protocol("clear", id))
                    })
                    .collect::<Result<_, _>>()?;
                let left = Left {
                    priority: int(&priority)?,
                    normal: int(&normal)?,
                };
                Ok(Answered {
                    answer: Answer::Cleared { ids, left },
                    snapshot: Some(parse_snapshot(snapshot, now)?),
                })
            }
            _ => Err(StoreError::Protocol(format!("clear: unexpected {kind}"))),
        }
    }
}

impl RedisStore {
    /// Approve, deny or wake: the calls of [`Call::Approval`], one function each.
    async fn approval(
        &self,
        receiver: &ReceiverId,
        function: &str,
        args: &[&str],
    ) -> Result<Answered, StoreError> {
        let now = self.core.clock.now();
        let call = self.core.fcall(receiver, function, false, None, now, args);
        let reply = self.core.call(Call::Approval, call).await?;
        if kind_of(&reply) == Some("not_held") {
            let (_, mut items) = tagged(reply)?;
            let snapshot = items.next().map(|s| parse_snapshot(s, now)).transpose()?;
            return Ok(Answered {
                answer: Answer::NotHeld,
                snapshot,
            });
        }
        changed(parse_snapshot(reply, now)?)
    }
}

/// An alert as the library queues it, never sent yet: `<id> <duration_ms> 0 <trail> <json>`. The
/// entry carries what the library needs without decoding JSON.
fn queue_entry(alert: &Stored, trail: &Trail) -> String {
    format!(
        "{} {} 0 {} {}",
        alert.id,
        alert.duration_ms,
        trail.as_str(),
        alert.json
    )
}

/// The header of an alert in a history list: `<status> <trail>`.
fn history_header(status: Mark, trail: &Trail) -> String {
    format!("{} {}", status.name(), trail.as_str())
}

/// An alert of a history list, from its header and its queue entry.
fn history_record(header: &str, entry: &str) -> Option<Record> {
    let (status, trail) = header.split_once(' ')?;
    Some(Record {
        id: entry.split(' ').next()?.into(),
        status: Mark::parse_status(status)?,
        trail: Trail::from_kept(trail),
        json: alert_json(entry)?.into(),
    })
}

fn generations_call(keys: &Keys, receiver: &ReceiverId) -> redis::Cmd {
    redis::cmd("HMGET")
        .arg(keys.tokens(receiver))
        .arg("widget")
        .arg("dashboard")
        .to_owned()
}

fn read_generations(reply: Value) -> Result<Generations, StoreError> {
    let Value::Array(items) = &reply else {
        return Err(protocol("tokens", &reply));
    };
    let generation = |v: Option<&Value>| match v {
        None | Some(Value::Nil) => Ok(0),
        Some(v) => int(v),
    };
    Ok(Generations {
        widget: generation(items.first())?,
        dashboard: generation(items.get(1))?,
    })
}

/// A receiver's token generations, for `cuebox widget-url` and `dock-url`.
pub async fn generations(
    con: &mut Connection,
    keys: &Keys,
    receiver: &ReceiverId,
) -> Result<Generations, StoreError> {
    let reply = generations_call(keys, receiver).query_async(con).await?;
    read_generations(reply)
}

fn changed(snapshot: Snapshot) -> Result<Answered, StoreError> {
    Ok(Answered {
        answer: Answer::Changed,
        snapshot: Some(snapshot),
    })
}

#[async_trait]
impl Store for RedisStore {
    async fn started(
        &self,
        receiver: &ReceiverId,
        showing: &Showing<'_>,
    ) -> Result<Snapshot, StoreError> {
        self.mark_started(receiver, showing).await
    }

    async fn apply(
        &self,
        receiver: &ReceiverId,
        command: Command<'_>,
    ) -> Result<Answered, StoreError> {
        let call = command.call();
        match command {
            Command::Publish {
                alert,
                idempotency_key,
                lane,
                hold,
            } => {
                self.publish_call(receiver, alert, idempotency_key, Some(lane), hold)
                    .await
            }
            Command::Replay { alert } => self.publish_call(receiver, alert, None, None, None).await,
            Command::Approve { id } => self.approval(receiver, APPROVE, &[id]).await,
            Command::Deny { id } => {
                let keep = self.core.rules.history.to_string();
                self.approval(receiver, DENY, &[id, &keep]).await
            }
            Command::Wake => self.approval(receiver, WAKE, &[]).await,
            Command::Filtered { alert } => {
                let now = self.core.clock.now();
                let trail = Trail::received(now);
                let entry = queue_entry(&alert, &trail);
                let header = history_header(Mark::Filtered, &trail.and(Mark::Filtered, now, None));
                let keep = self.core.rules.history.to_string();
                let args = [&*entry, &*header, &*keep];
                changed(self.core.transition(receiver, call, &args).await?)
            }
            Command::Widgets {
                node,
                change,
                inactive,
                previews,
            } if node == &*self.core.node => {
                self.widgets_call(receiver, change, inactive, previews)
                    .await
            }
            Command::Widgets { node, .. } => Err(StoreError::Protocol(format!(
                "node {} cannot report widgets for node {node}",
                self.core.node
            ))),
            // A start is marked with what the node knows: see `Store::started`.
            Command::Started { .. } => Err(StoreError::Protocol(
                "started is marked through Store::started".into(),
            )),
            // The calls that may complete an alert are told how much history to keep.
            Command::Done { id, unspoken } => {
                let keep = self.core.rules.history.to_string();
                let why = unspoken.map(|m| m.letter().to_string());
                let args = [id, &keep, why.as_deref().unwrap_or("")];
                let given = if why.is_some() { 3 } else { 2 };
                changed(self.core.transition(receiver, call, &args[..given]).await?)
            }
            Command::Check { id } => {
                let keep = self.core.rules.history.to_string();
                changed(self.core.transition(receiver, call, &[id, &keep]).await?)
            }
            Command::Sweep { node } => {
                changed(self.core.transition(receiver, call, &[node]).await?)
            }
            Command::Pause { paused } => {
                let paused = if paused { "1" } else { "0" };
                changed(self.core.transition(receiver, call, &[paused]).await?)
            }
            Command::Clear { left, most } => self.clear_call(receiver, left, most).await,
            Command::Skip { id } => {
                let keep = self.core.rules.history.to_string();
                let args = [id.unwrap_or(""), &keep];
                changed(self.core.transition(receiver, call, &args).await?)
            }
        }
    }

    fn node(&self) -> &str {
        &self.core.node
    }

    async fn status(&self, receiver: &ReceiverId) -> Result<Status, StoreError> {
        let (kind, items) = tagged(self.core.run(receiver, Call::Status, None, &[]).await?.0)?;
        match (kind.as_str(), items.as_slice()) {
            ("status", [queued, widgets, in_flight, rest @ ..]) => Ok(Status {
                queued: int(queued)?,
                held: rest.get(1).map(int).transpose()?.unwrap_or(0),
                in_flight_trail: rest.get(2).and_then(text).map(Trail::from_kept),
                // Absent from a library before pause.
                paused: rest.first().map(int).transpose()? == Some(1),
                widgets: int(widgets)?,
                // Absent from a library before widgets off air: all on air.
                widgets_on_air: rest.get(3).map(int).transpose()?.unwrap_or(int(widgets)?),
                previews: rest.get(4).map(int).transpose()?.unwrap_or(0),
                in_flight: text(in_flight).and_then(alert_json).map(Into::into),
            }),
            _ => Err(StoreError::Protocol(format!("status: unexpected {kind}"))),
        }
    }

    async fn route(&self, receiver: &ReceiverId) -> Result<(), StoreError> {
        if self
            .routed
            .lock()
            .expect("never poisoned")
            .contains(receiver)
        {
            return Ok(());
        }
        let route = crate::alert::route(receiver);
        let call = redis::cmd("SADD")
            .arg(self.core.keys.route(route))
            .arg(receiver.as_str())
            .to_owned();
        self.core.call(Call::Publish, call).await?;
        let mut routed = self.routed.lock().expect("never poisoned");
        if routed.len() >= ROUTES_REMEMBERED {
            routed.clear();
        }
        routed.insert(receiver.clone());
        Ok(())
    }

    async fn routed(&self, route: u32) -> Result<Vec<ReceiverId>, StoreError> {
        let call = redis::cmd("SMEMBERS")
            .arg(self.core.keys.route(route))
            .to_owned();
        match self.core.call(Call::Status, call).await? {
            Value::Array(names) | Value::Set(names) => Ok(names
                .iter()
                .filter_map(|n| text(n).and_then(|n| ReceiverId::parse(n).ok()))
                .collect()),
            v => Err(protocol("routes", &v)),
        }
    }

    async fn locate(
        &self,
        receiver: &ReceiverId,
        id: &str,
    ) -> Result<Option<Whereabouts>, StoreError> {
        let (reply, _) = self.core.run(receiver, Call::Status, None, &[id]).await?;
        let (kind, items) = tagged(reply)?;
        let found = match (kind.as_str(), items.as_slice()) {
            ("located", [where_, rest @ ..]) => match (text(where_), rest) {
                (None, _) => None,
                (Some("in_flight"), [at, ..]) => Some(Whereabouts::InFlight {
                    started_at: match at {
                        Value::Nil => None,
                        at => Some(int(at)?),
                    },
                }),
                (Some("queued"), [position, eta, ..]) => Some(Whereabouts::Queued {
                    position: int(position)?,
                    eta: parse_eta(Some(eta.clone()))?,
                }),
                (Some("held"), _) => Some(Whereabouts::Held),
                _ => return Err(protocol("locate", where_)),
            },
            _ => return Err(StoreError::Protocol(format!("locate: unexpected {kind}"))),
        };
        Ok(found)
    }

    async fn waiting(
        &self,
        receiver: &ReceiverId,
        offset: u64,
        limit: u64,
    ) -> Result<Waiting, StoreError> {
        let args = [offset.to_string(), limit.to_string()];
        let (reply, _) = self
            .core
            .run(receiver, Call::Queue, None, &[&args[0], &args[1]])
            .await?;
        let (kind, mut items) = tagged(reply)?;
        match (kind.as_str(), items.next(), items.next(), items.next()) {
            ("queue", Some(total), Some(Value::Array(entries)), held) => Ok(Waiting {
                total: int(&total)?,
                alerts: entries
                    .iter()
                    .map(|e| {
                        text(e)
                            .and_then(alert_json)
                            .map(Into::into)
                            .ok_or_else(|| protocol("queue", e))
                    })
                    .collect::<Result<_, _>>()?,
                // Each "<approve at> <lane> <queue entry>".
                held: match held {
                    Some(Value::Array(held)) => held
                        .iter()
                        .map(|e| {
                            text(e)
                                .and_then(|e| e.splitn(3, ' ').nth(2))
                                .and_then(alert_json)
                                .map(Into::into)
                                .ok_or_else(|| protocol("queue", e))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => Vec::new(),
                },
            }),
            _ => Err(StoreError::Protocol(format!("queue: unexpected {kind}"))),
        }
    }

    /// A plain LRANGE: the history is one list, newest first, two elements an alert (see
    /// `remember()` in receiver.lua). The first page reads just what it shows; a page after a
    /// given alert reads all that is kept, to find it.
    async fn history(
        &self,
        receiver: &ReceiverId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        // Past the length kept, what the list holds until its next trim is not shown.
        let kept = i64::from(self.core.rules.history);
        let alerts = match before {
            // One more than the page, to tell whether another follows.
            None => kept.min(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)),
            Some(_) => kept,
        };
        let last = 2 * alerts - 1;
        let call = redis::cmd("LRANGE")
            .arg(self.core.keys.history(receiver))
            .arg(0)
            .arg(last)
            .to_owned();
        let reply = self.core.call(Call::History, call).await?;
        let Value::Array(entries) = &reply else {
            return Err(protocol("history", &reply));
        };
        let records = entries
            .chunks(2)
            .map(|pair| match pair {
                [header, entry] => text(header)
                    .zip(text(entry))
                    .and_then(|(header, entry)| history_record(header, entry))
                    .ok_or_else(|| protocol("history", entry)),
                _ => Err(protocol("history", &reply)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::of(records.iter(), before, limit))
    }

    async fn settings(&self, receiver: &ReceiverId) -> Result<Option<Arc<str>>, StoreError> {
        let call = redis::cmd("GET")
            .arg(self.core.keys.settings(receiver))
            .to_owned();
        match self.core.call(Call::Settings, call).await? {
            Value::Nil => Ok(None),
            v => text(&v)
                .map(|s| Some(s.into()))
                .ok_or_else(|| protocol("settings", &v)),
        }
    }

    async fn put_settings(&self, receiver: &ReceiverId, json: &str) -> Result<(), StoreError> {
        let call = redis::cmd("SET")
            .arg(self.core.keys.settings(receiver))
            .arg(json)
            .to_owned();
        self.core.call(Call::Settings, call).await.map(|_| ())
    }

    async fn designs(
        &self,
        receiver: &ReceiverId,
        limit: usize,
    ) -> Result<Vec<Versioned>, StoreError> {
        let call = redis::cmd("LRANGE")
            .arg(self.core.keys.designs(receiver))
            .arg(0)
            .arg(limit.clamp(1, DESIGN_VERSIONS_KEPT) - 1)
            .to_owned();
        match self.core.call(Call::Designs, call).await? {
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    text(v)
                        .and_then(read_versioned)
                        .ok_or_else(|| protocol("designs", v))
                })
                .collect(),
            v => Err(protocol("designs", &v)),
        }
    }

    async fn put_designs(
        &self,
        receiver: &ReceiverId,
        json: &str,
        expected: Option<u64>,
    ) -> Result<DesignsPut, StoreError> {
        // Not a transition of the state machine, and rare: a script of its own, sent whole, so
        // the library holds only the machine. The check of the expected version, the new
        // version's number and the notice to other nodes happen in one step.
        const PUT: &str = r#"
            local head = redis.call('LINDEX', KEYS[1], 0)
            local newest = 0
            if head then newest = tonumber(string.match(head, '^(%d+) ')) or 0 end
            if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= newest then return {'stale', newest} end
            local version = newest + 1
            redis.call('LPUSH', KEYS[1], version .. ' ' .. ARGV[2] .. ' ' .. ARGV[1])
            redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[4]) - 1)
            redis.call(ARGV[5], ARGV[6], 'designs ' .. ARGV[7] .. ' ' .. version)
            return {'kept', version}
        "#;
        let call = redis::cmd("EVAL")
            .arg(PUT)
            .arg(1)
            .arg(self.core.keys.designs(receiver))
            .arg(json)
            .arg(self.core.clock.now())
            .arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(DESIGN_VERSIONS_KEPT)
            .arg(self.core.con.publish_command())
            .arg(self.core.keys.events(receiver))
            .arg(&*self.core.node)
            .to_owned();
        let reply = self.core.call(Call::Designs, call).await?;
        let version = |items: &mut dyn Iterator<Item = Value>| match items.next() {
            Some(Value::Int(n)) if n >= 0 => Ok(n as u64),
            other => Err(StoreError::Protocol(format!("put_designs: {other:?}"))),
        };
        match tagged(reply)? {
            (kind, mut items) if kind == "kept" => Ok(DesignsPut::Kept(version(&mut items)?)),
            (kind, mut items) if kind == "stale" => Ok(DesignsPut::Stale(version(&mut items)?)),
            (kind, _) => Err(StoreError::Protocol(format!(
                "put_designs: unexpected {kind}"
            ))),
        }
    }

    async fn generations(&self, receiver: &ReceiverId) -> Result<Generations, StoreError> {
        let call = generations_call(&self.core.keys, receiver);
        read_generations(self.core.call(Call::Tokens, call).await?)
    }

    async fn rotate(
        &self,
        receiver: &ReceiverId,
        purpose: Purpose,
    ) -> Result<Generations, StoreError> {
        let (reply, _) = self
            .core
            .run(receiver, Call::Tokens, None, &[purpose.name()])
            .await?;
        // The generations after the rotation come with its answer: no second read.
        match tagged(reply)? {
            (kind, items) if kind == "rotated" => read_generations(Value::Array(items.collect())),
            (kind, _) => Err(StoreError::Protocol(format!("rotate: unexpected {kind}"))),
        }
    }

    async fn docks(&self, receiver: &ReceiverId, until: Duration) -> Result<(), StoreError> {
        let until = (self.core.clock.now() + until.as_millis() as u64).to_string();
        let call = self.core.fcall(
            receiver,
            DOCKS,
            false,
            None,
            self.core.clock.now(),
            &[&until],
        );
        self.core.call(Call::Feed, call).await.map(drop)
    }

    async fn publish_feed(&self, receiver: &ReceiverId, payload: &str) -> Result<(), StoreError> {
        let call = redis::cmd(self.core.con.publish_command())
            .arg(self.core.keys.events(receiver))
            .arg(format!("feed {} {payload}", self.core.node))
            .to_owned();
        self.core.call(Call::Feed, call).await.map(drop)
    }

    async fn watch(&self, receiver: &ReceiverId) -> Result<(), StoreError> {
        self.watches.watch(receiver).await
    }

    async fn unwatch(&self, receiver: &ReceiverId) {
        self.watches.unwatch(receiver)
    }

    /// Every connection answers: a node is ready only when those its transitions use are,
    /// each worker's (each notices a Redis restart on its own).
    async fn ping(&self) -> Result<(), StoreError> {
        let driven = self.core.driven_connections();
        for mut con in std::iter::once(self.core.con.clone()).chain(driven) {
            let _: String = redis::cmd("PING").query_async(&mut con).await?;
        }
        Ok(())
    }
}

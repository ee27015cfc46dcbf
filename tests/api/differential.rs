//! The stores held to the pure machine: random sequences of commands, for several receivers,
//! with widgets joining and leaving and a clock that jumps past deadlines, run against
//! `store::machine` and against a store. Every answer, and each receiver's final state, must
//! agree.
//!
//! - The Redis store: `receiver.lua` on a real redis-server, called from two nodes.
//! - The SQLite store: the machine itself, kept on disk; the sequences also restart it (closed
//!   and opened again on its data dir, as after a kill), and the model takes the same restart:
//!   widgets gone, an alert in flight back at the head of its queue.
//!
//! Each receiver's history is compared too: the machine hands each alert that leaves for good to
//! the model, which keeps them as a store does.
//!
//! `PROPTEST_CASES` sets the number of sequences of each (by default 1,000 against Redis, about
//! 17 seconds, and 256 against SQLite, whose restarts make each slower). At 256 against Redis, a
//! `wait` sum off by 1 ms per dispatched alert went unseen in three runs of three; at 1,000 it was
//! found in both of two.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use cuebox::alert::Priority;
use cuebox::alert::{AlertRecord, ReceiverId};
use cuebox::store::embedded::disk::Durability;
use cuebox::store::embedded::EmbeddedStore;
use cuebox::store::history::{Mark, Page, Record};
use cuebox::store::machine::{self, Command, Lane, Receiver, Stored};
use cuebox::store::redis::keys::Keys;
use cuebox::store::redis::RedisStore;
use cuebox::store::{Rules, Showing, Snapshot, Status, Store, StoreError, WidgetChange};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

use crate::helpers::*;

const RECEIVERS: [&str; 2] = ["alice", "bob"];
const NODES: [&str; 2] = ["node-a", "node-b"];
/// A realistic clock, so `seq` starts from it as it does in production.
const T0: u64 = 1_760_000_000_000;

/// Which alert a widget names.
#[derive(Clone, Copy, Debug)]
enum Which {
    InFlight,
    LastPublished,
    /// The oldest alert held for approval.
    Held,
    Unknown,
}

#[derive(Clone, Debug)]
enum Op {
    Publish {
        r: usize,
        key: Option<u8>,
        again: bool,
        high: bool,
        /// Held for approval, approving itself after so many ms if given.
        hold: Option<Option<u64>>,
    },
    Approve {
        r: usize,
        which: Which,
    },
    Deny {
        r: usize,
        which: Which,
    },
    Wake {
        r: usize,
    },
    Widgets {
        r: usize,
        node: usize,
        change: WidgetChange,
        /// The node's widgets off air after the change.
        inactive: u32,
        /// The node's previews open.
        previews: u32,
    },
    Started {
        r: usize,
        which: Which,
    },
    Done {
        r: usize,
        which: Which,
        /// Shown without its speech: 1 the engine failed, 2 it took too long.
        unspoken: u8,
    },
    Check {
        r: usize,
        which: Which,
    },
    Sweep {
        r: usize,
        node: usize,
    },
    Pause {
        r: usize,
        paused: bool,
    },
    /// A skip of the alert named, or with `None` of whatever is in flight.
    Skip {
        r: usize,
        which: Option<Which>,
    },
    /// A chunk of a clear, of at most `most`, with what a last chunk left (`None`: from the
    /// start).
    Clear {
        r: usize,
        left: Option<(u64, u64)>,
        most: u32,
    },
    /// An alert from history queued again at the head.
    Replay {
        r: usize,
    },
    /// An alert moderation kept off screen.
    Filtered {
        r: usize,
    },
    /// Moves the clock on; now and then past the presence TTL.
    Wait {
        ms: u64,
    },
    /// Closes the store and opens it again (the SQLite store; the Redis store ignores it).
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..RECEIVERS.len();
    let node = 0..NODES.len();
    let which = prop_oneof![
        3 => Just(Which::InFlight),
        1 => Just(Which::LastPublished),
        1 => Just(Which::Held),
        1 => Just(Which::Unknown),
    ];
    let held = prop_oneof![
        3 => Just(Which::Held),
        1 => Just(Which::LastPublished),
        1 => Just(Which::Unknown),
    ];
    let hold = proptest::option::weighted(
        0.2,
        proptest::option::of(prop_oneof![Just(0u64), 1u64..600]),
    );
    let change = prop_oneof![
        3 => Just(WidgetChange::Joined),
        2 => Just(WidgetChange::Left),
        1 => Just(WidgetChange::Withdrawn),
        1 => (0u32..3).prop_map(WidgetChange::Refresh),
    ];
    prop_oneof![
        4 => (
            r.clone(),
            proptest::option::of(0u8..3),
            proptest::bool::weighted(0.15),
            proptest::bool::weighted(0.25),
            hold,
        )
            .prop_map(|(r, key, again, high, hold)| Op::Publish { r, key, again, high, hold }),
        1 => (r.clone(), held.clone()).prop_map(|(r, which)| Op::Approve { r, which }),
        1 => (r.clone(), held).prop_map(|(r, which)| Op::Deny { r, which }),
        1 => r.clone().prop_map(|r| Op::Wake { r }),
        3 => (
            r.clone(),
            node.clone(),
            change,
            prop_oneof![3 => Just(0u32), 1 => 1u32..3],
            prop_oneof![4 => Just(0u32), 1 => 1u32..3],
        )
            .prop_map(|(r, node, change, inactive, previews)| Op::Widgets {
                r,
                node,
                change,
                inactive,
                previews,
            }),
        2 => (r.clone(), which.clone()).prop_map(|(r, which)| Op::Started { r, which }),
        3 => (r.clone(), which.clone(), prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)])
            .prop_map(|(r, which, unspoken)| Op::Done { r, which, unspoken }),
        2 => (r.clone(), which.clone()).prop_map(|(r, which)| Op::Check { r, which }),
        1 => (r.clone(), node).prop_map(|(r, node)| Op::Sweep { r, node }),
        1 => (r.clone(), proptest::bool::ANY).prop_map(|(r, paused)| Op::Pause { r, paused }),
        1 => (r.clone(), proptest::option::of(which.clone())).prop_map(|(r, which)| Op::Skip { r, which }),
        1 => (r.clone(), proptest::option::of((0u64..4, 0u64..4)), 0u32..4)
            .prop_map(|(r, left, most)| Op::Clear { r, left, most }),
        1 => r.clone().prop_map(|r| Op::Replay { r }),
        1 => r.clone().prop_map(|r| Op::Filtered { r }),
        3 => prop_oneof![
            6 => 0u64..400,
            1 => Just(1_500u64),
            1 => Just(31_000u64),
        ].prop_map(|ms| Op::Wait { ms }),
        1 => Just(Op::Restart),
    ]
}

fn rules() -> Rules {
    Rules {
        start_timeout: std::time::Duration::from_millis(300),
        ack_grace: std::time::Duration::from_millis(200),
        max_queue: 4,
        max_widgets: 2,
        history: 8,
    }
}

/// The machine's side: every receiver's state, the clock, and what the ops refer to.
struct Model {
    receivers: HashMap<&'static str, Receiver>,
    now: u64,
    last: HashMap<&'static str, AlertRecord>,
    published: usize,
    /// As the embedded store does: an idle receiver is forgotten, and one made again counts
    /// on from the highest `seq` forgotten in this run of the store. (Redis keeps each
    /// receiver's `seq`.)
    forgets: bool,
    seq_floor: u64,
    /// Each receiver's history, newest first, as long as the rules keep.
    history: HashMap<&'static str, VecDeque<Record>>,
}

impl Model {
    fn id(&self, r: &'static str, which: Which) -> String {
        match which {
            Which::InFlight => self
                .receivers
                .get(r)
                .and_then(|s| s.flight.as_ref())
                .map_or_else(|| "none".into(), |f| f.alert.id.to_string()),
            Which::LastPublished => self
                .last
                .get(r)
                .map_or_else(|| "none".into(), |a| a.id.clone()),
            Which::Held => self
                .receivers
                .get(r)
                .and_then(|s| s.held.front())
                .map_or_else(|| "none".into(), |h| h.queued.alert.id.to_string()),
            Which::Unknown => "not-an-alert".into(),
        }
    }

    fn apply(&mut self, r: &'static str, command: Command<'_>) -> machine::Outcome {
        let floor = self.seq_floor;
        let state = self.receivers.entry(r).or_insert_with(|| Receiver {
            seq: floor,
            ..Receiver::default()
        });
        let outcome = machine::apply(state, command, self.now, &rules());
        let history = self.history.entry(r).or_default();
        for record in &outcome.recorded {
            history.push_front(record.clone());
        }
        history.truncate(rules().history as usize);
        if self.forgets && state.is_idle(self.now) {
            self.seq_floor = self.seq_floor.max(state.seq);
            self.receivers.remove(r);
        }
        outcome
    }

    /// What a node knows when a widget reports alert `id` started, if it is the alert in flight,
    /// and whether this is its first start.
    fn showing<'a>(&self, r: &'static str, id: &'a str) -> Option<(Showing<'a>, bool)> {
        let state = self.receivers.get(r)?;
        let f = state.flight.as_ref().filter(|f| &*f.alert.id == id)?;
        let showing = Showing {
            id,
            attempt: f.attempt,
            duration: std::time::Duration::from_millis(f.alert.duration_ms.into()),
            seq: state.seq,
            docks: false,
        };
        Some((showing, !f.started))
    }

    /// What the embedded store does when it opens again: no widget is connected, and an alert
    /// that was in flight goes back to the head of its queue.
    fn restart(&mut self) {
        self.seq_floor = 0;
        for state in self.receivers.values_mut() {
            state.presence.clear();
            if let Some(f) = state.flight.as_mut() {
                // The disk keeps an alert's trail as of its last send, not when it started.
                f.trail = f.trail.as_sent();
                let sweep = Command::Sweep { node: EMBEDDED };
                machine::apply(state, sweep, self.now, &rules());
            }
        }
    }
}

/// How the embedded store's widgets report.
const EMBEDDED: &str = "embedded";

/// The store the machine is held to.
enum Under {
    Redis {
        redis: RedisServer,
        nodes: Vec<Arc<RedisStore>>,
    },
    Sqlite {
        dir: DataDir,
        store: Option<Arc<EmbeddedStore>>,
    },
}

impl Under {
    /// The store that takes the call a node would make.
    fn store(&self, node: usize) -> Arc<dyn Store> {
        match self {
            Under::Redis { nodes, .. } => nodes[node % nodes.len()].clone(),
            Under::Sqlite { store, .. } => store.clone().expect("the store is open"),
        }
    }

    /// The name the node's widgets report as.
    fn node_name(&self, node: usize) -> &'static str {
        match self {
            Under::Redis { .. } => NODES[node],
            Under::Sqlite { .. } => EMBEDDED,
        }
    }

    fn set_clock(&self, now: u64) {
        match self {
            Under::Redis { nodes, .. } => {
                for node in nodes {
                    node.set_clock_for_tests(Some(now));
                }
            }
            Under::Sqlite { store, .. } => {
                if let Some(store) = store {
                    store.set_clock_for_tests(Some(now));
                }
            }
        }
    }

    /// Empties the store for the next sequence.
    async fn reset(&mut self) {
        match self {
            Under::Redis { redis, .. } => {
                redis.cmd(&["FLUSHALL"]).await;
            }
            Under::Sqlite { dir, store } => {
                store.take();
                let _ = std::fs::remove_dir_all(&dir.0);
                *store = Some(open_sqlite(dir, T0));
            }
        }
    }

    /// Closes the store and opens it again on its data dir; false if this store has no such
    /// thing.
    fn restart(&mut self, now: u64) -> bool {
        match self {
            Under::Redis { .. } => false,
            Under::Sqlite { dir, store } => {
                // Dropped, the store lets its writer commit what it was given and frees the data
                // dir; nothing else holds it.
                let old = store.take().expect("the store is open");
                assert_eq!(Arc::strong_count(&old), 1, "the store is still held");
                drop(old);
                *store = Some(open_sqlite(dir, now));
                true
            }
        }
    }

    /// The receiver's waiting alerts, in order (the priority lane, then the normal one), each
    /// as the Redis library keeps it.
    async fn queue(&self, name: &str) -> Vec<String> {
        match self {
            Under::Redis { redis, .. } => {
                let keys = Keys::new("cuebox").unwrap();
                let mut lanes = Vec::new();
                keys.receiver(&ReceiverId::parse(name).unwrap(), false, None, |k| {
                    if k.ends_with(":queue") || k.ends_with(":priority") {
                        lanes.push(k.to_owned());
                    }
                });
                // KEYS order is queue, then priority.
                lanes.reverse();
                let mut waiting = Vec::new();
                for lane in lanes {
                    let x = redis.cmd(&["LRANGE", &lane, "0", "-1"]).await;
                    waiting.extend(redis::from_redis_value::<Vec<String>>(x).unwrap());
                }
                waiting
            }
            Under::Sqlite { dir, .. } => {
                // Read from the file, not the store's memory: what a restart would find.
                let db = rusqlite::Connection::open(dir.0.join("cuebox.db")).unwrap();
                let mut rows = db
                    .prepare(
                        "SELECT id, duration_ms, sent, trail, json FROM queue WHERE receiver = ?1 \
                         AND pos IS NOT (SELECT flight_pos FROM receivers WHERE receiver = ?1) \
                         AND ((pos >= ?2 AND pos >= coalesce((SELECT head_pos FROM receivers \
                         WHERE receiver = ?1), pos)) OR (pos < ?2 AND pos >= coalesce((SELECT \
                         priority_head FROM receivers WHERE receiver = ?1), pos))) ORDER BY pos",
                    )
                    .unwrap();
                let split = cuebox::store::embedded::disk::PRIORITY_BASE / 2;
                rows.query_map(rusqlite::params![name, split], |r| {
                    Ok(format!(
                        "{} {} {} {} {}",
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, u32>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?
                    ))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
            }
        }
    }
}

fn open_sqlite(dir: &DataDir, now: u64) -> Arc<EmbeddedStore> {
    let (store, _) = EmbeddedStore::open_at_for_tests(&dir.0, Durability::Normal, rules(), now)
        .expect("the data dir opens");
    Arc::new(store)
}

fn stored(a: &AlertRecord) -> Stored {
    Stored {
        id: a.id.as_str().into(),
        json: a.json.clone(),
        duration_ms: a.duration_ms,
    }
}

/// Compares one step's answers; errors compare by kind.
fn same<T: PartialEq + std::fmt::Debug>(
    step: usize,
    op: &Op,
    machine: Result<T, StoreError>,
    store: Result<T, StoreError>,
) -> Result<(), TestCaseError> {
    match (&machine, &store) {
        (Ok(m), Ok(r)) if m == r => Ok(()),
        (Err(StoreError::TooManyWidgets(a)), Err(StoreError::TooManyWidgets(b))) if a == b => {
            Ok(())
        }
        _ => Err(TestCaseError::fail(format!(
            "step {step}, {op:?}:\n  machine {machine:?}\n  store   {store:?}"
        ))),
    }
}

async fn run(under: &mut Under, ops: Vec<Op>) -> Result<(), TestCaseError> {
    under.reset().await;
    let mut model = Model {
        receivers: HashMap::new(),
        now: T0,
        last: HashMap::new(),
        published: 0,
        forgets: matches!(under, Under::Sqlite { .. }),
        seq_floor: 0,
        history: HashMap::new(),
    };
    for (step, op) in ops.iter().enumerate() {
        under.set_clock(model.now);
        match *op {
            Op::Publish {
                r,
                key,
                again,
                high,
                hold,
            } => {
                let name = RECEIVERS[r];
                let alert = match (again, model.last.get(name)) {
                    (true, Some(last)) => last.clone(),
                    _ => {
                        model.published += 1;
                        let body = json!({
                            "receiver": name,
                            "message": format!("alert {}", model.published),
                            "duration_ms": 1000 + 100 * (model.published % 5),
                            "priority": if high { "high" } else { "normal" },
                        });
                        record_with(body)
                    }
                };
                model.last.insert(name, alert.clone());
                let key = key.map(|k| format!("key-{k}"));
                let lane = match alert.priority {
                    Priority::High => Lane::Priority,
                    Priority::Normal => Lane::Normal,
                };
                let hold = hold.map(|approve_after| machine::Hold { approve_after });
                let command = Command::Publish {
                    alert: stored(&alert),
                    idempotency_key: key.as_deref(),
                    lane,
                    hold,
                };
                let m = model.apply(name, command).answered().into_publish();
                let x = under.store(step).admit(&alert, key.as_deref(), hold).await;
                same(step, op, m, x)?;
            }
            Op::Approve { r, which } | Op::Deny { r, which } => {
                let name = RECEIVERS[r];
                let id = model.id(name, which);
                let command = match op {
                    Op::Approve { .. } => Command::Approve { id: &id },
                    _ => Command::Deny { id: &id },
                };
                let m = model.apply(name, command.clone()).answered();
                let x = under.store(step).apply(&receiver(name), command).await;
                same(step, op, Ok(m), x)?;
            }
            Op::Wake { r } => {
                let name = RECEIVERS[r];
                let m = model.apply(name, Command::Wake).answered();
                let x = under
                    .store(step)
                    .apply(&receiver(name), Command::Wake)
                    .await;
                same(step, op, Ok(m), x)?;
            }
            Op::Widgets {
                r,
                node,
                change,
                inactive,
                previews,
            } => {
                let name = RECEIVERS[r];
                let command = Command::Widgets {
                    node: under.node_name(node),
                    change,
                    inactive,
                    previews,
                };
                let m = model.apply(name, command).answered().into_snapshot();
                let x = under
                    .store(node)
                    .report(&receiver(name), change, inactive, previews)
                    .await;
                same(step, op, m, x)?;
            }
            Op::Started { r, which } => {
                let name = RECEIVERS[r];
                let id = model.id(name, which);
                // A node passes on only a start of the alert in flight as it knows it
                // (`Hub::started`), with what it knows of it.
                let Some((showing, first)) = model.showing(name, &id) else {
                    continue;
                };
                let m = model
                    .apply(name, Command::Started { id: &id })
                    .answered()
                    .into_snapshot();
                let mut x = under.store(step).started(&receiver(name), &showing).await;
                // A second start changes nothing; a node sets its timer from the first.
                if let (false, Ok(m), Ok(x)) = (first, &m, &mut x) {
                    if let (Some(mf), Some(xf)) = (&m.flight, &mut x.flight) {
                        xf.remaining = mf.remaining;
                    }
                }
                same(step, op, m, x)?;
            }
            Op::Done { r, which, .. } | Op::Check { r, which } => {
                let name = RECEIVERS[r];
                let id = model.id(name, which);
                let unspoken = match op {
                    Op::Done { unspoken: 1, .. } => Some(Mark::SpeechFailed),
                    Op::Done { unspoken: 2, .. } => Some(Mark::SpeechLate),
                    _ => None,
                };
                let (command, store) = (
                    match op {
                        Op::Done { .. } => Command::Done { id: &id, unspoken },
                        _ => Command::Check { id: &id },
                    },
                    under.store(step),
                );
                let m = model
                    .apply(name, command.clone())
                    .answered()
                    .into_snapshot();
                let rid = receiver(name);
                let x: Result<Snapshot, StoreError> = match command {
                    Command::Done { .. } => store.done_unspoken(&rid, &id, unspoken).await,
                    _ => store.check(&rid, &id).await,
                };
                same(step, op, m, x)?;
            }
            Op::Sweep { r, node } => {
                let name = RECEIVERS[r];
                let gone = under.node_name(node);
                let m = model
                    .apply(name, Command::Sweep { node: gone })
                    .answered()
                    .into_snapshot();
                let command = Command::Sweep { node: gone };
                let x = match under.store(node + 1).apply(&receiver(name), command).await {
                    Ok(answered) => answered.into_snapshot(),
                    Err(e) => Err(e),
                };
                same(step, op, m, x)?;
            }
            Op::Pause { r, paused } => {
                let name = RECEIVERS[r];
                let command = Command::Pause { paused };
                let m = model.apply(name, command.clone()).answered();
                let x = under.store(step).apply(&receiver(name), command).await;
                same(step, op, Ok(m), x)?;
            }
            Op::Skip { r, which } => {
                let name = RECEIVERS[r];
                let id = which.map(|w| model.id(name, w));
                let command = Command::Skip { id: id.as_deref() };
                let m = model.apply(name, command.clone()).answered();
                let x = under.store(step).apply(&receiver(name), command).await;
                same(step, op, Ok(m), x)?;
            }
            Op::Clear { r, left, most } => {
                let name = RECEIVERS[r];
                let left = left.map(|(priority, normal)| machine::Left { priority, normal });
                let command = Command::Clear { left, most };
                let m = model.apply(name, command.clone()).answered();
                let x = under.store(step).apply(&receiver(name), command).await;
                same(step, op, Ok(m), x)?;
            }
            Op::Replay { r } | Op::Filtered { r } => {
                let name = RECEIVERS[r];
                model.published += 1;
                let alert = record_with(json!({
                    "receiver": name,
                    "message": format!("alert {}", model.published),
                }));
                let (command, x) = match op {
                    Op::Replay { .. } => (
                        Command::Replay {
                            alert: stored(&alert),
                        },
                        under
                            .store(step)
                            .replay(&alert)
                            .await
                            .map(|p| format!("{p:?}")),
                    ),
                    _ => (
                        Command::Filtered {
                            alert: stored(&alert),
                        },
                        under
                            .store(step)
                            .filtered(&alert)
                            .await
                            .map(|p| format!("{p:?}")),
                    ),
                };
                let answered = model.apply(name, command).answered();
                let m = match op {
                    Op::Replay { .. } => answered.into_publish().map(|p| format!("{p:?}")),
                    _ => Ok(format!("{:?}", answered.snapshot)),
                };
                same(step, op, m, x)?;
            }
            Op::Wait { ms } => model.now += ms,
            Op::Restart => {
                if under.restart(model.now) {
                    model.restart();
                }
            }
        }
    }
    // Each receiver's final state: its status, and its queue in order.
    under.set_clock(model.now);
    for name in RECEIVERS {
        let m = model.receivers.get(name).cloned().unwrap_or_default();
        let status = Status {
            queued: m.queued(),
            held: m.held.len() as u64,
            paused: m.paused,
            in_flight: m.flight.as_ref().map(|f| f.alert.json.clone()),
            in_flight_trail: m.flight.as_ref().map(|f| f.trail.clone()),
            widgets: u64::from(m.live_widgets(model.now)),
            widgets_on_air: u64::from(m.widgets_on_air(model.now)),
            previews: u64::from(m.previews(model.now)),
        };
        let x = under.store(0).status(&receiver(name)).await;
        same(ops.len(), &Op::Wait { ms: 0 }, Ok(status), x)?;
        let page = under.store(0).waiting(&receiver(name), 0, 100).await;
        let json: Vec<_> = m.waiting().map(|q| q.alert.json.clone()).collect();
        let expected = cuebox::store::Waiting {
            total: m.queued(),
            alerts: json,
            held: m.held.iter().map(|h| h.queued.alert.json.clone()).collect(),
        };
        same(ops.len(), &Op::Wait { ms: 0 }, Ok(expected), page)?;
        let x = under.queue(name).await;
        // Each entry as the library keeps it, times sent and trail included.
        let m: Vec<String> = m
            .waiting()
            .map(|q| {
                let a = &q.alert;
                let trail = q.trail.as_str();
                format!("{} {} {} {trail} {}", a.id, a.duration_ms, q.sent, a.json)
            })
            .collect();
        if m != x {
            return Err(TestCaseError::fail(format!(
                "{name}'s queue: machine {m:?}, store {x:?}"
            )));
        }
        // The history: its first page, and a page after its second record.
        let history = model.history.get(name).cloned().unwrap_or_default();
        let kept = rules().history as usize;
        let first = under.store(1).history(&receiver(name), None, kept).await;
        let expected = Page::of(history.iter(), None, kept);
        same(ops.len(), &Op::Wait { ms: 0 }, Ok(expected), first)?;
        if let Some(second) = history.get(1) {
            let x = under
                .store(0)
                .history(&receiver(name), Some(&second.id), 2)
                .await;
            let m = Page::of(history.iter(), Some(&second.id), 2);
            same(ops.len(), &Op::Wait { ms: 0 }, Ok(m), x)?;
        }
    }
    Ok(())
}

/// Runs `PROPTEST_CASES` random sequences against the store.
fn check(rt: &tokio::runtime::Runtime, under: Under, default_cases: u32) {
    // The runner takes a shared closure; each sequence runs alone, so the cell is never
    // borrowed twice.
    let under = std::cell::RefCell::new(under);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default_cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        rt.block_on(run(&mut under.borrow_mut(), ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_redis_script_keeps_the_rules_of_the_machine() {
    let rt = runtime();
    let under = rt.block_on(async {
        let redis = RedisServer::spawn().await;
        let mut nodes = Vec::new();
        for node in NODES {
            let (tx, _notices) = tokio::sync::mpsc::unbounded_channel();
            let target = cuebox::store::redis::connection::Target::new(&redis.url(), false);
            let store = RedisStore::connect(
                &target,
                Keys::new("cuebox").unwrap(),
                rules(),
                node,
                tx,
                Arc::new(cuebox::store::Unobserved),
            )
            .await
            .expect("connects");
            nodes.push(Arc::new(store));
        }
        Under::Redis { redis, nodes }
    });
    check(&rt, under, 1000);
}

#[test]
fn the_sqlite_store_keeps_the_rules_of_the_machine_across_restarts() {
    let under = Under::Sqlite {
        dir: DataDir::fresh(),
        store: None,
    };
    check(&runtime(), under, 256);
}

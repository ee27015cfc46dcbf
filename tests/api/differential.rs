//! The Redis script held to the pure machine: random sequences of commands, for several
//! receivers from two nodes, with widgets joining and leaving and a clock that jumps past
//! deadlines, run against `store::machine` and against `receiver.lua` on a real redis-server.
//! Every answer, and each receiver's final state, must agree.
//!
//! `PROPTEST_CASES` sets the number of sequences (default 256, about ten seconds).

use std::collections::HashMap;
use std::sync::Arc;

use cuebox::alert::{AlertRecord, ReceiverId};
use cuebox::store::machine::{self, Command, Receiver, Stored};
use cuebox::store::redis::keys::Keys;
use cuebox::store::redis::RedisStore;
use cuebox::store::{Rules, Snapshot, Status, Store, StoreError, WidgetChange};
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
    Unknown,
}

#[derive(Clone, Debug)]
enum Op {
    Publish {
        r: usize,
        key: Option<u8>,
        again: bool,
    },
    Widgets {
        r: usize,
        node: usize,
        change: WidgetChange,
    },
    Started {
        r: usize,
        which: Which,
    },
    Done {
        r: usize,
        which: Which,
    },
    Check {
        r: usize,
        which: Which,
    },
    Sweep {
        r: usize,
        node: usize,
    },
    /// Moves the clock on; now and then past the presence TTL.
    Wait {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..RECEIVERS.len();
    let node = 0..NODES.len();
    let which = prop_oneof![
        3 => Just(Which::InFlight),
        1 => Just(Which::LastPublished),
        1 => Just(Which::Unknown),
    ];
    let change = prop_oneof![
        3 => Just(WidgetChange::Joined),
        2 => Just(WidgetChange::Left),
        1 => Just(WidgetChange::Withdrawn),
        1 => (0u32..3).prop_map(WidgetChange::Refresh),
    ];
    prop_oneof![
        4 => (r.clone(), proptest::option::of(0u8..3), proptest::bool::weighted(0.15))
            .prop_map(|(r, key, again)| Op::Publish { r, key, again }),
        3 => (r.clone(), node.clone(), change).prop_map(|(r, node, change)| Op::Widgets { r, node, change }),
        2 => (r.clone(), which.clone()).prop_map(|(r, which)| Op::Started { r, which }),
        3 => (r.clone(), which.clone()).prop_map(|(r, which)| Op::Done { r, which }),
        2 => (r.clone(), which).prop_map(|(r, which)| Op::Check { r, which }),
        1 => (r, node).prop_map(|(r, node)| Op::Sweep { r, node }),
        3 => prop_oneof![
            6 => 0u64..400,
            1 => Just(1_500u64),
            1 => Just(31_000u64),
        ].prop_map(|ms| Op::Wait { ms }),
    ]
}

fn rules() -> Rules {
    Rules {
        start_timeout: std::time::Duration::from_millis(300),
        ack_grace: std::time::Duration::from_millis(200),
        max_queue: 4,
        max_widgets: 2,
    }
}

/// The machine's side: every receiver's state, the clock, and what the ops refer to.
struct Model {
    receivers: HashMap<&'static str, Receiver>,
    now: u64,
    last: HashMap<&'static str, AlertRecord>,
    published: usize,
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
            Which::Unknown => "not-an-alert".into(),
        }
    }

    fn apply(&mut self, r: &'static str, command: Command<'_>) -> machine::Outcome {
        let state = self.receivers.entry(r).or_default();
        machine::apply(state, command, self.now, &rules())
    }
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
    redis: Result<T, StoreError>,
) -> Result<(), TestCaseError> {
    match (&machine, &redis) {
        (Ok(m), Ok(r)) if m == r => Ok(()),
        (Err(StoreError::TooManyWidgets(a)), Err(StoreError::TooManyWidgets(b))) if a == b => {
            Ok(())
        }
        _ => Err(TestCaseError::fail(format!(
            "step {step}, {op:?}:\n  machine {machine:?}\n  redis   {redis:?}"
        ))),
    }
}

async fn run(
    redis: &RedisServer,
    nodes: &[Arc<RedisStore>],
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    redis.cmd(&["FLUSHALL"]).await;
    let mut model = Model {
        receivers: HashMap::new(),
        now: T0,
        last: HashMap::new(),
        published: 0,
    };
    for (step, op) in ops.iter().enumerate() {
        for node in nodes {
            node.set_clock_for_tests(Some(model.now));
        }
        match *op {
            Op::Publish { r, key, again } => {
                let name = RECEIVERS[r];
                let alert = match (again, model.last.get(name)) {
                    (true, Some(last)) => last.clone(),
                    _ => {
                        model.published += 1;
                        let body = json!({
                            "receiver": name,
                            "message": format!("alert {}", model.published),
                            "duration_ms": 1000 + 100 * (model.published % 5),
                        });
                        record_with(body)
                    }
                };
                model.last.insert(name, alert.clone());
                let key = key.map(|k| format!("key-{k}"));
                let command = Command::Publish {
                    alert: stored(&alert),
                    idempotency_key: key.as_deref(),
                };
                let m = model.apply(name, command).answered().into_publish();
                let x = nodes[step % 2].publish(&alert, key.as_deref()).await;
                same(step, op, m, x)?;
            }
            Op::Widgets { r, node, change } => {
                let name = RECEIVERS[r];
                let command = Command::Widgets {
                    node: NODES[node],
                    change,
                };
                let m = model.apply(name, command).answered().into_snapshot();
                let x = nodes[node].widgets(&receiver(name), change).await;
                same(step, op, m, x)?;
            }
            Op::Started { r, which } | Op::Done { r, which } | Op::Check { r, which } => {
                let name = RECEIVERS[r];
                let id = model.id(name, which);
                let (command, store) = (
                    match op {
                        Op::Started { .. } => Command::Started { id: &id },
                        Op::Done { .. } => Command::Done { id: &id },
                        _ => Command::Check { id: &id },
                    },
                    &nodes[step % 2],
                );
                let m = model
                    .apply(name, command.clone())
                    .answered()
                    .into_snapshot();
                let rid = receiver(name);
                let x: Result<Snapshot, StoreError> = match command {
                    Command::Started { .. } => store.started(&rid, &id).await,
                    Command::Done { .. } => store.done(&rid, &id).await,
                    _ => store.check(&rid, &id).await,
                };
                same(step, op, m, x)?;
            }
            Op::Sweep { r, node } => {
                let name = RECEIVERS[r];
                let m = model
                    .apply(name, Command::Sweep { node: NODES[node] })
                    .answered()
                    .into_snapshot();
                let command = Command::Sweep { node: NODES[node] };
                let x = match nodes[(node + 1) % 2].apply(&receiver(name), command).await {
                    Ok(answered) => answered.into_snapshot(),
                    Err(e) => Err(e),
                };
                same(step, op, m, x)?;
            }
            Op::Wait { ms } => model.now += ms,
        }
    }
    // Each receiver's final state: its status, and its queue in order.
    for node in nodes {
        node.set_clock_for_tests(Some(model.now));
    }
    let keys = Keys::new("cuebox").unwrap();
    for name in RECEIVERS {
        let m = model.receivers.get(name).cloned().unwrap_or_default();
        let status = Status {
            queued: m.queued(),
            in_flight: m.flight.as_ref().map(|f| f.alert.json.clone()),
            widgets: u64::from(m.live_widgets(model.now)),
        };
        let x = nodes[0].status(&receiver(name)).await;
        same(ops.len(), &Op::Wait { ms: 0 }, Ok(status), x)?;
        let mut queue_key = String::new();
        keys.receiver(&ReceiverId::parse(name).unwrap(), None, |k| {
            if k.ends_with(":queue") {
                queue_key = k.to_owned();
            }
        });
        let x = redis.cmd(&["LRANGE", &queue_key, "0", "-1"]).await;
        let x: Vec<String> = redis::from_redis_value(x).unwrap();
        // Each entry as the library keeps it, times sent included.
        let m: Vec<String> = m
            .queue
            .iter()
            .map(|q| {
                let a = &q.alert;
                format!("{} {} {} {}", a.id, a.duration_ms, q.sent, a.json)
            })
            .collect();
        if m != x {
            return Err(TestCaseError::fail(format!(
                "{name}'s queue: machine {m:?}, redis {x:?}"
            )));
        }
    }
    Ok(())
}

#[test]
fn the_redis_script_keeps_the_rules_of_the_machine() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (redis, nodes) = rt.block_on(async {
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
        (redis, nodes)
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        rt.block_on(run(&redis, &nodes, ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

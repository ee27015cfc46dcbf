//! Micro-benchmarks of the paths every alert takes inside a node, without HTTP or WebSockets:
//!
//! - `alert`: parsing and checking a publish body, giving it an id and serializing it once
//!   (`into_record`), and wrapping that JSON in the frame each widget gets.
//! - `auth`: making and checking widget tokens, and finding a presented publish key.
//! - `store`: one alert's whole cycle (publish, started, done) through the `Store` trait, on the
//!   embedded store and on the Redis store, and a lone `started`, the cheapest Redis round trip.
//!
//! Run them with `cargo bench -p cuebox-bench --bench hot_paths`, or some of them with a filter:
//! `cargo bench -p cuebox-bench --bench hot_paths -- store/memory`. `cargo test -p cuebox-bench
//! --benches` runs each once, as a test. The Redis benchmarks start a `redis-server` of their
//! own on a free loopback port (it must be on `PATH`) and stop it when they end; it is started
//! only when a filter selects one of them.

use std::cell::OnceCell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use cuebox::alert::{AlertRecord, NewAlert, ReceiverId};
use cuebox::auth::{PublishKeys, ReceiverTokens};
use cuebox::design::Put;
use cuebox::hub::{alert_frame, LoadedDesigns};
use cuebox::metrics::Metrics;
use cuebox::store::embedded::EmbeddedStore;
use cuebox::store::redis::connection::Target;
use cuebox::store::redis::keys::Keys;
use cuebox::store::redis::RedisStore;
use cuebox::store::{Notice, Publish, Rules, Showing, Store, WidgetChange};
use cuebox_bench::node::Redis;
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const SECRET: &str = "a-widget-token-secret-of-the-usual-64-hex-characters-0123456789a";
const PUBLISH_KEYS: [&str; 3] = [
    "pk_6f1c2a9e0b7d4e5f8a3c1b2d9e0f7a6b",
    "pk_0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a",
    "pk_a1b2c3d4e5f60718293a4b5c6d7e8f90",
];

/// A publish body as a donation platform sends it, every field used.
fn full_body(receiver: &str) -> String {
    json!({
        "receiver": receiver,
        "kind": "donation",
        "from": "GenerousViewer42",
        "amount": { "value": "25.00", "currency": "BRL" },
        "message": "Thanks for the amazing stream tonight! Here is a little something for the new mic. Keep it up!",
        "media": {
            "image": "https://cdn.example.com/alerts/donation-tier-2.gif",
            "sound": "https://cdn.example.com/alerts/coins.mp3"
        },
        "duration_ms": 8000,
        "data": { "tier": 2 }
    })
    .to_string()
}

fn record_for(receiver: &str) -> AlertRecord {
    NewAlert::parse(full_body(receiver).as_bytes(), None)
        .expect("the bench's publish body is valid")
        .into_record()
}

fn receiver(id: &str) -> ReceiverId {
    ReceiverId::parse(id).expect("the bench's receiver ids are valid")
}

fn alert(c: &mut Criterion) {
    let full = full_body("bench_streamer");
    let minimal = r#"{"receiver":"alice"}"#;
    let parsed = NewAlert::parse(full.as_bytes(), None).expect("the full body is valid");
    let record = parsed.clone().into_record();

    let mut group = c.benchmark_group("alert");
    group.bench_function("parse/full", |b| {
        b.iter(|| NewAlert::parse(black_box(full.as_bytes()), None).expect("valid body"))
    });
    group.bench_function("parse/minimal", |b| {
        b.iter(|| NewAlert::parse(black_box(minimal.as_bytes()), None).expect("valid body"))
    });
    // `into_record` consumes the alert: each iteration gets a clone made outside the timing.
    group.bench_function("into_record", |b| {
        b.iter_batched(
            || parsed.clone(),
            NewAlert::into_record,
            BatchSize::SmallInput,
        )
    });
    // With the built-in designs (a look per kind, made once), and with a design of
    // variations, which each send resolves.
    group.bench_function("alert_frame", |b| {
        b.iter(|| alert_frame(black_box(&record.json), 1, None))
    });
    let varied = Put::parse(
        br#"{"designs":{"default":{"variations":[
            {"when":{"min_amount":{"value":"100","currency":"BRL"}},"set":{"layout":"text_only"}},
            {"when":{"random":{"weight":1}}}]}}}"#,
    )
    .expect("valid designs");
    let varied = LoadedDesigns::new(1, varied.designs);
    group.bench_function("alert_frame/variations", |b| {
        b.iter(|| alert_frame(black_box(&record.json), 1, Some(&varied)))
    });
    group.finish();
}

fn auth(c: &mut Criterion) {
    let tokens = ReceiverTokens::new(SECRET);
    let streamer = receiver("bench_streamer");
    let good = tokens.token(&streamer);
    // Well formed and of the right length, so the whole MAC is computed before it is refused.
    let forged = ReceiverTokens::new("not-the-secret").token(&streamer);
    // A check that measures a refusal as an acceptance (or the reverse) measures nothing.
    assert!(tokens.verify(&streamer, &good), "a good token is accepted");
    assert!(
        !tokens.verify(&streamer, &forged),
        "a forged token is refused"
    );
    let keys = PublishKeys::new(&PUBLISH_KEYS);
    let unknown = "pk_ffffffffffffffffffffffffffffffff";
    assert_eq!(keys.find(PUBLISH_KEYS[2]), Some(2));
    assert_eq!(keys.find(unknown), None);

    let mut group = c.benchmark_group("auth");
    group.bench_function("widget_tokens_new", |b| {
        b.iter(|| ReceiverTokens::new(black_box(SECRET)))
    });
    group.bench_function("token", |b| b.iter(|| tokens.token(black_box(&streamer))));
    group.bench_function("verify/good", |b| {
        b.iter(|| tokens.verify(black_box(&streamer), black_box(&good)))
    });
    group.bench_function("verify/forged", |b| {
        b.iter(|| tokens.verify(black_box(&streamer), black_box(&forged)))
    });
    // Every key is tried whichever matches, so these two should take the same time.
    group.bench_function("publish_keys_find/known", |b| {
        b.iter(|| keys.find(black_box(PUBLISH_KEYS[2])))
    });
    group.bench_function("publish_keys_find/unknown", |b| {
        b.iter(|| keys.find(black_box(unknown)))
    });
    group.finish();
}

/// The rules a node runs with by default. No deadline can pass within a benchmark's few seconds,
/// and none would matter anyway: only `check` acts on deadlines, and nothing here calls it.
fn rules() -> Rules {
    Rules {
        start_timeout: Duration::from_millis(5000),
        ack_grace: Duration::from_millis(15000),
        max_queue: 10_000,
        max_widgets: 16,
        history: 500,
    }
}

/// One alert from publish to done, as a node drives it for a receiver with one widget. Each
/// step's answer is checked, so that a store which stopped dispatching (a lapsed widget report,
/// say) fails the bench rather than timing a cheaper path.
async fn alert_cycle(store: &dyn Store, record: &AlertRecord) {
    let (attempt, seq) = publish_and_dispatch(store, record).await;
    store
        .started(&record.receiver, &showing(record, attempt, seq))
        .await
        .expect("the store takes `started`");
    let after = store
        .done(&record.receiver, &record.id)
        .await
        .expect("the store takes `done`");
    assert!(
        after.flight.is_none(),
        "`done` should leave the receiver free: {after:?}"
    );
}

/// Publishes an alert to a free receiver that has a widget, which must send it at once.
/// Publishes an alert that goes out at once; answers what a node then knows of it, to mark it
/// started with.
async fn publish_and_dispatch(store: &dyn Store, record: &AlertRecord) -> (u32, u64) {
    match store.publish(record, None).await {
        Ok(Publish::Accepted { snapshot, .. }) => match &snapshot.flight {
            Some(f) if *f.id == *record.id => (f.attempt, snapshot.seq),
            other => panic!("the alert should go out at once to the receiver's widget: {other:?}"),
        },
        other => panic!("the alert should go out at once to the receiver's widget: {other:?}"),
    }
}

/// A widget's `started`, as a node passes it on.
fn showing(record: &AlertRecord, attempt: u32, seq: u64) -> Showing<'_> {
    Showing {
        id: &record.id,
        attempt,
        duration: Duration::from_millis(record.duration_ms.into()),
        seq,
        docks: false,
    }
}

/// Times `iters` alert cycles on a receiver that has a widget.
fn time_cycles(rt: &Runtime, store: &dyn Store, record: &AlertRecord, iters: u64) -> Duration {
    rt.block_on(async {
        // Outside the timing: keeps the widget report live however long criterion samples
        // (the Redis store forgets a report after PRESENCE_TTL).
        store
            .widgets(&record.receiver, WidgetChange::Refresh(1))
            .await
            .expect("the store takes a widget refresh");
        let start = Instant::now();
        for _ in 0..iters {
            alert_cycle(store, record).await;
        }
        start.elapsed()
    })
}

/// A receiver with one widget and the record of an alert for it. The record is made once and
/// published again each cycle: `done` removes it from the store, and making records is
/// measured on its own under `alert/into_record`.
fn receiver_with_widget(rt: &Runtime, store: &dyn Store, id: &str) -> AlertRecord {
    let record = record_for(id);
    rt.block_on(store.widgets(&record.receiver, WidgetChange::Joined))
        .expect("the store counts a widget");
    record
}

fn store(c: &mut Criterion) {
    // Multi-threaded like the node's own runtime, so the Redis connection's driver task runs
    // beside the caller as it does in production.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Criterion calls each benchmark's closure once per sample, so setup lives outside them.
    let memory = EmbeddedStore::in_memory(rules());
    let memory_record = receiver_with_widget(&rt, &memory, "bench_memory_cycle");
    // Made on first use, so filters that select no Redis benchmark need no redis-server.
    let redis: OnceCell<RedisBench> = OnceCell::new();

    let mut group = c.benchmark_group("store");
    group.bench_function("memory/cycle", |b| {
        b.iter_custom(|iters| time_cycles(&rt, &memory, &memory_record, iters))
    });
    group.bench_function("redis/cycle", |b| {
        let redis = redis.get_or_init(|| RedisBench::start(&rt));
        b.iter_custom(|iters| time_cycles(&rt, &redis.store, &redis.cycle, iters))
    });
    group.bench_function("redis/started", |b| {
        let redis = redis.get_or_init(|| RedisBench::start(&rt));
        let (store, (record, attempt, seq)) = (&redis.store, &redis.started);
        let showing = showing(record, *attempt, *seq);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let snapshot = store
                        .started(&record.receiver, &showing)
                        .await
                        .expect("the store takes `started`");
                    black_box(snapshot);
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// A Redis store on a redis-server of the bench's own, and a receiver for each benchmark.
/// Fields drop in order: the store goes before the server it talks to is killed.
struct RedisBench {
    store: RedisStore,
    /// For `redis/cycle`: a receiver with a widget, free between cycles.
    cycle: AlertRecord,
    /// For `redis/started`: an alert in flight and already started, with its attempt and the
    /// `seq` it went out at. A `started` for it changes nothing, so each call is the same round
    /// trip: one `SET NX` that finds the mark, plus loopback. Every widget after the first of a
    /// receiver sends one of these for each alert.
    started: (AlertRecord, u32, u64),
    /// Held so the store's notice sender stays open for as long as the store.
    _notices: mpsc::UnboundedReceiver<Notice>,
    _server: Redis,
}

impl RedisBench {
    fn start(rt: &Runtime) -> Self {
        let server = rt.block_on(Redis::spawn()).unwrap_or_else(|e| {
            panic!(
                "the store/redis benchmarks need a redis-server of their own ({e}): install it \
                 (apt-get install redis-server), or select the others with a filter such as \
                 `-- alert`"
            )
        });
        let (tx, notices) = mpsc::unbounded_channel();
        let target = Target::new(&server.url, false);
        let keys = Keys::new("cuebox").expect("`cuebox` is a valid key prefix");
        let store = rt
            .block_on(RedisStore::connect(
                &target,
                keys,
                rules(),
                "bench-node",
                tx,
                Arc::new(Metrics::default()),
            ))
            .expect("the Redis store connects to the bench's own redis-server");
        let cycle = receiver_with_widget(rt, &store, "bench_redis_cycle");
        let started = receiver_with_widget(rt, &store, "bench_redis_started");
        let started = rt.block_on(async {
            let (attempt, seq) = publish_and_dispatch(&store, &started).await;
            store
                .started(&started.receiver, &showing(&started, attempt, seq))
                .await
                .expect("the store takes `started`");
            (started, attempt, seq)
        });
        Self {
            store,
            cycle,
            started,
            _notices: notices,
            _server: server,
        }
    }
}

criterion_group! {
    name = hot_paths;
    // Short windows: the figures settle well within them, and the whole run takes a few
    // minutes on a small machine.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = alert, auth, store
}
criterion_main!(hot_paths);

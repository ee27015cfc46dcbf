//! `ceiling`: what Redis itself allows on this machine, measured from this process in the same
//! run, so cuebox's figures can be read as a ratio of it. Absolute rates drift on a shared
//! machine; ratios measured side by side hold.
//!
//! The equivalent of an alert cycle is the least an atomic design must ask of Redis per alert
//! shown, in as many script calls as cuebox makes in a drain: one script takes the head of a
//! receiver's queue and marks it in flight (cuebox's `started` and dispatch), one clears it
//! (`done`). Receivers run at once over one multiplexed connection, as cuebox's do.

use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::Script;
use serde_json::json;

use crate::load::receivers;
use crate::node::Redis;
use crate::report::{num, Table};
use crate::Error;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub sizes: crate::scenarios::drain::Sizes,
}

const TAKE: &str = "local id = redis.call('LPOP', KEYS[1]) \
    if id then redis.call('HSET', KEYS[2], 'id', id) end return id";
const FINISH: &str = "redis.call('HDEL', KEYS[1], 'id') return 1";

/// Each round drains fresh queues; the median is the figure.
const ROUNDS: usize = 5;

pub struct Ceiling {
    pub cycles_per_s: f64,
}

pub async fn run(redis: &Redis, args: &Args) -> Result<(Table, Ceiling), Error> {
    let client = redis::Client::open(redis.url.as_str())?;
    let con = client.get_multiplexed_async_connection().await?;
    let (take, finish) = (Script::new(TAKE), Script::new(FINISH));
    // Loaded before the clock starts, as cuebox's script is by its first call.
    take.prepare_invoke().load_async(&mut con.clone()).await?;
    finish.prepare_invoke().load_async(&mut con.clone()).await?;

    let mut rates = Vec::new();
    for round in 1..=ROUNDS {
        let names = receivers(&format!("ceiling{round}"), args.sizes.receivers);
        rates.push(once(&con, &take, &finish, &names, args.sizes.alerts).await?);
    }
    rates.sort_by(f64::total_cmp);
    let cycles_per_s = rates[rates.len() / 2];
    let mut table = Table::new(
        "ceiling",
        &[
            "receivers",
            "alerts_each",
            "script_calls_per_s",
            "cycles_per_s",
        ],
    );
    table.row(vec![
        json!(args.sizes.receivers),
        json!(args.sizes.alerts),
        num(cycles_per_s * 2.0, 0),
        num(cycles_per_s, 0),
    ]);
    table.notes.push(format!(
        "median of {} rounds (min {:.0}, max {:.0} cycles/s)",
        rates.len(),
        rates[0],
        rates[rates.len() - 1]
    ));
    table.notes.push(
        "a cycle here: EVALSHA (LPOP the queue's head, HSET it in flight) then EVALSHA (HDEL it), \
         per receiver in turn, all receivers at once over one multiplexed connection"
            .into(),
    );
    Ok((table, Ceiling { cycles_per_s }))
}

/// Drains fresh queues once; answers cycles per second.
async fn once(
    con: &MultiplexedConnection,
    take: &Script,
    finish: &Script,
    names: &[String],
    alerts: usize,
) -> Result<f64, Error> {
    let keys: Vec<(String, String)> = names
        .iter()
        .map(|r| {
            (
                format!("bench:{{{r}}}:queue"),
                format!("bench:{{{r}}}:state"),
            )
        })
        .collect();
    let ids: Vec<String> = (0..alerts).map(|i| format!("alert-{i}")).collect();
    for (queue, _) in &keys {
        let () = redis::cmd("RPUSH")
            .arg(queue)
            .arg(&ids)
            .query_async(&mut con.clone())
            .await?;
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (queue, state) in keys.clone() {
        let (mut con, take, finish) = (con.clone(), take.clone(), finish.clone());
        tasks.push(tokio::spawn(async move {
            let mut cycles = 0u64;
            // Bounded by the queue: each call takes one of its `alerts` items.
            loop {
                let id: Option<String> =
                    take.key(&queue).key(&state).invoke_async(&mut con).await?;
                if id.is_none() {
                    break;
                }
                let _: i64 = finish.key(&state).invoke_async(&mut con).await?;
                cycles += 1;
            }
            Ok::<_, redis::RedisError>(cycles)
        }));
    }
    let mut cycles = 0;
    for t in tasks {
        cycles += t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut cleanup = redis::cmd("DEL");
    for (queue, state) in &keys {
        cleanup.arg(queue).arg(state);
    }
    let _: i64 = cleanup.query_async(&mut con.clone()).await?;
    Ok(cycles as f64 / secs.max(1e-9))
}

//! `broadcast`: N subscribers of one topic, every one on this machine; messages published to it
//! as fast as the node takes them, then at half that rate. Deliveries per second, the latency
//! from a publish to its last subscriber, the node's CPU per 1,000 deliveries, and its RSS per
//! idle subscriber.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{Publisher, Subscriber};
use crate::load::Clock;
use crate::node::{Node, Usage};
use crate::report::{num, Latencies, Table};
use crate::Error;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Subscriber counts to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub subscribers: Vec<usize>,
    /// Messages published in each phase.
    #[arg(long, default_value_t = 200)]
    pub messages: u64,
    /// Publishers posting at once in the full-rate phase.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
}

/// Subscribers connecting at once.
const CONNECTING: usize = 200;
/// Time for the node to settle before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);
/// The most one phase may take to deliver what was published.
const DELIVERY_LIMIT: Duration = Duration::from_secs(120);

/// Per message: how many subscribers got it, and when the last did (µs on the clock).
struct Receipts {
    got: Vec<AtomicU32>,
    last_us: Vec<AtomicU64>,
}

impl Receipts {
    fn new(messages: u64) -> Self {
        Self {
            got: (0..messages).map(|_| AtomicU32::new(0)).collect(),
            last_us: (0..messages).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

pub async fn run(node: &Node, clock: Clock, args: &Args) -> Result<Table, Error> {
    let token = node
        .tokens
        .topic_token(&[cuebox::topics::Pattern::parse("bench:*").map_err(|e| e.message)?]);
    let mut table = Table::new(
        "broadcast",
        &[
            "store",
            "subscribers",
            "kib_per_subscriber",
            "deliveries_per_s",
            "full_p50_ms",
            "full_p99_ms",
            "half_rate_msgs_per_s",
            "half_p50_ms",
            "half_p99_ms",
            "cuebox_cpu_s_per_1k",
            "half_cuebox_cpu_s_per_1k",
            "half_harness_cpu_s_per_1k",
        ],
    );
    for &n in &args.subscribers {
        let topic = format!("bench:n{n}");
        let base = node.usage();
        // Both phases' receipts, one after the other, by message number. Each subscriber is
        // read from the moment it connects, so it answers the node's pings all along.
        let receipts = Arc::new(Receipts::new(2 * args.messages));
        let total = 2 * args.messages;
        let mut readers = Vec::with_capacity(n);
        while readers.len() < n {
            let batch = CONNECTING.min(n - readers.len());
            let connecting = (0..batch).map(|_| Subscriber::connect(node.addr, &topic, &token));
            for s in futures_util::future::join_all(connecting).await {
                let (mut s, receipts) = (s?, receipts.clone());
                readers.push(tokio::spawn(async move {
                    let mut seen = 0;
                    while seen < total {
                        match s.next_n().await {
                            Ok(Some(m)) if m < total => {
                                receipts.got[m as usize].fetch_add(1, Ordering::Relaxed);
                                receipts.last_us[m as usize]
                                    .fetch_max(clock.us(), Ordering::Relaxed);
                                seen += 1;
                            }
                            Ok(Some(_)) => {}
                            _ => break,
                        }
                    }
                    s.close().await;
                }));
            }
        }
        tokio::time::sleep(SETTLE).await;
        let idle = node.usage();
        let kib = match (base, idle) {
            (Some(b), Some(i)) => num(i.rss_kib.saturating_sub(b.rss_kib) as f64 / n as f64, 2),
            _ => serde_json::Value::Null,
        };

        // Full rate: `publishers` post back to back.
        let before = node.usage();
        let started = Instant::now();
        let sent_us = Arc::new(
            (0..args.messages)
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>(),
        );
        let next = Arc::new(AtomicU64::new(0));
        let mut posting = Vec::new();
        for _ in 0..args.publishers.max(1) {
            let (sent_us, next) = (sent_us.clone(), next.clone());
            let mut publisher = Publisher::connect(node.addr, &node.publish_key).await?;
            let (topic, total) = (topic.clone(), args.messages);
            posting.push(tokio::spawn(async move {
                loop {
                    let m = next.fetch_add(1, Ordering::Relaxed);
                    if m >= total {
                        return Ok::<(), Error>(());
                    }
                    sent_us[m as usize].store(clock.us(), Ordering::Relaxed);
                    let body =
                        json!({"topics": [topic], "event": "b", "data": {"n": m}}).to_string();
                    let answer = publisher.post("/broadcast", body).await?;
                    if answer.status != 202 {
                        return Err(format!("broadcast answered {}", answer.status).into());
                    }
                }
            }));
        }
        for p in posting {
            p.await.map_err(|e| e.to_string())??;
        }
        wait_for(&receipts, 0..args.messages, n as u32).await?;
        let took = started.elapsed();
        let after = node.usage();
        let deliveries = (args.messages * n as u64) as f64;
        let rate = deliveries / took.as_secs_f64();
        let mut full = Latencies::default();
        for m in 0..args.messages as usize {
            let last = receipts.last_us[m].load(Ordering::Relaxed);
            full.push(last.saturating_sub(sent_us[m].load(Ordering::Relaxed)));
        }
        let cpu = match (before, after) {
            (Some(b), Some(a)) => num(a.cpu_since(&b) / deliveries * 1000.0, 4),
            _ => serde_json::Value::Null,
        };

        // Half rate: one publisher, paced.
        let half = (rate / n as f64 / 2.0).max(1.0);
        let every = Duration::from_secs_f64(1.0 / half);
        let mut publisher = Publisher::connect(node.addr, &node.publish_key).await?;
        let mut paced = Latencies::default();
        let mut sent_half = Vec::new();
        let mut tick = tokio::time::interval(every);
        let (half_before, harness_before) = (node.usage(), Usage::of(std::process::id()));
        for m in args.messages..2 * args.messages {
            tick.tick().await;
            sent_half.push(clock.us());
            let body = json!({"topics": [&topic], "event": "b", "data": {"n": m}}).to_string();
            publisher.post("/broadcast", body).await?;
        }
        wait_for(&receipts, args.messages..2 * args.messages, n as u32).await?;
        let (half_after, harness_after) = (node.usage(), Usage::of(std::process::id()));
        let per_1k = |before: Option<Usage>, after: Option<Usage>| match (before, after) {
            (Some(b), Some(a)) => num(a.cpu_since(&b) / deliveries * 1000.0, 4),
            _ => serde_json::Value::Null,
        };
        for (i, m) in (args.messages..2 * args.messages).enumerate() {
            let last = receipts.last_us[m as usize].load(Ordering::Relaxed);
            paced.push(last.saturating_sub(sent_half[i]));
        }
        for r in readers {
            let _ = r.await;
        }
        table.row(vec![
            json!(node.store),
            json!(n),
            kib,
            num(rate, 0),
            full.ms(50.0),
            full.ms(99.0),
            num(half, 1),
            paced.ms(50.0),
            paced.ms(99.0),
            cpu,
            per_1k(half_before, half_after),
            per_1k(harness_before, harness_after),
        ]);
    }
    table.notes.push(
        "one topic, every subscriber on this machine over loopback; deliveries_per_s: messages × \
         subscribers over the time from the first publish to the last delivery, --publishers \
         posting back to back; latency: from a publish to its last subscriber; half: one \
         publisher paced at half the messages per second the full phase delivered; \
         kib_per_subscriber: RSS growth / subscribers, connected and idle"
            .into(),
    );
    Ok(table)
}

/// Waits until every subscriber got every message of `range`.
async fn wait_for(
    receipts: &Receipts,
    range: std::ops::Range<u64>,
    subscribers: u32,
) -> Result<(), Error> {
    let deadline = Instant::now() + DELIVERY_LIMIT;
    loop {
        let done = range
            .clone()
            .all(|m| receipts.got[m as usize].load(Ordering::Relaxed) >= subscribers);
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            let short: u64 = range
                .clone()
                .map(|m| {
                    u64::from(
                        subscribers
                            - receipts.got[m as usize]
                                .load(Ordering::Relaxed)
                                .min(subscribers),
                    )
                })
                .sum();
            let first = range
                .clone()
                .find(|&m| receipts.got[m as usize].load(Ordering::Relaxed) < subscribers)
                .unwrap_or(0);
            let got = receipts.got[first as usize].load(Ordering::Relaxed);
            return Err(format!(
                "{short} deliveries never came (message {first} reached {got} of {subscribers})"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

//! `publish`: HTTP publish throughput with no widget connected, so every alert is queued.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{alert_body, Publisher};
use crate::load::receivers;
use crate::node::{cpu_per_1k, Node};
use crate::report::{num, Latencies, Table};
use crate::Error;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Receivers the alerts are spread over.
    #[arg(long, default_value_t = 1000)]
    pub receivers: usize,
    /// Publisher connections, each publishing as fast as it goes.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

pub async fn run(node: &Node, args: &Args) -> Result<Table, Error> {
    let names = Arc::new(receivers("publish", args.receivers.max(1)));
    let stop = Arc::new(AtomicBool::new(false));
    let before = node.usage();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections.max(1) {
        let mut publisher = Publisher::connect(node.addr, &node.publish_key).await?;
        let (names, stop) = (names.clone(), stop.clone());
        let step = args.connections.max(1);
        tasks.push(tokio::spawn(async move {
            let mut latency = Latencies::default();
            let mut refused = 0u64;
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let body = alert_body(&names[i % names.len()], 0);
                i += step;
                let sent = Instant::now();
                let answer = publisher.publish(body).await?;
                if answer.status == 202 {
                    latency.push(sent.elapsed().as_micros() as u64);
                } else {
                    refused += 1;
                }
            }
            Ok::<_, Error>((latency, refused))
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latency = Latencies::default();
    let mut refused = 0;
    for t in tasks {
        let (l, r) = t.await??;
        latency.extend(l);
        refused += r;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = node.usage();
    let accepted = latency.count() as f64;
    let mut table = Table::new(
        "publish",
        &[
            "store",
            "receivers",
            "connections",
            "publishes_per_s",
            "p50_ms",
            "p99_ms",
            "cuebox_cpu_s_per_1k",
            "refused",
        ],
    );
    let cpu = cpu_per_1k(before, after, accepted);
    table.row(vec![
        json!(node.store),
        json!(args.receivers),
        json!(args.connections),
        num(accepted / secs, 0),
        latency.ms(50.0),
        latency.ms(99.0),
        cpu,
        json!(refused),
    ]);
    Ok(table)
}

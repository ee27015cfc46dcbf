//! `growth`: cost as one receiver's queue grows from 1 to 100,000 waiting alerts, and as
//! receivers grow from 10 to 10,000. Flat is the aim: no step should cost more than another.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{alert_body, Publisher};
use crate::load::{connect_widgets, cycles, flood, receivers, Clock, CycleRun};
use crate::node::{cpu_per_1k, Node};
use crate::report::{num, Latencies, Table};
use crate::scenarios::cycles::{row, COLUMNS};
use crate::Error;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The deepest queue; steps go 1, 10, 100, … up to it.
    #[arg(long, default_value_t = 100_000)]
    pub max_depth: usize,
    /// Alerts published, then drained, at each depth.
    #[arg(long, default_value_t = 3000)]
    pub probe: usize,
    /// The most receivers; steps go 10, 100, … up to it.
    #[arg(long, default_value_t = 10_000)]
    pub max_receivers: usize,
    /// The rate latency is measured at as receivers grow.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Publisher connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
}

/// Longest a probe's drain may take.
const LIMIT: Duration = Duration::from_secs(60);

fn steps(from: usize, to: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut n = from;
    while n < to {
        v.push(n);
        n *= 10;
    }
    v.push(to);
    v
}

pub async fn run(node: &Node, clock: Clock, args: &Args) -> Result<Vec<Table>, Error> {
    Ok(vec![
        queue_depth(node, args).await?,
        receiver_count(node, clock, args).await?,
    ])
}

async fn queue_depth(node: &Node, args: &Args) -> Result<Table, Error> {
    let name = receivers("growth-queue", 1).remove(0);
    let mut table = Table::new(
        "growth: queue depth",
        &[
            "store",
            "queued",
            "publish_p50_ms",
            "publish_p99_ms",
            "drain_cycles_per_s",
            "cuebox_cpu_s_per_1k",
        ],
    );
    let mut queued = 0;
    for depth in steps(1, args.max_depth.max(1)) {
        flood(node, &name, depth - queued, args.connections).await?;
        queued = depth;

        // Publish latency with `depth` already waiting.
        let mut publisher = Publisher::connect(node.addr, &node.publish_key).await?;
        let mut latency = Latencies::default();
        for _ in 0..args.probe {
            let sent = Instant::now();
            let answer = publisher.publish(alert_body(&name, 0)).await?;
            if answer.status != 202 {
                return Err(format!("publish answered {}", answer.status).into());
            }
            latency.push(sent.elapsed().as_micros() as u64);
        }

        // Drain as many as were added, from the head of a queue `depth` deep.
        let before = node.usage();
        let start = Instant::now();
        let mut widget = connect_widgets(node, std::slice::from_ref(&name))
            .await?
            .remove(0);
        for _ in 0..args.probe {
            let alert = tokio::time::timeout(LIMIT, widget.next_alert())
                .await
                .map_err(|_| "the probe's widget waited too long")??
                .ok_or("the node closed the probe's widget")?;
            widget.show(&alert.id).await?;
        }
        let secs = start.elapsed().as_secs_f64();
        let after = node.usage();
        // The alert sent after the last done goes back to the head of the queue.
        widget.close().await;
        let cpu = cpu_per_1k(before, after, args.probe as f64);
        table.row(vec![
            json!(node.store),
            json!(depth),
            latency.ms(50.0),
            latency.ms(99.0),
            num(args.probe as f64 / secs, 0),
            cpu,
        ]);
    }
    Ok(table)
}

async fn receiver_count(node: &Node, clock: Clock, args: &Args) -> Result<Table, Error> {
    let names = receivers("growth-receivers", args.max_receivers.max(1));
    let mut table = Table::new("growth: receivers", COLUMNS);
    let mut widgets = Vec::new();
    for count in steps(10.min(args.max_receivers), args.max_receivers.max(1)) {
        widgets.extend(connect_widgets(node, &names[widgets.len()..count]).await?);
        for rate in [Some(args.rate), None] {
            let plan = CycleRun {
                rate,
                connections: args.connections,
                warmup: Duration::from_secs(1),
                window: Duration::from_secs_f64(args.seconds),
            };
            let (mut c, back) = cycles(node, clock, &names[..count], widgets, &plan).await?;
            widgets = back;
            let load = rate.map_or("max".into(), |r| format!("{r:.0}/s"));
            row(&mut table, node, count, load, &mut c);
        }
    }
    for w in widgets {
        w.close().await;
    }
    Ok(table)
}

//! `drain`: R receivers with N alerts queued each; one widget per receiver shows each alert at
//! once and so drains its queue. Alert cycles per second, and a check that every alert arrived
//! exactly once and in order. A drain of the default size takes about a second, so it is run a
//! few times and the median is the figure.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::load::{connect_widgets, fill, receivers};
use crate::node::Node;
use crate::report::{num, Table};
use crate::Error;

/// The drain's sizes, which the ceiling shares so that the two are measured alike.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct Sizes {
    /// Receivers, each with one widget.
    #[arg(long, default_value_t = 50)]
    pub receivers: usize,
    /// Alerts queued for each receiver before its widget connects.
    #[arg(long, default_value_t = 200)]
    pub alerts: usize,
}

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub sizes: Sizes,
    /// Publisher connections that fill the queues.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Drains, each of fresh receivers; the median is the figure.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// How long one widget may take to drain its queue before the run fails.
const LIMIT: Duration = Duration::from_secs(120);

/// The measured drain, for the ceiling's ratio.
pub struct Drained {
    pub cycles_per_s: f64,
}

pub async fn run(node: &Node, args: &Args) -> Result<(Table, Drained), Error> {
    let mut table = Table::new(
        "drain",
        &[
            "store",
            "round",
            "receivers",
            "alerts_each",
            "seconds",
            "cycles_per_s",
            "cuebox_cpu_s_per_1k",
            "redis_cpu_s_per_1k",
            "harness_cpu_s_per_1k",
            "lost",
            "shown_twice",
            "receivers_out_of_order",
        ],
    );
    let mut rates = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let (row, rate) = drain_once(node, args, round).await?;
        table.row(row);
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    table.notes.push(format!(
        "median {:.0} cycles/s over {} rounds (min {:.0}, max {:.0})",
        median,
        rates.len(),
        rates[0],
        rates[rates.len() - 1]
    ));
    table.notes.push(
        "seconds: from the first widget's connect to the last widget's last done; CPU from /proc at 10 ms resolution"
            .into(),
    );
    Ok((
        table,
        Drained {
            cycles_per_s: median,
        },
    ))
}

async fn drain_once(node: &Node, args: &Args, round: usize) -> Result<(Vec<Value>, f64), Error> {
    let names = receivers(&format!("drain{round}"), args.sizes.receivers);
    let queued = fill(node, &names, args.sizes.alerts, args.connections).await?;

    let before = node.readings();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for widget in connect_widgets(node, &names).await? {
        let expected = args.sizes.alerts;
        tasks.push(tokio::spawn(async move {
            let mut widget = widget;
            let mut ids = Vec::with_capacity(expected);
            while ids.len() < expected {
                let alert = tokio::time::timeout(LIMIT, widget.next_alert())
                    .await
                    .map_err(|_| "a widget waited too long for an alert")??
                    .ok_or("the node closed a widget")?;
                widget.show(&alert.id).await?;
                ids.push(alert.id);
            }
            let finished = Instant::now();
            widget.close().await;
            Ok::<_, Error>((ids, finished))
        }));
    }
    let mut shown = Vec::new();
    let mut end = start;
    for t in tasks {
        let (ids, finished) = t.await??;
        end = end.max(finished);
        shown.push(ids);
    }
    let after = node.readings();
    let secs = end.duration_since(start).as_secs_f64();

    // Exactly once, in order: each widget saw its receiver's ids as they were queued.
    let (mut lost, mut twice, mut out_of_order) = (0usize, 0usize, 0usize);
    for (name, ids) in names.iter().zip(&shown) {
        let expected = &queued[name];
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        twice += ids.len() - unique.len();
        lost += expected.iter().filter(|id| !unique.contains(id)).count();
        if ids != expected {
            out_of_order += 1;
        }
    }
    if lost + twice + out_of_order > 0 {
        return Err(format!(
            "drain broke a rule: {lost} lost, {twice} shown twice, {out_of_order} receivers out of order"
        )
        .into());
    }
    let cycles = (args.sizes.receivers * args.sizes.alerts) as f64;
    let rate = cycles / secs.max(1e-9);
    let [node_cpu, redis_cpu, harness_cpu] = after.cpu_per_1k(&before, cycles);
    let row = vec![
        json!(node.store),
        json!(round),
        json!(args.sizes.receivers),
        json!(args.sizes.alerts),
        num(secs, 3),
        num(rate, 0),
        node_cpu,
        redis_cpu,
        harness_cpu,
        json!(lost),
        json!(twice),
        json!(out_of_order),
    ];
    Ok((row, rate))
}

//! `cycles`: R receivers with one widget each, and publishers at a rate or as fast as they go.
//! Cycles per second (publish, alert, started, done), publish-to-widget latency, and CPU per
//! 1,000 alerts. By default a run at the maximum is followed by one at half of what it reached,
//! where latency is judged.

use std::time::Duration;

use serde_json::json;

use crate::load::{connect_widgets, cycles, receivers, Clock, CycleRun, Cycles};
use crate::node::Node;
use crate::report::{num, Table};
use crate::Error;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 50)]
    pub receivers: usize,
    /// Alerts per second over all publishers; 0 publishes as fast as they go.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publisher connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Skip the second run at half the rate the first reached.
    #[arg(long)]
    pub no_half: bool,
}

pub const COLUMNS: &[&str] = &[
    "store",
    "receivers",
    "load",
    "published_per_s",
    "cycles_per_s",
    "p50_ms",
    "p99_ms",
    "p99_9_ms",
    "cuebox_cpu_s_per_1k",
    "redis_cpu_s_per_1k",
    "harness_cpu_s_per_1k",
    "refused",
    "lost",
    "shown_twice",
];

pub fn row(table: &mut Table, node: &Node, receivers: usize, load: String, c: &mut Cycles) {
    table.row(vec![
        json!(node.store),
        json!(receivers),
        json!(load),
        num(c.published_per_s, 0),
        num(c.cycles_per_s, 0),
        c.latency.ms(50.0),
        c.latency.ms(99.0),
        c.latency.ms(99.9),
        c.cpu_per_1k[0].clone(),
        c.cpu_per_1k[1].clone(),
        c.cpu_per_1k[2].clone(),
        json!(c.refused),
        json!(c.lost),
        json!(c.shown_twice),
    ]);
}

/// The runs' figures, for the ceiling's ratio: the maximum, and the half-load p99.
pub struct Measured {
    pub max_cycles_per_s: f64,
}

pub async fn run(node: &Node, clock: Clock, args: &Args) -> Result<(Table, Measured), Error> {
    let names = receivers("cycles", args.receivers);
    let widgets = connect_widgets(node, &names).await?;
    let mut table = Table::new("cycles", COLUMNS);
    let mut plan = CycleRun {
        rate: (args.rate > 0.0).then_some(args.rate),
        connections: args.connections,
        warmup: Duration::from_secs_f64(args.warmup),
        window: Duration::from_secs_f64(args.seconds),
    };
    let (mut first, widgets) = cycles(node, clock, &names, widgets, &plan).await?;
    let load = match plan.rate {
        Some(r) => format!("{r:.0}/s"),
        None => "max".into(),
    };
    row(&mut table, node, args.receivers, load, &mut first);
    let measured = Measured {
        max_cycles_per_s: first.cycles_per_s,
    };
    let widgets = if plan.rate.is_none() && !args.no_half && first.cycles_per_s > 0.0 {
        plan.rate = Some(first.cycles_per_s / 2.0);
        let (mut half, widgets) = cycles(node, clock, &names, widgets, &plan).await?;
        let load = format!("half: {:.0}/s", first.cycles_per_s / 2.0);
        row(&mut table, node, args.receivers, load, &mut half);
        widgets
    } else {
        widgets
    };
    for w in widgets {
        w.close().await;
    }
    table.notes.push(
        "latency: from the moment an alert was due to be published (its rate schedule) to its widget \
         receiving it; at max load it includes queueing behind earlier alerts"
            .into(),
    );
    Ok((table, measured))
}

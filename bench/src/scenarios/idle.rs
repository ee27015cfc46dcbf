//! `idle`: widgets that are connected and waiting, and what each costs the node in resident
//! memory. One receiver per widget, as streamers have.

use std::time::Duration;

use serde_json::json;

use crate::load::{connect_widgets, receivers};
use crate::node::Node;
use crate::report::{num, Table};
use crate::Error;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Connected widgets at which RSS is read, ascending; widgets are added between steps.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub widgets: Vec<usize>,
    /// How long the node's CPU is watched at each step while the widgets idle: the default
    /// spans a presence refresh (10 s) and a ping period (15 s).
    #[arg(long, default_value_t = 20.0)]
    pub idle_seconds: f64,
}

/// Time for the node to finish joining every widget before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(node: &Node, args: &Args) -> Result<Table, Error> {
    let mut steps = args.widgets.clone();
    steps.sort_unstable();
    let most = steps.last().copied().unwrap_or(0);
    let names = receivers("idle", most);
    // The baseline is read after one widget came and went, so the node's one-off start-up
    // allocations (worker buffers, the Redis connections' first use) are not put on widgets.
    let warm = receivers("idle-warm", 1);
    for w in connect_widgets(node, &warm).await? {
        w.close().await;
    }
    tokio::time::sleep(SETTLE).await;
    let base = node
        .usage()
        .ok_or("idle needs the node's pid (--pid) to read its RSS")?;
    let mut table = Table::new(
        "idle",
        &[
            "store",
            "widgets",
            "rss_mib",
            "base_rss_mib",
            "kib_per_widget",
            "idle_cpu_percent",
        ],
    );
    let mut widgets = Vec::new();
    for step in steps {
        widgets.extend(connect_widgets(node, &names[widgets.len()..step]).await?);
        tokio::time::sleep(SETTLE).await;
        let now = node.usage().ok_or("the node's process is gone")?;
        let per = (now.rss_kib.saturating_sub(base.rss_kib)) as f64 / step.max(1) as f64;
        // What the widgets cost while nothing happens: pings, presence refreshes.
        let window = Duration::from_secs_f64(args.idle_seconds.max(0.1));
        tokio::time::sleep(window).await;
        let later = node.usage().ok_or("the node's process is gone")?;
        let idle_cpu = later.cpu_since(&now) / window.as_secs_f64() * 100.0;
        table.row(vec![
            json!(node.store),
            json!(step),
            num(now.rss_kib as f64 / 1024.0, 1),
            num(base.rss_kib as f64 / 1024.0, 1),
            num(per, 2),
            num(idle_cpu, 1),
        ]);
    }
    for w in widgets {
        w.close().await;
    }
    table.notes.push(
        "kib_per_widget: (RSS now - RSS before any widget) / widgets, VmRSS from /proc; \
         idle_cpu_percent: the node's CPU over --idle-seconds with every widget connected and no alert"
            .into(),
    );
    Ok(table)
}

//! `data` (the SQLite store): R receivers with N alerts queued each (by default 100,000 over
//! 10,000): the data dir's size with them queued, the time a node killed with SIGKILL takes to
//! start again on it (loading every queue, and putting nothing back that was in flight), and the
//! size once every alert has drained.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::json;

use crate::load::{connect_widgets, fill, receivers};
use crate::node::Node;
use crate::report::{num, Table};
use crate::Error;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    pub receivers: usize,
    /// Alerts queued for each receiver.
    #[arg(long, default_value_t = 10)]
    pub alerts: usize,
    /// Publisher connections that fill the queues.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
}

/// How long the drain may take before the run fails.
const LIMIT: Duration = Duration::from_secs(600);

pub async fn run(node: &mut Node, args: &Args) -> Result<Table, Error> {
    let dir = node
        .data_dir()
        .ok_or("the data scenario needs a node of its own with --store sqlite")?
        .to_owned();
    let mut table = Table::new(
        "data",
        &[
            "receivers",
            "alerts_each",
            "queued",
            "fill_seconds",
            "size_empty_mib",
            "size_queued_mib",
            "restart_seconds",
            "drain_seconds",
            "size_drained_mib",
            "size_tidied_mib",
            "tidied_after_s",
        ],
    );
    let empty = size(&dir);
    let names = receivers("data", args.receivers);
    let start = Instant::now();
    let queued = fill(node, &names, args.alerts, args.connections).await?;
    let fill_seconds = start.elapsed().as_secs_f64();
    let total: usize = queued.values().map(Vec::len).sum();
    let full = size(&dir);
    let restart = node.restart().await?;

    let start = Instant::now();
    let node = &*node;
    stream::iter(names.chunks(500))
        .then(|chunk| async move {
            // Widgets in batches, so the harness's own sockets stay within bounds.
            let widgets = connect_widgets(node, chunk).await?;
            let drained = widgets.into_iter().map(|mut w| async move {
                for _ in 0..args.alerts {
                    let alert = tokio::time::timeout(LIMIT, w.next_alert())
                        .await
                        .map_err(|_| "a widget waited too long for an alert")??
                        .ok_or("the node closed a widget")?;
                    w.show(&alert.id).await?;
                }
                w.close().await;
                Ok::<_, Error>(())
            });
            futures_util::future::try_join_all(drained).await
        })
        .try_collect::<Vec<_>>()
        .await?;
    let drain_seconds = start.elapsed().as_secs_f64();
    let drained = size(&dir);
    // The node hands freed pages back to the file system every 2 s: the size once it stops
    // shrinking (it has not over 12 s), within two minutes.
    let (mut tidied, mut since, waited) = (drained, Instant::now(), Instant::now());
    while since.elapsed() < Duration::from_secs(12) && waited.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = size(&dir);
        if now < tidied {
            (tidied, since) = (now, Instant::now());
        }
    }
    table.row(vec![
        json!(args.receivers),
        json!(args.alerts),
        json!(total),
        num(fill_seconds, 2),
        num(mib(empty), 2),
        num(mib(full), 2),
        num(restart.as_secs_f64(), 3),
        num(drain_seconds, 2),
        num(mib(drained), 2),
        num(mib(tidied), 2),
        num(waited.elapsed().as_secs_f64() - 12.0, 0),
    ]);
    table.notes.push(
        "size: every file in the data dir (database, WAL, shared memory); restart: from SIGKILL's \
         new process start until it listens, with every queue loaded; tidied: once the node has \
         handed freed pages back (it does every 2 s), tidied_after_s after the drain"
            .into(),
    );
    Ok(table)
}

fn size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

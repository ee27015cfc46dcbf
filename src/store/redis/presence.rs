//! This node's heartbeat, and the sweep of the widgets of nodes that stopped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::functions::Core;
use crate::alert::ReceiverId;
use crate::store::Call;
use crate::store::{Notice, StoreError};

/// How often a node says it is alive, and looks for nodes that stopped saying so.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node silent this long is dead: a SIGKILL, a crash, a lost machine.
const NODE_TTL: Duration = Duration::from_secs(15);

/// Keeps this node's heartbeat, and clears up after dead nodes: for every receiver a dead node
/// held widgets for, its report is dropped at once, which puts an alert in flight that nobody
/// else can see back at the head of the queue (rule f). Widgets that reconnected elsewhere
/// already have it (rule e), and keep it: they count. Any number of nodes may sweep the same
/// dead node; every step is idempotent.
pub(super) async fn sweep_dead_nodes(core: Arc<Core>, notices: mpsc::UnboundedSender<Notice>) {
    let mut every = tokio::time::interval(HEARTBEAT);
    loop {
        every.tick().await;
        if let Err(e) = heartbeat_and_sweep(&core, &notices).await {
            tracing::warn!(error = %e, "node heartbeat or sweep failed");
        }
        // The last offset stands until a reading succeeds.
        if let Err(e) = core.clock.sync(&mut core.con.clone()).await {
            tracing::warn!(error = %e, "could not read Redis's clock");
        }
    }
}

async fn heartbeat_and_sweep(
    core: &Core,
    notices: &mpsc::UnboundedSender<Notice>,
) -> Result<(), StoreError> {
    let mut con = core.con.clone();
    let keys = &core.keys;
    // Separate commands, not a pipeline: on a cluster these keys live in different slots.
    let () = redis::cmd("SET")
        .arg(keys.node(&core.node))
        .arg(1)
        .arg("PX")
        .arg(NODE_TTL.as_millis() as u64)
        .query_async(&mut con)
        .await?;
    let () = redis::cmd("SADD")
        .arg(keys.nodes())
        .arg(&*core.node)
        .query_async(&mut con)
        .await?;
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.nodes())
        .query_async(&mut con)
        .await?;
    for node in nodes.iter().filter(|n| n.as_str() != &*core.node) {
        let alive: bool = redis::cmd("EXISTS")
            .arg(keys.node(node))
            .query_async(&mut con)
            .await?;
        if alive {
            continue;
        }
        let held: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.node_receivers(node))
            .query_async(&mut con)
            .await?;
        tracing::warn!(
            node,
            receivers = held.len(),
            "a node stopped; sweeping its receivers"
        );
        for receiver in held.iter().filter_map(|r| ReceiverId::parse(r).ok()) {
            let snapshot = core.transition(&receiver, Call::Sweep, &[node]).await?;
            let _ = notices.send(Notice::Changed { receiver, snapshot });
        }
        let () = redis::cmd("DEL")
            .arg(keys.node_receivers(node))
            .query_async(&mut con)
            .await?;
        let () = redis::cmd("SREM")
            .arg(keys.nodes())
            .arg(node)
            .query_async(&mut con)
            .await?;
    }
    Ok(())
}

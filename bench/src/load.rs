//! The moving parts every scenario shares: widgets connected in bulk, queues filled in order,
//! and the cycle loop (publishers at a rate, widgets that show each alert at once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::Value;

use crate::client::{alert_body, Publisher, Widget};
use crate::node::{Node, Readings};
use crate::report::Latencies;
use crate::Error;

/// Widgets connecting at once; more would overflow the listen backlog for nothing.
const CONNECTING: usize = 200;
/// Longest wait for widgets to show what was published once publishers stop.
const SETTLE: Duration = Duration::from_secs(60);

/// The clock every stamp is read from, so a widget can tell an alert's age.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock that reads 0 now.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }

    pub fn us_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.0).as_micros() as u64
    }
}

/// Names unique to this run, so runs against a long-lived node never share a receiver.
pub fn receivers(tag: &str, n: usize) -> Vec<String> {
    let run = std::process::id();
    (0..n).map(|i| format!("b{run}-{tag}-{i}")).collect()
}

/// Connects a widget per receiver, each having had its hello.
pub async fn connect_widgets(node: &Node, receivers: &[String]) -> Result<Vec<Widget>, Error> {
    stream::iter(receivers.iter().map(|r| async move {
        let mut w = Widget::connect(node.addr, r, &node.token(r)?).await?;
        w.hello().await?;
        Ok::<_, Error>(w)
    }))
    .buffered(CONNECTING)
    .try_collect()
    .await
}

/// Publishes `per_receiver` alerts to each receiver over `connections` connections, each
/// receiver's alerts in order from one connection. Answers the ids, per receiver, in order.
pub async fn fill(
    node: &Node,
    receivers: &[String],
    per_receiver: usize,
    connections: usize,
) -> Result<HashMap<String, Vec<String>>, Error> {
    let connections = connections.clamp(1, receivers.len().max(1));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mine: Vec<String> = receivers
            .iter()
            .skip(c)
            .step_by(connections)
            .cloned()
            .collect();
        let mut publisher = Publisher::connect(node.addr, &node.publish_key).await?;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for r in mine {
                let mut list = Vec::with_capacity(per_receiver);
                for _ in 0..per_receiver {
                    let answer = publisher.publish(alert_body(&r, 0)).await?;
                    match answer.id {
                        Some(id) => list.push(id),
                        None => return Err(format!("publish answered {}", answer.status).into()),
                    }
                }
                ids.push((r, list));
            }
            Ok::<_, Error>(ids)
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Publishes `count` alerts to one receiver as fast as `connections` connections go, in no
/// particular order.
pub async fn flood(
    node: &Node,
    receiver: &str,
    count: usize,
    connections: usize,
) -> Result<(), Error> {
    let left = Arc::new(AtomicU64::new(count as u64));
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let mut publisher = Publisher::connect(node.addr, &node.publish_key).await?;
        let (left, receiver) = (left.clone(), receiver.to_owned());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let answer = publisher.publish(alert_body(&receiver, 0)).await?;
                if answer.status != 202 {
                    return Err(format!("publish answered {}", answer.status).into());
                }
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// What a cycle run measured inside its window.
pub struct Cycles {
    pub published_per_s: f64,
    pub cycles_per_s: f64,
    pub latency: Latencies,
    /// CPU seconds per 1,000 cycles of cuebox, Redis and the harness, which share the machine;
    /// null where a process is not known.
    pub cpu_per_1k: [Value; 3],
    /// Publishes answered with anything but 202.
    pub refused: u64,
    /// Alerts published but not shown by the end, and shown more than once.
    pub lost: u64,
    pub shown_twice: u64,
}

/// How a cycle run is driven.
pub struct CycleRun {
    /// Alerts per second over all publishers; `None` publishes as fast as they go.
    pub rate: Option<f64>,
    pub connections: usize,
    pub warmup: Duration,
    pub window: Duration,
}

/// Publishes to `receivers` round robin while one widget per receiver shows each alert at once;
/// measures the window after the warm-up. The widgets are handed back for the next run.
pub async fn cycles(
    node: &Node,
    clock: Clock,
    receivers: &[String],
    widgets: Vec<Widget>,
    run: &CycleRun,
) -> Result<(Cycles, Vec<Widget>), Error> {
    let published: Arc<Vec<AtomicU64>> =
        Arc::new(receivers.iter().map(|_| AtomicU64::new(0)).collect());
    let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let window_start = start + run.warmup;
    let window_end = window_start + run.window;

    // Widgets: show everything, record (shown at, latency) for the ones stamped.
    let mut shown = Vec::new();
    for (i, mut widget) in widgets.into_iter().enumerate() {
        let published = published.clone();
        let mut stopped = stopped_rx.clone();
        shown.push(tokio::spawn(async move {
            let mut seen: Vec<(u64, u64)> = Vec::new();
            let mut ids = std::collections::HashSet::new();
            let mut twice = 0u64;
            let mut count = 0u64;
            loop {
                if *stopped.borrow() && count >= published[i].load(Ordering::Acquire) {
                    break;
                }
                let next = tokio::select! {
                    a = widget.next_alert() => a?,
                    _ = stopped.changed() => continue,
                    _ = tokio::time::sleep(SETTLE) => return Err("a widget waited too long for an alert".into()),
                };
                let Some(alert) = next else {
                    return Err("the node closed a widget".into());
                };
                let now = clock.us();
                if !ids.insert(alert.id.clone()) {
                    twice += 1;
                } else {
                    count += 1;
                }
                if let Some(t) = alert.t {
                    seen.push((now, now.saturating_sub(t)));
                }
                widget.show(&alert.id).await?;
            }
            Ok::<_, Error>((widget, seen, count, twice))
        }));
    }

    // Usage at the window's edges.
    let edges = {
        let (pid, redis_pid) = (node.pid, node.redis.as_ref().and_then(|r| r.pid));
        tokio::spawn(async move {
            tokio::time::sleep_until(window_start.into()).await;
            let before = Readings::take(pid, redis_pid);
            tokio::time::sleep_until(window_end.into()).await;
            (before, Readings::take(pid, redis_pid))
        })
    };

    // Publishers: each owns every `connections`-th receiver, and its share of the rate.
    let connections = run.connections.clamp(1, receivers.len().max(1));
    let interval = run
        .rate
        .map(|r| Duration::from_secs_f64(connections as f64 / r.max(0.001)));
    let mut publishers = Vec::new();
    for c in 0..connections {
        let mut publisher = Publisher::connect(node.addr, &node.publish_key).await?;
        let mine: Vec<(usize, String)> = receivers
            .iter()
            .cloned()
            .enumerate()
            .skip(c)
            .step_by(connections)
            .collect();
        let published = published.clone();
        publishers.push(tokio::spawn(async move {
            let mut sent_in_window = 0u64;
            let mut refused = 0u64;
            // Spread the publishers' schedules over one interval, so they do not fire together.
            let offset =
                interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections as f64));
            for (n, (i, r)) in (0u32..).zip(mine.iter().cycle()) {
                // A publisher behind its schedule stops at the window's end all the same.
                if Instant::now() >= window_end {
                    break;
                }
                // At a set rate each alert has its time, and its latency counts from then even
                // if the publisher is late (an earlier answer was slow), so a slow node cannot
                // hide its queueing delay.
                let at = match interval {
                    Some(interval) => {
                        let due = start + offset + interval * n;
                        if Instant::now() < due {
                            // On time: count from when the timer woke us, so the harness's own
                            // timer lateness (up to a millisecond) is not put on the node.
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        } else {
                            due
                        }
                    }
                    None => Instant::now(),
                };
                if at >= window_end {
                    break;
                }
                let answer = publisher.publish(alert_body(r, clock.us_at(at))).await?;
                if answer.status == 202 {
                    published[*i].fetch_add(1, Ordering::Release);
                    if at >= window_start {
                        sent_in_window += 1;
                    }
                } else {
                    refused += 1;
                }
            }
            Ok::<_, Error>((sent_in_window, refused))
        }));
    }
    let mut sent_in_window = 0;
    let mut refused = 0;
    for p in publishers {
        let (s, r) = p.await??;
        sent_in_window += s;
        refused += r;
    }
    let _ = stopped_tx.send(true);

    let (from, to) = (clock.us_at(window_start), clock.us_at(window_end));
    let mut latency = Latencies::default();
    let mut in_window = 0u64;
    let mut widgets = Vec::new();
    let (mut total_shown, mut shown_twice) = (0u64, 0u64);
    for s in shown {
        let (widget, seen, count, twice) = tokio::time::timeout(SETTLE, s)
            .await
            .map_err(|_| "widgets did not settle")???;
        widgets.push(widget);
        total_shown += count;
        shown_twice += twice;
        for (at, lat) in seen {
            if (from..to).contains(&at) {
                in_window += 1;
                latency.push(lat);
            }
        }
    }
    let total_published: u64 = published.iter().map(|p| p.load(Ordering::Acquire)).sum();
    let (before, after) = edges.await?;
    let secs = run.window.as_secs_f64();
    Ok((
        Cycles {
            published_per_s: sent_in_window as f64 / secs,
            cycles_per_s: in_window as f64 / secs,
            latency,
            cpu_per_1k: after.cpu_per_1k(&before, in_window as f64),
            refused,
            lost: total_published.saturating_sub(total_shown),
            shown_twice,
        },
        widgets,
    ))
}

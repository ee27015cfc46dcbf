//! What an operator scrapes at `GET /metrics`, in the OpenMetrics text format Prometheus reads.
//!
//! Every labelled series is made once, here, and kept as a handle, so recording on a hot path
//! is an atomic add with no lookup or allocation.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::{Call, CallObserver, Event};

type Labels = Vec<(&'static str, &'static str)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    published: Counter,
    duplicate: Counter,
    refused: Counter,
    filtered: Counter,
    sent: Counter,
    resent: Counter,
    requeued: Counter,
    shown: Counter,
    expired: Counter,
    skipped: Counter,
    publish_seconds: Histogram,
    store_seconds: Vec<Histogram>,
    store_errors: Vec<Counter>,
    widgets: Gauge,
    in_flight: Gauge,
    oldest_in_flight: Gauge<f64, AtomicU64>,
    queued: Gauge,
    longest_queue: Gauge,
    topic_subscribers: Gauge,
    topic_deliveries: Counter,
    topic_drops: Counter,
    topic_recoveries: Counter,
    bridge_rejected: Counter,
}

/// What this node's hub holds at scrape time.
pub struct HubGauges {
    pub widgets: u64,
    pub in_flight: u64,
    pub oldest_in_flight: Duration,
    /// Alerts waiting, over this node's receivers, and in the longest of their queues.
    pub queued: u64,
    pub longest_queue: u64,
}

fn latency_buckets() -> Histogram {
    // 50 µs to about 1.6 s: a publish or a store call on loopback is well under a millisecond,
    // and anything past a second is an outage.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cuebox");

        let alerts = Family::<Labels, Counter>::default();
        registry.register(
            "alerts",
            "Alerts by outcome: published, duplicate, refused (queue full) and filtered (by the \
             receiver's moderation settings) at publish; sent, resent (never started), requeued \
             (no widget left), shown (done), expired and skipped (by the streamer) as the queue \
             moves. Counted by the node that caused each",
            alerts.clone(),
        );
        let outcome = |o: &'static str| alerts.get_or_create_owned(&vec![("outcome", o)]);

        let publish_seconds = latency_buckets();
        registry.register(
            "publish_duration_seconds",
            "Time to answer POST /publish",
            publish_seconds.clone(),
        );
        let store_seconds = HistogramFamily::new_with_constructor(latency_buckets);
        registry.register(
            "store_call_duration_seconds",
            "Time of each store call, by operation",
            store_seconds.clone(),
        );
        let store_errors = Family::<Labels, Counter>::default();
        registry.register(
            "store_errors",
            "Store calls that failed, by operation",
            store_errors.clone(),
        );
        let widgets = Gauge::default();
        registry.register(
            "widgets_connected",
            "Widget connections on this node",
            widgets.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "receivers_in_flight",
            "Receivers with widgets on this node and an alert in flight",
            in_flight.clone(),
        );
        let oldest_in_flight = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_in_flight_seconds",
            "Age of the oldest alert in flight among this node's receivers",
            oldest_in_flight.clone(),
        );

        let queued = Gauge::default();
        registry.register(
            "queue_depth",
            "Alerts waiting in the queues of this node's receivers",
            queued.clone(),
        );
        let longest_queue = Gauge::default();
        registry.register(
            "queue_depth_max",
            "Alerts waiting in the longest queue among this node's receivers",
            longest_queue.clone(),
        );
        let topic_subscribers = Gauge::default();
        registry.register(
            "topic_subscribers",
            "Subscribers of broadcast topics connected to this node",
            topic_subscribers.clone(),
        );
        let topic_deliveries = Counter::default();
        registry.register(
            "topic_deliveries",
            "Broadcast messages handed to a subscriber on this node",
            topic_deliveries.clone(),
        );
        let topic_drops = Counter::default();
        registry.register(
            "topic_drops",
            "Subscribers closed (1013) for falling behind what was broadcast to them",
            topic_drops.clone(),
        );
        let topic_recoveries = Counter::default();
        registry.register(
            "topic_recoveries",
            "Subscribers that came back with offsets and were sent what they missed",
            topic_recoveries.clone(),
        );
        let bridge_rejected = Counter::default();
        registry.register(
            "bridge_rejected",
            "Messages the pub/sub bridge could not republish (not a JSON object of at most 16 \
             KiB, or a channel that makes no topic)",
            bridge_rejected.clone(),
        );
        Self {
            bridge_rejected,
            queued,
            longest_queue,
            topic_subscribers,
            topic_deliveries,
            topic_drops,
            topic_recoveries,
            published: outcome("published"),
            duplicate: outcome("duplicate"),
            refused: outcome("refused"),
            filtered: outcome("filtered"),
            sent: outcome("sent"),
            resent: outcome("resent"),
            requeued: outcome("requeued"),
            shown: outcome("shown"),
            expired: outcome("expired"),
            skipped: outcome("skipped"),
            publish_seconds,
            // Every kind of call, from the one list of them, indexed as `Call::index`.
            store_seconds: Call::ALL
                .iter()
                .map(|c| store_seconds.get_or_create_owned(&vec![("op", c.label())]))
                .collect(),
            store_errors: Call::ALL
                .iter()
                .map(|c| store_errors.get_or_create_owned(&vec![("op", c.label())]))
                .collect(),
            widgets,
            in_flight,
            oldest_in_flight,
            registry,
        }
    }
}

/// How a publish ended, for the `alerts` counter.
pub enum PublishOutcome {
    Published,
    Duplicate,
    Refused,
    Filtered,
}

impl Metrics {
    pub fn publish(&self, outcome: PublishOutcome, took: Duration) {
        match outcome {
            PublishOutcome::Published => self.published.inc(),
            PublishOutcome::Duplicate => self.duplicate.inc(),
            PublishOutcome::Refused => self.refused.inc(),
            PublishOutcome::Filtered => self.filtered.inc(),
        };
        self.publish_seconds.observe(took.as_secs_f64());
    }

    pub fn events(&self, events: &[Event]) {
        for event in events {
            match event {
                Event::Sent => self.sent.inc(),
                Event::Resent => self.resent.inc(),
                Event::Requeued => self.requeued.inc(),
                Event::Done => self.shown.inc(),
                Event::Expired => self.expired.inc(),
                Event::Skipped => self.skipped.inc(),
            };
        }
    }

    /// A broadcast message was handed to `delivered` subscribers here; `behind` were dropped.
    pub fn broadcast_delivered(&self, (delivered, behind): (usize, usize)) {
        self.topic_deliveries.inc_by(delivered as u64);
        self.topic_drops.inc_by(behind as u64);
    }

    /// A subscriber connected (1) or left (-1).
    pub fn topic_subscriber(&self, change: i64) {
        self.topic_subscribers.inc_by(change);
    }

    /// A subscriber that could not take what was written to it was closed.
    pub fn topic_dropped(&self) {
        self.topic_drops.inc();
    }

    pub fn bridge_rejected(&self) {
        self.bridge_rejected.inc();
    }

    pub fn topic_recovered(&self) {
        self.topic_recoveries.inc();
    }

    /// The text to serve, with the hub's gauges as they are now.
    pub fn render(&self, hub: HubGauges) -> String {
        self.widgets.set(hub.widgets as i64);
        self.in_flight.set(hub.in_flight as i64);
        self.oldest_in_flight
            .set(hub.oldest_in_flight.as_secs_f64());
        self.queued.set(hub.queued as i64);
        self.longest_queue.set(hub.longest_queue as i64);
        let mut text = String::new();
        // unwrap: writing to a String cannot fail.
        encode(&mut text, &self.registry).expect("metrics encode into a String");
        text
    }
}

impl CallObserver for Metrics {
    fn observe(&self, call: Call, took: Duration, failed: bool) {
        // `Call::index` places every call in `Call::ALL` (a unit test holds it so); a call left
        // out would go unmeasured rather than take the node down.
        let i = call.index();
        if let Some(seconds) = self.store_seconds.get(i) {
            seconds.observe(took.as_secs_f64());
        }
        if failed {
            if let Some(errors) = self.store_errors.get(i) {
                errors.inc();
            }
        }
    }
}

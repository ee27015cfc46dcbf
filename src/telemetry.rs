//! Logging: `tracing` to stderr, filtered by `CUEBOX_LOG` (default `info`), for example
//! `CUEBOX_LOG=cuebox=debug,info`; as JSON lines or for people, by `--log-format`.
//!
//! Requests that concern one receiver or alert run inside spans carrying `receiver` and
//! `alert_id`; the JSON format writes the span's fields on every line, so each line can be
//! found by receiver or alert.
//!
//! The error level is kept for what an operator must act on. actix-http logs at error what a
//! client's bytes cause (a malformed request, a URI too long, a broken WebSocket frame, a socket
//! reset under a response); those are logged again at debug under `cuebox::http::client`, so a
//! client sending junk cannot flood the error log.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, Targets};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = std::env::var("CUEBOX_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| "info".parse().expect("a literal filter parses"));
    let output = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(output.with_filter(filter_fn(|meta| !is_client_fault(meta))))
        .with(ClientFaults)
        .with(filter)
        .try_init();
}

/// An error actix-http logs about one connection's bytes: the client's doing, not the node's.
fn is_client_fault(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR
        && ["actix_http::h1", "actix_http::ws"]
            .iter()
            .any(|t| meta.target().starts_with(t))
}

/// Logs each client fault again at debug; the output drops the original.
struct ClientFaults;

impl<S: Subscriber> Layer<S> for ClientFaults {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !is_client_fault(event.metadata()) {
            return;
        }
        let mut fault = Message(String::new());
        event.record(&mut fault);
        tracing::debug!(
            target: "cuebox::http::client",
            fault = %fault.0,
            "a client's request or frame could not be taken"
        );
    }
}

/// The text of an event's message.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

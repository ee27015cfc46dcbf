//! Logging: `tracing` to stderr, filtered by `CUEBOX_LOG` (default `info`), for example
//! `CUEBOX_LOG=cuebox=debug,info`; as JSON lines or for people, by `--log-format`.
//!
//! Requests that concern one receiver or alert run inside spans carrying `receiver` and
//! `alert_id`; the JSON format writes the span's fields on every line, so each line can be
//! found by receiver or alert.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
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
        .with(output)
        .with(filter)
        .try_init();
}

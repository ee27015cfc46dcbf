//! Logging: `tracing` to stderr, filtered by `CUEBOX_LOG` (default `info`), for example
//! `CUEBOX_LOG=cuebox=debug,info`.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init() {
    let filter = std::env::var("CUEBOX_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| "info".parse().expect("a literal filter parses"));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}

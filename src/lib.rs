//! cuebox: a queued alert dispatcher for live streams.
//!
//! A platform publishes an alert for a receiver (a streamer); the receiver's widget, an OBS
//! browser source, shows the receiver's alerts one at a time, in order, each one fully, and none
//! is ever lost. The map of the crate:
//!
//! - [`config`] holds the command line, every flag with its environment variable.
//! - [`alert`] holds receivers and alerts, parsed and checked once at the edge.
//! - [`design`] holds a receiver's designs (how its widget shows each kind of alert), checked
//!   strictly, and resolves the look each alert is shown with.
//! - [`auth`] holds publish keys and receivers' tokens (widget and dashboard).
//! - [`store`] holds the per-receiver queue and its state machine behind one trait, with the rules
//!   written out in its docs and once as code in [`store::machine`] (pure: no I/O, time as an
//!   argument); [`store::embedded`] (one node: a map and the machine, kept in SQLite by
//!   [`store::embedded::disk`]) and [`store::redis`] (a Redis Functions library, any number of
//!   nodes) keep them; [`store::redis::keys`] names every Redis key.
//! - [`ingest`] takes alerts producers add to the `{prefix}:ingest` Redis stream.
//! - [`migrate`] applies `migrations/redis/` to the Redis key layout at start; the embedded
//!   store applies `migrations/sqlite/` itself when it opens its data dir.
//! - [`moderation`] holds a receiver's moderation settings and applies them to an alert at publish.
//! - [`speech`] makes the text-to-speech of alerts (a local program or an HTTP service), once
//!   per node, for widgets to play.
//! - [`limits`] keeps this node's own limits: publish rate per key, widget connections.
//! - [`metrics`] counts what operators scrape at `/metrics`.
//! - [`hub`] keeps this node's widgets, relaying the store's snapshots to them and timing deadlines
//!   and the gap between alerts; [`hub::frames`] builds what a widget is sent (the alert, its
//!   resolved look, its speech).
//! - [`feed`] makes the events of each receiver for its docks' live feed, and keeps the last ones.
//! - [`topics`] holds broadcast topics: their names and patterns, each topic's log of recent
//!   messages ([`topics::TopicLog`]; in Redis, [`store::redis::topics`]), this node's
//!   subscribers and the fan-out to them, and the bridge from Redis pub/sub
//!   ([`topics::bridge`]). `http::topics` serves them, each subscriber's socket written by its
//!   response straight from its outbox (`http::wire`).
//! - [`http`] serves publish, the streamer's controls, the widget socket and page, health.
//! - [`startup`] builds a node and runs it until it is stopped.
//! - [`telemetry`] sets up logging.
//!
//! `widget/` holds the OBS page, compiled into the binary. `tests/api/` holds the integration
//! tests, the conformance suite every store passes among them.

pub mod alert;
pub mod auth;
pub mod config;
pub mod design;
pub mod feed;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod migrate;
pub mod moderation;
pub mod speech;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod topics;

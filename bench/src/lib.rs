//! `cuebox-bench`: drives a cuebox node over loopback with real HTTP and WebSocket clients and
//! measures it. Each scenario prints a table, or with `--json` one JSON object.
//!
//! By default every scenario starts its own node (the `cuebox` binary beside this one) and,
//! with the Redis store, its own `redis-server`, both on free loopback ports, and stops them
//! when it ends; `--node ADDR` drives a node already running instead. Every loop is bounded in
//! count and time, and the whole run by `--max-seconds`.
//!
//! - [`client`] holds the publisher and widget clients; [`node`] starts and reads processes
//!   (the criterion benchmarks in `benches/` start their redis-server with it too);
//!   [`load`] holds what scenarios share (bulk widgets, filling queues, the cycle loop);
//!   [`scenarios`] has one module per scenario; [`report`] prints.

pub mod client;
pub mod load;
pub mod node;
pub mod report;
pub mod scenarios;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

//! cuebox's integration tests, one binary so they compile once. Each test starts what it needs:
//! its own redis-server processes on free ports, nodes on port 0, WebSocket widgets, Chromium.

mod alerts;
mod browser;
mod cli;
mod concurrency;
mod conformance;
mod controls;
mod designs;
mod differential;
mod embedded;
mod helpers;
mod hub;
mod ingest;
mod migrations;
mod nodes;
mod publish;
mod speech;
mod topics;
mod widget;

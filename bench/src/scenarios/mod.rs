//! The scenarios, one module each. Every one takes its sizes as flags, drives the node over
//! loopback, and answers a [`Table`](crate::report::Table).

pub mod broadcast;
pub mod ceiling;
pub mod cycles;
pub mod data;
pub mod drain;
pub mod growth;
pub mod idle;
pub mod publish;

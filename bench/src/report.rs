//! What a run prints: one table per scenario, or with `--json` one JSON object holding them all,
//! with the machine they ran on.

use serde_json::{json, Map, Value};

/// One scenario's figures: named columns, a row per measured step.
pub struct Table {
    pub scenario: &'static str,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Value>>,
    /// What a reader must know to read the figures.
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(scenario: &'static str, columns: &[&'static str]) -> Self {
        Self {
            scenario,
            columns: columns.to_vec(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<Value>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(cell).collect())
            .collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| cells.iter().map(|r| r[i].len()).fold(c.len(), usize::max))
            .collect();
        println!("\n## {}", self.scenario);
        let line = |items: Vec<String>| {
            let padded: Vec<String> = items
                .iter()
                .zip(&widths)
                .map(|(s, w)| format!("{s:>w$}"))
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        line(self.columns.iter().map(|c| c.to_string()).collect());
        line(widths.iter().map(|w| "-".repeat(*w)).collect());
        for r in cells {
            line(r);
        }
        for n in &self.notes {
            println!("  {n}");
        }
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let obj: Map<String, Value> = self
                    .columns
                    .iter()
                    .map(|c| c.to_string())
                    .zip(r.iter().cloned())
                    .collect();
                Value::Object(obj)
            })
            .collect();
        json!({ "rows": rows, "notes": self.notes })
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.abs() >= 100.0 => format!("{f:.0}"),
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A figure rounded for the table and the JSON alike.
pub fn num(f: f64, decimals: i32) -> Value {
    let scale = 10f64.powi(decimals);
    json!((f * scale).round() / scale)
}

/// Latency samples in µs, and their percentiles.
#[derive(Default)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn push(&mut self, us: u64) {
        self.0.push(us.min(u32::MAX as u64) as u32);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// How many samples there are.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The `p`th percentile in ms (`p` from 1 to 100: 99.0 for the p99), or null with no samples.
    pub fn ms(&mut self, p: f64) -> Value {
        // A fraction passed for a percentile would report the fastest sample as the p99 (the
        // broadcast scenario's figures were its minimums until this caught it).
        assert!(
            (1.0..=100.0).contains(&p),
            "a percentile from 1 to 100, not {p}"
        );
        if self.0.is_empty() {
            return Value::Null;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        let us = self.0[rank.clamp(1, self.0.len()) - 1];
        num(us as f64 / 1000.0, 3)
    }
}

/// The machine a run measured, for the record.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| num(kib / 1024.0 / 1024.0, 1));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    json!({ "cpu": model, "cores": cores, "memory_gib": mem_gib, "redis": redis })
}

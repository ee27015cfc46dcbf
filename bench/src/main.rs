//! The `cuebox-bench` binary: parses the command line, starts or names the node each scenario
//! drives, and prints what the scenarios measured. The scenarios and their parts are in the
//! library (`lib.rs`), which the criterion benchmarks share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

use cuebox_bench::load::Clock;
use cuebox_bench::node::{self, Node, Redis, Spawn, StoreKind};
use cuebox_bench::report::{self, num, Table};
use cuebox_bench::scenarios::{broadcast, ceiling, cycles, data, drain, growth, idle, publish};
use cuebox_bench::Error;

#[derive(Parser, Debug)]
#[command(
    name = "cuebox-bench",
    version,
    about = "Benchmarks a cuebox node over loopback"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,

    /// The cuebox binary to start, a fresh node per scenario. Default: `cuebox` beside this
    /// binary (build it with `cargo build --release`).
    #[arg(long, global = true)]
    cuebox: Option<PathBuf>,

    /// The store of the nodes started here.
    #[arg(long, global = true, value_enum, default_value_t = StoreKind::Redis)]
    store: StoreKind,

    /// A further flag for the nodes started here, e.g. `--node-arg=--start-timeout-ms=2000`.
    #[arg(long = "node-arg", global = true, allow_hyphen_values = true)]
    node_args: Vec<String>,

    /// Drive the node already listening here instead of starting one.
    #[arg(long = "node", global = true, requires_all = ["publish_key", "secret"])]
    node: Option<SocketAddr>,
    /// With --node: a publish key it accepts.
    #[arg(long, global = true)]
    publish_key: Option<String>,
    /// With --node: the secret its widget tokens are signed with.
    #[arg(long, global = true)]
    secret: Option<String>,
    /// With --node: its process id, for CPU and RSS.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// With --node: the Redis it uses, for the ceiling.
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// With --node and --redis-url: the Redis process id, for its CPU.
    #[arg(long, global = true)]
    redis_pid: Option<u32>,

    /// One JSON object instead of tables.
    #[arg(long, global = true)]
    json: bool,

    /// Also write the JSON object to this file, keeping the tables on stdout.
    #[arg(long, global = true)]
    json_out: Option<PathBuf>,

    /// Threads the harness's clients run on. One keeps the harness to one core of a small
    /// machine, beside the node and Redis, and saves it waking threads.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,

    /// The whole run stops, failed, after this long.
    #[arg(long, global = true, default_value_t = 1800)]
    max_seconds: u64,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// R receivers with N alerts queued each, drained by one widget each.
    Drain(drain::Args),
    /// Publishers and widgets at once: cycles per second, latency, CPU per 1,000 alerts.
    Cycles(cycles::Args),
    /// HTTP publish throughput with no widgets.
    Publish(publish::Args),
    /// RSS per idle widget connection.
    Idle(idle::Args),
    /// Cost as one queue grows to 100,000 and receivers to 10,000.
    Growth(growth::Args),
    /// Redis's own rate for an equivalent script, then cuebox's drain as a ratio of it.
    Ceiling(ceiling::Args),
    /// The SQLite store's data dir with 100,000 alerts queued and drained, and its restart time.
    Data(data::Args),
    /// Subscribers of one broadcast topic: deliveries per second, latency to the last
    /// subscriber, CPU per 1,000 deliveries, RSS per idle subscriber.
    Broadcast(broadcast::Args),
    /// Every scenario in turn, each on a fresh node, with ratios to the ceiling.
    All(AllArgs),
}

#[derive(clap::Args, Debug)]
struct AllArgs {
    /// Tiny sizes, for a smoke test that only shows every scenario runs.
    #[arg(long)]
    small: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(rt) => rt.block_on(main_async(cli)),
        Err(e) => {
            eprintln!("cuebox-bench: no runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn main_async(cli: Cli) -> std::process::ExitCode {
    let limit = Duration::from_secs(cli.max_seconds);
    // Dropping the run (on Ctrl-C or the time limit) drops its nodes, which stops them.
    let result = tokio::select! {
        r = run(&cli) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        _ = tokio::time::sleep(limit) => Err(format!("the run took over {}s", cli.max_seconds).into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cuebox-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Error> {
    let open_files = node::raise_open_files();
    let clock = Clock::start();
    let mut tables: Vec<Table> = Vec::new();
    match &cli.scenario {
        Scenario::Drain(args) => tables.push(drain::run(&node(cli).await?, args).await?.0),
        Scenario::Cycles(args) => tables.push(cycles::run(&node(cli).await?, clock, args).await?.0),
        Scenario::Publish(args) => tables.push(publish::run(&node(cli).await?, args).await?),
        Scenario::Idle(args) => tables.push(idle::run(&node(cli).await?, args).await?),
        Scenario::Broadcast(args) => {
            tables.push(broadcast::run(&node(cli).await?, clock, args).await?)
        }
        Scenario::Growth(args) => tables.extend(growth::run(&node(cli).await?, clock, args).await?),
        Scenario::Data(args) => tables.push(data::run(&mut node(cli).await?, args).await?),
        Scenario::Ceiling(args) => {
            let node = node(cli).await?;
            let drain_args = drain::Args {
                sizes: args.sizes,
                connections: 16,
                rounds: 5,
            };
            let (ceiling, redis) = measure_ceiling(&node, args).await?;
            let (drained, d) = drain::run(&node, &drain_args).await?;
            tables.extend([ceiling, drained, ratios(&redis, Some(d.cycles_per_s), None)]);
        }
        Scenario::All(all) => tables.extend(run_all(cli, clock, all.small).await?),
    }
    let scenarios: Map<String, Value> = tables
        .iter()
        .map(|t| (t.scenario.to_owned(), t.to_json()))
        .collect();
    let machine = report::machine();
    let invoked: Vec<String> = std::env::args().skip(1).collect();
    let out = json!({
        "machine": machine,
        "store": cli.store.name(),
        "open_files": open_files,
        "args": invoked,
        "scenarios": scenarios,
    });
    if let Some(path) = &cli.json_out {
        std::fs::write(path, format!("{out:#}\n"))?;
    }
    if cli.json {
        println!("{out}");
    } else {
        println!("# cuebox-bench {}", invoked.join(" "));
        println!("machine: {machine}");
        for t in &tables {
            t.print();
        }
    }
    Ok(())
}

/// The node a scenario drives: the one named, or a fresh one.
async fn node(cli: &Cli) -> Result<Node, Error> {
    if let Some(addr) = cli.node {
        let redis = cli
            .redis_url
            .as_deref()
            .map(|u| Redis::external(u, cli.redis_pid));
        return Ok(Node::external(
            addr,
            cli.publish_key.as_deref().unwrap_or_default(),
            cli.secret.as_deref().unwrap_or_default(),
            cli.pid,
            redis,
        ));
    }
    let binary = match &cli.cuebox {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("the harness has no directory")?
            .join("cuebox"),
    };
    if !binary.exists() {
        return Err(format!(
            "no cuebox binary at {}: build it (cargo build --release) or pass --cuebox",
            binary.display()
        )
        .into());
    }
    Node::spawn(&Spawn {
        binary,
        store: cli.store,
        args: cli.node_args.clone(),
    })
    .await
}

/// The ceiling against the node's own Redis, or a fresh one when the node has none.
async fn measure_ceiling(
    node: &Node,
    args: &ceiling::Args,
) -> Result<(Table, ceiling::Ceiling), Error> {
    let own;
    let redis = match &node.redis {
        Some(r) => r,
        None => {
            own = Redis::spawn().await?;
            &own
        }
    };
    ceiling::run(redis, args).await
}

/// cuebox's rates as a share of the ceiling measured in the same run.
fn ratios(ceiling: &ceiling::Ceiling, drain: Option<f64>, cycles: Option<f64>) -> Table {
    let mut t = Table::new(
        "ratio to the ceiling",
        &["figure", "cycles_per_s", "ceiling_cycles_per_s", "ratio"],
    );
    for (name, rate) in [("drain", drain), ("cycles (max)", cycles)] {
        if let Some(rate) = rate {
            t.row(vec![
                json!(name),
                num(rate, 0),
                num(ceiling.cycles_per_s, 0),
                num(rate / ceiling.cycles_per_s.max(1e-9), 3),
            ]);
        }
    }
    t
}

async fn run_all(cli: &Cli, clock: Clock, small: bool) -> Result<Vec<Table>, Error> {
    let (r, n) = if small { (4, 20) } else { (50, 200) };
    let mut tables = Vec::new();
    let (ceiling_table, ceiling) = {
        let node = node(cli).await?;
        let sizes = drain::Sizes {
            receivers: r,
            alerts: n,
        };
        let args = ceiling::Args { sizes };
        let (t, c) = measure_ceiling(&node, &args).await?;
        let drain_args = drain::Args {
            sizes,
            connections: 16,
            rounds: if small { 1 } else { 5 },
        };
        let (d, drained) = drain::run(&node, &drain_args).await?;
        tables.push(d);
        (t, (c, drained.cycles_per_s))
    };
    let cycles_args = cycles::Args {
        receivers: r,
        rate: 0.0,
        connections: if small { 4 } else { 32 },
        seconds: if small { 1.0 } else { 5.0 },
        warmup: if small { 0.2 } else { 1.0 },
        no_half: false,
    };
    let (c, measured) = cycles::run(&node(cli).await?, clock, &cycles_args).await?;
    tables.push(c);
    let publish_args = publish::Args {
        receivers: if small { 10 } else { 1000 },
        connections: if small { 4 } else { 32 },
        seconds: if small { 1.0 } else { 5.0 },
    };
    tables.push(publish::run(&node(cli).await?, &publish_args).await?);
    let idle_args = idle::Args {
        widgets: if small {
            vec![10, 50]
        } else {
            vec![1000, 10000]
        },
        idle_seconds: if small { 1.0 } else { 20.0 },
    };
    tables.push(idle::run(&node(cli).await?, &idle_args).await?);
    let broadcast_args = broadcast::Args {
        subscribers: if small { vec![20] } else { vec![1000, 10000] },
        messages: if small { 10 } else { 200 },
        publishers: 4,
    };
    tables.push(broadcast::run(&node(cli).await?, clock, &broadcast_args).await?);
    let growth_args = growth::Args {
        max_depth: if small { 100 } else { 100_000 },
        probe: if small { 20 } else { 3000 },
        max_receivers: if small { 100 } else { 10_000 },
        rate: if small { 200.0 } else { 2000.0 },
        seconds: if small { 1.0 } else { 3.0 },
        connections: if small { 4 } else { 32 },
    };
    tables.extend(growth::run(&node(cli).await?, clock, &growth_args).await?);
    tables.push(ceiling_table);
    tables.push(ratios(
        &ceiling.0,
        Some(ceiling.1),
        Some(measured.max_cycles_per_s),
    ));
    Ok(tables)
}

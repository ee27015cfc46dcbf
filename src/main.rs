//! The `cuebox` binary: parses the command line and runs a node or a command.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use cuebox::auth::Purpose;
use cuebox::config::{Cli, Command};
use cuebox::startup::{receiver_url_command, Application};

/// jemalloc: a tenth less of the node's CPU per alert than glibc's malloc, at the same RSS per
/// idle widget (docs/benchmarks.md, "The allocator"). Not built for MSVC.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cuebox::telemetry::init(cli.log_format);
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::WidgetUrl(args)) => receiver_url_command(args, Purpose::Widget)
            .await
            .map(|url| println!("{url}")),
        Some(Command::DockUrl(args)) => receiver_url_command(args, Purpose::Dashboard)
            .await
            .map(|url| println!("{url}")),
        Some(Command::TopicToken(args)) => cuebox::startup::topic_token_command(args)
            .await
            .map(|token| println!("{token}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cuebox: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: cuebox::config::ServeArgs) -> Result<(), cuebox::startup::StartError> {
    let app = Application::build(args).await?;
    let base = app.base_url();
    tracing::info!(%base, "cuebox is listening");
    if let Some(key) = &app.generated_publish_key {
        let demo = cuebox::alert::ReceiverId::parse("demo").expect("a valid literal id");
        let demo_url = app
            .receiver_url(Purpose::Widget, &demo)
            .await
            .map_err(|e| cuebox::startup::StartError::Config(e.to_string()))?;
        let kept = match &app.data_dir {
            Some(dir) => format!("the one kept in {} is accepted", dir.display()),
            None => "this run accepts".to_owned(),
        };
        // Printed at each start, to stdout, so that `cargo run --release` is a working demo.
        // A write error is ignored: a node must not die because whoever read its stdout
        // stopped reading (`println!` would panic on the broken pipe).
        let _ = writeln!(
            std::io::stdout(),
            "No publish key configured; {kept}:\n  {key}\n\
             Widget URL for the demo receiver (open it, or add it to OBS):\n  {}\n\
             Try:\n  curl -X POST {base}/publish -H 'Authorization: Bearer {key}' \
             -H 'Content-Type: application/json' \
             -d '{{\"receiver\":\"demo\",\"from\":\"Ana\",\"amount\":{{\"value\":\"10.50\",\"currency\":\"BRL\"}},\"message\":\"Hello!\"}}'",
            demo_url
        );
    }
    app.run_until_stopped()
        .await
        .map_err(|e| cuebox::startup::StartError::Config(format!("server error: {e}")))
}

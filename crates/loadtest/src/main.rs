//! Run with `cargo run --release -p session-loadtest -- store --spawn-servers` (or
//! `-- --help` for every option).
//!
//! Parses the command line, runs on a multi-threaded tokio runtime, prints the report;
//! any failure is one line on stderr and a non-zero exit code.

use std::process::ExitCode;

use clap::Parser;
use session_loadtest::{cli::Cli, error::chain};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM the run is dropped, which stops servers started with
    // --spawn-servers and removes temp dirs.
    let outcome = runtime.block_on(async {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            result = session_loadtest::run(cli) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
            () = terminate => None,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Some(Ok(_)) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
        None => {
            eprintln!("interrupted");
            ExitCode::from(130)
        }
    }
}

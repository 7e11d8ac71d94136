//! The command line: clap definitions, the choice of cloud (AWS or simulated),
//! rendering of results (text for people, JSON for CI) and the exit-code table.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (dry-run: nothing wrong found) |
//! | 1 | the run failed (an AWS error, a snapshot in `error`, a timeout); resumable |
//! | 2 | invalid plan or usage; nothing was sent to AWS |
//! | 3 | another run of this plan holds the lock |
//! | 4 | stopped at `--max-duration` with copies still under way in AWS; run again |
//! | 130 | interrupted (SIGINT/SIGTERM); checkpoint saved, resumable |

mod args;
mod cloud;
mod commands;
mod dryrun;
mod envelope;
mod render;
mod state;

use std::process::ExitCode;

use clap::Parser;

pub use args::{Cli, Command, Format, LogFormat};

/// Exit codes of the contract.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const LOCKED: u8 = 3;
    pub const STOPPED: u8 = 4;
    pub const INTERRUPTED: u8 = 130;
}

/// A command's failure, already worded for the user, with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// A JSON document to print on stdout with `--format json`, if any.
    pub json: Option<serde_json::Value>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into(), json: None }
    }
}

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let format = cli.format();
    let code = match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(f) => {
            if format == Format::Json {
                let doc = f
                    .json
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"status": "error", "exit_code": f.code, "error": f.message}));
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            eprintln!("error: {}", f.message);
            f.code
        }
    };
    // Leave calls still waiting on the network behind rather than hang on exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let level = match cli.verbose {
        0 => "snapferry=info,warn",
        1 => "snapferry=debug,info",
        _ => "snapferry=trace,debug",
    };
    let filter = EnvFilter::try_from_env("SNAPFERRY_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

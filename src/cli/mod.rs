//! The command line: clap definitions, the choice of cloud (AWS or simulated),
//! rendering of results (text for people, JSON for CI) and the exit-code table
//! ([`exit`], the only place an exit code is chosen).
//!
//! Layout:
//! - `args`: clap definitions of every command and option
//! - `commands`: one function per command
//! - `dryrun`: `run --dry-run`, its typed report
//! - `plan_file`: reading a plan file, and the failure for a plan that cannot be used
//! - `failure`: [`Failure`], a command's failure with its exit code
//! - `exit`: the exit-code table and the mapping from typed results onto it
//! - `cloud`: connecting to AWS or the simulated AWS
//! - `render`: text, JSON and Prometheus renderings
//! - `envelope`: the envelope commands
//! - `state`: opening the state (a directory or `s3://`), `--max-duration`

mod args;
mod cloud;
mod commands;
mod dryrun;
mod envelope;
pub mod exit;
mod failure;
mod plan_file;
mod render;
mod state;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

pub use args::{Cli, Command, Format, LogFormat};
pub use dryrun::DryRun;
pub use failure::Failure;
pub use plan_file::{LoadError, read_plan};
pub use render::{Metrics, Runs, write_metrics};

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
                println!("{}", serde_json::to_string_pretty(&f.document()).unwrap_or_default());
            }
            eprintln!("error: {}", f.message);
            f.code
        }
    };
    // Leave calls still waiting on the network behind rather than hang on exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}

/// Whether log lines on stderr may carry colour: only for a terminal, and never with
/// `NO_COLOR` set to anything non-empty (no-color.org).
pub fn colour_allowed(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let level = match cli.verbose {
        0 => "snapferry=info,warn",
        1 => "snapferry=debug,info",
        _ => "snapferry=trace,debug",
    };
    let filter = EnvFilter::try_from_env("SNAPFERRY_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = colour_allowed(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

//! The command line: clap definitions, the choice of cloud (AWS or simulated),
//! rendering of results (text for people, JSON for CI) and the exit-code table
//! ([`exit`], the only place an exit code is chosen).
//!
//! Layout:
//! - `args`: clap definitions of every command and option
//! - `commands`: one function per command
//! - `dryrun`: `run --dry-run`, its typed report
//! - `plan_file`: reading a plan file, and the failure for a plan that cannot be used
//! - `failure`: [`Failure`], what stopped a command (a kind and its message)
//! - `exit`: the exit-code table and the one mapping onto it (of [`exit::Done`] and
//!   [`Failure`])
//! - `logs`: log lines on stderr, text or JSON
//! - `cloud`: connecting to AWS or the simulated AWS
//! - `render`: text, JSON and Prometheus renderings, and `emit`, the one place the
//!   output format is matched
//! - `envelope`: the envelope commands' arguments (the keyring and the data-key file
//!   are in `crate::envelope`)
//! - `state`: opening the state (a directory or `s3://`), `--max-duration`

mod args;
mod cloud;
mod commands;
mod dryrun;
mod envelope;
pub mod exit;
mod failure;
mod logs;
mod plan_file;
mod render;
mod state;

use std::process::ExitCode;

use clap::Parser;

pub use args::{Cli, Command, Format, LogFormat};
pub use dryrun::DryRun;
pub use failure::Failure;
pub use logs::colour_allowed;
pub use plan_file::{LoadError, read_plan};
pub use render::{Metrics, Runs, runs_json, write_metrics};

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = exit::of_parse_error(e.use_stderr());
            // A usage error under `--log-format json` is a log line like any other; help
            // and version go to stdout as they are.
            if e.use_stderr() && logs::json_logs_requested(std::env::args_os().skip(1)) {
                logs::init_tracing(LogFormat::Json, 0);
                let text = e.render().to_string();
                tracing::error!(exit_code = code, "{}", text.trim_end());
            } else {
                let _ = e.print();
            }
            return ExitCode::from(code);
        }
    };
    logs::init_tracing(cli.log_format, cli.verbose);
    let format = cli.format();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let f = Failure::Internal(format!("cannot start the async runtime: {e}"));
            logs::report_error(exit::of_failure(&f), &f.message());
            return ExitCode::from(exit::of_failure(&f));
        }
    };
    let result = runtime.block_on(commands::dispatch(cli));
    if let Err(f) = &result {
        render::failure(format, f);
        logs::report_error(exit::of_failure(f), &f.message());
    }
    // Leave calls still waiting on the network behind rather than hang on exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(exit::of_result(&result))
}

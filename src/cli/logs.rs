//! Log lines on stderr: text for people or, under `--log-format json`, one JSON object
//! a line; with JSON logs everything that would write text to stderr (a command's
//! closing error, a usage error, each plan problem, a panic) is a tracing event instead.

use std::io::IsTerminal;

use super::args::LogFormat;

/// Whether log lines on stderr may carry colour: only for a terminal, and never with
/// `NO_COLOR` set to anything non-empty (no-color.org).
pub fn colour_allowed(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Whether stderr carries JSON lines only (`--log-format json`): set once, before the
/// command runs, and read by everything that would otherwise write text to stderr.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether every line on stderr must be a JSON object (`--log-format json`).
pub fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether raw arguments that clap refused still ask for JSON log lines, so even a
/// usage error is one.
pub fn json_logs_requested(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<_> = args.collect();
    args.iter()
        .enumerate()
        .any(|(i, a)| a == "--log-format=json" || (a == "--log-format" && args.get(i + 1).is_some_and(|v| v == "json")))
}

/// The closing error of a command: `error: ...` for people, an ERROR line with the exit
/// code under `--log-format json`.
pub fn report_error(code: u8, message: &str) {
    if json_logs() {
        tracing::error!(exit_code = code, "{message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// Text meant for people on stderr (a command's result in text format): as it is, or
/// as an INFO line under `--log-format json`.
pub fn say(text: &str) {
    if json_logs() {
        tracing::info!("{}", text.trim_end());
    } else {
        eprintln!("{text}");
    }
}

/// Sets up the log lines on stderr, and under JSON logs the panic hook.
pub fn init_tracing(format: LogFormat, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    JSON_LOGS.store(format == LogFormat::Json, std::sync::atomic::Ordering::Relaxed);
    let level = match verbose {
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
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
    if format == LogFormat::Json {
        // A panic's message would be a plain line among the JSON ones.
        std::panic::set_hook(Box::new(|info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(location = %at, "snapferry crashed: {what}; please report it");
        }));
    }
}

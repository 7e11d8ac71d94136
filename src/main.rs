//! The `snapferry` binary: everything happens in [`snapferry::cli`].

fn main() -> std::process::ExitCode {
    snapferry::cli::main()
}

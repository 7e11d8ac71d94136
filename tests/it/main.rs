//! The integration tests, one binary so the crate links once: the bad day on the
//! simulated AWS (`bad_days`), the plan parser, policy
//! editing, envelope encryption (the AWS Encryption SDK message format, and its CLI),
//! the engine against the simulated AWS, crash safety, immutable (locked) copies, the
//! dry-run against a run's calls, the binary's edges and its JSON log lines, the binary
//! end to end against moto's server (with the state in moto's S3 too), and the
//! architecture invariants (`tidy`).

mod aws_adapter;
mod bad_days;
mod cli;
mod dryrun;
mod edges;
mod envelope;
mod envelope_cli;
mod esdk_format;
mod esdk_interop;
mod fanout;
mod lock;
mod logs;
mod moto_e2e;
mod plan;
mod policy;
mod s3_state;
mod sim;
mod support;
mod tidy;
mod verify;

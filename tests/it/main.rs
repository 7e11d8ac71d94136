//! The integration tests, one binary so the crate links once: the plan parser, policy
//! editing, envelope encryption, the engine against the simulated AWS, crash safety,
//! and the binary end to end against moto's server.

mod aws_adapter;
mod cli;
mod dryrun;
mod edges;
mod envelope;
mod moto_e2e;
mod plan;
mod policy;
mod sim;
mod support;
mod tidy;

//! The integration tests, one binary so the crate links once: the plan parser, policy
//! editing, envelope encryption, the engine against the simulated AWS, crash safety,
//! and the binary end to end against moto's server (with the state in moto's S3 too).

mod aws_adapter;
mod cli;
mod envelope;
mod moto_e2e;
mod plan;
mod policy;
mod s3_state;
mod sim;
mod support;

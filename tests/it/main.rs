//! The integration tests, one binary so the crate links once: the plan parser, policy
//! editing, envelope encryption (the AWS Encryption SDK message format, and interoperability
//! with its CLI), the engine against the simulated AWS, crash safety,
//! and the binary end to end against moto's server.

mod aws_adapter;
mod cli;
mod envelope;
mod esdk_format;
mod esdk_interop;
mod moto_e2e;
mod plan;
mod policy;
mod sim;
mod support;

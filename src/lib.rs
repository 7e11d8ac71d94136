//! snapferry copies EBS volumes across AWS accounts and regions, encrypted all the
//! way, resumably. A YAML plan drives a step machine per volume: snapshot, re-encrypt
//! under a shareable customer managed key, grant and share, copy into the target
//! account and region under the target key, create the volume, clean up.
//!
//! Layout:
//! - [`plan`]: YAML -> raw structs -> a validated [`plan::Plan`] of newtypes. Pure.
//! - [`ids`]: the identifier newtypes every layer shares. Pure.
//! - [`policy`]: key policies and IAM documents as values. Pure.
//! - [`engine`]: the per-volume step machine. Pure.
//! - [`exec`]: the async runner: actions to cloud calls, checkpoints, resume.
//! - [`cloud`]: the `Cloud` trait, the object-store trait of the S3 state, the AWS SDK
//!   adapter and the simulated AWS.
//! - [`checkpoint`]: the state of runs, versioned, atomic, locked: a local dir or S3.
//! - [`clock`]: wall or virtual time for the runner.
//! - [`lock`]: EBS snapshot lock: the modes, settings and states every layer shares. Pure.
//! - [`envelope`]: envelope encryption of files with KMS data keys.
//! - [`private_fs`]: owner-only files and directories, replaced atomically, symlinks
//!   never followed.
//! - [`verify`]: the block-by-block comparison of a copy with its source. Pure.
//! - [`tags`]: the tags on everything a run creates, the `snapferry:step` values as an
//!   enum. Pure.
//! - [`cli`]: commands, rendering, exit codes.

pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod cloud;
pub mod engine;
pub mod envelope;
pub mod exec;
pub mod ids;
pub mod lock;
pub mod plan;
pub mod policy;
pub mod private_fs;
pub mod tags;
pub mod verify;

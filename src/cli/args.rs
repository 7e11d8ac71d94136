//! The clap definitions of every command and option of the contract.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "snapferry",
    version,
    about = "Copy encrypted EBS volumes across AWS accounts and regions, resumably",
    long_about = None
)]
pub struct Cli {
    /// More logging on stderr (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines as text for people or JSON for CI.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn format(&self) -> Format {
        match &self.command {
            Command::Validate { format, .. } => *format,
            Command::Run(r) => r.common.format,
            Command::Status { common, .. } | Command::Cleanup { common, .. } => common.format,
            Command::Verify(v) => v.common.format,
            Command::Schema => Format::Json,
            Command::Envelope(e) => match &e.action {
                EnvelopeAction::Encrypt { common, .. }
                | EnvelopeAction::Decrypt { common, .. }
                | EnvelopeAction::Random { common, .. }
                | EnvelopeAction::Datakey { common, .. } => common.format,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Options shared by the commands that talk to AWS.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Where runs are checkpointed: a local directory or s3://BUCKET/PREFIX (a state
    /// that outlives the machine, locked by a lease in the bucket).
    #[arg(long, env = "SNAPFERRY_STATE_DIR", default_value = ".snapferry")]
    pub state_dir: PathBuf,
    /// Output: text for people, json for CI (one JSON document on stdout at the end).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Run against the built-in simulated AWS instead of the real one.
    #[arg(long)]
    pub simulate: bool,
    /// Send every AWS call to URL (an emulator); AWS_ENDPOINT_URL works too.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

/// The options of the envelope commands: how KMS is reached and how the result is
/// printed. No run is checkpointed there, so the state dir matters only to keep the
/// simulated AWS between invocations.
#[derive(Debug, Clone, Args)]
pub struct EnvelopeCommon {
    /// Output: text for people, json for CI (one JSON document on stdout at the end).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Use the built-in simulated KMS instead of the real one (a rehearsal; its keys are
    /// kept in --state-dir between invocations).
    #[arg(long)]
    pub simulate: bool,
    /// With --simulate: the state dir the simulated AWS is kept in. Accepted, and unused,
    /// without it, as by every command that talks to AWS: nothing is checkpointed here.
    #[arg(long, value_name = "DIR", env = "SNAPFERRY_STATE_DIR", default_value = ".snapferry")]
    pub state_dir: PathBuf,
    /// Send every KMS call to URL (an emulator); AWS_ENDPOINT_URL works too.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

impl EnvelopeCommon {
    /// The shared options, as the code that connects to AWS takes them.
    pub fn common(&self) -> Common {
        Common {
            state_dir: self.state_dir.clone(),
            format: self.format,
            simulate: self.simulate,
            endpoint_url: self.endpoint_url.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan file (YAML).
    pub plan: PathBuf,
    /// Print every change the run needs (key policy, IAM, trust) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: make no AWS call at all; placeholders where a value needs AWS.
    #[arg(long, requires = "dry_run")]
    pub offline: bool,
    /// Name the run instead of generating an id.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Skip the DryRun permission probes of preflight (they are skipped anyway with
    /// --simulate or a custom endpoint).
    #[arg(long)]
    pub no_permission_probes: bool,
    /// Stop cleanly after this long (90m, 5h30m): checkpoint, report, exit 4. AWS goes
    /// on copying; the same command carries on.
    #[arg(long, value_name = "DURATION")]
    pub max_duration: Option<String>,
    /// Write a Prometheus textfile with per-volume results after the run.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a plan without touching AWS.
    Validate {
        plan: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run (or resume) the copy described by PLAN.
    Run(RunArgs),
    /// Show the checkpointed state of runs.
    Status {
        run_id: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Undo what a run left behind on the source side.
    Cleanup {
        run_id: String,
        /// The plan the run came from (needed for the role and keys of a cross-account run).
        #[arg(long)]
        plan: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Compare each copy of a run with its source snapshot, block by block.
    Verify(VerifyArgs),
    /// Print the plan's JSON Schema.
    Schema,
    /// Envelope-encrypt files with KMS data keys, in the AWS Encryption SDK message format.
    Envelope(EnvelopeArgs),
}

/// `snapferry verify RUN_ID`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub run_id: String,
    /// map: the written blocks; sample: plus N blocks' checksums; full: every block.
    #[arg(long, value_enum, default_value_t = VerifyLevel::Sample)]
    pub level: VerifyLevel,
    /// Blocks read per side at --level sample.
    #[arg(long, value_name = "N", default_value_t = crate::verify::DEFAULT_SAMPLE,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: u32,
    /// Write the evidence of every copy (ids, regions, accounts, level, seed, blocks
    /// compared, first mismatch, duration, requests, content digests) to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub evidence: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyLevel {
    Map,
    Sample,
    Full,
}

impl VerifyLevel {
    pub fn level(self) -> crate::verify::Level {
        match self {
            VerifyLevel::Map => crate::verify::Level::Map,
            VerifyLevel::Sample => crate::verify::Level::Sample,
            VerifyLevel::Full => crate::verify::Level::Full,
        }
    }
}

#[derive(Debug, Args)]
pub struct EnvelopeArgs {
    #[command(subcommand)]
    pub action: EnvelopeAction,
}

#[derive(Debug, Subcommand)]
pub enum EnvelopeAction {
    /// Encrypt IN to OUT as an AWS Encryption SDK message (version 2, framed) under a
    /// fresh data key from KEY; any AWS Encryption SDK or aws-encryption-cli decrypts it.
    Encrypt {
        /// The KMS key: alias/NAME, key id or ARN.
        #[arg(long, required_unless_present = "data_key")]
        key: Option<String>,
        /// KMS region (default: the key ARN's, else AWS_REGION).
        #[arg(long)]
        region: Option<String>,
        /// An encryption context pair, stored in the message and bound to the data key by
        /// KMS; repeat for more pairs.
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// Algorithm suite: AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384 (signed, the
        /// default) or AES_256_GCM_HKDF_SHA512_COMMIT_KEY.
        #[arg(long, value_name = "SUITE")]
        algorithm: Option<String>,
        /// Plaintext bytes per frame, 1 to 67108864 (default 1048576).
        #[arg(long, value_name = "BYTES")]
        frame_length: Option<u32>,
        /// Use a data key prepared earlier with `envelope datakey` instead of a new one
        /// (unsigned suite; the context is the one fixed when the key was prepared).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["key", "context"])]
        data_key: Option<PathBuf>,
        /// The file to read.
        input: PathBuf,
        /// The file to write: created 0600, and replaced only when the command succeeds
        /// (nothing is left there otherwise, an interruption included).
        output: PathBuf,
        #[command(flatten)]
        common: EnvelopeCommon,
    },
    /// Decrypt IN (an AWS Encryption SDK message, or an older snapferry envelope) to OUT;
    /// nothing is written unless the data key is under an allowed KMS key and the whole
    /// message verifies.
    Decrypt {
        /// A KMS key allowed to decrypt the data key (alias/NAME, key id or ARN), in
        /// either format; repeatable. Required unless --discovery is given.
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
        /// Use whichever KMS key the message names (discovery), optionally limited with
        /// --discovery-account.
        #[arg(long, conflicts_with = "keys")]
        discovery: bool,
        /// With --discovery: only keys of this AWS account; repeatable.
        #[arg(long = "discovery-account", value_name = "ACCOUNT", requires = "discovery")]
        discovery_accounts: Vec<String>,
        /// With --discovery-account: the keys' partition.
        #[arg(long, value_name = "PARTITION", default_value = "aws", requires = "discovery_accounts")]
        discovery_partition: String,
        /// An encryption context pair the message must carry; repeatable. Refused for a
        /// file in the older snapferry format, which carries no context.
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// Refuse messages with more encrypted data keys than this.
        #[arg(long, value_name = "N", default_value_t = crate::envelope::DEFAULT_MAX_ENCRYPTED_DATA_KEYS)]
        max_encrypted_data_keys: u16,
        /// KMS region (default: the key ARN's, else AWS_REGION).
        #[arg(long)]
        region: Option<String>,
        /// The file to read.
        input: PathBuf,
        /// The file to write: created 0600, and replaced only when the command succeeds
        /// (nothing is left there otherwise, an interruption included).
        output: PathBuf,
        #[command(flatten)]
        common: EnvelopeCommon,
    },
    /// Write N random bytes from KMS GenerateRandom to OUT.
    Random {
        /// How many bytes (1 to 1024, the KMS limit).
        #[arg(long, default_value_t = 32)]
        bytes: u32,
        /// KMS region (default: AWS_REGION).
        #[arg(long)]
        region: Option<String>,
        /// Where to write the bytes: created 0600, replaced atomically, never written
        /// through a symlink.
        output: PathBuf,
        #[command(flatten)]
        common: EnvelopeCommon,
    },
    /// Prepare an encrypted data key now (GenerateDataKeyWithoutPlaintext) for later use.
    Datakey {
        /// The KMS key to encrypt the data key under: alias/NAME, key id or ARN.
        #[arg(long)]
        key: String,
        /// KMS region (default: the key ARN's, else AWS_REGION).
        #[arg(long)]
        region: Option<String>,
        /// An encryption context pair fixed now for every file encrypted with this key;
        /// repeatable.
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// Where to write the encrypted data key (binary): created 0600, replaced
        /// atomically, never written through a symlink.
        output: PathBuf,
        #[command(flatten)]
        common: EnvelopeCommon,
    },
}

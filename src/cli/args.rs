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
    /// Print the plan's JSON Schema.
    Schema,
    /// Envelope-encrypt files with KMS data keys.
    Envelope(EnvelopeArgs),
}

#[derive(Debug, Args)]
pub struct EnvelopeArgs {
    #[command(subcommand)]
    pub action: EnvelopeAction,
}

#[derive(Debug, Subcommand)]
pub enum EnvelopeAction {
    /// Encrypt IN to OUT under a fresh data key from KEY.
    Encrypt {
        /// The KMS key: alias/NAME, key id or ARN.
        #[arg(long, required_unless_present = "data_key")]
        key: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// Use a data key prepared earlier with `envelope datakey` instead of a new one.
        #[arg(long, value_name = "FILE", conflicts_with = "key")]
        data_key: Option<PathBuf>,
        /// Plaintext chunk size in bytes.
        #[arg(long, hide = true)]
        chunk_size: Option<u32>,
        input: PathBuf,
        output: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Decrypt IN (made by `envelope encrypt`) to OUT.
    Decrypt {
        #[arg(long)]
        region: Option<String>,
        input: PathBuf,
        output: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Write N random bytes from KMS GenerateRandom to OUT.
    Random {
        /// How many bytes (1 to 1024, the KMS limit).
        #[arg(long, default_value_t = 32)]
        bytes: u32,
        #[arg(long)]
        region: Option<String>,
        output: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Prepare an encrypted data key now (GenerateDataKeyWithoutPlaintext) for later use.
    Datakey {
        #[arg(long)]
        key: String,
        #[arg(long)]
        region: Option<String>,
        /// Where to write the encrypted data key (binary).
        output: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

//! The snapferry binary as the tests start it: with `--simulate` on a plan in a temp
//! dir (a run left hanging at will), or against a moto server with nothing of the
//! developer's AWS setup; and one finished invocation with its exit code and output.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// The binary this test build made.
pub const BIN: &str = env!("CARGO_BIN_EXE_snapferry");

pub fn snapferry() -> Command {
    Command::new(BIN)
}

/// The binary for runs on the simulated AWS and the commands that need no AWS.
pub fn bin() -> Command {
    let mut c = snapferry();
    // Nothing from the developer's environment may reach AWS or change the output.
    for v in ["AWS_ENDPOINT_URL", "AWS_PROFILE", "SNAPFERRY_STATE_DIR", "SNAPFERRY_LOG", "AWS_REGION"] {
        c.env_remove(v);
    }
    c
}

/// A path in the source tree (the example plans, fixtures).
pub fn root(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `bin` with `args` in `dir`, to its end.
pub fn run(args: &[&str], dir: &Path) -> Output {
    bin().args(args).current_dir(dir).output().expect("the binary runs")
}

/// Stdout as the one JSON document it must be.
pub fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// The exit code (-1 for a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// The example same-account plan without its profile, edited by `edit`, written to
/// `dir/plan.yaml`.
pub fn same_account_plan(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(root("plans/same-account.yaml")).unwrap().replace("  profile: platform\n", "");
    let path = dir.join("plan.yaml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// The simulated world the same-account plan's `--simulate` runs in `dir` keep.
pub fn world_path(dir: &Path) -> PathBuf {
    dir.join(".snapferry/simulated-aws/build-cache-move.json")
}

pub fn edit_world(dir: &Path, f: impl FnOnce(&mut Value)) {
    let path = world_path(dir);
    let mut world: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut world);
    std::fs::write(&path, serde_json::to_vec(&world).unwrap()).unwrap();
}

/// Starts `run PLAN --simulate --run-id RUN_ID` in `dir` (the same-account plan's,
/// after a run of it) so that it hangs on a call that took effect and never returns,
/// three quarters of that earlier run's calls in: the process lives on, checkpointed
/// as running and holding the plan's lock, until it is killed.
pub fn spawn_hanging(plan: &Path, dir: &Path, run_id: &str) -> Child {
    edit_world(dir, |w| {
        let calls = w["total_calls"].as_u64().unwrap();
        w["faults"]["halt_after_calls"] = Value::from(calls + calls * 3 / 4);
    });
    bin()
        .args(["run", plan.to_str().unwrap(), "--simulate", "--run-id", run_id])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Writes the empty AWS config and credentials files `against_moto` points at.
pub fn empty_aws_files(home: &Path) {
    std::fs::write(home.join("aws-config"), "").unwrap();
    std::fs::write(home.join("aws-credentials"), "").unwrap();
}

/// `cmd` with a clear environment but for moto's endpoint, test credentials with
/// `secret`, us-east-1, `home` as HOME and its empty AWS files (`empty_aws_files`), no
/// instance metadata, and no stdin.
pub fn against_moto<'a>(cmd: &'a mut Command, endpoint: &str, home: &Path, secret: &str) -> &'a mut Command {
    cmd.env_clear()
        .env("HOME", home)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
}

/// One finished invocation of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.show()))
    }

    pub fn show(&self) -> String {
        format!("exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }

    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "unexpected exit code\n{}", self.show());
        self
    }

    /// As `expect`, then stdout as the JSON document it must be.
    pub fn expect_json(&self, code: i32) -> Value {
        self.expect(code).json()
    }
}

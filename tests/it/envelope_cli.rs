//! `snapferry envelope` as a user runs it, on moto's KMS: one trust rule for both file
//! formats (a file in the older snapferry format is held to `--key` and `--discovery`,
//! the key it names is the KeyId KMS is asked with, `--context` is refused for it), no
//! file left by a refused or interrupted decrypt (SIGTERM, SIGINT, SIGHUP sent to the
//! binary mid-decrypt), owner-only key files, random bytes and state, and the options
//! each envelope command shows.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use snapferry::envelope::{Header, encrypt_file};

use crate::esdk_interop::{Interop, arg, data, ok};
use crate::support::bin::{BIN, snapferry};

/// moto's default account.
const ACCOUNT: &str = "123456789012";

/// A data key from moto's KMS under `key`: its plaintext and its CiphertextBlob.
fn data_key(rig: &Interop, key: &str) -> ([u8; 32], Vec<u8>) {
    use base64::Engine;
    let dk = rig.py(&format!(
        "import boto3, json, base64\nr = boto3.client('kms').generate_data_key(KeyId='{key}', KeySpec='AES_256')\n\
         print(json.dumps([base64.b64encode(r['Plaintext']).decode(), base64.b64encode(r['CiphertextBlob']).decode()]))"
    ));
    let b64 = base64::engine::general_purpose::STANDARD;
    let plain = b64.decode(dk[0].as_str().unwrap()).unwrap().try_into().unwrap();
    (plain, b64.decode(dk[1].as_str().unwrap()).unwrap())
}

/// A file in the older snapferry format of `input`, whose header names `named` and
/// whose data key KMS made under `under`: a sound file when they are equal, one whose
/// header lies about its key otherwise.
fn older_file(rig: &Interop, input: &Path, name: &str, named: &str, under: &str) -> PathBuf {
    let (key, blob) = data_key(rig, under);
    let path = rig.path(name);
    encrypt_file(input, &path, &key, &Header::new(named.to_owned(), blob, 64 * 1024).unwrap()).unwrap();
    path
}

/// The names in `dir` that start with `prefix` (temporary files start with `.NAME.`).
fn named_like(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_older_format_file_is_held_to_the_keys_allowed_before_kms_is_asked() {
    let rig = Interop::start();
    let input = rig.path("plain");
    let plain = data(300_000);
    fs::write(&input, &plain).unwrap();
    // Made under the second key: someone else's, which this caller can still decrypt.
    let theirs = older_file(&rig, &input, "theirs.sfe", &rig.keys[1], &rig.keys[1]);
    let out = rig.path("out");
    let refused = |args: &[&str], exit: i32, needle: &str, calls: Value| {
        rig.moto.reset_calls();
        let o = rig.snapferry(&[&["envelope", "decrypt"], args, &[arg(&theirs), arg(&out)]].concat());
        assert_eq!(o.status.code(), Some(exit), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(!out.exists(), "{args:?}: output left");
        assert_eq!(named_like(rig.path("").as_path(), ".out"), Vec::<String>::new(), "{args:?}: temporary file left");
        assert_eq!(rig.moto.calls(), calls, "{args:?}");
    };
    // Another key allowed, by ARN or by alias: refused before any Decrypt.
    refused(&["--key", &rig.keys[0]], 1, "which is not an allowed KMS key", json!({}));
    refused(&["--key", "alias/backup"], 1, "which is not an allowed KMS key", json!({"kms:DescribeKey": 1}));
    // Discovery limited to another account: refused before any Decrypt.
    refused(&["--discovery", "--discovery-account", "111111111111"], 1, "not an allowed KMS key", json!({}));
    // A context cannot be checked on a file that carries none: a usage error, said why.
    refused(&["--key", &rig.keys[1], "--context", "purpose=backup"], 2, "carries no encryption context", json!({}));
    refused(&["--discovery", "--context", "purpose=backup"], 2, "--context cannot be checked", json!({}));
    // Neither --key nor --discovery: the rule of messages.
    refused(&[], 2, "needs --key KEY", json!({}));

    // Its own key, or discovery of its account: one Decrypt, of that key.
    for allow in [&["--key", rig.keys[1].as_str()][..], &["--discovery", "--discovery-account", ACCOUNT]] {
        rig.moto.reset_calls();
        let o =
            rig.snapferry(&[&["envelope", "decrypt", "--format", "json"], allow, &[arg(&theirs), arg(&out)]].concat());
        ok(&o, &format!("{allow:?}"));
        assert_eq!(rig.moto.calls(), json!({"kms:Decrypt": 1}), "{allow:?}");
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            (doc["key_arn"].as_str(), doc["algorithm"].as_str()),
            (Some(&*rig.keys[1]), Some("snapferry-envelope-v1"))
        );
        assert!(fs::read(&out).unwrap() == plain, "{allow:?}");
        assert_eq!(mode(&out), 0o600, "a decrypted file is the owner's only");
        fs::remove_file(&out).unwrap();
    }

    // A header that names the allowed key over a data key made under another: the
    // key it names is the KeyId of the Decrypt, so KMS refuses it (without KeyId, KMS
    // would decrypt it with the other key, and the file is otherwise sound).
    let forged = older_file(&rig, &input, "forged.sfe", &rig.keys[0], &rig.keys[1]);
    for allow in [&["--key", rig.keys[0].as_str()][..], &["--discovery"]] {
        rig.moto.reset_calls();
        let o = rig.snapferry(&[&["envelope", "decrypt"], allow, &[arg(&forged), arg(&out)]].concat());
        assert_eq!(o.status.code(), Some(1), "{allow:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("KMS Decrypt of the data key"), "{allow:?}: {}", stderr(&o));
        assert_eq!(rig.moto.calls(), json!({"kms:Decrypt": 1}), "{allow:?}");
        assert!(!out.exists(), "{allow:?}: output left");
    }
}

/// How long the test waits for the decrypt to be under way: moto's first answer on a
/// cold machine takes a few seconds.
const UNDER_WAY_TIMEOUT: Duration = Duration::from_secs(90);

/// Starts `snapferry ARGS... OUT`, waits until it is writing OUT's temporary file,
/// sends it `signal`, and checks that it ended with exit 130 leaving neither.
fn interrupt(rig: &Interop, args: &[&str], out: &Path, signal: &str) {
    let name = out.file_name().unwrap().to_str().unwrap();
    let mut cmd = snapferry();
    rig.env(&mut cmd);
    let mut child =
        cmd.args(args).arg(out).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run snapferry");
    // Under way: the data key came from KMS and bytes are being written to the
    // temporary file beside the output.
    let started = Instant::now();
    let temp = loop {
        let found = named_like(rig.path("").as_path(), &format!(".{name}."));
        if let Some(t) = found.first().map(|t| rig.path(t))
            && fs::metadata(&t).map(|m| m.len() > 0).unwrap_or(false)
        {
            break t;
        }
        assert!(child.try_wait().unwrap().is_none(), "{name}: the command ended before it was seen under way");
        assert!(started.elapsed() < UNDER_WAY_TIMEOUT, "{name}: the command never started writing");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(child.try_wait().unwrap().is_none(), "{name}: the command ended before the signal");
    let sent = Command::new("kill").args(["-s", signal, &child.id().to_string()]).status().unwrap();
    assert!(sent.success(), "kill -s {signal}");
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{name}, SIG{signal}: {err}");
    // Said only when the handler found the unfinished file: the signal landed while the
    // command was writing it.
    assert!(err.contains(&format!("interrupted by SIG{signal}; the unfinished output was removed")), "{err}");
    assert!(!temp.exists(), "{name}: the temporary file {} is left", temp.display());
    assert!(!out.exists(), "{name}: output left");
    assert_eq!(named_like(rig.path("").as_path(), &format!(".{name}")), Vec::<String>::new());
}

#[test]
fn a_signal_mid_decrypt_or_encrypt_leaves_no_file() {
    let rig = Interop::start();
    let input = rig.path("big");
    // Large enough that decrypting it takes well over the moment the test needs to see
    // it under way and signal it; its content does not matter.
    fs::write(&input, vec![0x5A; 192 << 20]).unwrap();
    let sealed = rig.path("big.esdk");
    let args = ["envelope", "encrypt", "--key", &rig.keys[0], "--frame-length", "4096", arg(&input), arg(&sealed)];
    ok(&rig.snapferry(&args), "encrypt");
    for signal in ["TERM", "INT", "HUP"] {
        let decrypt = ["envelope", "decrypt", "--key", &rig.keys[0], arg(&sealed)];
        interrupt(&rig, &decrypt, &rig.path(&format!("out-{signal}")), signal);
    }
    let encrypt = ["envelope", "encrypt", "--key", &rig.keys[0], "--frame-length", "4096", arg(&input)];
    interrupt(&rig, &encrypt, &rig.path("again.esdk"), "TERM");
}

/// Runs `args` with the umask most systems give (022), so that a mode that came from
/// the umask rather than from snapferry shows.
fn with_umask_022(rig: &Interop, args: &[&str]) -> Output {
    let mut cmd = Command::new("sh");
    rig.env(&mut cmd);
    cmd.args(["-c", "umask 022 && exec \"$0\" \"$@\"", BIN]).args(args).output().unwrap()
}

#[test]
fn prepared_keys_and_random_bytes_are_the_owners_only_and_never_written_through_a_symlink() {
    let rig = Interop::start();
    let victim = rig.path("victim");
    fs::write(&victim, b"keep").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();

    // Random bytes, to a name that is a symlink: the link is replaced, not followed.
    let random = rig.path("random.bin");
    std::os::unix::fs::symlink(&victim, &random).unwrap();
    ok(
        &with_umask_022(&rig, &["envelope", "random", "--region", "us-east-1", "--bytes", "64", arg(&random)]),
        "random",
    );
    assert_eq!(fs::read(&victim).unwrap(), b"keep", "written through the symlink");
    assert!(!fs::symlink_metadata(&random).unwrap().file_type().is_symlink());
    assert_eq!((fs::read(&random).unwrap().len(), mode(&random)), (64, 0o600));

    // A prepared data key, new and over an existing world-readable file.
    let dk = rig.path("prepared.key");
    ok(&with_umask_022(&rig, &["envelope", "datakey", "--key", "alias/backup", arg(&dk)]), "datakey");
    assert_eq!(mode(&dk), 0o600);
    fs::set_permissions(&dk, fs::Permissions::from_mode(0o644)).unwrap();
    ok(&with_umask_022(&rig, &["envelope", "datakey", "--key", "alias/backup", arg(&dk)]), "datakey again");
    assert_eq!(mode(&dk), 0o600, "replaced by a new owner-only file");
    let mut left = named_like(rig.path("").as_path(), ".");
    left.retain(|n| n != ".aws");
    assert_eq!(left, Vec::<String>::new(), "temporary files left");
}

#[test]
fn the_state_dir_is_the_owners_only() {
    let dir = tempfile::tempdir().unwrap();
    let plan = crate::support::bin::root("plans/example.yaml");
    let o = Command::new("sh")
        .args(["-c", "umask 022 && exec \"$0\" \"$@\"", BIN])
        .args(["run", plan.to_str().unwrap(), "--simulate"])
        .env_remove("SNAPFERRY_STATE_DIR")
        .env_remove("AWS_ENDPOINT_URL")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (mut dirs, mut files) = (vec![], vec![]);
    let mut todo = vec![dir.path().join(".snapferry")];
    while let Some(d) = todo.pop() {
        dirs.push((d.clone(), mode(&d)));
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { todo.push(p) } else { files.push((p.clone(), mode(&p))) }
        }
    }
    let names: Vec<String> = files.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["checkpoint.json", "journal.jsonl", "prod-db-dr.lock", "prod-db-dr.json"] {
        assert!(names.iter().any(|n| n == expected), "{expected} not in the state: {names:?}");
    }
    assert!(dirs.len() >= 5, "the state dir, runs/, runs/ID/, locks/, simulated-aws/: {dirs:?}");
    for (d, m) in &dirs {
        assert_eq!(*m, 0o700, "{}", d.display());
    }
    for (f, m) in &files {
        assert_eq!(*m, 0o600, "{}", f.display());
    }
}

#[test]
fn each_envelope_command_shows_only_what_it_uses_and_explains_every_option() {
    use clap::CommandFactory;
    let cli = snapferry::cli::Cli::command();
    let envelope = cli.find_subcommand("envelope").expect("envelope command");
    let mut seen = 0;
    for sub in envelope.get_subcommands() {
        let ids: Vec<&str> = sub.get_arguments().map(|a| a.get_id().as_str()).collect();
        for arg in sub.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.trim().is_empty(), "envelope {} {}: no help text", sub.get_name(), arg.get_id());
            if arg.get_id() == "state_dir" {
                assert!(
                    help.contains("--simulate"),
                    "envelope {}: --state-dir says what it is for: {help}",
                    sub.get_name()
                );
            }
            seen += 1;
        }
        for run_only in ["run_id", "max_duration", "dry_run", "offline", "metrics_file", "plan"] {
            assert!(!ids.contains(&run_only), "envelope {} shows {run_only}", sub.get_name());
        }
    }
    assert!(seen > 20, "the envelope commands have their options: {seen}");
}

//! `snapferry envelope` against the AWS Encryption SDK's own command line tool,
//! `aws-encryption-cli` (PyPI `aws-encryption-sdk-cli`, pinned in scripts/test), both on
//! moto's KMS: what snapferry writes the CLI decrypts, what the CLI writes snapferry
//! decrypts, for both committing suites, frame lengths from 1 byte to several MiB, empty
//! input, with and without encryption context; damaged messages are refused by both with
//! nothing written; decryption is held to the keys, accounts and context allowed.
//!
//! The CLI reaches moto through `AWS_ENDPOINT_URL`, which botocore honours for every
//! client it makes. It asks of a frame length it encrypts with that it be a multiple of
//! 128 bytes; it decrypts any.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use snapferry::envelope::{Header, encrypt_file};

use crate::support::bin::{against_moto, snapferry};
use crate::support::bytes::seeded;
use crate::support::moto::Moto;

const INSTALL_HINT: &str = "the interoperability tests need the AWS Encryption SDK CLI: \
     `python3 -m pip install \"aws-encryption-sdk-cli==4.3.0\"` (scripts/test installs it; \
     set SNAPFERRY_TEST_ESDK_CLI to use another path than aws-encryption-cli)";

const SIGNED: &str = "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384";
const UNSIGNED: &str = "AES_256_GCM_HKDF_SHA512_COMMIT_KEY";
/// moto's default account.
const ACCOUNT: &str = "123456789012";
const MIB: usize = 1 << 20;

pub(crate) struct Interop {
    pub(crate) moto: Moto,
    dir: tempfile::TempDir,
    /// Two KMS keys: ARNs; `alias/backup` names the first.
    pub(crate) keys: [String; 2],
}

impl Interop {
    pub(crate) fn start() -> Interop {
        let moto = Moto::start();
        let dir = tempfile::tempdir().unwrap();
        let mut rig = Interop { moto, dir, keys: [String::new(), String::new()] };
        let made = rig.py("import boto3, json\nk = boto3.client('kms')\n\
             a = [k.create_key()['KeyMetadata']['Arn'] for _ in range(2)]\n\
             k.create_alias(AliasName='alias/backup', TargetKeyId=a[0])\nprint(json.dumps(a))");
        rig.keys = [made[0].as_str().unwrap().to_owned(), made[1].as_str().unwrap().to_owned()];
        rig
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Nothing of the developer's AWS setup: test credentials and moto's endpoint.
    pub(crate) fn env(&self, cmd: &mut Command) {
        against_moto(cmd, &self.moto.endpoint, self.dir.path(), "testing")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_DEFAULT_REGION", "us-east-1");
    }

    /// Runs a boto3 script that prints one JSON value.
    pub(crate) fn py(&self, script: &str) -> Value {
        let python = std::env::var("SNAPFERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let mut cmd = Command::new(&python);
        self.env(&mut cmd);
        let out = cmd.arg("-c").arg(script).output().unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        assert!(out.status.success(), "boto3 script failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub(crate) fn snapferry(&self, args: &[&str]) -> Output {
        let mut cmd = snapferry();
        self.env(&mut cmd);
        cmd.args(args).args(["--state-dir", self.path("state").to_str().unwrap()]).output().expect("run snapferry")
    }

    fn cli(&self, args: &[&str]) -> Output {
        let program = std::env::var("SNAPFERRY_TEST_ESDK_CLI").unwrap_or_else(|_| "aws-encryption-cli".to_string());
        let mut cmd = Command::new(&program);
        self.env(&mut cmd);
        // -S: no metadata output.
        cmd.args(args).arg("-S").output().unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"))
    }

    fn cli_encrypt(&self, input: &Path, output: &Path, suite: &str, frame: usize, context: &[&str]) {
        let mut args = vec!["--encrypt", "-i", arg(input), "-o", arg(output), "--algorithm", suite];
        let frame = frame.to_string();
        let key = format!("key={}", self.keys[0]);
        args.extend(["--frame-length", &frame, "--wrapping-keys", &key]);
        if !context.is_empty() {
            args.push("--encryption-context");
            args.extend(context);
        }
        ok(&self.cli(&args), "aws-encryption-cli --encrypt");
    }

    fn cli_decrypt(&self, input: &Path, output: &Path, context: &[&str]) -> Output {
        let key = format!("key={}", self.keys[0]);
        let mut args = vec!["--decrypt", "-i", arg(input), "-o", arg(output), "--wrapping-keys", &key];
        if !context.is_empty() {
            args.push("--encryption-context");
            args.extend(context);
        }
        self.cli(&args)
    }
}

pub(crate) fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub(crate) fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The plaintexts of the interoperability cases.
pub(crate) fn data(len: usize) -> Vec<u8> {
    seeded(0x2545_F491_4F6C_DD1D, len)
}

/// One interoperability case: suite, frame length, plaintext length, context pairs.
struct Case(&'static str, usize, usize, &'static [&'static str]);

#[test]
fn what_snapferry_writes_the_cli_decrypts() {
    let rig = Interop::start();
    let cases = [
        Case(SIGNED, 1, 0, &[]),
        Case(UNSIGNED, 1, 0, &["purpose=backup"]),
        Case(SIGNED, 1, 300, &["purpose=backup", "team=sre"]),
        Case(UNSIGNED, 1, 257, &[]),
        Case(SIGNED, 1000, 10_000, &["purpose=backup"]),
        Case(UNSIGNED, 128, 1280, &[]),
        Case(SIGNED, 4096, 4096, &[]),
        Case(SIGNED, MIB, 3 * MIB + 5, &["purpose=backup"]),
        Case(UNSIGNED, 4 * MIB, 8 * MIB, &["purpose=backup"]),
        Case(UNSIGNED, 4 * MIB, 5 * MIB + 1, &[]),
    ];
    for (i, Case(suite, frame, len, context)) in cases.iter().enumerate() {
        let what = format!("case {i}: {suite}, frame {frame}, {len} bytes, context {context:?}");
        let input = rig.path(&format!("plain-{i}"));
        let sealed = rig.path(&format!("sealed-{i}"));
        let back = rig.path(&format!("back-{i}"));
        let plain = data(*len);
        fs::write(&input, &plain).unwrap();
        let frame_arg = frame.to_string();
        let mut args =
            vec!["envelope", "encrypt", "--key", "alias/backup", "--algorithm", suite, "--frame-length", &frame_arg];
        for pair in *context {
            args.extend(["--context", pair]);
        }
        args.extend([arg(&input), arg(&sealed)]);
        rig.moto.reset_calls();
        ok(&rig.snapferry(&args), &what);
        assert_eq!(rig.moto.calls(), json!({"kms:GenerateDataKey": 1}), "{what}");
        let out = rig.cli_decrypt(&sealed, &back, context);
        ok(&out, &format!("aws-encryption-cli --decrypt, {what}"));
        assert!(fs::read(&back).unwrap() == plain, "{what}: the CLI decrypted other bytes");
    }
}

#[test]
fn what_the_cli_writes_snapferry_decrypts() {
    let rig = Interop::start();
    let cases = [
        Case(SIGNED, 4096, 0, &[]),
        Case(UNSIGNED, 128, 0, &["purpose=backup"]),
        Case(SIGNED, 128, 1000, &["purpose=backup", "team=sre"]),
        Case(UNSIGNED, 128, 1280, &[]),
        Case(SIGNED, 4096, 3 * 4096, &["purpose=backup"]),
        Case(UNSIGNED, 4096, 100_001, &[]),
        Case(SIGNED, MIB, 3 * MIB + 5, &[]),
        Case(UNSIGNED, 4 * MIB, 8 * MIB, &["purpose=backup"]),
    ];
    for (i, Case(suite, frame, len, context)) in cases.iter().enumerate() {
        let what = format!("case {i}: {suite}, frame {frame}, {len} bytes, context {context:?}");
        let input = rig.path(&format!("plain-{i}"));
        let sealed = rig.path(&format!("sealed-{i}"));
        let back = rig.path(&format!("back-{i}"));
        let plain = data(*len);
        fs::write(&input, &plain).unwrap();
        rig.cli_encrypt(&input, &sealed, suite, *frame, context);
        // Half with the key named, half by discovery; the context is required back.
        let mut args = vec!["envelope", "decrypt", "--format", "json"];
        if i % 2 == 0 {
            args.extend(["--key", &rig.keys[0]]);
        } else {
            args.extend(["--discovery", "--discovery-account", ACCOUNT]);
        }
        for pair in *context {
            args.extend(["--context", pair]);
        }
        args.extend([arg(&sealed), arg(&back)]);
        rig.moto.reset_calls();
        let out = rig.snapferry(&args);
        ok(&out, &what);
        assert_eq!(rig.moto.calls(), json!({"kms:Decrypt": 1}), "{what}");
        assert!(fs::read(&back).unwrap() == plain, "{what}: snapferry decrypted other bytes");
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["algorithm"], *suite, "{what}");
        assert_eq!(doc["key_arn"], rig.keys[0], "{what}");
    }
}

/// Offsets worth damaging in a signed message of 3 full 4096-byte frames and a final
/// one of 100 bytes: inside the encryption context, the commit key, the header tag, the
/// first frame's ciphertext and tag, the final frame, and the signature and its length.
fn damage_points(message: &[u8]) -> Vec<(&'static str, usize)> {
    let context_len = usize::from(u16::from_be_bytes([message[35], message[36]]));
    let header_end = snapferry::envelope::read_message_header(&mut &message[..], 10).unwrap().as_bytes().len();
    let footer = header_end + 3 * (4 + 12 + 4096 + 16) + (4 + 4 + 12 + 4 + 100 + 16);
    vec![
        ("header: encryption context", 37 + context_len - 1),
        ("header: commit key", header_end - 16 - 5),
        ("header: authentication tag", header_end - 1),
        ("body: frame content", header_end + 4 + 12 + 3),
        ("body: frame tag", header_end + 4 + 12 + 4096 + 15),
        ("body: final frame", footer - 20),
        ("footer: signature length", footer + 1),
        ("footer: signature", footer + 10),
        ("footer: signature end", message.len() - 1),
    ]
}

#[test]
fn damaged_messages_are_refused_by_both_with_nothing_written() {
    let rig = Interop::start();
    let input = rig.path("plain");
    fs::write(&input, data(3 * 4096 + 100)).unwrap();
    let ours = rig.path("ours");
    let frame = "4096";
    let args = ["envelope", "encrypt", "--key", &rig.keys[0], "--frame-length", frame, "--context", "purpose=backup"];
    ok(&rig.snapferry(&[&args[..], &[arg(&input), arg(&ours)]].concat()), "snapferry encrypt");
    let theirs = rig.path("theirs");
    rig.cli_encrypt(&input, &theirs, SIGNED, 4096, &["purpose=backup"]);

    for (who, sealed) in [("snapferry", &ours), ("aws-encryption-cli", &theirs)] {
        let message = fs::read(sealed).unwrap();
        for (i, (part, at)) in damage_points(&message).into_iter().enumerate() {
            let what = format!("{who}'s message, {part} (byte {at})");
            let mut bad = message.clone();
            bad[at] ^= 0x10;
            let damaged = rig.path(&format!("damaged-{who}-{i}"));
            fs::write(&damaged, &bad).unwrap();
            let out_sf = rig.path(&format!("out-sf-{who}-{i}"));
            let o = rig.snapferry(&["envelope", "decrypt", "--discovery", arg(&damaged), arg(&out_sf)]);
            assert_eq!(o.status.code(), Some(1), "{what}: {}", String::from_utf8_lossy(&o.stderr));
            assert!(!out_sf.exists(), "{what}: snapferry left output");
            let out_cli = rig.path(&format!("out-cli-{who}-{i}"));
            let o = rig.cli_decrypt(&damaged, &out_cli, &[]);
            assert!(!o.status.success(), "{what}: the CLI accepted it");
            assert!(!out_cli.exists(), "{what}: the CLI left output");
        }
        // Truncated inside the signature, and with a byte appended.
        for (kind, bytes) in
            [("truncated", message[..message.len() - 1].to_vec()), ("appended", [&message[..], &[0]].concat())]
        {
            let damaged = rig.path(&format!("{kind}-{who}"));
            fs::write(&damaged, bytes).unwrap();
            let out = rig.path(&format!("out-{kind}-{who}"));
            let o = rig.snapferry(&["envelope", "decrypt", "--discovery", arg(&damaged), arg(&out)]);
            assert_eq!(o.status.code(), Some(1), "{who}, {kind}: {}", String::from_utf8_lossy(&o.stderr));
            assert!(!out.exists(), "{who}, {kind}: snapferry left output");
        }
    }
}

#[test]
fn decryption_is_held_to_the_keys_accounts_and_context_allowed() {
    let rig = Interop::start();
    let input = rig.path("plain");
    fs::write(&input, data(5000)).unwrap();
    let sealed = rig.path("sealed");
    ok(
        &rig.snapferry(&[
            "envelope",
            "encrypt",
            "--key",
            &rig.keys[0],
            "--context",
            "purpose=backup",
            arg(&input),
            arg(&sealed),
        ]),
        "encrypt",
    );
    let out = rig.path("out");
    let refused = |args: &[&str], needle: &str, calls: Value| {
        rig.moto.reset_calls();
        let o = rig.snapferry(&[&["envelope", "decrypt"], args, &[arg(&sealed), arg(&out)]].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists());
        assert_eq!(rig.moto.calls(), calls, "{args:?}");
    };
    refused(&["--key", &rig.keys[1]], "no data key of the message is under an allowed KMS key", json!({}));
    refused(&["--discovery", "--discovery-account", "111111111111"], "no data key", json!({}));
    refused(&["--discovery", "--context", "purpose=other"], "purpose=other", json!({}));
    refused(&["--discovery", "--max-encrypted-data-keys", "0"], "more than the 0 allowed", json!({}));
    let o = rig.snapferry(&["envelope", "decrypt", arg(&sealed), arg(&out)]);
    assert_eq!(o.status.code(), Some(2), "neither --key nor --discovery");

    // A message with two data keys (the CLI wraps under both keys): allowing the second
    // key alone decrypts with one Decrypt of that key.
    let two = rig.path("two");
    let keys = [format!("key={}", rig.keys[0]), format!("key={}", rig.keys[1])];
    ok(
        &rig.cli(&["--encrypt", "-i", arg(&input), "-o", arg(&two), "--wrapping-keys", &keys[0], &keys[1]]),
        "aws-encryption-cli with two keys",
    );
    rig.moto.reset_calls();
    ok(&rig.snapferry(&["envelope", "decrypt", "--key", &rig.keys[1], arg(&two), arg(&out)]), "second key");
    assert_eq!(rig.moto.calls(), json!({"kms:Decrypt": 1}));
    assert!(fs::read(&out).unwrap() == fs::read(&input).unwrap());
    let o = rig.snapferry(&[
        "envelope",
        "decrypt",
        "--discovery",
        "--max-encrypted-data-keys",
        "1",
        arg(&two),
        arg(&rig.path("out-two")),
    ]);
    assert_eq!(o.status.code(), Some(1), "two data keys over a limit of one");
}

#[test]
fn older_envelopes_and_prepared_keys_keep_working() {
    let rig = Interop::start();
    let input = rig.path("plain");
    let plain = data(200_000);
    fs::write(&input, &plain).unwrap();

    // A file in the older snapferry format, under a data key from moto's KMS.
    let dk = rig.py(&format!(
        "import boto3, json, base64\nr = boto3.client('kms').generate_data_key(KeyId='{}', KeySpec='AES_256')\n\
         print(json.dumps([base64.b64encode(r['Plaintext']).decode(), base64.b64encode(r['CiphertextBlob']).decode()]))",
        rig.keys[0]
    ));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key: [u8; 32] = b64.decode(dk[0].as_str().unwrap()).unwrap().try_into().unwrap();
    let blob = b64.decode(dk[1].as_str().unwrap()).unwrap();
    let old = rig.path("old.sfe");
    let header = Header::new(rig.keys[0].clone(), blob, 64 * 1024).unwrap();
    encrypt_file(&input, &old, &key, &header).unwrap();
    let back = rig.path("old.back");
    ok(
        &rig.snapferry(&["envelope", "decrypt", "--key", "alias/backup", arg(&old), arg(&back)]),
        "decrypt an older envelope",
    );
    assert!(fs::read(&back).unwrap() == plain);

    // A data key prepared with a context encrypts unsigned messages the CLI reads.
    let prepared = rig.path("prepared.key");
    ok(
        &rig.snapferry(&["envelope", "datakey", "--key", "alias/backup", "--context", "team=sre", arg(&prepared)]),
        "datakey",
    );
    let sealed = rig.path("prepared.esdk");
    ok(&rig.snapferry(&["envelope", "encrypt", "--data-key", arg(&prepared), arg(&input), arg(&sealed)]), "encrypt");
    let back = rig.path("prepared.back");
    ok(&rig.cli_decrypt(&sealed, &back, &["team=sre"]), "the CLI decrypts a message from a prepared key");
    assert!(fs::read(&back).unwrap() == plain);
    let o = rig.snapferry(&[
        "envelope",
        "encrypt",
        "--data-key",
        arg(&prepared),
        "--algorithm",
        SIGNED,
        arg(&input),
        arg(&rig.path("never")),
    ]);
    assert_eq!(o.status.code(), Some(2), "a prepared key cannot sign");
}

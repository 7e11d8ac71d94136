//! A moto server for the end-to-end tests: EC2, KMS and STS on a loopback port, with
//! the EBS behaviour the copy depends on (see tests/support/moto/README.md).
//!
//! ```ignore
//! let moto = Moto::start();
//! moto.configure(serde_json::json!({"copy_pending_seconds": 2}));
//! // run snapferry with AWS_ENDPOINT_URL=moto.endpoint ...
//! assert_eq!(moto.calls()["ec2:CopySnapshot"], 1);
//! ```
#![allow(dead_code)] // not every test uses every method

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Starting Python and importing moto takes a few seconds; a cold CI runner, more.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
const INSTALL_HINT: &str = "the end-to-end tests need Python 3 with moto's server: \
     `python3 -m pip install \"moto[server]==5.2.1\"` \
     (set SNAPFERRY_TEST_PYTHON to use another interpreter than python3)";

/// A running `snapferry_moto.py`; killed when dropped.
pub struct Moto {
    /// `http://127.0.0.1:PORT`, for AWS_ENDPOINT_URL or `--endpoint-url`.
    pub endpoint: String,
    pub port: u16,
    child: Child,
}

impl Moto {
    /// Starts a server with the default options (nothing pending, no throttling).
    pub fn start() -> Moto {
        Moto::start_with(&[])
    }

    /// Starts a server with extra launcher flags, e.g. `&["--copy-pending-seconds", "2"]`.
    pub fn start_with(args: &[&str]) -> Moto {
        let port = free_port();
        let python = std::env::var("SNAPFERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("tests/support/moto/snapferry_moto.py");

        let mut child = match Command::new(&python)
            .arg(&script)
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Errors (a missing moto, a traceback) show up in the test output.
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(child) => child,
            Err(err) => panic!("cannot run `{python}`: {err}; {INSTALL_HINT}"),
        };

        // Read stdout on a thread so that waiting for the ready line can time out. The
        // thread then keeps draining stdout: a full pipe would block the server.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = ready_tx.send(lines.next());
            for _ in lines {}
        });

        let endpoint = format!("http://127.0.0.1:{port}");
        let outcome = ready_rx.recv_timeout(READY_TIMEOUT);
        if let Ok(Some(Ok(line))) = &outcome
            && line.trim() == format!("ready {endpoint}")
        {
            return Moto { endpoint, port, child };
        }

        let what = match outcome {
            Ok(Some(Ok(line))) => format!("it printed {line:?} instead of its ready line"),
            Ok(Some(Err(err))) => format!("reading its output failed: {err}"),
            Ok(None) => "it exited before it was ready (its error is above)".to_string(),
            Err(_) => format!("it was not ready within {READY_TIMEOUT:?}"),
        };
        let _ = child.kill();
        let status = match child.wait() {
            Ok(status) => status.to_string(),
            Err(err) => format!("exit status unknown ({err})"),
        };
        panic!("moto server `{python} {}` did not start: {what}; {status}; {INSTALL_HINT}", script.display());
    }

    /// Changes options at run time: any of `snapshot_pending_seconds`,
    /// `copy_pending_seconds`, `volume_pending_seconds`, `throttle_rate`,
    /// `throttle_seed`, `throttle_actions`, `max_concurrent_copies`. Pending times
    /// apply to what is created afterwards.
    pub fn configure(&self, json: serde_json::Value) {
        self.control("POST", "/_snapferry/config", &json.to_string());
    }

    /// Every request received since the last reset, as `{"ec2:CreateSnapshot": 3, ...}`.
    pub fn calls(&self) -> serde_json::Value {
        self.calls_view("all")
    }

    /// One view of the call counts: `all`, `mutating`, `throttled` or `by-account`.
    pub fn calls_view(&self, view: &str) -> serde_json::Value {
        let body = self.control("GET", &format!("/_snapferry/calls?view={view}"), "");
        serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("moto server: bad JSON from /_snapferry/calls: {err}: {body}"))
    }

    /// Sets every call count back to zero.
    pub fn reset_calls(&self) {
        self.control("POST", "/_snapferry/reset-calls", "");
    }

    /// One HTTP/1.1 request to the control API; returns the body of a 200 answer.
    fn control(&self, method: &str, path: &str, body: &str) -> String {
        let fail = |what: String| -> ! { panic!("moto server: {method} {path}: {what}") };
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).unwrap_or_else(|err| fail(format!("cannot connect: {err}")));
        stream
            .set_read_timeout(Some(CONTROL_TIMEOUT))
            .unwrap_or_else(|err| fail(format!("cannot set a timeout: {err}")));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\n{body}",
            port = self.port,
            length = body.len(),
        );
        stream.write_all(request.as_bytes()).unwrap_or_else(|err| fail(format!("cannot send: {err}")));
        // `Connection: close`: the answer ends when the server closes the connection.
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap_or_else(|err| fail(format!("cannot read the answer: {err}")));
        let (head, answer) =
            response.split_once("\r\n\r\n").unwrap_or_else(|| fail(format!("malformed answer: {response:?}")));
        let status_line = head.lines().next().unwrap_or_default();
        if status_line.split_whitespace().nth(1) != Some("200") {
            fail(format!("{status_line}: {answer}"));
        }
        answer.to_string()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free right now: the kernel picks it, the listener is closed again.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("cannot find a free loopback port: {err}"))
}

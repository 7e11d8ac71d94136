//! The fault-injecting proxy in front of moto (`tests/support/moto/fault_proxy.py`):
//! forwards to the moto server on loopback, and on command loses the answer of a
//! write it carried out (500) or holds every request of a partition, then forwards it.
//!
//! ```ignore
//! let proxy = FaultProxy::start(&moto.endpoint);
//! proxy.rules(serde_json::json!([{"fault": "lose", "methods": ["PUT"], "path": "/runs/"}]));
//! // run snapferry with AWS_ENDPOINT_URL=proxy.endpoint ...
//! let log = proxy.log();
//! ```
#![allow(dead_code)] // not every test uses every method

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `fault_proxy.py`; killed when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, for AWS_ENDPOINT_URL.
    pub endpoint: String,
    port: u16,
    child: Child,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`) on a port the system picks.
    pub fn start(upstream: &str) -> FaultProxy {
        let python = std::env::var("SNAPFERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/moto/fault_proxy.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--upstream", upstream, "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{python}`: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("the fault proxy did not start: {other:?}");
            }
        };
        let endpoint = line.trim().strip_prefix("ready ").unwrap_or_else(|| panic!("not a ready line: {line:?}"));
        let port = endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
        FaultProxy { endpoint: endpoint.to_owned(), port, child }
    }

    /// Replaces the rules (see the script's documentation).
    pub fn rules(&self, rules: serde_json::Value) {
        self.control("POST", "/_fault/rules", &rules.to_string());
    }

    /// Every request received so far, in order.
    pub fn log(&self) -> Vec<serde_json::Value> {
        let body = self.control("GET", "/_fault/log", "");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("fault proxy: bad JSON log ({e}): {body}"))
    }

    fn control(&self, method: &str, path: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the fault proxy");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send to the fault proxy");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read the fault proxy's answer");
        let (head, answer) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("malformed: {response:?}"));
        assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "fault proxy: {head}");
        answer.to_owned()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

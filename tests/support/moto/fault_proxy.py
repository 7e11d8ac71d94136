#!/usr/bin/env python3
"""An HTTP proxy in front of the moto server that makes S3 have a bad day.

    python3 fault_proxy.py --upstream http://127.0.0.1:MOTO_PORT --port 0

Prints ``ready http://127.0.0.1:PORT`` on stdout once it listens, then forwards every
request to the upstream (on loopback) and answers what the upstream answered, except
where a rule says otherwise:

``lose``
    The request is forwarded; when the upstream carried it out (2xx), its answer is
    replaced by ``500 InternalError``, as S3 does when it commits a write and then
    fails to answer. A retry of it is forwarded as usual (and refused by the upstream
    if it was conditional).
``hold``
    The first matching request starts a partition of ``seconds``: every request
    received until it ends (whatever it is) is held, then forwarded, and its answer
    sent to a client that may have stopped waiting long ago.

Rules match on the HTTP method and a substring of the path; ``times`` (or null for
every one) says how many requests a rule applies to. The control API, under
``/_fault/`` on the same port, is never forwarded:

``POST /_fault/rules``  a JSON list of rules, replacing the current ones, e.g.
    ``[{"fault": "lose", "methods": ["PUT", "DELETE"], "path": "/runs/", "times": null}]``
    ``[{"fault": "hold", "methods": ["PUT"], "path": "/runs/", "seconds": 30, "times": 1}]``
``GET /_fault/log``  every request forwarded or held so far, in the order received:
    ``{"received", "forwarded", "answered"}`` (seconds since the epoch; ``forwarded``
    null until then), ``method``, ``path``, ``service`` (from the signature's scope:
    ``s3``, ``ec2``, ...), ``status`` (the upstream's), ``fault`` (``lose``, ``hold``
    or null) and ``sent`` (the status the client was answered, null if it was gone).
"""

import argparse
import http.client
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
LOST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message>"
    b"<RequestId>fault-proxy</RequestId></Error>"
)
SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.rules = []
        self.log = []
        self.partition_until = 0.0

    def fault_for(self, method, path):
        """The fault of the first rule that matches, counting it; a hold starts a partition."""
        with self.lock:
            now = time.time()
            if now < self.partition_until:
                return "hold", self.partition_until
            for rule in self.rules:
                if rule.get("times") is not None and rule["times"] <= 0:
                    continue
                if method not in rule.get("methods", [method]) or rule.get("path", "") not in path:
                    continue
                if rule.get("times") is not None:
                    rule["times"] -= 1
                if rule["fault"] == "hold":
                    self.partition_until = now + float(rule["seconds"])
                    return "hold", self.partition_until
                return rule["fault"], None
            return None, None


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None
    upstream = None

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def control(self, body):
        if self.command == "POST" and self.path == "/_fault/rules":
            rules = json.loads(body or b"[]")
            with self.state.lock:
                self.state.rules = rules
                self.state.partition_until = 0.0
            out = rules
        elif self.command == "GET" and self.path == "/_fault/log":
            with self.state.lock:
                out = list(self.state.log)
        else:
            self.answer(404, [("Content-Type", "application/json")], b'{"error": "no such control request"}')
            return
        self.answer(200, [("Content-Type", "application/json")], json.dumps(out).encode())

    def forward(self):
        body = self.body()
        if self.path.startswith("/_fault/"):
            return self.control(body)
        scope = SCOPE.search(self.headers.get("Authorization", ""))
        entry = {
            "received": time.time(),
            "forwarded": None,
            "answered": None,
            "method": self.command,
            "path": self.path,
            "service": scope.group(1) if scope else None,
            "status": None,
            "fault": None,
            "sent": None,
        }
        with self.state.lock:
            self.state.log.append(entry)
        fault, until = self.state.fault_for(self.command, self.path)
        entry["fault"] = fault
        if fault == "hold":
            time.sleep(max(0.0, until - time.time()))
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                conn.putheader(k, v)
        if body or self.command in ("PUT", "POST"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        entry["forwarded"] = time.time()
        resp = conn.getresponse()
        data = resp.read()
        headers = resp.getheaders()
        conn.close()
        entry["status"] = resp.status
        status = resp.status
        if fault == "lose" and 200 <= status < 300:
            status, headers, data = 500, [("Content-Type", "application/xml")], LOST
        try:
            self.answer(status, headers, data)
            entry["sent"] = status
        except OSError:
            self.close_connection = True
        entry["answered"] = time.time()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the moto server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    upstream = urlsplit(args.upstream)
    if upstream.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("fault_proxy: the upstream must be on loopback")
    Proxy.state = State()
    Proxy.upstream = upstream
    server = ThreadingHTTPServer((args.host, args.port), Proxy)
    server.daemon_threads = True
    print(f"ready http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""The Python test worker of package workers (stdlib only).

It serves HTTP on 127.0.0.1:$PORT, receives binary-mode CloudEvents and
answers with a reply CloudEvent, driven by the event's JSON data like the Go
worker: sleep_ms, status, crash, stdout, stderr. The reply reports the pid,
the environment and the most requests the worker ever held at once.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
inflight = 0
max_inflight = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        global inflight, max_inflight
        with lock:
            inflight += 1
            max_inflight = max(max_inflight, inflight)
        try:
            self.handle_event()
        finally:
            with lock:
                inflight -= 1

    def handle_event(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        if req.get("stdout"):
            print(req["stdout"], flush=True)
        if req.get("stderr"):
            print(req["stderr"], file=sys.stderr, flush=True)
        if req.get("crash"):
            print("crashing on demand", file=sys.stderr, flush=True)
            os._exit(3)
        time.sleep(req.get("sleep_ms", 0) / 1000)
        status = req.get("status", 0)
        if status:
            msg = b"failing on demand\n"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        with lock:
            peak = max_inflight
        data = json.dumps({
            "worker": "python",
            "pid": os.getpid(),
            "port": os.environ.get("PORT"),
            "path": self.path,
            "id": self.headers.get("ce-id"),
            "type": self.headers.get("ce-type"),
            "max_inflight": peak,
            "env": ["%s=%s" % kv for kv in os.environ.items()],
        }).encode()
        self.send_response(200)
        self.send_header("ce-specversion", "1.0")
        self.send_header("ce-id", "reply-" + (self.headers.get("ce-id") or ""))
        self.send_header("ce-source", "/workers/testdata/pyworker")
        self.send_header("ce-type", "dev.weft.test.reply")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main():
    port = int(os.environ["PORT"])
    print("worker starting pid=%d port=%d" % (os.getpid(), port), flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()

"""A test function in Python (stdlib only).

Appends one JSON line per received CloudEvent to $OUT. Events of type
test.reply.me are answered with a binary-mode reply of type test.replied.
While the file $FAIL_FLAG exists it answers 500 with a short body.
"""
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        flag = os.environ.get("FAIL_FLAG")
        if flag and os.path.exists(flag):
            return self.answer(500, b"python says no", {"Content-Type": "text/plain"})
        rec = {k.lower()[3:]: v for k, v in self.headers.items() if k.lower().startswith("ce-")}
        rec["data"] = body.decode("utf-8", "replace")
        with LOCK, open(os.environ["OUT"], "a") as f:
            f.write(json.dumps(rec) + "\n")
        if rec.get("type") == "test.reply.me":
            return self.answer(200, b'{"replied": true}', {
                "Content-Type": "application/json",
                "ce-specversion": "1.0",
                "ce-id": rec["id"] + "-reply",
                "ce-source": "/pyfunc",
                "ce-type": "test.replied",
            })
        self.answer(202, b"", {})

    def answer(self, status, body, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()

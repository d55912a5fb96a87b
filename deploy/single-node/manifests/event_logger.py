"""event-logger: a weft function in Python, standard library only.

weft starts it with PORT set and POSTs each matched event to
127.0.0.1:$PORT as a binary-mode CloudEvent: the attributes arrive as ce-*
headers, the data as the body. It prints one JSON line per event to stdout,
which weft captures (`weft logs event-logger`), and answers 204 without a
body, so nothing re-enters the broker. GET /healthz answers 200 for the
readiness probe in event-logger.yaml.
"""
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        event = {k.lower()[3:]: v for k, v in self.headers.items() if k.lower().startswith("ce-")}
        if self.headers.get("Content-Type"):
            event["datacontenttype"] = self.headers["Content-Type"]
        try:
            event["data"] = json.loads(body) if body else None
        except ValueError:
            event["data"] = body.decode("utf-8", "replace")
        print(json.dumps(event, sort_keys=True), flush=True)
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        if self.path != "/healthz":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, fmt, *args):
        pass  # the one line per event above is the log; no access log


def main():
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    # weft stops an instance with SIGTERM once its in-flight requests are done.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"event-logger listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

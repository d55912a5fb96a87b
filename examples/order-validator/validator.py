"""order-validator: a weft function in Python, standard library only.

It receives com.example.order.created as a binary-mode CloudEvent on $PORT,
checks the order, and replies with com.example.order.validated, which weft
feeds back into the broker. An order without an id is refused with 400,
which Knative (and weft) do not retry.
"""
import json
import os
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            order = json.loads(body or b"{}")
        except ValueError:
            order = {}
        if not isinstance(order, dict) or "id" not in order:
            self.reply(400, b'{"error": "an order needs an id"}', {"Content-Type": "application/json"})
            return
        amount = float(order.get("amount", 0))
        print(f"validated order {order['id']} (amount {amount})", flush=True)
        out = json.dumps({"id": order["id"], "amount": amount, "valid": True}).encode()
        self.reply(200, out, {
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": str(uuid.uuid4()),
            "ce-type": "com.example.order.validated",
            "ce-source": "/weft/order-validator",
            "ce-subject": str(order["id"]),
        })

    def reply(self, status, body, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass  # weft captures stdout; one line per order is enough


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    print(f"order-validator listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

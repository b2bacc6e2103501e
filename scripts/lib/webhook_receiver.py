#!/usr/bin/env python3
"""A webhook receiver for scripts/drop-demo.sh: checks each delivery's
Standard Webhooks signature (HMAC-SHA256 over `id.timestamp.body` with the
secret after `whsec_`, base64), answers 503 to the first attempt of every
third event (to show the retries, same webhook-id), 204 otherwise, and
appends one JSON line per attempt to LOG.

    webhook_receiver.py PORT SECRET LOG
"""
import base64, hashlib, hmac, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, secret, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
key = base64.b64decode(secret.removeprefix("whsec_"))
seen, lock = {}, threading.Lock()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        wid = self.headers.get("webhook-id", "")
        ts = self.headers.get("webhook-timestamp", "")
        mac = hmac.new(key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
        want = "v1," + base64.b64encode(mac).decode()
        valid = want in self.headers.get("webhook-signature", "").split(" ")
        with lock:
            n = seen.get(wid, 0) + 1
            seen[wid] = n
            first_of_third = n == 1 and len(seen) % 3 == 0
        status = 401 if not valid else (503 if first_of_third else 204)
        event = json.loads(body) if valid else {}
        with lock, open(log, "a") as f:
            f.write(json.dumps({"id": wid, "attempt": n, "valid": valid, "status": status,
                                "type": event.get("type"), "user": event.get("data", {}).get("user_id")}) + "\n")
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Hook).serve_forever()

#!/usr/bin/env python3
"""A minimal webhook receiver for the bridge, Python 3 standard library only.

It verifies Standard Webhooks v1 signatures, drops duplicate deliveries by
webhook-id, prints each message and answers 204.

    WEBHOOK_SECRET=whsec_... python3 examples/python-receiver/receiver.py   # 127.0.0.1:9003
    WEBHOOK_SECRET=whsec_... HOST=127.0.0.1 PORT=9100 python3 receiver.py

Answers matter: the bridge acks on 2xx, retries on 408/425/429/5xx and
dead-letters any other 4xx as "dropped". This receiver answers 401 on a bad
signature (a forged or misconfigured request should not be retried), so a wrong
WEBHOOK_SECRET sends real messages to the subscription's dead-letter queue: fix
the secret, then replay them.
"""

import base64
import binascii
import collections
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 5 * 60  # Standard Webhooks timestamp tolerance
MAX_BODY = 10 << 20
MAX_SEEN = 10000  # webhook-ids remembered for deduplication


def signing_key(secret):
    """The HMAC key is the base64 part of the secret after "whsec_"."""
    if not secret.startswith("whsec_"):
        raise ValueError("WEBHOOK_SECRET must be set to the subscription's whsec_... secret")
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except binascii.Error:
        key = b""
    if not key:
        raise ValueError("WEBHOOK_SECRET: not base64 after whsec_")
    return key


def verify(key, msg_id, timestamp, signatures, body, now=None):
    """Returns None when the push is authentic, else why it is not."""
    if not msg_id or not timestamp or not signatures:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        ts = int(timestamp)
    except ValueError:
        return "bad webhook-timestamp"
    if abs((time.time() if now is None else now) - ts) > TOLERANCE_SECONDS:
        return "webhook-timestamp outside the 5 minute tolerance"
    # Signed content: "{webhook-id}.{webhook-timestamp}.{body}" over the raw body bytes.
    want = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    # Several space-separated entries while a rotated secret is live: accept any v1 match.
    for entry in signatures.split():
        scheme, _, b64 = entry.partition(",")
        if scheme != "v1":
            continue  # another scheme
        try:
            got = base64.b64decode(b64, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(got, want):  # constant time
            return None
    return "no matching v1 signature"


class Seen:
    """Recently handled webhook-ids (stable across retries), oldest evicted first."""

    def __init__(self, size):
        self.size, self.ids, self.lock = size, collections.OrderedDict(), threading.Lock()

    def first_time(self, msg_id):
        with self.lock:
            if msg_id in self.ids:
                return False
            self.ids[msg_id] = None
            if len(self.ids) > self.size:
                self.ids.popitem(last=False)
            return True

    def forget(self, msg_id):
        with self.lock:
            self.ids.pop(msg_id, None)


def handle(body, headers):
    """Your code. body is the raw bytes as published; raise to have the bridge retry."""
    tenant = headers.get("x-tenant")  # published with Bridge-Forward-X-Tenant
    line = "message {} subject={} subscription={} delivery={} content-type={}{}".format(
        headers.get("webhook-id"), headers.get("bridge-subject", ""),
        headers.get("bridge-subscription", ""), headers.get("redis-delivery-count", ""),
        json.dumps(headers.get("content-type", "")), f" tenant={tenant}" if tenant else "")
    say(f"{line}\n{body.decode('utf-8', 'replace')}")


# Pushes are handled on several threads at once: each message goes out in one locked write,
# so the lines of two messages never interleave (print writes its text and its end apart).
say_lock = threading.Lock()


def say(text, out=None):
    with say_lock:
        out = out or sys.stdout
        out.write(text + "\n")
        out.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the bridge reuses connections
    key = b""
    seen = Seen(MAX_SEEN)

    def answer(self, status, text=""):
        data = text.encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "text/plain")
        if status != 204:
            self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return self.answer(411, "Content-Length required\n")
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            return self.answer(413, "body too large\n")
        body = self.rfile.read(length)

        msg_id = self.headers.get("webhook-id")
        reason = verify(self.key, msg_id, self.headers.get("webhook-timestamp"),
                        self.headers.get("webhook-signature"), body)
        if reason:
            say(f"rejected {msg_id or '(no webhook-id)'}: {reason}", sys.stderr)
            return self.answer(401, "invalid signature\n")
        # A real receiver records the id together with the effect of the message
        # (in the same database transaction) rather than in memory.
        if not self.seen.first_time(msg_id):
            say(f"duplicate {msg_id} ignored", sys.stderr)
            return self.answer(204)  # already handled: ack again
        try:
            handle(body, self.headers)
        except Exception as err:  # noqa: BLE001 - any failure: let the bridge retry
            self.seen.forget(msg_id)
            say(f"handling {msg_id} failed: {err!r}", sys.stderr)
            return self.answer(500, "handler failed\n")
        self.answer(204)

    def do_GET(self):
        self.close_connection = True
        self.send_response(405)
        self.send_header("Allow", "POST")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def log_message(self, fmt, *args):  # quiet: the outcome of each push is printed above
        pass


def main():
    try:
        Handler.key = signing_key(os.environ.get("WEBHOOK_SECRET", ""))
    except ValueError as err:
        sys.exit(str(err))
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "9003"))
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print(f"listening on http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

"""A webhook receiver written against other people's code, not datastack's:

- the seed document's verification, unchanged: hex HMAC-SHA256 of the raw body with the
  secret's text, compared with hmac.compare_digest against X-Webhook-Signature;
- the Standard Webhooks reference library for Python (`standardwebhooks`), which checks
  webhook-id, webhook-timestamp and webhook-signature.

It registers a webhook on the datastack node at DATASTACK_URL (token DATASTACK_TOKEN),
publishes an event, rotates the secret with an overlap and sends a test ping, and checks
that every delivery verifies, that a tampered body does not, and that the request_id is
the event's id. Exits non-zero on any failure.
"""

import hashlib
import hmac
import json
import os
import queue
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

URL = os.environ["DATASTACK_URL"]
TOKEN = os.environ["DATASTACK_TOKEN"]
received: "queue.Queue[tuple[dict, bytes]]" = queue.Queue()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        received.put(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args):
        pass


def api(method, path, scope, body=None):
    req = urllib.request.Request(
        URL + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Bearer " + TOKEN,
            "x-datastack-scope": scope,
            "content-type": "application/json",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def seed_verify(secret, headers, body):
    """The seed's receiver, as written there."""
    signature = headers.get("x-webhook-signature")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, expected)


def next_delivery(kind):
    while True:
        headers, body = received.get(timeout=15)
        if json.loads(body)["type"] == kind:
            return headers, body


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{server.server_address[1]}/webhook"

    created = api("POST", "/api/v1/webhooks", "manage:webhooks",
                  {"url": hook_url, "events": ["job.*", "test.ping"]})
    secret, hook = created["secret"], created["id"]
    event = api("POST", "/api/v1/events", "manage:events",
                {"type": "job.completed", "data": {"jobId": "interop-1"}})

    headers, body = next_delivery("job.completed")
    assert seed_verify(secret, headers, body), "the seed's verification fails"
    payload = Webhook(secret).verify(body, headers)
    assert payload["request_id"] == event["id"], payload
    assert payload["data"]["jobId"] == "interop-1", payload
    tampered = body.replace(b"interop-1", b"interop-2")
    assert not seed_verify(secret, headers, tampered), "a tampered body passes the seed's check"
    try:
        Webhook(secret).verify(tampered, headers)
        raise AssertionError("a tampered body passes standardwebhooks")
    except WebhookVerificationError:
        pass

    rotated = api("POST", f"/api/v1/webhooks/{hook}/rotate-secret", "manage:webhooks",
                  {"overlapSeconds": 600})
    new = rotated["secret"]
    api("POST", f"/api/v1/webhooks/{hook}/test", "manage:webhooks", {})
    headers, body = next_delivery("test.ping")
    Webhook(secret).verify(body, headers)  # the old secret, during the overlap
    Webhook(new).verify(body, headers)
    assert seed_verify(new, headers, body), "the seed's header is not signed with the new secret"
    print("webhooks: the seed's Python and standardwebhooks verify every delivery")
    server.shutdown()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - any failure fails the check
        print(f"webhook interop failed: {e!r}", file=sys.stderr)
        sys.exit(1)

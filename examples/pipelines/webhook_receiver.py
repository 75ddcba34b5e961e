"""A webhook receiver for gif-service: verifies each delivery's Standard Webhooks signature with
the ``standardwebhooks`` package, drops duplicates by ``webhook-id`` (delivery is at least once)
and prints the job's outcome. Standard library HTTP server; ``pip install standardwebhooks``.

    export GIF_BASE_URL=http://127.0.0.1:8000 GIF_API_KEY=...  # to fetch the secret, or:
    export GIF_WEBHOOK_SECRET=whsec_...                         # the secret itself
    python webhook_receiver.py --port 9000

then submit jobs with ``"webhook": {"url": "https://<this host>/hook"}`` (docs/service.md,
"Webhooks"; a receiver on a private address needs the operator's GIF_WEBHOOK_ALLOWED_HOSTS).
During a secret rotation deliveries carry two signatures; either secret verifies them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

#: How many delivery ids are remembered to drop repeats (a real receiver keeps them in its database).
SEEN_LIMIT = 10_000


def load_secret() -> str:
    """``$GIF_WEBHOOK_SECRET``, else the tenant's secret from the service (``gif_client``)."""
    secret = os.environ.get("GIF_WEBHOOK_SECRET")
    if secret:
        return secret
    from gif_client import Client

    with Client() as client:
        return client.webhook_secret()


def make_handler(webhook: Webhook, seen: OrderedDict[str, None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                event = webhook.verify(body, dict(self.headers.items()))  # the raw bytes, as received
            except WebhookVerificationError as exc:
                self._answer(400, f"signature refused: {exc}")
                return
            delivery = self.headers["webhook-id"]
            if delivery not in seen:
                seen[delivery] = None
                if len(seen) > SEEN_LIMIT:
                    seen.popitem(last=False)
                handle(event)
            self._answer(204)  # 2xx: delivered; anything else is retried with backoff

        def _answer(self, status: int, text: str = "") -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def handle(event: dict) -> None:
    """Act on one verified event (here: print it). Answer fast; do long work elsewhere."""
    job = event["data"]
    line = {"type": event["type"], "job": job["id"], "status": job["status"]}
    if job.get("error"):
        line["error"] = job["error"]["code"]
    if job.get("progress"):
        line["stage"] = job["progress"].get("stage")
    print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Webhook(load_secret()), OrderedDict()))
    print(f"listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

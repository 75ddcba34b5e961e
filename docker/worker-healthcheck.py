"""Docker HEALTHCHECK of a worker container: does the Celery worker of this host answer a ping?

The worker's node name is ``<name>@<hostname>`` (``gif-service worker`` uses ``gif@%h``), and a
container's hostname is its own, so the ping is addressed to ``*@<this hostname>`` only: one
unhealthy worker never hides behind a healthy one. The prefork parent answers even while its
child computes a long job. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import socket
import sys


def main() -> int:
    from workers.celery_app import app  # no torch, no CUDA (see workers/celery_app.py)

    pattern = f"*@{socket.gethostname()}"
    try:
        replies = app.control.inspect(timeout=5.0, limit=1, pattern=pattern, matcher="glob").ping() or {}
    except Exception as exc:  # noqa: BLE001 (broker unreachable: unhealthy, say why)
        print(f"ping failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not replies:
        print(f"no reply from {pattern}", file=sys.stderr)
        return 1
    print(", ".join(sorted(replies)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread that records every
request and answers from a script of behaviours (a status, a sleep past the sender's timeout, a
redirect), then 204 once the script is used up."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


class Receiver:
    """``with Receiver() as receiver:``; ``receiver.script`` holds what the next requests get:
    an int (that status), ``("sleep", seconds)`` then 204, or ``("redirect", url)`` (302)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: serve HTTPS with this server context (the names clients asked for, by SNI,
        land in ``server_names``)."""
        self.received: list[Received] = []
        self.script: list[object] = []
        self.server_names: list[str | None] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)  # type: ignore[assignment,func-returns-value]
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def for_job(self, job_id: str) -> list[Received]:
        """Requests whose body names ``job_id``."""
        return [r for r in list(self.received) if job_id.encode() in r.body]

    def wait(self, predicate, timeout: float = 60.0) -> list[Received]:
        """Wait until ``predicate(requests)`` holds; returns the requests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(list(self.received)):
                return list(self.received)
            time.sleep(0.05)
        raise AssertionError(
            f"the receiver never saw what was expected; got {[r.path for r in self.received]}"
        )

    def _next(self) -> object:
        with self._lock:
            return self.script.pop(0) if self.script else 204

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                step = receiver._next()
                receiver.received.append(Received(self.path, headers, body))
                if isinstance(step, tuple) and step[0] == "sleep":
                    time.sleep(float(step[1]))  # type: ignore[arg-type]
                    step = 204
                if isinstance(step, tuple) and step[0] == "redirect":
                    self.send_response(302)
                    self.send_header("Location", str(step[1]))
                else:
                    self.send_response(int(step))  # type: ignore[call-overload]
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler

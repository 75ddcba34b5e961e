"""The webhook deliverer: a thread of the API process that sends the outbox's due deliveries.

It runs in the API process in both modes (started by the app's lifespan, service/main.py): a
worker only marks its job terminal, and the outbox row comes with that transaction
(jobs/webhooks.py), so a slow or dead receiver never holds a worker. Each attempt:

1. claims the delivery (a compare-and-set; several API processes share the table);
2. resolves the URL's host and checks every address again (jobs/webhook_targets.py): the name
   may resolve elsewhere than at submit (DNS rebinding);
3. connects to the address it checked — the URL's host replaced by it, the name kept in the
   ``Host`` header and as TLS server name (SNI, and the certificate is checked against it);
4. sends the signed body once, within ``GIF_WEBHOOK_TIMEOUT_SECONDS``, following no redirect
   (a 3xx is a failed attempt: the receiver could otherwise point the service anywhere) and
   ignoring proxies from the environment (they would connect by name, unchecked);
5. records the outcome on the delivery and the job, and schedules the retry (doubling delay).
"""

from __future__ import annotations

import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx

from jobs import logs, webhook_signing, webhooks
from jobs.clock import utcnow
from jobs.config import Settings
from jobs.db import Database
from jobs.errors import DomainError
from jobs.webhook_targets import AllowList, Resolver, checked_addresses, parse, system_resolver

log = logs.get(__name__)

#: Attempts under way at once in one API process.
PARALLEL = 8
USER_AGENT = "gif-service-webhooks/1"


class WebhookDeliverer:
    """``start()`` a daemon thread polling every ``GIF_WEBHOOK_POLL_SECONDS``; ``stop()`` it."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        resolve: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``resolve``: how host names become addresses; ``verify``: which certificate authorities
        TLS receivers are checked against (httpx's default bundle). Unit tests pass their own."""
        self.settings, self.db, self.resolve, self.verify = settings, db, resolve, verify
        self.allow = AllowList.parse(settings.webhook_allowed_hosts)
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="gif-webhook")
        self._running: dict[str, Future[None]] = {}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gif-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._halt.wait(self.settings.webhook_poll_seconds):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 (a database hiccup: try again at the next poll)
                log.warning("webhook_poll_failed", error=str(exc))

    def poll(self) -> int:
        """Claim the due deliveries this process has room for and start their attempts; returns
        how many were started."""
        self._running = {key: future for key, future in self._running.items() if not future.done()}
        room = PARALLEL - len(self._running)
        if room <= 0:
            return 0
        with self.db.read() as session:
            due = [item for item in webhooks.due(session, limit=room * 2) if item[0] not in self._running]
        started = 0
        for delivery_id, attempts in due[:room]:
            claimed = self._claim(delivery_id, attempts)
            if claimed is not None:
                self._running[delivery_id] = self._pool.submit(self.attempt, claimed)
                started += 1
        return started

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait for the attempts under way to be recorded (tests; a poll returns before)."""
        for future in list(self._running.values()):
            future.result(timeout)

    def _claim(self, delivery_id: str, attempts: int) -> webhooks.Claimed | None:
        hold = self.settings.webhook_timeout_seconds + webhooks.CLAIM_MARGIN_SECONDS
        with self.db.begin() as session:
            return webhooks.claim(session, delivery_id, attempts, hold)

    def attempt(self, claimed: webhooks.Claimed) -> None:
        """Send one claimed attempt and record its outcome."""
        outcome = self.send(claimed)
        retry_at = webhooks.next_attempt(
            claimed,
            utcnow(),
            self.settings.webhook_retry_seconds,
            self.settings.webhook_retry_horizon_seconds,
        )
        with self.db.begin() as session:
            state = webhooks.record(session, claimed, outcome, retry_at)
        event = "webhook_delivered" if outcome.accepted else "webhook_attempt_failed"
        log.info(event, delivery=claimed.id, job_id=claimed.job_id, attempt=claimed.attempt,
                 status_code=outcome.status_code, error=outcome.error, state=state)  # fmt: skip

    def send(self, claimed: webhooks.Claimed) -> webhooks.Outcome:
        """One HTTP attempt to the checked address; never raises."""
        try:
            target = parse(claimed.url)
            address = checked_addresses(target, self.allow, self.resolve)[0]
        except DomainError as exc:
            return webhooks.Outcome(None, f"not contacted: {exc.detail}")
        timestamp = int(time.time())
        headers = webhook_signing.headers(claimed.secrets, claimed.id, timestamp, claimed.body)
        headers |= {"host": target.host_header, "user-agent": USER_AGENT}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        timeout = self.settings.webhook_timeout_seconds
        try:
            with (
                httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=self.verify) as client,
                client.stream("POST", target.url_for(address), content=claimed.body, headers=headers,
                              extensions=extensions) as response,
            ):  # fmt: skip
                return _outcome(response)
        except httpx.TimeoutException:
            return webhooks.Outcome(None, f"timed out after {timeout:g} s")
        except httpx.HTTPError as exc:
            return webhooks.Outcome(None, f"{type(exc).__name__}: {exc}"[:500])


def _outcome(response: httpx.Response) -> webhooks.Outcome:
    """2xx accepts the delivery; anything else is a failed attempt (the body is not read)."""
    code = response.status_code
    if 200 <= code < 300:
        return webhooks.Outcome(code, None)
    if 300 <= code < 400:
        where = response.headers.get("location", "")[:200]
        return webhooks.Outcome(code, f"redirect to {where!r} not followed")
    return webhooks.Outcome(code, f"HTTP {code}")

"""Units of the webhook machinery: signatures against the reference ``standardwebhooks`` signer,
the classification of addresses and URLs (SSRF guard), and the outbox in a real SQLite store."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks

from jobs import store, webhook_signing, webhooks
from jobs.clock import utcnow
from jobs.config import Settings
from jobs.states import JobStatus
from jobs.webhook_targets import (
    AllowList,
    InvalidWebhook,
    WebhookTargetForbidden,
    check_url,
    forbidden_reason,
    parse,
)

from .conftest import TENANT

BODY = b'{"type":"job.succeeded","data":{"id":"job_1"}}'


def test_signature_matches_the_reference_signer():
    secret = webhook_signing.new_secret()
    now = int(datetime.now(UTC).timestamp())
    ours = webhook_signing.sign(secret, "msg_1", now, BODY)
    reference = standardwebhooks.Webhook(secret).sign(
        "msg_1", datetime.fromtimestamp(now, UTC), BODY.decode()
    )
    assert ours == reference


def test_reference_verifier_accepts_each_of_two_signatures():
    old, new = webhook_signing.new_secret(), webhook_signing.new_secret()
    headers = webhook_signing.headers([new, old], "msg_2", int(datetime.now(UTC).timestamp()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert standardwebhooks.Webhook(secret).verify(BODY, headers)["type"] == "job.succeeded"
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(webhook_signing.new_secret()).verify(BODY, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new).verify(BODY + b" ", headers)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("127.0.0.1", "loopback"),
        ("::1", "loopback"), ("10.0.0.1", "private"), ("192.168.1.1", "private"), ("172.16.0.1", "private"),
        ("fd00::1", "private"), ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"), ("100.64.0.1", "not globally routable"),
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("64:ff9b::a00:1", "private"),
    ],
)  # fmt: skip
def test_forbidden_addresses(address, reason):
    found = forbidden_reason(ipaddress.ip_address(address))
    assert found is not None and found.startswith(reason), found


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::6810:84e5", "8.8.8.8"])
def test_public_addresses_pass(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def _resolver(table):
    return lambda host, port: [ipaddress.ip_address(a) for a in table[host]]


def test_urls_are_checked_by_what_their_host_resolves_to():
    resolve = _resolver({"public.test": ["93.184.215.14"], "rebind.test": ["127.0.0.1"],
                         "mixed.test": ["93.184.215.14", "10.1.2.3"]})  # fmt: skip
    none = AllowList.parse("")
    assert check_url("https://public.test/hook?x=1", none, resolve).path == "/hook?x=1"
    for url in ("https://rebind.test/", "https://mixed.test/", "http://169.254.169.254/latest/meta-data",
                "http://[::1]:8080/", "http://10.0.0.1/"):  # fmt: skip
        with pytest.raises(WebhookTargetForbidden) as caught:
            check_url(url, none, resolve)
        assert caught.value.code == "webhook-target-forbidden"
    assert check_url("https://rebind.test/", AllowList.parse("rebind.test"), resolve).host == "rebind.test"
    assert check_url("https://rebind.test/", AllowList.parse("127.0.0.0/8"), resolve).port == 443
    with pytest.raises(WebhookTargetForbidden):
        check_url("https://mixed.test/", AllowList.parse("10.1.2.4/32"), resolve)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "example.com/hook", "https:///nohost", "https://user:pw@example.com/",
            "https://example.com:99999/", "file:///etc/passwd", "https://" + "a" * 2100 + ".com/"],
)  # fmt: skip
def test_malformed_urls(url):
    with pytest.raises(InvalidWebhook) as caught:
        parse(url)
    assert caught.value.code == "invalid-webhook"


def test_target_keeps_the_name_for_host_header_and_connects_to_the_address():
    target = parse("https://Hooks.Example.com:8443/a/b?c=d")
    assert target.host_header == "hooks.example.com:8443"
    assert target.url_for(ipaddress.ip_address("2606:4700::1")) == "https://[2606:4700::1]:8443/a/b?c=d"
    assert parse("http://example.com/").host_header == "example.com"


def test_allow_list_refuses_a_bad_range():
    with pytest.raises(ValueError, match="not an address range"):
        AllowList.parse("10.0.0.0/33")
    with pytest.raises(ValueError):
        Settings(webhook_allowed_hosts="localhost, 300.1.1.1/8")


# -- the outbox in the job store ----------------------------------------------------------------------


def _job_with_webhook(db, events=("completed",)) -> str:
    with db.begin() as session:
        job = store.create_job(
            session, tenant_id=TENANT, type_="remove", inputs={}, max_attempts=3, request_sha256="0" * 64,
            request={"type": "remove", "webhook": {"url": "https://public.test/h", "events": list(events)}},
        )  # fmt: skip
        store.finish_validation(session, job.id, TENANT)
        return job.id


def test_terminal_transition_writes_one_delivery_in_its_transaction(db):
    job_id = _job_with_webhook(db)
    with db.begin() as session:
        store.request_cancel(session, TENANT, job_id)
    with db.read() as session:
        rows = webhooks.due(session)
        assert len(rows) == 1
    with db.begin() as session:
        claimed = webhooks.claim(session, rows[0][0], 0, hold_seconds=30)
    assert claimed is not None and claimed.type == "job.cancelled" and claimed.attempt == 1
    body = json.loads(claimed.body)
    assert body["type"] == "job.cancelled" and body["data"]["id"] == job_id
    assert body["data"]["webhook"]["url"] == "https://public.test/h"
    with db.begin() as session:  # claimed: neither due nor claimable again
        assert webhooks.due(session) == []
        assert webhooks.claim(session, claimed.id, 0, 30) is None


def test_a_rolled_back_transition_leaves_no_delivery(db):
    job_id = _job_with_webhook(db)
    with pytest.raises(RuntimeError), db.begin() as session:
        store.request_cancel(session, TENANT, job_id)
        raise RuntimeError("the transaction fails after the transition")
    with db.read() as session:
        assert webhooks.due(session) == []
        assert store.require_job(session, TENANT, job_id).status == "queued"


def test_failed_attempts_back_off_then_give_up_at_the_horizon(db):
    job_id = _job_with_webhook(db)
    with db.begin() as session:
        store.request_cancel(session, TENANT, job_id)
        delivery_id = webhooks.due(session)[0][0]
        claimed = webhooks.claim(session, delivery_id, 0, 30)
    assert claimed is not None
    now = claimed.created_at
    delays = []
    for attempt in range(1, 6):
        c = webhooks.Claimed(**{**claimed.__dict__, "attempt": attempt})
        at = webhooks.next_attempt(c, now, first_delay=5, horizon=100)
        delays.append(None if at is None else (at - now).total_seconds())
    assert delays == [5, 10, 20, 40, 80]
    late = now + timedelta(seconds=90)
    assert webhooks.next_attempt(webhooks.Claimed(**{**claimed.__dict__, "attempt": 3}), late, 5, 100) is None
    with db.begin() as session:
        state = webhooks.record(session, claimed, webhooks.Outcome(500, "HTTP 500"), None)
    assert state == "failed"
    with db.read() as session:
        job = store.require_job(session, TENANT, job_id)
        attempts = json.loads(job.webhook_json)["deliveries"]
    assert attempts == [{"id": delivery_id, "type": "job.cancelled", "attempt": 1, "at": attempts[0]["at"],
                         "status_code": 500, "error": "HTTP 500"}]  # fmt: skip
    with db.read() as session:  # giving up is on the job's event log and in the outbox's counts
        events = store.list_events(session, TENANT, job_id, limit=100)
        assert webhooks.count_by_state(session) == {"failed": 1}
    given_up = [e for e in events.data if e.type == "webhook.given_up"]
    assert len(given_up) == 1 and given_up[0].level == "warning" and "HTTP 500" in given_up[0].message


def test_progress_deliveries_one_per_stage(db):
    job_id = _job_with_webhook(db, events=("completed", "progress"))
    with db.begin() as session:
        lease = store.claim(session, job_id, "w1", 60)
        assert lease is not None
        for stage in ("loading_inputs", "loading_inputs", "solving", "solving"):
            assert (
                store.update_progress(session, lease, {"stage": stage, "fraction": 0.5}) is JobStatus.RUNNING
            )
        store.finish_succeeded(session, lease, {"artifacts": []})
    with db.begin() as session:
        types = sorted(webhooks.claim(session, i, n, 30).type for i, n in webhooks.due(session))  # type: ignore[union-attr]
    assert types == ["job.progress", "job.progress", "job.succeeded"]


def test_secrets_rotate_with_a_grace_period(db):
    with db.begin() as session:
        first = webhooks.secret_of(session, TENANT).secret
        assert webhooks.secret_of(session, TENANT).secret == first
        assert first.startswith("whsec_")
        row = webhooks.rotate(session, TENANT, grace_seconds=60)
        assert row.secret != first
        assert webhooks.signing_secrets(row, utcnow()) == [row.secret, first]
        assert webhooks.signing_secrets(row, utcnow() + timedelta(seconds=61)) == [row.secret]
        assert webhooks.secret_view(row)["previous_secret_expires_at"] is not None
        assert webhooks.secret_of(session, "other").secret not in (first, row.secret)

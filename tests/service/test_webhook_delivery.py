"""The deliverer (service/webhook_delivery.py) as one component: a real SQLite job store, a real
receiver on 127.0.0.1, and an injected resolver standing in for DNS, so that a name can resolve
to an allowed address at submit and to a forbidden one at delivery (DNS rebinding)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import time
from pathlib import Path

import pytest

from jobs import store
from jobs.config import Settings
from jobs.db import Database
from jobs.webhook_targets import AllowList, check_url
from service.webhook_delivery import WebhookDeliverer

from .webhook_receiver import Receiver

TENANT = "t1"


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, executor="none", workers=0, webhook_allowed_hosts="127.0.0.1/32",
                    webhook_retry_seconds=0.05, webhook_timeout_seconds=2)  # fmt: skip


@pytest.fixture
def db(settings):
    database = Database(settings.db_url)
    database.create_all()
    yield database
    database.dispose()


def _cancelled_job(db: Database, url: str) -> str:
    with db.begin() as session:
        request = {"type": "remove", "webhook": {"url": url, "events": ["completed"]}}
        job = store.create_job(session, tenant_id=TENANT, type_="remove", request=request,
                               request_sha256="0" * 64, inputs={}, max_attempts=1)  # fmt: skip
        store.request_cancel(session, TENANT, job.id)
        return job.id


def _deliveries(db: Database, job_id: str) -> list[dict]:
    with db.read() as session:
        return json.loads(store.require_job(session, TENANT, job_id).webhook_json)["deliveries"]


def _pass(deliverer: WebhookDeliverer) -> int:
    started = deliverer.poll()
    deliverer.wait_idle()
    return started


def test_a_name_that_rebinds_to_a_forbidden_address_is_not_contacted(settings, db, receiver):
    table = {"hooks.test": ["127.0.0.1"]}

    def resolve(host: str, port: int):
        return [ipaddress.ip_address(a) for a in table[host]]

    url = f"http://hooks.test:{receiver.port}/rebind"
    check_url(url, AllowList.parse(settings.webhook_allowed_hosts), resolve)  # as at submit: allowed
    job_id = _cancelled_job(db, url)
    table["hooks.test"] = ["169.254.169.254"]  # the name now points at the metadata service
    deliverer = WebhookDeliverer(settings, db, resolve)
    assert _pass(deliverer) == 1
    [attempt] = _deliveries(db, job_id)
    assert attempt["status_code"] is None and attempt["error"].startswith("not contacted")
    assert "169.254.169.254" in attempt["error"] and receiver.received == []

    table["hooks.test"] = ["127.0.0.1"]  # back: the retry connects to the checked address by name
    deadline = time.monotonic() + 10
    while not receiver.received and time.monotonic() < deadline:
        _pass(deliverer)
        time.sleep(0.02)
    deliverer.stop()
    [request] = receiver.received
    assert request.headers["host"] == f"hooks.test:{receiver.port}" and request.path == "/rebind"
    assert [a["status_code"] for a in _deliveries(db, job_id)] == [None, 204]


# -- HTTPS: the checked address is connected to, the name is the TLS server name ------------------


def _certificates(folder: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a server certificate for ``name``: (server context, client context)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def build(subject: str, issuer: x509.Name, key, signer, ca: bool) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gif test CA")])
    ca = build("gif test CA", ca_name, ca_key, ca_key, ca=True)
    server = build(name, ca_name, server_key, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (folder / "server.pem").write_bytes(
        server.public_bytes(pem)
        + server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(folder / "server.pem")
    client_context = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server_context, client_context


def test_https_connects_to_the_checked_address_with_the_name_as_server_name(settings, db, tmp_path):
    server_context, client_context = _certificates(tmp_path, "hooks.test")

    def resolve(host: str, port: int):
        return [ipaddress.ip_address("127.0.0.1")]

    with Receiver(tls=server_context) as receiver:
        good = _cancelled_job(db, f"https://hooks.test:{receiver.port}/tls")
        wrong = _cancelled_job(db, f"https://other.test:{receiver.port}/tls")  # same address, other name
        deliverer = WebhookDeliverer(settings, db, resolve, verify=client_context)
        assert _pass(deliverer) == 2
        deliverer.stop()
        assert [a["status_code"] for a in _deliveries(db, good)] == [204]
        [refused] = _deliveries(db, wrong)
        assert refused["status_code"] is None and "certificate" in refused["error"].lower(), refused
        [request] = receiver.received
        assert request.headers["host"] == f"hooks.test:{receiver.port}"
        assert "hooks.test" in receiver.server_names and "other.test" in receiver.server_names

"""Idempotency-Key: tenant-scoped replay, fingerprint mismatch, expiry, key format."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs import idempotency, specs
from jobs.errors import IdempotencyKeyReused, ValidationFailed
from jobs.models import IdempotencyKey
from jobs.submit import submit_job

from .conftest import TENANT, add_checkpoint, add_dataset


def _spec(checkpoint: str, train: str, cls: int = 3):
    return specs.parse({
        "type": "remove", "model": {"arch": "mlp", "checkpoint": checkpoint}, "train": train, "forget": {"class": cls},
    })  # fmt: skip


def test_key_normalisation():
    assert idempotency.normalize_key('"abc-1"') == idempotency.normalize_key("abc-1") == "abc-1"
    for bad in ("", "has space", "x" * 256, '""'):
        with pytest.raises(ValidationFailed):
            idempotency.normalize_key(bad)


def test_fingerprint_ignores_key_order_and_whitespace():
    a = idempotency.fingerprint("POST", "/v1/jobs", {"b": 1, "a": [1, 2]})
    assert a == idempotency.fingerprint("post", "/v1/jobs", {"a": [1, 2], "b": 1})
    assert a != idempotency.fingerprint("POST", "/v1/jobs", {"a": [2, 1], "b": 1})


def test_replay_mismatch_and_tenant_scope(db, settings):
    ckpt, train = add_checkpoint(db), add_dataset(db)
    first = submit_job(db, settings, TENANT, _spec(ckpt, train), fingerprint="f1", idempotency_key="k")
    again = submit_job(db, settings, TENANT, _spec(ckpt, train), fingerprint="f1", idempotency_key="k")
    assert not first.replayed and again.replayed and again.job.id == first.job.id
    with pytest.raises(IdempotencyKeyReused):
        submit_job(db, settings, TENANT, _spec(ckpt, train, 4), fingerprint="f2", idempotency_key="k")
    other = (add_checkpoint(db, "t2"), add_dataset(db, "t2"))
    theirs = submit_job(db, settings, "t2", _spec(*other), fingerprint="f1", idempotency_key="k")
    assert not theirs.replayed and theirs.job.id != first.job.id


def test_expired_key_starts_a_new_job(db, settings):
    ckpt, train = add_checkpoint(db), add_dataset(db)
    first = submit_job(db, settings, TENANT, _spec(ckpt, train), fingerprint="f1", idempotency_key="old")
    with db.begin() as session:
        record = session.get(IdempotencyKey, (TENANT, "old"))
        record.expires_at -= timedelta(days=30)
    later = submit_job(db, settings, TENANT, _spec(ckpt, train), fingerprint="f1", idempotency_key="old")
    assert not later.replayed and later.job.id != first.job.id


def test_rejected_request_records_nothing(db, settings):
    ckpt, train = add_checkpoint(db), add_dataset(db, counts=[10, 0, 10])
    with pytest.raises(ValidationFailed) as info:
        submit_job(db, settings, TENANT, _spec(ckpt, train, 1), fingerprint="f1", idempotency_key="k2")
    assert info.value.errors[0]["type"] == "class_not_found"
    with db.read() as session:
        assert idempotency.lookup(session, TENANT, "k2") is None


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=260)
    | st.sampled_from(['""', '"', '"a"', "x" * 255, "x" * 256, '"' + "x" * 255 + '"'])
)
def test_the_openapi_pattern_of_the_header_accepts_exactly_the_keys_normalize_key_accepts(raw):
    try:
        idempotency.normalize_key(raw)
        accepted = True
    except ValidationFailed:
        accepted = False
    # HTTP strips surrounding whitespace from header values before either sees them
    assert bool(re.fullmatch(idempotency.HEADER_PATTERN, raw)) == accepted or raw != raw.strip()

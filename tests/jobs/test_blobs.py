"""Content-addressed blob store: layout, hard size limit, atomicity."""

from __future__ import annotations

import hashlib
import io

import pytest

from jobs.blobs import BlobStore
from jobs.errors import PayloadTooLarge


def _tmp_files(store: BlobStore) -> list:
    return list((store.root / "tmp").iterdir())


def test_put_and_read_back(tmp_path):
    store = BlobStore(tmp_path)
    data = b"hello" * 1000
    blob = store.put(io.BytesIO(data))
    digest = hashlib.sha256(data).hexdigest()
    assert blob.sha256 == digest and blob.size == len(data)
    assert store.path(digest) == store.root / "sha256" / digest[:2] / digest[2:4] / digest
    assert store.exists(digest)
    with store.open(digest) as f:
        assert f.read() == data
    assert _tmp_files(store) == []
    again = store.put([data[:10], data[10:]])
    assert again.sha256 == digest and _tmp_files(store) == []


def test_limit_stops_the_write_and_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(PayloadTooLarge):
        store.put(iter([b"x" * 600, b"y" * 600]), limit=1000)
    assert _tmp_files(store) == [] and not any((store.root / "sha256").iterdir())
    store.put(io.BytesIO(b"z" * 1000), limit=1000)  # exactly the limit is fine


def test_failure_mid_stream_leaves_no_temp_file(tmp_path):
    store = BlobStore(tmp_path)

    def broken():
        yield b"partial"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.put(broken())
    assert _tmp_files(store) == []


def test_staged_blob_is_invisible_until_committed(tmp_path):
    store = BlobStore(tmp_path)
    staged = store.stage(io.BytesIO(b"abc"))
    assert not store.exists(staged.sha256)
    staged.commit()
    assert store.exists(staged.sha256)
    discarded = store.stage(io.BytesIO(b"def"))
    discarded.discard()
    assert not store.exists(discarded.sha256) and _tmp_files(store) == []


def test_paths_only_from_hex_digests(tmp_path):
    store = BlobStore(tmp_path)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63):
        with pytest.raises(ValueError):
            store.path(bad)


def test_upload_parts_are_kept_replaced_read_and_deleted(tmp_path):
    from jobs import ids

    store = BlobStore(tmp_path)
    upload_id = ids.new_id("upload")
    store.put_part(upload_id, 1, store.stage([b"old"]))
    store.put_part(upload_id, 1, store.stage([b"new"]))
    store.put_part(upload_id, 10, store.stage([b"x" * 3_000_000]))
    assert b"".join(store.read_part(upload_id, 1)) == b"new"
    assert b"".join(store.read_part(upload_id, 10)) == b"x" * 3_000_000
    assert _tmp_files(store) == []
    with pytest.raises(FileNotFoundError):
        list(store.read_part(upload_id, 2))
    for bad_id, number in (("upl_../../etc", 1), (upload_id, 0), (upload_id, 100_000)):
        with pytest.raises(ValueError):
            store.part_path(bad_id, number)
    store.delete_parts(upload_id)
    assert not (store.root / "uploads" / upload_id).exists()
    store.delete_parts(upload_id)  # nothing left: no error

"""The bucket blob store against a real S3-compatible server process (moto's, over HTTP)."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from pydantic import ValidationError

from jobs import artifacts, orphans
from jobs.blobs import BlobStore, open_blob_store
from jobs.config import Settings
from jobs.errors import BlobCorrupted, StorageUnavailable
from jobs.object_store import S3BlobStore, parse_s3_url

from ..stack import S3Server, free_port
from .conftest import TENANT


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def bucket_env(s3, monkeypatch):
    for name, value in S3Server.CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return s3


def _store(s3: S3Server, root, prefix: str, **kwargs) -> S3BlobStore:
    return S3BlobStore(root, f"s3://{s3.bucket}/{prefix}", endpoint_url=s3.endpoint, **kwargs)


@pytest.fixture
def prefix(request) -> str:
    """A key prefix per test: the module shares one server and bucket."""
    return f"t/{request.node.name[:40]}/{time.time_ns()}"


def test_parse_s3_url():
    assert parse_s3_url("s3://b") == ("b", "")
    assert parse_s3_url("s3://b/") == ("b", "")
    assert parse_s3_url("s3://b/a/c/") == ("b", "a/c/")
    with pytest.raises(ValueError, match="not an s3://"):
        parse_s3_url("https://b/a")


def test_blob_url_setting_is_validated():
    assert Settings(blob_url="s3://my-bucket/gif/blobs").blob_url == "s3://my-bucket/gif/blobs"
    assert Settings(blob_url="", s3_endpoint_url="").blob_url is None  # compose's ${GIF_BLOB_URL:-}
    for bad in ("s3://Bad_Bucket", "file:///srv/blobs", "s3://b/../x y"):
        with pytest.raises(ValidationError):
            Settings(blob_url=bad)


def test_a_stored_blob_is_an_object_and_another_host_fetches_it(bucket_env, prefix, tmp_path):
    s3 = bucket_env
    here = _store(s3, tmp_path / "here", prefix)
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = hashlib.sha256(data).hexdigest()

    staged = here.put([data[:1000], data[1000:]])

    assert staged.sha256 == digest
    key = f"{prefix}/sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    assert s3.keys(prefix) == [key]
    head = s3.client().head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentLength"] == len(data) and head["Metadata"] == {"sha256": digest}
    assert here.path(digest).read_bytes() == data  # kept as the local copy
    assert list(here.temporary()) == []

    there = _store(s3, tmp_path / "there", prefix)  # another host: nothing local
    assert not there.path(digest).exists() and there.exists(digest)
    assert there.fetch(digest).read_bytes() == data
    with there.open(digest) as f:
        assert f.read() == data
    found = there.stat(digest)
    assert found.size == len(data) and abs(found.modified - time.time()) < 120
    assert [b.sha256 for b in there.committed()] == [digest]
    assert list(there.temporary()) == []


def test_content_already_in_the_bucket_is_not_uploaded_again(bucket_env, prefix, tmp_path):
    store = _store(bucket_env, tmp_path, prefix)
    uploads = []
    real_upload = store.client.upload_file
    store.client.upload_file = lambda *a, **k: (uploads.append(a[2]), real_upload(*a, **k))
    first = store.put([b"same bytes"])
    store.path(first.sha256).unlink()  # lose the local copy: the bucket still has it
    second = store.put([b"same bytes"])
    assert first.sha256 == second.sha256 and len(uploads) == 1
    assert store.path(first.sha256).read_bytes() == b"same bytes"


def test_a_corrupt_object_is_refused_and_leaves_no_local_copy(bucket_env, prefix, tmp_path):
    s3 = bucket_env
    here = _store(s3, tmp_path / "here", prefix)
    digest = here.put([b"the real content"]).sha256
    s3.client().put_object(Bucket=s3.bucket, Key=here.key(digest), Body=b"something else")
    there = _store(s3, tmp_path / "there", prefix)
    with pytest.raises(BlobCorrupted, match=digest):
        there.fetch(digest)
    assert not there.path(digest).exists() and list(there.temporary()) == []


def test_a_missing_blob_is_file_not_found(bucket_env, prefix, tmp_path):
    store = _store(bucket_env, tmp_path, prefix)
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(digest) and store.stat(digest) is None
    with pytest.raises(FileNotFoundError):
        store.fetch(digest)
    with pytest.raises(ValueError, match="not a sha256"):
        store.key("../../etc/passwd")


def test_delete_removes_the_object_and_the_local_copy(bucket_env, prefix, tmp_path):
    s3 = bucket_env
    store = _store(s3, tmp_path, prefix)
    digest = store.put([b"to delete"]).sha256
    store.delete(digest)
    assert s3.keys(prefix) == [] and not store.path(digest).exists()
    store.delete(digest)  # twice: nothing left, no error


def test_local_copies_are_trimmed_least_recently_used_first(bucket_env, prefix, tmp_path):
    store = _store(bucket_env, tmp_path, prefix, local_max_bytes=2500)
    digests = [store.put([bytes([k]) * 1000]).sha256 for k in range(4)]
    for age, digest in zip((400, 300, 200, 100), digests, strict=True):
        when = time.time() - age
        os.utime(store.path(digest), (when, when))
    store.fetch(digests[0])  # used now: the most recent

    assert store.trim_copies() == 2  # 4000 bytes → 2000: the two least recently used go

    assert [store.path(d).exists() for d in digests] == [True, False, False, True]
    assert store.fetch(digests[1]).read_bytes() == bytes([1]) * 1000  # fetched again from the bucket


def test_copies_unused_for_a_day_are_dropped_whatever_the_cap(bucket_env, prefix, tmp_path):
    store = _store(bucket_env, tmp_path, prefix)
    old, fresh = store.put([b"old"]).sha256, store.put([b"fresh"]).sha256
    os.utime(store.path(old), (time.time() - 2 * 86400,) * 2)
    assert store.trim_copies() == 1
    assert not store.path(old).exists() and store.path(fresh).exists() and store.exists(old)


def test_the_orphan_sweep_deletes_unnamed_objects_only(bucket_env, prefix, tmp_path, db):
    store = _store(bucket_env, tmp_path, prefix)
    named, orphan = store.put([b"named"]).sha256, store.put([b"orphan"]).sha256
    with db.begin() as session:
        artifacts.create_artifact(
            session, tenant_id=TENANT, kind="dataset", format="npz", sha256=named, size_bytes=5
        )
    time.sleep(1.1)  # object times have one-second resolution

    result = orphans.sweep(db, store, grace_seconds=0)

    assert (result.blobs, result.bytes) == (1, len(b"orphan"))
    assert store.exists(named) and not store.exists(orphan)


def test_artifacts_and_cache_values_live_in_separate_spaces(bucket_env, tmp_path, db):
    settings = Settings(home=tmp_path, blob_url=f"s3://{bucket_env.bucket}/spaces-{time.time_ns()}",
                        s3_endpoint_url=bucket_env.endpoint)  # fmt: skip
    artifacts_space, cache_space = open_blob_store(settings), open_blob_store(settings, "cache")
    assert artifacts_space.root != cache_space.root
    value = cache_space.put([b"a cached curvature fit"]).sha256
    time.sleep(1.1)
    assert orphans.sweep(db, artifacts_space, grace_seconds=0).blobs == 0  # not its space
    assert cache_space.exists(value) and not artifacts_space.exists(value)


def test_the_cache_space_of_a_folder_store_is_beside_the_artifacts(tmp_path, db):
    settings = Settings(home=tmp_path)
    artifacts_space, cache_space = open_blob_store(settings), open_blob_store(settings, "cache")
    assert type(artifacts_space) is BlobStore and artifacts_space.root == settings.blob_root.resolve()
    value = cache_space.put([b"a cached value"]).sha256
    os.utime(cache_space.path(value), (time.time() - 86400,) * 2)
    assert orphans.sweep(db, artifacts_space, grace_seconds=60).blobs == 0
    assert cache_space.exists(value)


def test_an_unreachable_service_is_storage_unavailable(bucket_env, prefix, tmp_path):
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2))  # fmt: skip
    store = S3BlobStore(tmp_path, f"s3://{bucket_env.bucket}/{prefix}", client=client)
    with pytest.raises(StorageUnavailable, match="could not look up") as caught:
        store.put([b"payload"])
    assert caught.value.status == 503 and caught.value.headers["Retry-After"]
    assert (
        "127.0.0.1" not in caught.value.detail and "127.0.0.1" in caught.value.reason
    )  # addresses: log only
    assert list(store.temporary()) == [], "the staged file was left behind"
    with pytest.raises(StorageUnavailable, match="could not download"):
        store.fetch("0" * 64)
    with pytest.raises(StorageUnavailable):
        store.check_writable()
    with pytest.raises(StorageUnavailable, match="could not list"):
        list(store.committed())


def test_a_missing_bucket_is_named_in_the_error(bucket_env, tmp_path):
    store = S3BlobStore(tmp_path, "s3://no-such-bucket/x", endpoint_url=bucket_env.endpoint)
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        store.check_writable()
    with pytest.raises(StorageUnavailable, match=r"refused to upload \(NoSuchBucket\)"):
        store.put([b"payload"])
    assert list(store.temporary()) == []


def test_the_probe_writes_reads_and_removes_an_object(bucket_env, prefix, tmp_path):
    store = _store(bucket_env, tmp_path, prefix)
    store.check_writable()
    assert bucket_env.keys(prefix) == []


def test_upload_parts_live_in_the_bucket_until_deleted(bucket_env, prefix, tmp_path):
    from jobs import ids

    s3 = bucket_env
    here, there = _store(s3, tmp_path / "here", prefix), _store(s3, tmp_path / "there", prefix)
    upload_id = ids.new_id("upload")
    for number, content in ((2, b"second part"), (1, b"first, replaced"), (1, b"first part")):
        here.put_part(upload_id, number, here.stage([content]))
    assert list(here.temporary()) == []  # staged files are uploaded, not kept
    assert b"".join(there.read_part(upload_id, 1)) == b"first part"  # any host reads them
    assert b"".join(there.read_part(upload_id, 2)) == b"second part"
    with pytest.raises(FileNotFoundError):
        list(there.read_part(upload_id, 3))
    there.delete_parts(upload_id)
    assert s3.keys(f"{prefix}/uploads/") == []
    with pytest.raises(ValueError, match="not an upload part"):
        here.put_part("../../x", 1, here.stage([b"x"]))


def test_presigned_urls_are_signed_for_the_public_endpoint(bucket_env, prefix, tmp_path):
    import httpx

    s3 = bucket_env
    store = _store(s3, tmp_path, prefix)
    digest = store.put([b"presigned bytes"]).sha256
    url = store.presigned_get(digest, seconds=60, filename='attachment; filename="w.bin"', content_type="x/y")
    assert url.startswith(f"{s3.endpoint}/{s3.bucket}/{prefix}/sha256/") and "X-Amz-Signature" in url
    response = httpx.get(url)  # no credentials
    assert response.content == b"presigned bytes" and response.headers["content-type"] == "x/y"
    assert response.headers["content-disposition"] == 'attachment; filename="w.bin"'
    public = S3BlobStore(tmp_path / "p", f"s3://{s3.bucket}/{prefix}", endpoint_url=s3.endpoint,
                         public_endpoint_url="https://blobs.example.com")  # fmt: skip
    assert public.presigned_get(digest, seconds=60, filename="f", content_type="x/y").startswith(
        f"https://blobs.example.com/{s3.bucket}/"
    )
    assert (
        BlobStore(tmp_path / "folder").presigned_get(digest, seconds=60, filename="f", content_type="x")
        is None
    )

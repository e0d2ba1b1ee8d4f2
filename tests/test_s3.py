"""The S3 access layer: URLs, credentials, and listings, reads, uploads and deletes against a real SeaweedFS."""

from __future__ import annotations

import hashlib
import random
import re
import sys
import time
from pathlib import Path

import pytest

from storage_audit.core.errors import StorageError, UsageError
from storage_audit.storage.bucket import (
    DELETE_BATCH,
    Listing,
    RateLimiter,
    S3AccessDenied,
    S3Bucket,
    S3Location,
    S3NotFound,
    S3Settings,
    clean_etag,
    link_etag,
    parse_s3_url,
)
from storage_audit.storage.s3 import S3Storage
from tests.conftest import fixture_builder
from tests.registry_harness import Ledger, Registry, UploadStart, parse_gc_output, require_registry
from tests.s3_harness import (
    REGION,
    SeaweedS3,
    bucket_for,
    local_files,
    mirror,
    put_objects,
    raw_client,
    raw_keys,
    s3_garbage_collect,
    v2_prefix,
)

SCENARIOS = sorted(fixture_builder().SCENARIOS)

# --------------------------------------------------------------------------
# No server needed


@pytest.mark.parametrize(
    ("url", "bucket", "root"),
    [
        ("s3://reg", "reg", ""),
        ("s3://reg/", "reg", ""),
        ("s3://reg/regroot", "reg", "regroot"),
        ("s3://reg//a/b/", "reg", "a/b"),
        ("s3://reg/regroot/docker/registry/v2", "reg", "regroot"),
        ("s3://reg/docker/registry/v2/", "reg", ""),
        ("s3://reg/docker/registry", "reg", "docker/registry"),
    ],
)
def test_parse_s3_url(url: str, bucket: str, root: str) -> None:
    location = parse_s3_url(url)
    assert (location.bucket, location.rootdirectory) == (bucket, root)
    prefix = f"{root}/docker/registry/v2/" if root else "docker/registry/v2/"
    assert location.prefix == prefix
    assert location.key("blobs/sha256/ab/x/data") == prefix + "blobs/sha256/ab/x/data"


@pytest.mark.parametrize("url", ["s3://", "s3:///root", "/var/lib/registry", "s3://b/a/../c", "s3://b/x?versionId=1"])
def test_parse_s3_url_refuses(url: str) -> None:
    with pytest.raises(UsageError):
        parse_s3_url(url)


def test_keys_stay_under_the_prefix() -> None:
    location = S3Location("reg", "root")
    for bad in ("", "/blobs", "blobs//x", "../other", "blobs/./x"):
        with pytest.raises(ValueError):
            location.key(bad)
    with pytest.raises(ValueError):
        location.relative("other/docker/registry/v2/blobs")


def test_link_etag_is_md5_of_the_digest_text() -> None:
    digest = "sha256:" + "ab" * 32
    assert link_etag(digest) == hashlib.md5(digest.encode()).hexdigest()
    assert clean_etag('"ABC"') == "abc"
    assert clean_etag('W/"abc-2"') == "abc-2"
    assert clean_etag(None) is None


def test_settings_never_show_secrets() -> None:
    settings = S3Settings(access_key="AKIAEXAMPLEKEY", secret_key="s3cr3t-value", session_token="tok3n-value")
    for text in (repr(settings), str(settings)):
        assert "s3cr3t" not in text and "tok3n" not in text and "AKIAEXAMPLEKEY" not in text
    bucket = S3Bucket(S3Location("b", "r"), settings, env={})
    assert "s3cr3t" not in repr(bucket) and "AKIAEXAMPLEKEY" not in repr(bucket)
    assert "s3cr3t" not in repr(bucket._resolved)


def test_settings_from_the_environment() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAENV",
        "AWS_SECRET_ACCESS_KEY": "envsecret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    bucket = S3Bucket(S3Location("b"), env=env)
    assert (bucket.region, bucket.endpoint) == ("eu-west-1", "http://127.0.0.1:9")
    bucket = S3Bucket(S3Location("b"), env={**env, "AWS_REGION": "ap-south-1"})
    assert bucket.region == "ap-south-1"
    bucket = S3Bucket(S3Location("b"), S3Settings(region="us-west-2"), env=env)
    assert bucket.region == "us-west-2"
    with pytest.raises(UsageError, match="must start with http"):
        S3Bucket(S3Location("b"), env={**env, "AWS_ENDPOINT_URL": "127.0.0.1:9"})


def test_settings_refuse_half_a_key_pair() -> None:
    with pytest.raises(UsageError):
        S3Settings(access_key="AKIA")
    with pytest.raises(UsageError):
        S3Settings(max_requests_per_second=0)


def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(50)
    start = time.monotonic()
    for _ in range(21):
        limiter.wait_blocking()
    # 21 starts at 50 per second: the last one no earlier than 20/50 s after the first.
    assert time.monotonic() - start >= 0.39
    unlimited = RateLimiter(None)
    start = time.monotonic()
    for _ in range(1000):
        unlimited.wait_blocking()
    assert time.monotonic() - start < 0.2


# --------------------------------------------------------------------------
# Against SeaweedFS (and the registry's s3 driver)


def listed(bucket: S3Bucket) -> Listing:
    """Every key under the bucket's `v2` prefix, from the sharded listing an S3Storage reads the tree from."""
    return bucket.run(bucket.list_all_async())


LINK_BYTES = 1024
"""More than any link holds."""


def links_told_by_etag(storage: S3Storage) -> tuple[dict[str, str], list[str]]:
    """The links of the tree whose content the listing told (read without a GET, by their ETag), and those that
    took a GET to read: each link read in turn as the walk reads it."""
    counters = storage.bucket.counters
    told: dict[str, str] = {}
    fetched: list[str] = []
    for path in sorted(storage.tree.links):
        gets = counters.requests["get"]
        small = storage.read_small(path, LINK_BYTES)
        assert small is not None, path
        if counters.requests["get"] == gets:
            told[path] = small.data.decode()
        else:
            fetched.append(path)
    assert storage.etag_resolved == len(told)
    return told, fetched


def push_scenario(name: str, s3_server: SeaweedS3, rootdirectory: str, local_root: Path) -> tuple[Ledger, Ledger]:
    """Push scenario `name` into the bucket under `rootdirectory` and, the same, into a local registry."""
    from tests.s3_harness import s3_registry

    build = fixture_builder()
    remote, local = Ledger(), Ledger()
    with s3_registry(s3_server, rootdirectory, remote) as reg:
        build.SCENARIOS[name](reg, random.Random(f"{build.SEED}:{name}"))
    with Registry(local_root, local) as reg:
        build.SCENARIOS[name](reg, random.Random(f"{build.SEED}:{name}"))
    return remote, local


def _uploads_numbered(paths: set[str], ledger: Ledger) -> set[str]:
    """Paths with each upload id replaced by its rank in the ledger (ids are random per push)."""
    ids = [e.id for e in ledger.events if isinstance(e, UploadStart)]
    out = set()
    for path in paths:
        for n, upload_id in enumerate(ids):
            path = path.replace(f"/_uploads/{upload_id}/", f"/_uploads/#{n}/")
        out.add(path)
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_bucket_holds_what_the_registry_writes_locally(
    name: str, s3_server: SeaweedS3, s3_root: str, tmp_path: Path
) -> None:
    """Smoke test of the harness: same relative paths in the bucket as on disk, upload data aside."""
    require_registry()
    remote, local = push_scenario(name, s3_server, s3_root, tmp_path / "local")
    on_disk = _uploads_numbered(local_files(tmp_path / "local"), local)
    in_bucket = _uploads_numbered(local_files(mirror(s3_server, s3_root, tmp_path / "mirror")), remote)
    upload_data = {p for p in on_disk if re.search(r"/_uploads/#\d+/data$", p)}
    assert in_bucket == on_disk - upload_data
    assert len(upload_data) == sum(isinstance(e, UploadStart) for e in local.events)
    # Every file has the same bytes, upload state aside (it holds the random upload id and time).
    for path in in_bucket:
        if "/_uploads/" not in path and "#" not in path:
            a = (tmp_path / "local/docker/registry/v2" / path).read_bytes()
            b = (tmp_path / "mirror/docker/registry/v2" / path).read_bytes()
            assert a == b, path


@pytest.mark.parametrize("name", SCENARIOS)
def test_listing_equals_the_keys_in_the_bucket(name: str, s3_server: SeaweedS3, s3_root: str, tmp_path: Path) -> None:
    require_registry()
    push_scenario(name, s3_server, s3_root, tmp_path / "local")
    bucket = bucket_for(s3_server, s3_root)
    listing = listed(bucket)
    mirrored = local_files(mirror(s3_server, s3_root, tmp_path / "mirror"))
    assert set(listing.objects) == mirrored
    # Sizes and ETags as the raw API lists them, one key at a time a page.
    raw = raw_keys(s3_server, v2_prefix(s3_root), page_size=1)
    prefix = v2_prefix(s3_root)
    assert {k[len(prefix) :] for k in raw} == mirrored
    for key, entry in raw.items():
        info = listing.objects[key[len(prefix) :]]
        assert info.size == entry["Size"]
        assert info.etag == entry["ETag"].strip('"')
        assert info.last_modified == entry["LastModified"]
    # The shards: v2/, blobs/, blobs/sha256/, each two-hex prefix, repositories/ and each top-level name.
    blob_prefixes = {p.split("/")[2] for p in mirrored if p.startswith("blobs/")}
    top_names = {p.split("/")[1] for p in mirrored if p.startswith("repositories/")}
    assert listing.shards == 3 + len(blob_prefixes) + 1 + len(top_names)
    assert bucket.counters.requests["list"] == listing.shards


@pytest.mark.parametrize("name", SCENARIOS)
def test_etag_shortcut_agrees_with_gets(name: str, s3_server: SeaweedS3, s3_root: str, tmp_path: Path) -> None:
    require_registry()
    push_scenario(name, s3_server, s3_root, tmp_path / "local")
    told, fetched = links_told_by_etag(S3Storage(bucket_for(s3_server, s3_root)))
    # The registry writes every link in one PUT, so none needs a GET here.
    assert told and fetched == []
    bucket = bucket_for(s3_server, s3_root)
    assert bucket.run(bucket.get_many_async(list(told))) == {path: text.encode() for path, text in told.items()}
    assert bucket.counters.requests["get"] == len(told)


def test_etag_shortcut_leaves_other_contents_to_a_get(s3_server: SeaweedS3, s3_root: str) -> None:
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    other = "sha256:" + hashlib.sha256(b"y").hexdigest()
    prefix = v2_prefix(s3_root)
    client = raw_client(s3_server)
    writes = {
        f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data": b"x",
        f"repositories/a/_layers/sha256/{digest[7:]}/link": digest.encode(),
        # A trailing newline: the registry's reader refuses it, and so must the shortcut.
        f"repositories/a/_manifests/revisions/sha256/{digest[7:]}/link": digest.encode() + b"\n",
        # Names a digest the listing does not: only a GET can say what it holds.
        "repositories/a/_manifests/tags/t/current/link": other.encode(),
    }
    for path, data in writes.items():
        client.put_object(Bucket=s3_server.bucket, Key=prefix + path, Body=data)
    told, fetched = links_told_by_etag(S3Storage(bucket_for(s3_server, s3_root)))
    assert told == {f"repositories/a/_layers/sha256/{digest[7:]}/link": digest}
    assert fetched == sorted(
        [
            f"repositories/a/_manifests/revisions/sha256/{digest[7:]}/link",
            "repositories/a/_manifests/tags/t/current/link",
        ]
    )


def test_nested_and_sibling_keys_across_pages(s3_server: SeaweedS3, s3_root: str) -> None:
    """`x/a/b` and `x/a-b` on both sides of page boundaries: the listing is the set written, whatever the order."""
    prefix = v2_prefix(s3_root)
    names = ["a/b", "a-b", "a.b", "a/b/c", "a0", "a/b-c", "a/b.c", "a", "b"]
    written: set[str] = set()
    # Past one page of 1,000 keys, in three places: obstore pages with S3's default size and no way to set it.
    for shard in ("repositories/app", "blobs/sha256/ab", "x"):
        for i in range(1010 if shard == "x" else 30):
            for name in names if i % 101 == 0 else names[:1]:
                key = f"{shard}/k{i:04d}/{name}"
                written.add(key)
        put_objects(s3_server, [(prefix + k, b"") for k in written if k.startswith(shard + "/")])
    bucket = bucket_for(s3_server, s3_root)
    listing = listed(bucket)
    assert set(listing.objects) == written
    assert bucket.counters.requests["list"] >= listing.shards + 1  # `x/` took two pages at least
    # The raw API, one key a page, agrees: pagination by continuation token loses nothing here.
    assert {k[len(prefix) :] for k in raw_keys(s3_server, prefix, page_size=1)} == written


def test_multipart_uploads_of_unfinished_uploads(s3_server: SeaweedS3, s3_root: str) -> None:
    from tests.s3_harness import s3_registry

    require_registry()
    ledger = Ledger()
    with s3_registry(s3_server, s3_root, ledger) as reg:
        first = reg.start_upload("team/app", b"x" * 77)
        second = reg.start_upload("other/app", random.Random(1).randbytes(4096))
        reg.push_blob("team/app", b"finished")
    bucket = bucket_for(s3_server, s3_root)
    uploads = bucket.multipart_uploads()
    got = {(u.path, u.bytes, u.parts) for u in uploads}
    assert got == {
        (f"repositories/team/app/_uploads/{first}/data", 77, 1),
        (f"repositories/other/app/_uploads/{second}/data", 4096, 1),
    }
    assert all(u.upload_id and u.initiated is not None for u in uploads)
    # Their data is invisible to the listing; their start times are objects beside it.
    objects = listed(bucket).objects
    assert not [p for p in objects if p.endswith("/data") and "/_uploads/" in p]
    assert f"repositories/team/app/_uploads/{first}/startedat" in objects
    assert bucket.counters.requests["list_uploads"] == 1 and bucket.counters.requests["list_parts"] == 2


def test_multipart_uploads_elsewhere_in_the_bucket_are_not_listed(s3_server: SeaweedS3, s3_root: str) -> None:
    client = raw_client(s3_server)
    inside = v2_prefix(s3_root) + "repositories/a/_uploads/u1/data"
    outside = s3_root.strip("/") + "-other/docker/registry/v2/repositories/a/_uploads/u1/data"
    for key in (inside, outside):
        upload = client.create_multipart_upload(Bucket=s3_server.bucket, Key=key)
        client.upload_part(Bucket=s3_server.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"abc")
    uploads = bucket_for(s3_server, s3_root).multipart_uploads()
    assert [(u.path, u.bytes) for u in uploads] == [("repositories/a/_uploads/u1/data", 3)]


def test_batched_delete(s3_server: SeaweedS3, s3_root: str) -> None:
    prefix = v2_prefix(s3_root)
    client = raw_client(s3_server)
    paths = [f"blobs/sha256/{i % 256:02x}/k{i}/data" for i in range(DELETE_BATCH * 2 + 5)]
    put_objects(s3_server, [(prefix + path, b"1") for path in paths])
    keep = "repositories/a/_layers/sha256/k/link"
    client.put_object(Bucket=s3_server.bucket, Key=prefix + keep, Body=b"1")
    bucket = bucket_for(s3_server, s3_root)
    assert bucket.delete(paths + paths[:3]) == len(paths) + 3
    assert bucket.counters.requests["delete"] == 3
    assert set(raw_keys(s3_server, prefix)) == {prefix + keep}
    # Deleting keys that are already gone succeeds.
    assert bucket.delete(paths[:10]) == 10


def test_gets_and_streams(s3_server: SeaweedS3, s3_root: str) -> None:
    prefix = v2_prefix(s3_root)
    data = random.Random(7).randbytes(3 << 20)
    raw_client(s3_server).put_object(Bucket=s3_server.bucket, Key=prefix + "blobs/big", Body=data)
    bucket = bucket_for(s3_server, s3_root)
    assert bucket.run(bucket.get_async("blobs/big")) == data
    assert bucket.run(bucket.get_async("blobs/missing")) is None
    assert b"".join(bucket.iter_object("blobs/big", chunk_size=1 << 20)) == data
    assert bucket.counters.bytes_received == 2 * len(data)
    assert bucket.counters.requests["get"] == 3


def test_rate_limit_slows_a_listing(s3_server: SeaweedS3, s3_root: str) -> None:
    client = raw_client(s3_server)
    for i in range(8):
        client.put_object(Bucket=s3_server.bucket, Key=v2_prefix(s3_root) + f"repositories/r{i}/x", Body=b"")
    bucket = bucket_for(s3_server, s3_root, max_requests_per_second=10)
    start = time.monotonic()
    listing = listed(bucket)
    elapsed = time.monotonic() - start
    # v2/, repositories/ and 8 names: 10 requests at 10 a second.
    assert bucket.counters.requests["list"] == listing.shards == 10
    assert elapsed >= 0.85


def test_wrong_secret_is_refused_without_showing_it(s3_server: SeaweedS3, s3_root: str) -> None:
    secret = "wrong-secret-value-1234567890"
    bucket = S3Bucket(
        S3Location(s3_server.bucket, s3_root.strip("/")),
        S3Settings(region=REGION, endpoint=s3_server.endpoint, access_key=s3_server.access_key, secret_key=secret),
        env={},
    )
    with pytest.raises(StorageError) as caught:
        listed(bucket)
    assert isinstance(caught.value, S3AccessDenied)
    message = str(caught.value)
    assert "\n" not in message and secret not in message and s3_server.secret_key not in message
    assert str(bucket.location) in message


def test_missing_bucket(s3_server: SeaweedS3) -> None:
    bucket = bucket_for(s3_server, "", bucket="no-such-bucket")
    with pytest.raises(S3NotFound):
        listed(bucket)


def test_credentials_from_a_profile(
    s3_server: SeaweedS3, s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_PROFILE with the shared config and credentials files (region and endpoint_url in the config)."""
    raw_client(s3_server).put_object(
        Bucket=s3_server.bucket, Key=v2_prefix(s3_root) + "repositories/p/x", Body=b"hello"
    )
    (tmp_path / "credentials").write_text(
        f"[audit]\naws_access_key_id = {s3_server.access_key}\naws_secret_access_key = {s3_server.secret_key}\n"
    )
    (tmp_path / "config").write_text(f"[profile audit]\nregion = {REGION}\nendpoint_url = {s3_server.endpoint}\n")
    for name in [n for n in __import__("os").environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "audit")
    bucket = S3Bucket(parse_s3_url(f"s3://{s3_server.bucket}{s3_root}"))
    assert bucket.endpoint == s3_server.endpoint
    assert bucket.run(bucket.get_async("repositories/p/x")) == b"hello"
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(UsageError, match="nobody"):
        S3Bucket(parse_s3_url(f"s3://{s3_server.bucket}{s3_root}"))


@pytest.mark.parametrize("delete_untagged", [False, True])
def test_gc_dry_run_on_the_bucket_equals_the_one_on_its_mirror(
    delete_untagged: bool, s3_server: SeaweedS3, s3_root: str, tmp_path: Path
) -> None:
    from tests.registry_harness import garbage_collect

    require_registry()
    push_scenario("basic", s3_server, s3_root, tmp_path / "local")
    on_bucket = parse_gc_output(s3_garbage_collect(s3_server, s3_root, delete_untagged=delete_untagged))
    mirrored = mirror(s3_server, s3_root, tmp_path / "mirror")
    on_mirror = parse_gc_output(garbage_collect(mirrored, dry_run=True, delete_untagged=delete_untagged))
    assert on_bucket == on_mirror
    assert on_bucket[1], "the basic scenario leaves blobs to collect"


def test_missing_server_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3_harness import require_weed

    # Neither on PATH nor beside the running Python.
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python3")
    monkeypatch.setenv("STORAGE_AUDIT_REQUIRE_REGISTRY", "1")
    with pytest.raises(pytest.fail.Exception, match="weed"):
        require_weed()
    monkeypatch.setenv("STORAGE_AUDIT_REQUIRE_REGISTRY", "0")
    with pytest.raises(pytest.skip.Exception):
        require_weed()


@pytest.mark.parametrize("seed", range(10))
def test_random_workloads_list_and_resolve_like_the_raw_api(seed: int, s3_server: SeaweedS3, s3_root: str) -> None:
    """Seeded random pushes: the sharded listing is the raw API's set of keys; every link told by its ETag agrees."""
    from tests.s3_harness import s3_registry
    from tests.workloads import random_workload

    require_registry()
    with s3_registry(s3_server, s3_root) as reg:
        random_workload(reg, seed)
    bucket = bucket_for(s3_server, s3_root)
    objects = listed(bucket).objects
    prefix = v2_prefix(s3_root)
    raw = raw_keys(s3_server, prefix, page_size=7)
    assert set(objects) == {k[len(prefix) :] for k in raw}
    told, fetched = links_told_by_etag(S3Storage(bucket_for(s3_server, s3_root)))
    assert told and fetched == []
    contents = bucket.run(bucket.get_many_async(list(told)))
    assert {p: contents[p].decode() for p in told} == told


def test_manifests_named_by_revisions_are_fetched_while_listing(s3_server: SeaweedS3, s3_root: str) -> None:
    """The GET of a revision's manifest starts during the listing; reading it later costs no request."""
    manifest = b'{"schemaVersion": 2, "layers": []}'
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    layer = "sha256:" + hashlib.sha256(b"layer").hexdigest()
    missing = "sha256:" + hashlib.sha256(b"no blob").hexdigest()
    prefix = v2_prefix(s3_root)
    client = raw_client(s3_server)
    writes = {
        f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data": manifest,
        f"blobs/sha256/{layer[7:9]}/{layer[7:]}/data": b"layer",
        f"repositories/a/_manifests/revisions/sha256/{digest[7:]}/link": digest.encode(),
        f"repositories/a/_layers/sha256/{layer[7:]}/link": layer.encode(),
        # A revision whose blob is not in the bucket: nothing to fetch.
        f"repositories/a/_manifests/revisions/sha256/{missing[7:]}/link": missing.encode(),
    }
    for path, data in writes.items():
        client.put_object(Bucket=s3_server.bucket, Key=prefix + path, Body=data)
    storage = S3Storage(bucket_for(s3_server, s3_root))
    assert storage.list_dir("") is not None
    counters = storage.bucket.counters
    assert counters.requests["get"] == 1
    assert counters.bytes_received == len(manifest)
    small = storage.read_small(f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data", 1000)
    assert small is not None and small.data == manifest and small.size == len(manifest)
    assert counters.requests["get"] == 1
    # The layer was never fetched: reading it is a GET of its own.
    layer_read = storage.read_small(f"blobs/sha256/{layer[7:9]}/{layer[7:]}/data", 1000)
    assert layer_read is not None and layer_read.data == b"layer"
    assert counters.requests["get"] == 2

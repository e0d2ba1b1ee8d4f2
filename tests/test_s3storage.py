"""The S3 tree's pieces that need no server: times, the directory view of a listing, the manifest cache, ROOT forms."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage_audit.core.errors import UsageError
from storage_audit.roots.resolve import Bucket, LocalTree, RootError, resolve
from storage_audit.storage.base import EntryKind, ProcessModel, RemoteOptions
from storage_audit.storage.bucket import ObjectInfo
from storage_audit.storage.s3 import ManifestCache, _Index, _tree, default_cache_dir, mtime_ns

WHEN = datetime(2026, 11, 30, 10, 0, 1, 250000, tzinfo=UTC)


def test_mtime_ns_is_exact() -> None:
    assert mtime_ns(WHEN) == int(WHEN.timestamp()) * 10**9 + 250_000_000
    assert mtime_ns(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == 1000
    assert mtime_ns(None) == 0


def test_a_listing_read_as_directories() -> None:
    later = WHEN + timedelta(seconds=5)
    files = {
        "blobs/sha256/ab/abc/data": ObjectInfo(3, WHEN, None),
        "repositories/a/b/_layers/sha256/abc/link": ObjectInfo(71, later, None),
        "repositories/a-b/_layers/sha256/abc/link": ObjectInfo(71, WHEN, None),
        "repositories/x": ObjectInfo(1, WHEN, None),
        "repositories/x/y": ObjectInfo(1, WHEN, None),
        "repositories/a": ObjectInfo(0, WHEN, None),  # a "folder" marker
    }
    tree = _tree(files)
    assert tree.children[""] == {"blobs": EntryKind.DIR, "repositories": EntryKind.DIR}
    assert tree.children["repositories"] == {"a": EntryKind.DIR, "a-b": EntryKind.DIR, "x": EntryKind.DIR}
    assert tree.children["repositories/a/b/_layers/sha256/abc"] == {"link": EntryKind.FILE}
    # A directory's time is its newest key's; `x` is a key and a prefix at once.
    assert tree.dir_mtimes["repositories"] == mtime_ns(later)
    assert tree.dir_mtimes["repositories/a-b"] == mtime_ns(WHEN)
    assert tree.shadowed == {"repositories": ["x"]}
    assert tree.keys == sorted(files)
    assert tree.children["repositories"]["a"] == EntryKind.DIR


def test_a_listing_read_page_by_page_in_any_order() -> None:
    """Pages arrive in no set order, and a key may come before the keys that make its parent a directory."""
    hexes = [hashlib.sha256(bytes([n])).hexdigest() for n in range(6)]
    files = {
        f"blobs/sha256/{h[:2]}/{h}/data": ObjectInfo(n + 1, WHEN + timedelta(seconds=n), None)
        for n, h in enumerate(hexes)
    }
    files |= {f"repositories/a/_layers/sha256/{h}/link": ObjectInfo(71, WHEN, None) for h in hexes}
    files["repositories/a/_manifests/revisions/sha256/" + hexes[0] + "/link"] = ObjectInfo(71, WHEN, None)
    files["repositories/a"] = ObjectInfo(3, WHEN, None)  # a key that is a prefix too
    files["repositories/stray"] = ObjectInfo(0, WHEN, None)
    whole = _tree(files)
    for order in (sorted(files), sorted(files, reverse=True), sorted(files, key=lambda k: k[::-1])):
        index = _Index()
        manifests = []
        for start in range(0, len(order), 3):
            manifests += index.add({k: files[k] for k in order[start : start + 3]})
        tree = index.tree()
        assert tree.children == whole.children and tree.shadowed == whole.shadowed and tree.keys == whole.keys
        assert manifests == [f"blobs/sha256/{hexes[0][:2]}/{hexes[0]}/data"]
        assert index.named == {f"sha256:{h}" for h in hexes}
        assert len(index.links) == 7 and index.markers() == ["repositories/stray"]
    # A directory's time is the newest key's below it, whichever page held it.
    assert whole.dir_mtimes["blobs/sha256"] == mtime_ns(WHEN + timedelta(seconds=5))
    # A folder marker alone (the bucket says so) is an empty directory.
    index = _Index()
    index.add(files)
    marked = index.tree(["repositories/stray"])
    assert marked.children["repositories"]["stray"] == EntryKind.DIR and marked.children["repositories/stray"] == {}
    assert marked.dir_mtimes["repositories/stray"] == mtime_ns(WHEN)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_manifest_cache_checks_content_before_use(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path)
    good = b'{"schemaVersion": 2}'
    digest = _digest(good)
    info = ObjectInfo(len(good), WHEN, hashlib.md5(good).hexdigest())
    assert cache.get(digest, info) is None
    cache.put(digest, good)
    assert cache.get(digest, info) == good and cache.hits == 1
    # Not the object listed (another ETag, another size): read the bucket.
    assert cache.get(digest, ObjectInfo(len(good), WHEN, "0" * 32)) is None
    assert cache.get(digest, ObjectInfo(len(good) + 1, WHEN, info.etag)) is None
    # A multipart ETag is no MD5: the size and the digest decide.
    assert cache.get(digest, ObjectInfo(len(good), WHEN, "abc-2")) == good
    # Content that does not hash to its digest is never stored, and a damaged file is never used.
    cache.put(_digest(b"other"), good)
    assert not list(tmp_path.rglob(_digest(b"other")[7:]))
    (path,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    path.write_bytes(good[:-1] + b"]")
    assert cache.get(digest, ObjectInfo(len(good), WHEN, "abc-2")) is None
    assert cache.hits == 2


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "storage-audit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "storage-audit"


def test_s3_roots_resolve_without_a_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}.items():
        monkeypatch.setenv(name, value)
    source = resolve("s3://reg/root/docker/registry/v2", RemoteOptions(cache_dir=tmp_path, max_requests_per_second=5))
    assert isinstance(source, Bucket)
    storage = source.storage
    assert storage.location == "s3://reg/root" == source.location
    assert storage.process_model is ProcessModel.THREADS
    assert storage.bucket.settings.max_requests_per_second == 5
    assert storage.cache is not None and storage.cache.directory == tmp_path
    uncached = resolve("s3://reg", RemoteOptions(cache=False))
    assert isinstance(uncached, Bucket) and uncached.storage.cache is None
    assert "s3cr3t" not in repr(storage.bucket) and "s3cr3t" not in str(storage.origin)
    with pytest.raises(UsageError):
        resolve("s3://")


def test_configuration_files_as_roots(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = fixture_root("basic")
    local = tmp_path / "fs.yml"
    local.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete: {{enabled: true}}\n")
    configured_local = resolve(local)
    assert isinstance(configured_local, LocalTree)
    assert configured_local.location == str((root / "docker/registry/v2").resolve())
    remote = tmp_path / "s3.yml"
    remote.write_text(
        "version: 0.1\nstorage:\n  s3:\n    bucket: reg\n    region: eu-west-1\n    accesskey: AK\n"
        "    secretkey: hidden-secret\n    regionendpoint: http://127.0.0.1:1\n    rootdirectory: /a/b\n"
    )
    configured = resolve(remote, RemoteOptions(cache=False))
    assert isinstance(configured, Bucket)
    storage = configured.storage
    assert storage.origin == {
        "bucket": "reg",
        "prefix": "a/b/docker/registry/v2/",
        "region": "eu-west-1",
        "endpoint": "http://127.0.0.1:1",
    }
    other = tmp_path / "swift.yml"
    other.write_text("version: 0.1\nstorage:\n  swift:\n    container: reg\n")
    with pytest.raises(UsageError, match="swift"):
        resolve(other)
    missing = tmp_path / "missing.yml"
    missing.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'nothing'}\n")
    with pytest.raises(RootError):
        resolve(missing)
    # A file that is no YAML mapping is no ROOT at all.
    (tmp_path / "notes.txt").write_text("just text\n")
    with pytest.raises(RootError):
        resolve(tmp_path / "notes.txt")

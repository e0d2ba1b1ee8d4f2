"""Tests against the reference registry: the scanner reads what it wrote, and the harness works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fixture_builder
from tests.facts import inventory_facts
from tests.registry_harness import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Ledger,
    Registry,
    canonical_json,
    garbage_collect,
    parse_gc_output,
    require_registry,
    sha256,
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    require_registry()
    with Registry(tmp_path / "root") as reg:
        yield reg


@pytest.mark.parametrize("scenario", ["basic", "multiarch", "referrers", "churn"])
def test_scan_matches_what_the_registry_wrote(tmp_path: Path, scenario: str) -> None:
    require_registry()
    expected = fixture_builder().build_scenario(scenario, tmp_path)
    from storage_audit.scan.run import scan
    from storage_audit.storage.base import LocalStorage

    inv = scan(LocalStorage(tmp_path / "docker" / "registry" / "v2"))
    assert inventory_facts(inv) == expected


def test_blob_round_trip_and_mount(registry: Registry) -> None:
    data = b"round trip " * 7
    digest = registry.push_blob("one", data)
    assert digest == sha256(data)
    assert registry.head_blob("one", digest) == len(data)
    assert registry.get_blob("one", digest) == data
    assert registry.head_blob("two", digest) is None
    registry.mount_blob("two", digest, from_repo="one")
    assert registry.get_blob("two", digest) == data
    assert registry.ledger.expected_facts()["layer_links"] == [
        {"repository": "one", "digest": digest},
        {"repository": "two", "digest": digest},
    ]


@pytest.mark.parametrize("oci", [False, True])
def test_manifest_round_trip(registry: Registry, oci: bool) -> None:
    img = registry.image("app", [b"layer-a" * 9, b"layer-b" * 11], {"os": "linux"}, oci=oci, tags=["v1"])
    body, media_type, digest = registry.get_manifest("app", "v1")
    assert (body, digest) == (img.body, img.digest)
    assert media_type == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
    assert registry.get_manifest("app", img.digest)[0] == img.body
    assert registry.tags("app") == ["v1"]
    assert registry.catalog() == ["app"]


@pytest.mark.parametrize("oci", [False, True])
def test_index_round_trip(registry: Registry, oci: bool) -> None:
    amd = registry.image("multi", [b"amd" * 20], {"architecture": "amd64", "os": "linux"}, oci=oci)
    arm = registry.image("multi", [b"arm" * 20], {"architecture": "arm64", "os": "linux"}, oci=oci)
    idx = registry.index("multi", [(amd, "linux/amd64"), (arm, "linux/arm64/v8")], oci=oci, tags=["latest"])
    body, media_type, _ = registry.get_manifest("multi", "latest")
    assert body == idx.body
    assert media_type == (OCI_INDEX if oci else DOCKER_LIST)
    children = registry.ledger.expected_facts()["references"]
    assert {(r["digest"], r["platform"]) for r in children if r["ref_type"] == "child"} == {
        (amd.digest, "linux/amd64"),
        (arm.digest, "linux/arm64/v8"),
    }


def test_artifact_round_trip(registry: Registry) -> None:
    img = registry.image("signed", [b"payload" * 8], {"os": "linux"}, oci=True, tags=["v1"])
    sig = registry.artifact(
        "signed", img, "application/vnd.example.sig.v1+json", b'{"sig":1}', "application/octet-stream"
    )
    assert registry.get_manifest("signed", sig.digest)[0] == sig.body
    [row] = [m for m in registry.ledger.expected_facts()["manifests"] if m["digest"] == sig.digest]
    assert (row["kind"], row["subject"]) == ("oci-artifact", img.digest)


def test_delete_removes_every_tag_on_the_manifest(registry: Registry) -> None:
    one = registry.image("app", [b"one" * 10], {"n": 1}, tags=["a", "b"])
    two = registry.image("app", [b"two" * 10], {"n": 2}, tags=["c"])
    registry.put_manifest("app", "c", one.body, DOCKER_MANIFEST)
    registry.put_manifest("app", "c", two.body, DOCKER_MANIFEST)
    registry.delete_manifest("app", one.digest)
    assert registry.tags("app") == ["c"]
    assert not registry.manifest_exists("app", one.digest)
    facts = registry.ledger.expected_facts()
    assert {(h["tag"], h["digest"]) for h in facts["tag_history"]} == {("c", one.digest), ("c", two.digest)}
    assert {"repository": "app", "digest": one.digest, "linked": False} in facts["revisions"]
    assert registry.ledger.tag_history("app", "c") == [two.digest, one.digest, two.digest]


def test_abandoned_upload_is_recorded(registry: Registry) -> None:
    uuid = registry.start_upload("app", b"x" * 33)
    assert registry.ledger.expected_facts()["uploads"] == [{"repository": "app", "id": uuid, "bytes": 33}]
    assert (registry.root / "docker/registry/v2/repositories/app/_uploads" / uuid / "data").stat().st_size == 33


def test_gc_dry_run_parses_into_sets(tmp_path: Path) -> None:
    require_registry()
    root = tmp_path / "root"
    ledger = Ledger()
    with Registry(root, ledger) as reg:
        kept = reg.image("app", [b"kept" * 10], {"n": 1}, tags=["v1"])
        loose = reg.image("app", [b"loose" * 10], {"n": 2})
        gone = reg.image("app", [b"gone" * 10], {"n": 3}, tags=["old"])
        reg.delete_manifest("app", gone.digest)

    manifests, blobs, marked = parse_gc_output(garbage_collect(root, dry_run=True))
    assert manifests == set()
    assert {kept.digest, loose.digest, sha256(b"kept" * 10), sha256(b"loose" * 10)} <= marked
    assert blobs == {gone.digest, sha256(b"gone" * 10), sha256(canonical_json({"n": 3}))}

    manifests, blobs, marked = parse_gc_output(garbage_collect(root, dry_run=True, delete_untagged=True))
    assert manifests == {("app", loose.digest)}
    assert loose.digest in blobs and sha256(b"loose" * 10) in blobs
    assert kept.digest in marked and not marked & blobs
    # A dry run changes nothing.
    assert (root / "docker/registry/v2/blobs/sha256" / gone.digest[7:9] / gone.digest[7:] / "data").exists()


def test_parse_gc_output_of_both_versions() -> None:
    a, b, c = (f"sha256:{ch * 64}" for ch in "abc")
    v28 = "\n".join(
        [
            "team/app",
            f"team/app: marking manifest {a} ",
            f"team/app: marking blob {b}",
            "other",
            f"manifest eligible for deletion: {c}",
            "",
            "2 blobs marked, 1 blobs and 1 manifests eligible for deletion",
            f"blob eligible for deletion: {c}",
        ]
    )
    assert parse_gc_output(v28) == ({("other", c)}, {c}, {a, b})
    v3 = f"manifest eligible for deletion: {{x/y {c} [latest old]}}\n"
    assert parse_gc_output(v3) == ({("x/y", c)}, set(), set())

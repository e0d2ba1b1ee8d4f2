"""Manifest classification and reference extraction, including bad content."""

from __future__ import annotations

import json

import pytest

from storage_audit.core.manifest import (
    DOCKER_LIST,
    DOCKER_V2,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
)

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def desc(digest: str, media_type: str = "x/y", size: int = 1, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def doc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_docker_schema2() -> None:
    p = parse_manifest(
        doc({"schemaVersion": 2, "mediaType": DOCKER_V2, "config": desc(A), "layers": [desc(B), desc(C)]})
    )
    assert (p.kind, p.media_type, p.problems) == ("docker-v2", DOCKER_V2, [])
    assert [(r.ref_type, r.digest, r.position) for r in p.references] == [
        ("config", A, 0),
        ("layer", B, 0),
        ("layer", C, 1),
    ]


def test_oci_index_without_media_type_and_platforms() -> None:
    p = parse_manifest(
        doc(
            {
                "schemaVersion": 2,
                "manifests": [
                    desc(A, OCI_MANIFEST, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
                    desc(B, OCI_MANIFEST, platform={"os": "linux", "architecture": "amd64"}),
                ],
            }
        )
    )
    assert (p.kind, p.media_type) == ("oci-index", OCI_INDEX)
    assert [(r.ref_type, r.platform) for r in p.references] == [("child", "linux/arm64/v8"), ("child", "linux/amd64")]


def test_docker_list() -> None:
    p = parse_manifest(doc({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [desc(A, DOCKER_V2)]}))
    assert p.kind == "docker-list"


def test_oci_manifest_without_media_type() -> None:
    p = parse_manifest(doc({"schemaVersion": 2, "config": desc(A), "layers": []}))
    assert (p.kind, p.media_type) == ("oci-manifest", OCI_MANIFEST)


def test_artifact_with_subject() -> None:
    p = parse_manifest(
        doc(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/x.sig",
                "config": desc(A, "application/vnd.oci.empty.v1+json", 2),
                "layers": [desc(B)],
                "subject": desc(C, OCI_MANIFEST),
            }
        )
    )
    assert (p.kind, p.artifact_type, p.subject) == ("oci-artifact", "application/x.sig", C)
    assert ("subject", C) in [(r.ref_type, r.digest) for r in p.references]


def test_schema1_signed_and_unsigned() -> None:
    body = {"schemaVersion": 1, "name": "a", "tag": "t", "fsLayers": [{"blobSum": A}, {"blobSum": B}]}
    p = parse_manifest(doc(body))
    assert p.kind == "schema1" and [r.digest for r in p.references] == [A, B]
    p = parse_manifest(doc({**body, "signatures": []}))
    assert p.media_type.endswith("+prettyjws")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "zero bytes"),
        (b"{not json", "not JSON"),
        (b"[]", "not an object"),
        (b" " * (MAX_MANIFEST_BYTES + 1), "4 MiB"),
        (doc({"schemaVersion": 3}), "schemaVersion"),
        (doc({"schemaVersion": 2, "mediaType": "application/x-unknown", "config": desc(A)}), "unknown media type"),
        (doc({"schemaVersion": 2, "config": desc("sha256:zz")}), "invalid digest"),
        (doc({"schemaVersion": 2, "layers": "nope"}), "not a list"),
        (doc({"schemaVersion": 2}), "neither"),
    ],
)
def test_bad_content_is_a_problem_not_an_exception(data: bytes, problem: str) -> None:
    p = parse_manifest(data)
    assert any(problem in text for text in p.problems), p.problems


def test_invalid_reference_keeps_the_valid_ones() -> None:
    p = parse_manifest(doc({"schemaVersion": 2, "config": desc(A), "layers": [desc("nope"), desc(B)]}))
    assert [r.digest for r in p.references] == [A, B]
    assert p.problems

"""The path grammar: every kind of spec maps to one path and back, and bad parts are refused."""

from __future__ import annotations

import pytest

from storage_audit.core.paths import (
    BlobData,
    BlobDir,
    BlobPrefix,
    Blobs,
    Digest,
    InvalidDigest,
    InvalidPath,
    LayerLink,
    LayersAlgorithm,
    Repositories,
    Repository,
    RepositoryPart,
    RevisionLink,
    TagCurrentDir,
    TagCurrentLink,
    TagDir,
    TagIndexLink,
    UploadData,
    UploadDir,
    UploadStartedAt,
    blob_data_digest,
    parse_path,
    path_for,
    valid_repository,
)

HEX = "ab" + "0" * 62
D = Digest("sha256", HEX)
D512 = Digest("sha512", "c" * 128)

TABLE = [
    (BlobData(D), f"blobs/sha256/ab/{HEX}/data"),
    (BlobDir(D), f"blobs/sha256/ab/{HEX}"),
    (BlobDir(D512), f"blobs/sha512/cc/{'c' * 128}"),
    (Repository("org/team/app"), "repositories/org/team/app"),
    (LayerLink("app", D), f"repositories/app/_layers/sha256/{HEX}/link"),
    (LayerLink("app", D512), f"repositories/app/_layers/sha512/{'c' * 128}/link"),
    (RevisionLink("a/b", D), f"repositories/a/b/_manifests/revisions/sha256/{HEX}/link"),
    (TagDir("a", "v1.0"), "repositories/a/_manifests/tags/v1.0"),
    (TagCurrentLink("a", "latest"), "repositories/a/_manifests/tags/latest/current/link"),
    (TagIndexLink("a", "latest", D), f"repositories/a/_manifests/tags/latest/index/sha256/{HEX}/link"),
    (
        UploadDir("a", "5f1c3c0e-7d4e-4a55-9b7c-2b4f5f3e0a11"),
        "repositories/a/_uploads/5f1c3c0e-7d4e-4a55-9b7c-2b4f5f3e0a11",
    ),
    (Blobs(), "blobs"),
    (BlobPrefix("sha256", "ab"), "blobs/sha256/ab"),
    (Repositories(), "repositories"),
    (RepositoryPart("a/b", "_manifests"), "repositories/a/b/_manifests"),
    (RepositoryPart("a", "_layers"), "repositories/a/_layers"),
    (RepositoryPart("a", "_uploads"), "repositories/a/_uploads"),
    (LayersAlgorithm("a", "sha512"), "repositories/a/_layers/sha512"),
    (TagCurrentDir("a", "latest"), "repositories/a/_manifests/tags/latest/current"),
    (UploadData("a", "u-1"), "repositories/a/_uploads/u-1/data"),
    (UploadStartedAt("org/app", "u-1"), "repositories/org/app/_uploads/u-1/startedat"),
]


@pytest.mark.parametrize(("spec", "path"), TABLE)
def test_spec_to_path_and_back(spec: object, path: str) -> None:
    assert path_for(spec) == path  # type: ignore[arg-type]
    assert parse_path(path) == spec


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + "0" * 63,
        "sha256:" + "G" * 64,
        "sha256:" + "A" * 64,
        "md5:" + "0" * 32,
        "sha256" + "0" * 64,
        "",
        "sha512:" + "0" * 64,
    ],
)
def test_invalid_digests_are_refused(text: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


def test_digest_round_trip() -> None:
    assert str(Digest.parse(f"sha256:{HEX}")) == f"sha256:{HEX}"
    assert Digest.parse("sha384:" + "1" * 96).algorithm == "sha384"


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/blobs/sha256/ab/x/data",
        f"blobs/sha256/cd/{HEX}/data",  # wrong prefix
        f"blobs/sha256/ab/{HEX}/other",
        f"blobs/md5/ab/{HEX}/data",
        f"repositories/a/../b/_layers/sha256/{HEX}/link",
        f"repositories/a//_layers/sha256/{HEX}/link",
        f"repositories/A/_layers/sha256/{HEX}/link",
        f"repositories/a/_layers/sha256/{HEX}",
        f"repositories/a/_layers/sha256/{HEX}/link/extra",
        f"repositories/a/_manifests/revisions/sha256/{HEX[:-1]}/link",
        "repositories/a/_manifests/tags/-bad/current/link",
        "repositories/a/_manifests/tags/t/current/other",
        "repositories/a/_manifests/tags/-bad/current",
        "repositories/a/_uploads/x/y",
        "repositories/a/_uploads/-x/data",
        "repositories/a/_other",
        "repositories/a/_layers/md5",
        "blobs/sha256/a",
        "blobs/sha256/AB",
        "blobs/md5/ab",
        "etc/passwd",
        "repositories/_manifests",
    ],
)
def test_paths_outside_the_grammar_are_refused(path: str) -> None:
    with pytest.raises(InvalidPath):
        parse_path(path)


def test_specs_validate_their_parts() -> None:
    with pytest.raises(InvalidPath):
        LayerLink("Upper", D)
    with pytest.raises(InvalidPath):
        TagDir("a", "../x")
    with pytest.raises(InvalidPath):
        UploadDir("a", "../../etc")
    with pytest.raises(InvalidDigest):
        Digest("sha256", "../" + "0" * 61)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("app", True),
        ("org/team/app", True),
        ("a__b", True),
        ("a--b.c_d", True),
        ("a___b", False),
        ("-a", False),
        ("a/", False),
        ("a//b", False),
        ("A", False),
        ("a" * 256, False),
    ],
)
def test_repository_names(name: str, ok: bool) -> None:
    assert valid_repository(name) is ok


@pytest.mark.parametrize(
    "path",
    [
        *(p for _, p in TABLE),
        f"blobs/sha256/ab/{HEX}/data",
        f"blobs/sha512/cc/{'c' * 128}/data",
        f"blobs/sha256/ac/{HEX}/data",  # the prefix is not the digest's
        f"blobs/sha256/ab/{HEX}0/data",  # too long
        f"blobs/sha256/AB/{HEX.upper()}/data",
        f"blobs/sha256/ab/{HEX}/data/",
        f"blobs/md5/ab/{HEX}/data",
        f"x/blobs/sha256/ab/{HEX}/data",
    ],
)
def test_blob_data_digest_is_what_parse_path_says(path: str) -> None:
    try:
        spec = parse_path(path)
    except InvalidPath:
        spec = None
    want = str(spec.digest) if isinstance(spec, BlobData) else None
    assert blob_data_digest(path) == want

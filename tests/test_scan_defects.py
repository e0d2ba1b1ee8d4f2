"""The scan's answers on odd ROOTs and odd files: each case was once answered wrongly, without a word."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import orjson
import pytest

from storage_audit.core.manifest import DOCKER_V2, MAX_MANIFEST_BYTES, parse_manifest
from storage_audit.core.paths import BlobData, Digest, path_for
from storage_audit.operations.inventory import load
from storage_audit.roots.resolve import LocalTree, resolve
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage

from .conftest import BROKEN, FIXTURES, unpack

V2 = Path("docker/registry/v2")
HEX = "ab" + "0" * 62


def test_the_python_api_resolves_root_as_the_command_line_does(tmp_path: Path) -> None:
    root = unpack(FIXTURES / "basic.tar.gz", tmp_path / "basic")
    from_v2 = load(resolve(root / V2))
    from_root = load(resolve(root))
    assert isinstance(resolve(root), LocalTree)
    assert len(from_root.blobs) == len(from_v2.blobs) > 0
    assert from_root.root == from_v2.root == str((root / V2).resolve())
    for bad in (tmp_path / "nonexistent", tmp_path):
        # The library's usage error (exit 2 on the command line), whatever its module.
        with pytest.raises(Exception) as caught:
            resolve(bad)
        assert getattr(caught.value, "exit_code", None) == 2, repr(caught.value)


def test_an_unreadable_v2_is_a_finding_that_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2 = (unpack(FIXTURES / "basic.tar.gz", tmp_path / "basic") / V2).resolve()
    real_scandir = os.scandir

    def deny(path):  # type: ignore[no-untyped-def]
        if str(path) == str(v2):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", deny)
    # ROOT is the registry root, which can be read; the v2 directory below it cannot.
    inv = load(resolve(tmp_path / "basic"))
    unreadable = inv.findings[inv.findings["kind"] == "unreadable"]
    assert list(unreadable["path"]) == ["."]
    assert "Permission denied" in unreadable["detail"].iloc[0]


def test_the_over_limit_finding_states_the_real_size(tmp_path: Path) -> None:
    expected = json.loads((BROKEN / "manifest-over-limit.json").read_text())
    root = unpack(BROKEN / "manifest-over-limit.tar.gz", tmp_path)
    inv = scan(LocalStorage(root / V2))
    corrupt = inv.findings[inv.findings["kind"] == "corrupt-manifest"]
    assert len(corrupt) == 1, expected["note"]
    real = os.stat(root / V2 / corrupt["path"].iloc[0]).st_size
    assert real > MAX_MANIFEST_BYTES + 1
    assert f"{real} bytes, over the registry's 4 MiB limit" in corrupt["detail"].iloc[0]
    assert int(inv.manifests.set_index("digest").loc[corrupt["digest"].iloc[0], "size"]) == real


def _manifest(layer_size: object) -> bytes:
    layer = f'{{"mediaType": "x", "digest": "sha256:{HEX}", "size": {layer_size}}}'
    config = f'{{"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:{HEX}", "size": 2}}'
    body = f'{{"schemaVersion": 2, "mediaType": "{DOCKER_V2}", "config": {config}, "layers": [{layer}]}}'
    orjson.loads(body)  # valid JSON, whatever the size says
    return body.encode()


@pytest.mark.parametrize("size", ["99999999999999999999999999", "9223372036854775808", "1.5", '"12"', "true"])
def test_a_size_that_is_no_64_bit_integer_makes_a_corrupt_manifest(size: str) -> None:
    parsed = parse_manifest(_manifest(size))
    assert any("no 64-bit integer" in p for p in parsed.problems), parsed.problems
    # What it names is still referenced, so that nothing it needs is taken for garbage.
    assert [(r.ref_type, r.size) for r in parsed.references] == [("config", 2), ("layer", None)]


@pytest.mark.parametrize("size", ["9223372036854775807", "0", "null"])
def test_sizes_the_registry_accepts_are_no_problem(size: str) -> None:
    parsed = parse_manifest(_manifest(size))
    assert parsed.problems == []


def test_a_huge_descriptor_size_is_a_corrupt_manifest_finding(tmp_path: Path) -> None:
    root = unpack(FIXTURES / "basic.tar.gz", tmp_path / "basic")
    v2 = root / V2
    inv = scan(LocalStorage(v2))
    tagged = inv.tags.set_index(["repository", "tag"])["digest"]
    digest = tagged.iloc[0]
    blob = v2 / path_for(BlobData(Digest.parse(digest)))
    doc = json.loads(blob.read_bytes())
    assert "layers" in doc, "the first tag is an image"
    doc["layers"][0]["size"] = 99999999999999999999999999
    blob.write_text(json.dumps(doc))
    inv = scan(LocalStorage(v2))
    found = inv.findings[(inv.findings["kind"] == "corrupt-manifest") & (inv.findings["digest"] == digest)]
    assert len(found) == 1 and "no 64-bit integer" in found["detail"].iloc[0]

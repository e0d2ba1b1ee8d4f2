"""Manifests that only tags name: the scan parses them, so a dangling tag keeps the whole image it names."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage_audit.scan.run import ScanOptions, scan
from storage_audit.storage.base import LocalStorage
from tests.conftest import cli
from tests.registry_harness import Ledger, Pushed, Registry, canonical_json, require_registry, sha256

V2 = Path("docker/registry/v2")


@dataclass
class Image:
    pushed: Pushed
    config: str
    layers: list[str]
    sizes: dict[str, int]  # every blob of the image: digest -> bytes

    @property
    def blobs(self) -> set[str]:
        return set(self.sizes)


@dataclass
class Tree:
    root: Path
    kept: Image  # tagged 1.0, intact
    dangling: Image  # tagged 2.0; its whole revision directory is gone
    history: Image  # once tagged 3.0 (a history entry names it); its whole revision directory is gone
    current: Image  # tagged 3.0 now


def _image(reg: Registry, repo: str, name: str, tags: tuple[str, ...]) -> Image:
    layers = [f"{name} layer {i} ".encode() * (40 + i) for i in range(2)]
    config = canonical_json({"architecture": "amd64", "os": "linux", "name": name})
    pushed = reg.image(repo, layers, config, tags=tags)
    sizes = {sha256(data): len(data) for data in (*layers, config, pushed.body)}
    return Image(pushed, sha256(config), [sha256(layer) for layer in layers], sizes)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    require_registry()
    base = tmp_path_factory.mktemp("tag-manifests")
    root = base / "root"
    with Registry(root, Ledger()) as reg:
        kept = _image(reg, "team/app", "kept", ("1.0",))
        dangling = _image(reg, "team/app", "dangling", ("2.0",))
        history = _image(reg, "team/app", "history", ("3.0",))
        current = _image(reg, "team/app", "current", ("3.0",))
    # Not the registry's own delete (which leaves the directory and removes the tags): the whole
    # revision directory is lost, as a partial copy or a hand clean-up leaves it.
    revisions = root / V2 / "repositories/team/app/_manifests/revisions"
    for image in (dangling, history):
        shutil.rmtree(revisions / image.pushed.digest.replace(":", "/"))
    yield Tree(root, kept, dangling, history, current)
    shutil.rmtree(base, ignore_errors=True)


def _json(*args: str) -> list[dict[str, object]]:
    result = cli(*args, "-f", "json", "-q")
    assert result.exit_code in (0, 3), result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


@pytest.mark.parametrize("workers", [1, 2])
def test_the_scan_parses_what_tags_name_without_a_revision_directory(tree: Tree, workers: int) -> None:
    inv = scan(LocalStorage(tree.root / V2), ScanOptions(workers=workers))
    assert tree.dangling.pushed.digest not in set(inv.revisions["digest"])
    assert set(inv.manifests["digest"]) == {
        i.pushed.digest for i in (tree.kept, tree.dangling, tree.history, tree.current)
    }
    for image in (tree.dangling, tree.history):
        refs = inv.references[inv.references["manifest"] == image.pushed.digest]
        assert dict(zip(refs["digest"], refs["ref_type"], strict=True)) == {
            image.config: "config",
            **dict.fromkeys(image.layers, "layer"),
        }


def test_a_dangling_tag_without_a_revision_directory_keeps_its_config_and_layers(tree: Tree) -> None:
    # Only a tag history entry names the `history` image: nothing keeps it, and it is the only orphan.
    for flags in ((), ("--delete-untagged",)):
        orphans = {str(r["digest"]) for r in _json("orphans", str(tree.root), *flags)}
        assert orphans == tree.history.blobs, flags
    tags = {(r["repository"], r["tag"]): r for r in _json("report", str(tree.root), "--by", "tag")}
    assert tags[("team/app", "2.0")]["image_bytes"] == sum(tree.dangling.sizes.values())

"""Every broken fixture scans without an exception and yields the finding its note promises."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage

from .conftest import BROKEN, cli

CASES = sorted(p.name.removesuffix(".json") for p in BROKEN.glob("*.json"))


def test_every_bad_input_has_a_fixture() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("name", CASES)
def test_broken_fixture_yields_its_findings(name: str, tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    expected = json.loads((BROKEN / f"{name}.json").read_text())
    root = shared_root(BROKEN / f"{name}.tar.gz")
    inv = scan(LocalStorage(root / "docker/registry/v2"))
    found = set(zip(inv.findings["kind"], inv.findings["path"], strict=True))
    for finding in expected["findings"]:
        assert (finding["kind"], finding["path"]) in found, (expected["note"], inv.findings.to_string())


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_broken_fixture_scan_command_exits_0(name: str, tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    root = shared_root(BROKEN / f"{name}.tar.gz")
    for args in (["scan", str(root)], ["untagged", str(root), "-q"], ["orphans", str(root), "-m", "-q"]):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)


def test_symlinks_are_never_followed(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    root = shared_root(BROKEN / "symlink-out-of-root.tar.gz")
    inv = scan(LocalStorage(root / "docker/registry/v2"))
    # The repository symlinked to / contributed nothing, and the blob behind a link is not counted.
    assert not inv.repositories["repository"].str.startswith("escape").any()
    assert inv.blobs["size"].sum() < 1_000_000

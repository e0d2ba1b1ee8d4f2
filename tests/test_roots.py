"""What ROOT designates, resolved once into one tagged value: a local tree, a bucket or a snapshot."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import storage_audit
from storage_audit.operations.inventory import load
from storage_audit.roots.resolve import LocalTree, Snapshot, resolve
from storage_audit.storage.base import LocalStorage, ProcessModel
from tests.conftest import cli

V2 = Path("docker/registry/v2")
PACKAGE = Path(storage_audit.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_roots_import_neither_the_scan_nor_the_operations() -> None:
    # Resolving ROOT sits below scanning it: the scan takes the Storage that resolution found.
    for path in sorted((PACKAGE / "roots").glob("*.py")):
        below = {m for m in imported_modules(path) if m.startswith(("storage_audit.scan", "storage_audit.operations"))}
        assert not below, (path.name, below)
    assert not {m for m in imported_modules(PACKAGE / "scan" / "run.py") if m.startswith("storage_audit.roots")}


@pytest.mark.slow
def test_a_local_tree_is_scanned_by_workers_and_recorded_by_its_path(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = resolve(fixture_root("basic"))
    assert isinstance(root, LocalTree)
    v2 = str((fixture_root("basic") / V2).resolve())
    assert root.storage.process_model is ProcessModel.WORKERS
    assert root.storage.origin == {"path": v2}
    assert load(root).origin == {"path": v2}
    result = cli("scan", str(fixture_root("basic")), "-o", str(tmp_path / "snap"), "-q")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "snap" / "metadata.json").read_text())
    assert (meta["root"], meta["origin"]) == (v2, {"path": v2})
    assert resolve(tmp_path / "snap") == Snapshot((tmp_path / "snap").resolve())


def test_a_snapshot_is_no_tree_to_plan_or_verify(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("scan", str(fixture_root("basic")), "-o", str(tmp_path / "snap"), "-q").exit_code == 0
    snap = str(tmp_path / "snap")
    planned = cli("plan", snap)
    assert planned.exit_code == 2
    assert planned.stderr.startswith(f"storage-audit: error: {snap}: plan from the storage itself, not a snapshot")
    checked = cli("check", snap, "--verify-digests")
    assert checked.exit_code == 2 and "a snapshot does not hold" in checked.stderr


@pytest.mark.parametrize("form", ["root", "v2"])
def test_each_form_of_a_local_root_is_the_same_tree(fixture_root, form: str) -> None:  # type: ignore[no-untyped-def]
    given = fixture_root("basic") if form == "root" else fixture_root("basic") / V2
    found = resolve(given)
    assert isinstance(found, LocalTree) and isinstance(found.storage, LocalStorage)
    assert found.location == str((fixture_root("basic") / V2).resolve())

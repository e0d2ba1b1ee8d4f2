"""The DuckDB recipe of docs/inventory.md, run verbatim on snapshots, gives `report --by repository`'s figures."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from tests.conftest import FIXTURES, cli
from tests.test_gen_snapshot import generator

TOP = Path(__file__).resolve().parents[1]
INVENTORY = (TOP / "docs" / "inventory.md").read_text(encoding="utf-8")


def recipe() -> str:
    """The one SQL block of docs/inventory.md."""
    (block,) = re.findall(r"```sql\n(.*?)```", INVENTORY, flags=re.S)
    return block


def reclaimable(snapshot: Path) -> dict[str, int]:
    """`reclaimable_bytes` per repository, as `report` gives it."""
    result = cli("report", str(snapshot), "--by", "repository", "--format", "json")
    assert result.exit_code == 0, result.output
    return {row["repository"]: row["reclaimable_bytes"] for row in json.loads(result.stdout)}


def run_recipe(parent: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    monkeypatch.chdir(parent)  # the script reads `snapshot/<table>/*.parquet`
    rows = duckdb.connect().execute(recipe()).fetchall()
    return {repository: int(size) for repository, size in rows}


# Clean registries, and broken references (a dangling tag, an index child without its revision),
# whose protection the recipe has to follow to give the same bytes.
CASES = ["basic", "churn", "multiarch", "referrers", "broken/dangling-tag", "broken/index-child-missing"]


@pytest.mark.parametrize("fixture", CASES)
def test_the_recipe_gives_reports_orphan_bytes_per_repository(
    fixture: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shared_root: Callable[[Path], Path],
) -> None:
    root = shared_root(FIXTURES / f"{fixture}.tar.gz")
    result = cli("scan", str(root), "-o", str(tmp_path / "snapshot"), "-q")
    assert result.exit_code == 0, result.output
    expected = reclaimable(tmp_path / "snapshot")
    assert run_recipe(tmp_path, monkeypatch) == expected


def test_the_recipe_on_a_generated_snapshot_with_broken_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = generator()
    # Deleted revisions of index children: the engine protects what those indexes list.
    gen.Plan(gen.Spec(blobs=3000, manifests=500, repositories=20, seed=12)).write(tmp_path / "snapshot", "synthetic")
    expected = reclaimable(tmp_path / "snapshot")
    assert sum(expected.values()) > 0
    assert run_recipe(tmp_path, monkeypatch) == expected

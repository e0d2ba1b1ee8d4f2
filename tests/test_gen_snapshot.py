"""benchmarks/gen_snapshot.py: its snapshot holds exactly the tables a scan of the same registry, on disk, gives."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from storage_audit.inventory.tables import Inventory, read_snapshot
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage

TOP = Path(__file__).resolve().parents[1]


def generator() -> ModuleType:
    """benchmarks/gen_snapshot.py as a module (benchmarks/ is a directory of scripts, not a package)."""
    module = sys.modules.get("gen_snapshot")
    if module is None:
        spec = importlib.util.spec_from_file_location("gen_snapshot", TOP / "benchmarks" / "gen_snapshot.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["gen_snapshot"] = module
        spec.loader.exec_module(module)
    return module


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in one order whatever order they were written in; values as text, nulls alike."""
    text = df.astype(str)
    return text.sort_values(list(text.columns), ignore_index=True)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Inventory, Inventory]:
    """A small snapshot written by the generator, and a scan of the same registry written as a tree."""
    gen = generator()
    top = tmp_path_factory.mktemp("generated")
    plan = gen.Plan(gen.Spec(blobs=700, manifests=150, repositories=12, seed=14))
    plan.write(top / "snapshot", str(top / "tree"))
    v2 = plan.write_tree(top / "tree")
    return read_snapshot(top / "snapshot"), scan(LocalStorage(v2))


@pytest.mark.parametrize(
    "table",
    [
        *("repositories", "tags", "tag_history", "revisions", "manifests"),
        *("references", "layer_links", "blobs", "uploads", "findings"),
    ],
)
def test_the_generated_table_is_the_scanned_one(generated: tuple[Inventory, Inventory], table: str) -> None:
    made, scanned = (getattr(inv, table) for inv in generated)
    assert len(made) == len(scanned) > 0
    assert list(made.dtypes) == list(scanned.dtypes)
    pd.testing.assert_frame_equal(canonical(made), canonical(scanned))


def test_the_generated_registry_has_the_shape_of_the_synthetic_trees(generated: tuple[Inventory, Inventory]) -> None:
    inv = generated[1]  # as read back from disk
    assert len(inv.blobs) == 700 and len(inv.manifests) == 150 and len(inv.repositories) == 12
    kinds = set(inv.manifests["kind"])
    assert {"docker-v2", "oci-manifest", "docker-list", "oci-index", "oci-artifact"} <= kinds
    refs = inv.references
    assert "unknown/unknown" in set(refs.loc[refs["ref_type"] == "child", "platform"])  # attestations
    assert (refs["ref_type"] == "subject").any()  # referrers
    # Base layers shared among repositories.
    layers = refs[refs["ref_type"] == "layer"].merge(inv.revisions, left_on="manifest", right_on="digest")
    assert layers.groupby("digest_x")["repository"].nunique().max() > 1
    # Tags moved on (history longer than the tags), leaving untagged revisions, some deleted.
    assert len(inv.tag_history) > len(inv.tags)
    assert not inv.revisions["digest"].isin(inv.tags["digest"]).all()
    assert (~inv.revisions["linked"]).any()
    # Blobs nothing names: orphans, some of them linked in a repository.
    named = set(refs["digest"]) | set(inv.manifests["digest"])
    orphans = set(inv.blobs["digest"]) - named
    assert len(orphans) >= 0.04 * len(inv.blobs)
    assert orphans & set(inv.layer_links["digest"])


def test_the_same_seed_gives_the_same_snapshot_and_another_a_different_one(tmp_path: Path) -> None:
    gen = generator()
    spec = gen.Spec(blobs=600, manifests=100, repositories=10, seed=3)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        gen.Plan(gen.Spec(spec.blobs, spec.manifests, spec.repositories, seed)).write(tmp_path / name, "synthetic")
    a, b, c = (read_snapshot(tmp_path / name) for name in "abc")
    for table in ("blobs", "references", "layer_links", "tag_history"):
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table))
    assert set(a.blobs["digest"]).isdisjoint(c.blobs["digest"])

"""The snapshot layout: tables in parts written as the scan goes, read back as they were; format 1 still read."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from storage_audit.inventory import snapshot_writer
from storage_audit.inventory.retention import foreign_content, prune
from storage_audit.inventory.schema import SCHEMA
from storage_audit.inventory.tables import read_snapshot
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage
from tests.conftest import FIXTURES, cli

DEMO = FIXTURES / "demo"


def scan_to(directory: Path, *extra: str) -> None:
    result = cli("scan", str(DEMO), "-o", str(directory), "-q", *extra)
    assert result.exit_code == 0, result.output


def same_tables(a: object, b: object) -> None:
    for name in SCHEMA:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), obj=name)


def test_scan_o_writes_each_table_as_listed_parts_and_reads_back_the_scan(tmp_path: Path) -> None:
    scan_to(tmp_path / "snap")
    meta = json.loads((tmp_path / "snap" / "metadata.json").read_text())
    assert meta["format"] == 2
    assert meta["tables"] == {name: [f"{name}/part-00000.parquet"] for name in SCHEMA}
    blobs = pq.read_table(tmp_path / "snap" / "blobs" / "part-00000.parquet")
    assert blobs.num_rows == meta["counts"]["blobs"] > 0
    assert blobs.schema.names == list(SCHEMA["blobs"])
    same_tables(read_snapshot(tmp_path / "snap"), scan(LocalStorage(DEMO / "docker/registry/v2")))


@pytest.mark.slow
def test_big_tables_are_split_into_parts_in_row_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_writer, "ROWS_PER_GROUP", 4)
    monkeypatch.setattr(snapshot_writer, "ROWS_PER_PART", 8)
    scan_to(tmp_path / "snap", "--workers", "2")  # parts from two workers, written in the order of a scan
    meta = json.loads((tmp_path / "snap" / "metadata.json").read_text())
    blobs = meta["counts"]["blobs"]
    assert blobs > 16
    assert len(meta["tables"]["blobs"]) == -(-blobs // 8)
    assert sorted(p.name for p in (tmp_path / "snap" / "blobs").iterdir()) == [
        p.removeprefix("blobs/") for p in meta["tables"]["blobs"]
    ]
    assert pq.ParquetFile(tmp_path / "snap" / "blobs" / "part-00000.parquet").metadata.num_row_groups == 2
    same_tables(read_snapshot(tmp_path / "snap"), scan(LocalStorage(DEMO / "docker/registry/v2")))


@pytest.mark.slow
def test_a_snapshot_of_format_1_is_still_read(tmp_path: Path) -> None:
    scan_to(tmp_path / "new")
    inv = read_snapshot(tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    for name, df in inv.tables().items():
        df.to_parquet(old / f"{name}.parquet", engine="pyarrow", index=False)
    meta = json.loads((tmp_path / "new" / "metadata.json").read_text())
    del meta["tables"]
    (old / "metadata.json").write_text(json.dumps(meta | {"format": 1, "views": []}))
    same_tables(read_snapshot(old), inv)


@pytest.mark.slow
def test_writing_over_a_snapshot_leaves_none_of_its_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_writer, "ROWS_PER_GROUP", 4)
    monkeypatch.setattr(snapshot_writer, "ROWS_PER_PART", 4)
    scan_to(tmp_path / "snap")
    many = len(list((tmp_path / "snap" / "blobs").iterdir()))
    monkeypatch.setattr(snapshot_writer, "ROWS_PER_PART", 1 << 20)
    scan_to(tmp_path / "snap")
    assert many > 1 and [p.name for p in (tmp_path / "snap" / "blobs").iterdir()] == ["part-00000.parquet"]
    same_tables(read_snapshot(tmp_path / "snap"), scan(LocalStorage(DEMO / "docker/registry/v2")))


@pytest.mark.slow
def test_a_table_directory_with_another_file_is_foreign_and_never_pruned(tmp_path: Path) -> None:
    scan_to(tmp_path / "a")
    scan_to(tmp_path / "b")
    assert not foreign_content(tmp_path / "a")
    (tmp_path / "a" / "blobs" / "notes.txt").write_text("mine")
    assert foreign_content(tmp_path / "a")
    pruned = prune(tmp_path / "b", keep=1)
    assert pruned.removed == [] and [p for p, _ in pruned.left] == [tmp_path / "a"]
    (tmp_path / "a" / "blobs" / "notes.txt").unlink()
    assert prune(tmp_path / "b", keep=1).removed == [tmp_path / "a"]
    assert not (tmp_path / "a").exists()


def test_metadata_listing_a_file_outside_its_table_is_refused(tmp_path: Path) -> None:
    scan_to(tmp_path / "snap")
    meta_path = tmp_path / "snap" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["tables"]["blobs"] = ["../elsewhere/part-00000.parquet"]
    meta_path.write_text(json.dumps(meta))
    result = cli("orphans", str(tmp_path / "snap"))
    assert result.exit_code == 2
    assert "storage-audit: error:" in result.stderr and "blobs" in result.stderr

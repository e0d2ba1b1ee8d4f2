"""scan -o DIR --keep N: the newest snapshots beside DIR stay, older ones go, and nothing that is not one is touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, cli

DEMO = str(FIXTURES / "demo")


def snapshot(path: Path, scanned_at: str, *extra: str) -> None:
    """A snapshot at `path` whose metadata says it was scanned at `scanned_at`."""
    code, _, err = cli("scan", DEMO, "-o", str(path), "-q", *extra)
    assert code == 0, err
    meta = path / "metadata.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"scanned_at": scanned_at}))


@pytest.mark.slow
def test_keep_removes_the_oldest_snapshots_by_scan_time_not_by_name(tmp_path: Path) -> None:
    parent = tmp_path / "snapshots"
    # Names that sort against their scan times: the metadata decides which is older.
    snapshot(parent / "c", "2026-01-01T00:00:00+00:00")
    snapshot(parent / "b", "2026-01-02T00:00:00+00:00")
    snapshot(parent / "a", "2026-01-03T00:00:00+00:00")
    code, _, err = cli("scan", DEMO, "-o", str(parent / "today"), "--keep", "2")
    assert code == 0, err
    assert sorted(p.name for p in parent.iterdir()) == ["a", "today"]
    assert "removed 2 older snapshots: c, b" in err


@pytest.mark.slow
def test_keep_never_touches_what_is_not_a_whole_snapshot(tmp_path: Path) -> None:
    parent = tmp_path / "snapshots"
    snapshot(parent / "old", "2020-01-01T00:00:00+00:00")
    snapshot(parent / "foreign", "2020-01-02T00:00:00+00:00")
    (parent / "foreign" / "notes.txt").write_text("mine")
    (parent / "other-tool").mkdir()
    (parent / "other-tool" / "metadata.json").write_text(json.dumps({"tool": "something-else", "format": 1}))
    (parent / "broken").mkdir()
    (parent / "broken" / "metadata.json").write_text("{")
    (parent / "plain").mkdir()
    (parent / "a-file").write_text("not a directory")
    snapshot(tmp_path / "elsewhere", "2019-01-01T00:00:00+00:00")
    os.symlink(tmp_path / "elsewhere", parent / "link")
    code, _, err = cli("scan", DEMO, "-o", str(parent / "new"), "--keep", "1", "-q")
    assert code == 0, err
    assert sorted(p.name for p in parent.iterdir()) == [
        "a-file",
        "broken",
        "foreign",
        "link",
        "new",
        "other-tool",
        "plain",
    ]
    assert (parent / "foreign" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "elsewhere" / "metadata.json").exists()
    reason = "it holds files a snapshot does not"
    assert err == f"storage-audit: warning: {parent / 'foreign'}: older snapshot left in place: {reason}\n"


def test_keep_counts_the_snapshot_just_written_and_needs_an_output(tmp_path: Path) -> None:
    parent = tmp_path / "snapshots"
    snapshot(parent / "old", "2020-01-01T00:00:00+00:00")
    # A rescan into the same directory keeps the older one: two snapshots, two kept.
    code, _, err = cli("scan", DEMO, "-o", str(parent / "today"), "--keep", "2", "-q")
    assert code == 0 and err == ""
    code, _, err = cli("scan", DEMO, "-o", str(parent / "today"), "--keep", "2", "-q")
    assert code == 0 and sorted(p.name for p in parent.iterdir()) == ["old", "today"]
    code, _, err = cli("scan", DEMO, "--keep", "2")
    assert code == 2 and err == "storage-audit: error: --keep needs -o DIR: it keeps the newest snapshots beside DIR\n"
    code, _, err = cli("scan", DEMO, "-o", str(parent / "x"), "--keep", "0")
    assert code == 2 and not (parent / "x").exists()

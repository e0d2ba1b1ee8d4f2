"""The command line, in-process: help, exit codes, messages, snapshots, and output formats."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from storage_audit.cli import app
from storage_audit.collect import ORPHAN_COLUMNS, UNTAGGED_COLUMNS
from storage_audit.inventory import read_snapshot
from tests.conftest import BROKEN, unpack

runner = CliRunner()
COMMANDS = ["scan", "untagged", "orphans"]


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0
    assert "ROOT" in out.upper() and len(out) > 200


@pytest.mark.parametrize("command", COMMANDS)
def test_bad_root_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    for bad, words in ((tmp_path / "nope", "no such file"), (tmp_path, "not a registry root")):
        code, out, err = run(command, str(bad))
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1 and err.startswith("storage-audit: error: ") and words in err


def test_corrupt_snapshot_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text("{not json")
    code, _, err = run("scan", str(tmp_path))
    assert code == 2 and "snapshot" in err


def test_scan_summary_on_stderr(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("scan", str(fixture_root("basic")))
    assert code == 0 and out == ""
    lines = dict(line.split(": ", 1) for line in err.splitlines())
    assert lines["repositories"] == "3"
    assert lines["revisions"].endswith("(1 deleted)")
    assert lines["uploads"] == "1"
    assert "blob-bytes" in lines and "findings" in lines


@pytest.mark.parametrize("name", ["stray-file", "non-hex-link", "deleted-revision", "stale-upload"])
def test_scan_summary_is_the_same_from_tables_inventory_and_snapshot(name: str, tmp_path: Path) -> None:
    # A plain scan counts Arrow tables; with -o, and from a snapshot, it counts DataFrames.
    root = unpack(BROKEN / f"{name}.tar.gz", tmp_path / name)
    snap = tmp_path / "snap"
    plain = run("scan", str(root))
    written = run("scan", str(root), "-o", str(snap))
    loaded = run("scan", str(snap))
    assert plain[0] == written[0] == loaded[0] == 0
    assert plain[2] == written[2]
    # A snapshot reports the path it was taken of.
    assert plain[2].splitlines()[1:] == loaded[2].splitlines()[1:]
    lines = dict(line.split(": ", 1) for line in plain[2].splitlines())
    assert lines["findings"] != "0", lines


def test_quiet_scan_prints_nothing(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("scan", str(fixture_root("basic")), "--quiet")
    assert (code, out, err) == (0, "", "")


def test_snapshot_gives_identical_results(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = fixture_root("multiarch")
    snap = tmp_path / "snap"
    assert run("scan", str(root), "-o", str(snap), "-q")[0] == 0
    assert (snap / "metadata.json").is_file() and (snap / "blobs.parquet").is_file()
    meta = json.loads((snap / "metadata.json").read_text())
    assert meta["counts"]["blobs"] > 0 and meta["version"]
    for args in (["untagged", "-f", "json"], ["orphans", "-m", "-f", "csv"], ["untagged", "--gc-compatible"]):
        assert run(args[0], str(root), *args[1:]) == run(args[0], str(snap), *args[1:])


def test_scan_refuses_to_overwrite_a_foreign_directory(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = run("scan", str(fixture_root("basic")), "-o", str(tmp_path))
    assert code == 2 and "not an empty directory" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_json_and_csv_columns_are_pinned(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))
    code, out, _ = run("untagged", root, "-f", "json", "--gc-compatible", "-q")
    rows = json.loads(out)
    assert code == 0 and rows and all(list(r) == UNTAGGED_COLUMNS for r in rows)
    assert all(isinstance(r["manifest_bytes"], int) and r["pushed_at"].endswith("Z") for r in rows)
    code, out, _ = run("orphans", root, "-m", "--gc-compatible", "-f", "csv", "-q")
    frame = pd.read_csv(io.StringIO(out))
    assert code == 0 and list(frame.columns) == ORPHAN_COLUMNS and len(frame) > 0
    assert frame["size"].dtype.kind == "i"


def test_empty_result_is_an_empty_array(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("orphans", str(fixture_root("referrers")), "-f", "json", "-q")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run("orphans", str(fixture_root("referrers")), "-q")
    assert code == 0 and "total (0)" in out


def test_output_file(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "out.json"
    code, out, _ = run("untagged", str(fixture_root("churn")), "-f", "json", "-o", str(target), "-q")
    assert code == 0 and out == ""
    assert isinstance(json.loads(target.read_text()), list)


def test_unwritable_output_is_exit_2(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run("orphans", str(fixture_root("basic")), "-o", str(tmp_path / "no" / "such" / "dir.csv"))
    assert code == 2 and "cannot write" in err


def test_safe_mode_warns_where_the_stock_collector_differs(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("multiarch"))
    _, _, err = run("untagged", root)
    assert "garbage-collect --delete-untagged` would also delete" in err and "children of tagged indexes" in err
    _, _, err = run("untagged", root, "--gc-compatible")
    assert "would also delete" not in err
    _, _, err = run("untagged", str(fixture_root("referrers")))
    assert "referrers" in err


def test_table_fits_80_columns(fixture_root) -> None:  # type: ignore[no-untyped-def]
    for command in (["untagged", "--gc-compatible"], ["orphans", "-m"]):
        _, out, _ = run(command[0], str(fixture_root("basic")), *command[1:], "-q")
        assert max(len(line) for line in out.splitlines()) <= 80


def test_console_script_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storage_audit", "scan", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not a registry root" in proc.stderr


def test_workers_option_gives_the_same_inventory(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("multiarch"))
    for workers in ("1", "3"):
        assert run("scan", root, "--workers", workers, "-o", str(tmp_path / workers), "-q")[0] == 0
    one, three = (read_snapshot(tmp_path / w) for w in ("1", "3"))
    for name, frame in one.tables().items():
        pd.testing.assert_frame_equal(frame, three.tables()[name], obj=name)
    assert run("orphans", root, "-j", "2", "-m", "-f", "csv") == run("orphans", root, "-j", "1", "-m", "-f", "csv")
    code, _, err = run("scan", root, "--workers", "0")
    assert code == 2 and "--workers" in err

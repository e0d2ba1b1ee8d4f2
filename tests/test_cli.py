"""The command line, in-process: help, exit codes, messages, snapshots, and output formats."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from storage_audit.analysis.collect import ORPHAN_COLUMNS, UNTAGGED_COLUMNS
from storage_audit.cli.app import app
from storage_audit.inventory.tables import read_snapshot
from tests.conftest import BROKEN, FIXTURES, cli, fixtures_built, unpack

COMMANDS = ["scan", "untagged", "orphans"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert "ROOT" in out.upper() and len(out) > 200


@pytest.mark.parametrize("command", COMMANDS)
def test_bad_root_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    for bad, words in ((tmp_path / "nope", "no such file"), (tmp_path, "not a registry root")):
        code, out, err = cli(command, str(bad))
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1 and err.startswith("storage-audit: error: ") and words in err


def test_corrupt_snapshot_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text("{not json")
    code, _, err = cli("scan", str(tmp_path))
    assert code == 2 and "snapshot" in err


def test_scan_summary_on_stderr(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("scan", str(fixture_root("basic")))
    assert code == 0 and out == ""
    lines = dict(line.split(": ", 1) for line in err.splitlines())
    assert lines["repositories"] == "3"
    assert lines["revisions"].endswith("(1 deleted)")
    assert lines["uploads"] == "1"
    assert "blob-bytes" in lines and "findings" in lines


@pytest.mark.parametrize("name", ["stray-file", "non-hex-link", "deleted-revision", "stale-upload"])
def test_scan_summary_is_the_same_from_tables_inventory_and_snapshot(
    name: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    # A plain scan counts Arrow tables; with -o, and from a snapshot, it counts DataFrames.
    root = shared_root(BROKEN / f"{name}.tar.gz")
    snap = tmp_path / "snap"
    plain = cli("scan", str(root))
    written = cli("scan", str(root), "-o", str(snap))
    loaded = cli("scan", str(snap))
    assert plain[0] == written[0] == loaded[0] == 0
    assert plain[2] == written[2]
    # A snapshot reports the path it was taken of.
    assert plain[2].splitlines()[1:] == loaded[2].splitlines()[1:]
    lines = dict(line.split(": ", 1) for line in plain[2].splitlines())
    assert lines["findings"] != "0", lines


def test_quiet_scan_prints_nothing(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("scan", str(fixture_root("basic")), "--quiet")
    assert (code, out, err) == (0, "", "")


@pytest.mark.slow
def test_snapshot_gives_identical_results(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = fixture_root("multiarch")
    snap = tmp_path / "snap"
    assert cli("scan", str(root), "-o", str(snap), "-q")[0] == 0
    assert (snap / "metadata.json").is_file() and (snap / "blobs" / "part-00000.parquet").is_file()
    meta = json.loads((snap / "metadata.json").read_text())
    assert meta["counts"]["blobs"] > 0 and meta["version"]
    for args in (["untagged", "-f", "json"], ["orphans", "-m", "-f", "csv"], ["untagged", "--gc-compatible"]):
        assert cli(args[0], str(root), *args[1:]) == cli(args[0], str(snap), *args[1:])


def test_scan_refuses_to_overwrite_a_foreign_directory(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = cli("scan", str(fixture_root("basic")), "-o", str(tmp_path))
    assert code == 2 and "not an empty directory" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_json_and_csv_columns_are_pinned(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))
    code, out, _ = cli("untagged", root, "-f", "json", "--gc-compatible", "-q")
    rows = json.loads(out)
    assert code == 0 and rows and all(list(r) == UNTAGGED_COLUMNS for r in rows)
    assert all(isinstance(r["manifest_bytes"], int) and r["pushed_at"].endswith("Z") for r in rows)
    code, out, _ = cli("orphans", root, "-m", "--gc-compatible", "-f", "csv", "-q")
    frame = pd.read_csv(io.StringIO(out))
    assert code == 0 and list(frame.columns) == ORPHAN_COLUMNS and len(frame) > 0
    assert frame["size"].dtype.kind == "i"


def test_empty_result_is_an_empty_array(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("orphans", str(fixture_root("referrers")), "-f", "json", "-q")
    assert code == 0 and json.loads(out) == []
    code, out, _ = cli("orphans", str(fixture_root("referrers")), "-q")
    assert code == 0 and "total (0)" in out


def test_output_file(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "out.json"
    code, out, _ = cli("untagged", str(fixture_root("churn")), "-f", "json", "-o", str(target), "-q")
    assert code == 0 and out == ""
    assert isinstance(json.loads(target.read_text()), list)


def test_unwritable_output_is_exit_2(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("orphans", str(fixture_root("basic")), "-o", str(tmp_path / "no" / "such" / "dir.csv"))
    assert code == 2 and "cannot write" in err


def test_safe_mode_warns_where_the_stock_collector_differs(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("multiarch"))
    _, _, err = cli("untagged", root)
    (v28,) = (line for line in err.splitlines() if line.startswith("warning: registry 2.8's"))
    assert "`garbage-collect --delete-untagged` would also delete" in v28 and "children of tagged indexes" in v28
    # Registry 3 keeps the children of tagged indexes: no line about it says otherwise.
    assert not [line for line in err.splitlines() if "3's" in line and "children" in line]
    for flag in ("--gc-compatible", "--gc-compatible=3"):
        _, _, err = cli("untagged", root, flag)
        assert "would also delete" not in err
    _, _, err = cli("untagged", str(fixture_root("referrers")))
    assert "referrers" in err


def test_gc_compatible_alone_is_2_8_and_takes_no_next_word(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("multiarch"))
    alone = cli("untagged", "--gc-compatible", root, "-f", "json", "-q")
    assert alone.exit_code == 0, alone.output
    assert alone.stdout == cli("untagged", root, "--gc-compatible=2.8", "-f", "json", "-q").stdout
    v3 = cli("untagged", root, "--gc-compatible=3", "-f", "json", "-q")
    assert v3.exit_code == 0 and v3.stdout != alone.stdout
    # A value is only ever attached: the next word stays an argument.
    code, _, err = cli("untagged", root, "--gc-compatible", "3", "-q")
    assert code == 2 and "unexpected extra argument(s) (3)" in err
    code, _, err = cli("orphans", root, "--gc-compatible=4")
    assert code == 2 and "'2.8', '3'" in err


def test_report_gc_compatible_from_a_snapshot_is_the_trees(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("multiarch"))
    snapshot = str(tmp_path / "snapshot")
    assert cli("scan", root, "-o", snapshot, "-q").exit_code == 0
    for flag in ("--gc-compatible", "--gc-compatible=3"):
        for by in ("summary", "repository", "manifest", "blob"):
            from_tree = cli("report", root, flag, "-b", by, "-f", "json", "-q")
            assert from_tree.exit_code == 0, from_tree.output
            # The snapshot stores the safe views: a collector's answer is computed from its tables.
            assert cli("report", snapshot, flag, "-b", by, "-f", "json", "-q").stdout == from_tree.stdout
    safe = cli("report", snapshot, "-f", "json", "-q").stdout
    assert json.loads(cli("report", snapshot, "--gc-compatible", "-f", "json", "-q").stdout) != json.loads(safe)
    for fmt in ("prometheus", "html"):
        code, _, err = cli("report", root, "-f", fmt, "-o", str(tmp_path / "out"), "--gc-compatible=3")
        assert code == 2 and "--gc-compatible" in err


def test_table_fits_80_columns(fixture_root) -> None:  # type: ignore[no-untyped-def]
    # Piped, a table takes COLUMNS and keeps every column, wrapping cells to fit.
    for command in (["untagged", "--gc-compatible"], ["orphans", "-m"]):
        _, out, _ = cli(command[0], str(fixture_root("basic")), *command[1:], "-q", env={"COLUMNS": "80"})
        assert max(len(line) for line in out.splitlines()) <= 80


def test_console_script_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storage_audit", "scan", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not a registry root" in proc.stderr


@pytest.mark.slow
def test_workers_option_gives_the_same_inventory(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("multiarch"))
    for workers in ("1", "3"):
        assert cli("scan", root, "--workers", workers, "-o", str(tmp_path / workers), "-q")[0] == 0
    one, three = (read_snapshot(tmp_path / w) for w in ("1", "3"))
    for name, frame in one.tables().items():
        pd.testing.assert_frame_equal(frame, three.tables()[name], obj=name)
    assert cli("orphans", root, "-j", "2", "-m", "-f", "csv") == cli("orphans", root, "-j", "1", "-m", "-f", "csv")
    code, _, err = cli("scan", root, "--workers", "0")
    assert code == 2 and "--workers" in err


# --------------------------------------------------------------------------
# Errors: one base, one line, an exit code each, a traceback with --debug


def test_library_errors_share_one_base_with_their_exit_codes() -> None:
    from storage_audit.analysis.options import ReportError
    from storage_audit.cleanup.apply import AlreadyApplied
    from storage_audit.cleanup.plan import PlanError, PlanRefused
    from storage_audit.core.errors import AuditError
    from storage_audit.output.formats import FormatError
    from storage_audit.roots.resolve import RootError

    codes = {RootError: 2, PlanError: 2, ReportError: 2, FormatError: 2, PlanRefused: 3, AlreadyApplied: 0}
    for error, code in codes.items():
        assert issubclass(error, AuditError) and error.exit_code == code, error


def test_debug_shows_the_traceback_of_an_audit_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    code, out, err = cli("--debug", "report", missing)
    assert code == 2 and out == ""
    assert err.startswith("Traceback (most recent call last):") and "RootError" in err
    assert err.endswith(f"storage-audit: error: {missing}: no such file or directory\n")
    code, _, err = cli("report", missing)
    assert (code, err) == (2, f"storage-audit: error: {missing}: no such file or directory\n")


def test_an_internal_error_is_one_line_and_its_traceback_with_debug(
    fixture_root, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # A fault injected where ROOT is resolved: no input of ours makes the library fail this way.
    import storage_audit.cli.options as cli_options

    def broken(*args: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(cli_options, "resolve", broken)
    root = str(fixture_root("basic"))
    code, out, err = cli("orphans", root)
    assert (code, out, err) == (1, "", "storage-audit: internal error: KeyError: 'boom'\n")
    code, _, err = cli("--debug", "orphans", root)
    assert code == 1 and "Traceback (most recent call last):" in err and 'raise KeyError("boom")' in err
    assert err.endswith("storage-audit: internal error: KeyError: 'boom'\n")


# --------------------------------------------------------------------------
# ROOT that cannot be used: always one line, exit 2


def test_a_symlink_loop_root_is_called_what_it_is(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    code, out, err = cli("report", str(tmp_path / "a"))
    assert (code, out) == (2, "")
    assert err == f"storage-audit: error: {tmp_path / 'a'}: too many levels of symbolic links\n"


# --------------------------------------------------------------------------
# Names from the storage are shown, never obeyed


def hostile_tree(tmp_path: Path) -> Path:
    """basic, with repository directories named as rich markup and as a terminal escape, and a stray blob file."""
    root = unpack(FIXTURES / "basic.tar.gz", tmp_path / "hostile")
    v2 = root / "docker/registry/v2"
    for name in ("[dim]secret", "[green]", "\x1b[2Jevil"):
        (v2 / "repositories" / name).mkdir()
    (v2 / "blobs" / ":smile: [bold]x").write_text("")
    return root


def test_names_are_escaped_in_tables(tmp_path: Path) -> None:
    code, out, _ = cli("check", str(hostile_tree(tmp_path)), "-q")
    assert code == 0
    for shown in ("repositories/[dim]secret", "repositories/[green]", "repositories/\\x1b[2Jevil"):
        assert shown in out, shown
    assert "blobs/:smile: [bold]x" in out
    assert "\x1b" not in out


def test_names_are_kept_whole_in_json(tmp_path: Path) -> None:
    code, out, _ = cli("check", str(hostile_tree(tmp_path)), "-q", "-f", "json")
    paths = {row["path"] for row in json.loads(out)}
    assert code == 0 and {"repositories/[dim]secret", "repositories/\x1b[2Jevil"} <= paths


def test_names_are_escaped_in_messages(tmp_path: Path) -> None:
    bad = tmp_path / "\x1b[2J[red]gone"
    code, _, err = cli("scan", str(bad))
    assert code == 2
    assert err == f"storage-audit: error: {tmp_path}/\\x1b[2J[red]gone: no such file or directory\n"


def test_a_table_shows_markup_as_text() -> None:
    from rich.console import Console

    from storage_audit.core.view import View
    from storage_audit.output.table import render

    frame = pd.DataFrame({"repository": ["[dim]secret", "[green]", "a\x07b", ":smile:"], "n": [1, 2, 3, 4]})
    console = Console(file=io.StringIO(), width=80, force_terminal=True)
    render(View(frame), console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for shown in ("[dim]secret", "[green]", "a\\x07b", ":smile:"):
        assert shown in text, shown
    assert "\x07" not in text


def test_printable_and_count() -> None:
    from storage_audit.core.text import count, printable

    assert printable("team/app") == "team/app"
    assert printable("a\x1b[2Jb\tc\u202ed") == "a\\x1b[2Jb\\x09c\\u202ed"
    assert printable("x\ny", keep="\n") == "x\ny"
    assert printable("caf\udce9") == "caf\\xe9"  # a byte of a name that is not UTF-8
    assert [count(n, "referrer") for n in (0, 1, 2, 1234)] == [
        "0 referrers",
        "1 referrer",
        "2 referrers",
        "1,234 referrers",
    ]
    assert count(1, "child", "children") == "1 child" and count(3, "child", "children") == "3 children"


# --------------------------------------------------------------------------
# Formats


def test_csv_booleans_are_true_and_false(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))
    code, out, _ = cli("report", root, "--by", "blob", "-f", "csv", "-q")
    frame = pd.read_csv(io.StringIO(out), dtype=str)
    assert code == 0 and set(frame["orphan"]) == {"true", "false"}
    code, out, _ = cli("report", root, "--by", "manifest", "-f", "csv", "-q")
    frame = pd.read_csv(io.StringIO(out), dtype=str)
    assert code == 0 and set(frame["reachable"]) == {"true", "false"}
    assert "True" not in out and "False" not in out


def test_json_does_not_escape_slashes(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("report", str(fixture_root("basic")), "--by", "repository", "-f", "json", "-q")
    assert code == 0 and '"repository":"team/app"' in out.replace(" ", "") and "\\/" not in out
    assert "team/app" in {row["repository"] for row in json.loads(out)}


def test_json_keeps_a_backslash_before_a_slash() -> None:
    from storage_audit.core.view import View
    from storage_audit.output.json import write

    buffer = io.StringIO()
    frame = pd.DataFrame({"name": ["a/b", "c\\/d", "e\\\\/f"]})
    old, sys.stdout = sys.stdout, buffer
    try:
        write(View(frame), None)
    finally:
        sys.stdout = old
    assert [row["name"] for row in json.loads(buffer.getvalue())] == ["a/b", "c\\/d", "e\\\\/f"]
    assert "\\/" not in buffer.getvalue().replace("\\\\", "")


DEMO = str(Path(__file__).resolve().parents[1] / "fixtures" / "demo")
DASH_COMMANDS = [
    ["report", DEMO, "--by", "repository"],
    ["report", DEMO, "--by", "blob", "-f", "csv"],
    ["report", DEMO, "-f", "json"],
    ["report", DEMO, "-f", "prometheus"],
    ["untagged", DEMO, "-f", "json"],
    ["orphans", DEMO, "-f", "csv"],
    ["check", DEMO],
    ["check", DEMO, "-f", "json"],
    ["diff", DEMO, DEMO, "-f", "csv"],
    ["plan", DEMO, "--delete-untagged", "--min-age", "0s"],
    ["plan", DEMO, "--delete-untagged", "--min-age", "0s", "-f", "sh"],
]


@pytest.mark.slow
@pytest.mark.parametrize("args", DASH_COMMANDS, ids=[" ".join(a[:1] + a[2:]) for a in DASH_COMMANDS])
def test_output_dash_is_stdout(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pin_clock: Callable[[datetime], datetime]
) -> None:
    pin_clock(fixtures_built() + timedelta(days=1))  # a plan says when it was made
    monkeypatch.chdir(tmp_path)

    def answer(*extra: str) -> tuple[int, str, str]:
        code, out, err = cli(*args, "-q", *extra)
        # How long a scan took is the one figure that changes from one run to the next.
        return code, re.sub(r"(?m)^storage_audit_scan_duration_seconds .*$", "", out), err

    expected = answer()
    assert expected[0] in (0, 3) and expected[1]
    assert answer("-o", "-") == expected
    assert answer("--output=-") == expected
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["parquet", "html"])
def test_output_dash_is_no_file_for_parquet_or_html(fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("report", DEMO, "-f", fmt, "-o", "-")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "add -o FILE" in err
    assert list(tmp_path.iterdir()) == []


def test_a_snapshot_is_not_written_to_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("scan", DEMO, "-o", "-")
    assert (code, out) == (2, "") and err == "storage-audit: error: -o -: a snapshot is a directory, not stdout\n"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# A reader that leaves (`| head -1`): the command ends quietly, as SIGPIPE would end it


def through_head(args: list[str]) -> tuple[int, str, str]:
    """Run the command line in a process whose stdout is a pipe into `head -n 1`: its exit code and stderr, and the
    line head printed."""
    writer = subprocess.Popen(
        [sys.executable, "-m", "storage_audit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert writer.stdout is not None and writer.stderr is not None
    reader = subprocess.Popen(["head", "-n", "1"], stdin=writer.stdout, stdout=subprocess.PIPE)
    writer.stdout.close()  # head alone reads the pipe: once it has gone, a write finds no reader
    line = reader.communicate(timeout=300)[0].decode()
    err = writer.stderr.read().decode()
    writer.stderr.close()
    return writer.wait(timeout=300), err, line


@pytest.fixture(scope="module")
def big_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated snapshot whose views are far bigger than what a pipe holds (64 KiB): the smallest, orphans as CSV,
    is some 160 KiB (at 12,000 blobs it was 66 KB, which a pipe and head's first read could take whole)."""
    from tests.test_gen_snapshot import generator

    gen = generator()
    path = tmp_path_factory.mktemp("big") / "snapshot"
    gen.Plan(gen.Spec(blobs=30_000, manifests=2_000, repositories=10, seed=3)).write(path, "/srv/registry")
    return path


PIPED = {
    "csv": (["report", "{snap}", "--by", "blob", "-f", "csv"], "digest,size,repositories,manifests,orphan,kind\n"),
    "json": (["report", "{snap}", "--by", "blob", "-f", "json"], "[\n"),
    "table": (["report", "{snap}", "--by", "blob", "--top", "2000"], "blobs"),
    "untagged": (["untagged", "{snap}", "-f", "json"], "[\n"),
    "orphans": (["orphans", "{snap}", "-f", "csv"], "digest,size,"),
    "check": (["check", "{snap}", "-f", "json"], "[\n"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PIPED))
def test_a_reader_that_leaves_ends_a_large_output_quietly_with_141(case: str, big_snapshot: Path) -> None:
    args, first = PIPED[case]
    code, err, line = through_head([a.format(snap=big_snapshot) for a in args] + ["-q"])
    assert (code, err) == (141, "")
    assert line.startswith(first.strip(" ")) if case != "table" else first in line


@pytest.mark.slow
@pytest.mark.parametrize("args", [["report", "--by", "blob", "-f", "csv"], ["report", "-f", "json"], ["report"]])
def test_a_reader_that_leaves_a_small_output_is_no_error(args: list[str]) -> None:
    # All of it may fit in the pipe before head leaves: then it was written, and the command ends well.
    code, err, line = through_head([args[0], DEMO, *args[1:]])
    assert code in (0, 141) and err == "" and line


# --------------------------------------------------------------------------
# Durations, the prompt, help


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "--older-than", "99999999999d"],
        ["plan", "--min-age", "99999999999w"],
        ["plan", "--uploads-older-than", "100001d"],
        ["check", "--upload-age", "99999999999d"],
    ],
)
def test_huge_durations_are_refused(args: list[str], fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli(args[0], str(fixture_root("basic")), *args[1:])
    assert (code, out) == (2, "")
    assert (
        err == f"storage-audit: error: {args[1]}: {args[2]!r} is longer than 100000d, the longest duration accepted\n"
    )


def test_the_longest_duration_is_accepted(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("plan", str(fixture_root("basic")), "--older-than", "100000d", "--min-age", "0s", "-q")
    assert code == 0 and json.loads(out)["policy"]["older_than"] == 100000 * 86400


def test_no_at_the_prompt_exits_2_and_deletes_nothing(
    tmp_path: Path, pin_clock: Callable[[datetime], datetime]
) -> None:
    root = unpack(FIXTURES / "basic.tar.gz", tmp_path / "basic")
    pin_clock(fixtures_built() + timedelta(minutes=1))  # the plan's time, past whatever today is
    plan = tmp_path / "plan.json"
    assert cli("plan", str(root), "--delete-untagged", "--min-age", "0s", "-o", str(plan), "-q")[0] == 0
    before = sorted(p for p in root.rglob("*"))
    for answer in ("n\n", ""):  # no, and input that ends before an answer
        result = cli("apply", str(plan), input=answer)
        assert result.exit_code == 2, result.stderr
        assert result.stderr.startswith("plan: ") and "Apply this plan?" in result.stderr
        assert result.stderr.endswith("storage-audit: error: not confirmed; nothing was deleted\n")
    assert sorted(p for p in root.rglob("*")) == before


def all_commands() -> dict[str, Any]:
    import typer.main

    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(all_commands()))
def test_help_at_80_columns_shows_every_option_whole(name: str) -> None:
    result = cli(name, "--help", env={"COLUMNS": "80"})
    out = result.stdout
    assert result.exit_code == 0 and out.startswith(f"Usage: storage-audit {name} [OPTIONS]")
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out and "{" not in out.splitlines()[0]
    words = set(re.findall(r"(?<![\w-])-{1,2}[\w-]+", out))
    for param in all_commands()[name].params:
        for option in (*param.opts, *param.secondary_opts):
            if option.startswith("-"):
                assert option in words, (name, option)


@pytest.mark.parametrize("name", sorted(all_commands()))
def test_help_points_into_the_docs_not_the_readme(name: str) -> None:
    # What a command's help refers to moved from the README to docs/.
    out = " ".join(cli(name, "--help").stdout.split())
    assert "README" not in out
    if name == "check":
        assert "every finding (docs/findings.md)" in out


def test_apply_usage_names_its_plan_argument() -> None:
    out = cli("apply", "--help").stdout
    assert out.splitlines()[0] == "Usage: storage-audit apply [OPTIONS] PLAN"


def test_older_than_help_says_it_deletes_alone() -> None:
    out = " ".join(cli("plan", "--help", env={"COLUMNS": "200"}).stdout.split())
    assert "Delete every tag pushed before this long ago" in out and "alone, a rule that deletes, not a filter" in out


def test_top_level_help_lists_debug() -> None:
    out = cli("--help", env={"COLUMNS": "80"}).stdout
    assert "--debug" in out and "--version" in out


# --------------------------------------------------------------------------
# Counts said to people


def test_counts_are_singular_for_one() -> None:
    # The demo tree has exactly one referrer the stock collector would delete.
    top = Path(__file__).resolve().parents[1]
    code, _, err = cli("untagged", str(top / "fixtures" / "demo"))
    assert code == 0 and "1 referrer (signatures, SBOMs)" in err and "1 referrers" not in err


def test_plan_says_what_the_grace_period_held_back(tmp_path: Path, pin_clock: Callable[[datetime], datetime]) -> None:
    now = pin_clock(fixtures_built() + timedelta(days=1))
    root = unpack(FIXTURES / "basic.tar.gz", tmp_path / "basic")
    pushed = int((now - timedelta(minutes=5)).timestamp() * 1e9)
    for path in root.rglob("*"):
        # Pushed minutes ago: newer than the default grace period of 1h.
        os.utime(path, ns=(pushed, pushed), follow_symlinks=False)
    args = ("plan", str(root), "--delete-untagged", "--keep-last", "1")
    code, out, _ = cli(*args, "--min-age", "0s", "-q")
    ungraced = Counter(action["op"] for action in json.loads(out)["actions"])
    assert code == 0 and all(ungraced[op] for op in ("remove-tag", "remove-revision", "remove-blob"))
    code, out, err = cli(*args)
    assert code == 0 and json.loads(out)["actions"] == []
    expected = (
        f"held back by the grace period (--min-age 1h), as newer: {ungraced['remove-tag']} tags, "
        f"{ungraced['remove-revision']} manifests, {ungraced['remove-blob']} blobs; they are planned once older\n"
    )
    assert err.endswith(expected), err
    code, _, err = cli(*args, "--min-age", "0s")
    assert code == 0 and "held back" not in err


def test_verify_progress_uses_binary_units_throughout() -> None:
    from rich.progress import Progress

    from storage_audit.cli.progress import BytesColumn, SpeedColumn

    clock = iter(float(t) for t in range(100))
    progress = Progress(BytesColumn(), SpeedColumn(), get_time=lambda: next(clock), disable=True)
    task = progress.add_task("hashing blobs", total=3 * 2**30)
    for _ in range(4):
        progress.advance(task, 100 * 2**20)
    state = progress.tasks[0]
    shown = f"{BytesColumn().render(state)} {SpeedColumn().render(state)}"
    assert shown == "400.0 MiB / 3.0 GiB 100.0 MiB/s", shown


def test_scan_progress_counts_entries_in_words() -> None:
    from rich.progress import Progress

    from storage_audit.cli.progress import EntriesColumn

    progress = Progress(EntriesColumn(), disable=True)
    task = progress.add_task("reading blobs", total=None)
    shown = []
    for advance in (1, 12344):
        progress.advance(task, advance)
        shown.append(str(EntriesColumn().render(progress.tasks[0])))
    assert shown == ["1 entry", "12,345 entries"]

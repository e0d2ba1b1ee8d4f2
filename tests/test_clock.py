"""The clock: read in core/clock.py alone, pinned by STORAGE_AUDIT_NOW, and a bad value is a usage error."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage_audit.core import clock
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage
from tests.conftest import FIXTURES, built_at, cli

PACKAGE = Path(__file__).resolve().parents[1] / "storage_audit"
CLOCK = PACKAGE / "core" / "clock.py"
V2 = Path("docker/registry/v2")


# Calls that answer the current date whatever object they are called on (datetime, date, pandas' Timestamp).
NOW_METHODS = frozenset({"now", "utcnow", "today", "naturaltime", "naturalday", "naturaldate"})
# Functions of the `time` module that read the clock as a date (time.monotonic and perf_counter measure durations).
TIME_FUNCTIONS = frozenset({"time", "time_ns", "localtime", "gmtime", "ctime", "asctime", "strftime"})
NOW_WORDS = frozenset({"now", "today", "yesterday", "tomorrow"})


def clock_reads(source: str) -> list[str]:
    """Each place in `source` that reads the wall clock as a date, as `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            found += [f"{node.lineno}: from time import {a.name}" for a in node.names if a.name in TIME_FUNCTIONS]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name) and func.value.id == "clock":
                pass  # the one way in: storage_audit.core.clock
            elif func.attr in NOW_METHODS:
                found.append(f"{node.lineno}: .{func.attr}()")
            elif func.attr in TIME_FUNCTIONS and isinstance(func.value, ast.Name) and func.value.id == "time":
                found.append(f"{node.lineno}: time.{func.attr}()")
        elif isinstance(func, ast.Name) and func.id in NOW_METHODS:
            found.append(f"{node.lineno}: {func.id}()")
        # pd.Timestamp("now"), pd.to_datetime("today"), np.datetime64("now"), ...
        for arg in node.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.lower() in NOW_WORDS:
                found.append(f"{node.lineno}: a call given {arg.value!r}")
    return found


@pytest.mark.parametrize(
    ("source", "reads"),
    [
        ("from datetime import UTC, datetime\nx = datetime.now(UTC)", 1),
        ("import datetime as dt\nx = dt.datetime.utcnow()", 1),
        ("import pandas as pd\nx = pd.Timestamp.now(tz='UTC')", 1),
        ("import pandas as pd\nx = pd.Timestamp('now')", 1),
        ("import numpy as np\nx = np.datetime64('today')", 1),
        ("import time\nx = time.time()", 1),
        ("from time import time_ns\nx = time_ns()", 1),
        ("import humanize\nx = humanize.naturaltime(d)", 1),
        ("import time\nx = time.monotonic()", 0),
        ("x = stamp.time()", 0),
        ("from storage_audit.core import clock\nx = clock.now()", 0),
        ("from datetime import datetime\nx = datetime.fromisoformat('2026-01-01T00:00:00+00:00')", 0),
    ],
)
def test_the_scan_knows_a_clock_read_when_it_sees_one(source: str, reads: int) -> None:
    assert len(clock_reads(source)) == reads, clock_reads(source)


def test_only_core_clock_reads_the_wall_clock() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert CLOCK in modules and len(modules) > 40
    reads = {
        str(path.relative_to(PACKAGE)): found
        for path in modules
        if path != CLOCK and (found := clock_reads(path.read_text(encoding="utf-8")))
    }
    assert reads == {}
    assert len(clock_reads(CLOCK.read_text(encoding="utf-8"))) == 1


def test_now_is_the_pinned_time_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(clock.ENV, "2036-12-07T01:30:00+01:00")
    assert clock.now() == datetime(2036, 12, 7, 0, 30, tzinfo=UTC)
    assert clock.now().utcoffset() is not None and clock.now().tzinfo is UTC
    monkeypatch.setenv(clock.ENV, "2036-12-07T00:00:00Z")
    assert clock.now() == datetime(2036, 12, 7, tzinfo=UTC)


@pytest.mark.parametrize("empty", [None, ""])
def test_unset_or_empty_is_the_machine_clock(empty: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if empty is None:
        monkeypatch.delenv(clock.ENV, raising=False)
    else:
        monkeypatch.setenv(clock.ENV, empty)
    before = clock.machine_now()
    now = clock.now()
    assert now.tzinfo is UTC and before <= now <= clock.machine_now()


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2036-12-07", "2036-12-07T00:00:00", "2036-13-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-01-01Z"],
)
def test_a_value_that_is_no_time_with_a_timezone_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(clock.ENV, value)
    with pytest.raises(clock.ClockError, match="STORAGE_AUDIT_NOW"):
        clock.now()


@pytest.mark.parametrize("command", [["scan", "-o", "{out}"], ["check"], ["report"], ["plan", "--min-age", "0s"]])
def test_the_command_line_refuses_a_bad_clock_in_one_line(
    command: list[str], fixture_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    root = fixture_root("basic")
    monkeypatch.setenv(clock.ENV, "next tuesday")
    args = [command[0], str(root), *(a.replace("{out}", str(tmp_path / "snap")) for a in command[1:])]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr == (
        "storage-audit: error: STORAGE_AUDIT_NOW='next tuesday': not an ISO 8601 time with a timezone, "
        "such as 2036-12-07T00:00:00Z\n"
    )


def test_a_pinned_clock_dates_the_scan_and_judges_uploads(fixture_root, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    root = fixture_root("basic")
    built = built_at(FIXTURES / "basic.tar.gz")
    monkeypatch.setenv(clock.ENV, built.isoformat())
    assert scan(LocalStorage(root / V2)).scanned_at == built
    fresh = cli("check", str(root), "-f", "json", "-q", "--strict")
    assert fresh.exit_code == 0 and loud(fresh.stdout) == []
    # Years later the fixture's one upload is abandoned: a warning, not an error.
    monkeypatch.setenv(clock.ENV, "2036-12-07T00:00:00Z")
    later = cli("check", str(root), "-f", "json", "-q")
    assert later.exit_code == 0
    assert loud(later.stdout) == [("stale-upload", "warning")]


def loud(out: str) -> list[tuple[str, str]]:
    return [(f["kind"], f["severity"]) for f in json.loads(out) if f["severity"] != "info"]

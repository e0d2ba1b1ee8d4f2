"""Apply on the cases that once lost data, hung, or crashed: each ends safely now, with the exit code it says."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from storage_audit.cleanup.apply import journal_path
from tests.conftest import FIXTURES, unpack
from tests.registry_harness import Ledger, Registry, require_registry
from tests.test_plan_apply import (
    BROAD,
    DAY,
    NOW,
    V2,
    actions,
    age_tree,
    apply_cli,
    broken_invariants,
    copy_tree,
    digests,
    directories,
    files,
    interrupted,
    make_plan,
    retarget,
)

UNTAGGED = ("--delete-untagged", "--min-age", "0s")


@pytest.fixture
def aged(tmp_path: Path, pin_clock: Callable[[datetime], datetime]) -> Callable[[str], Path]:
    """The `basic` fixture registry unpacked under `name`, every mtime 30 days before NOW, the clock's time;
    returns its root."""
    pin_clock(NOW)

    def make(name: str) -> Path:
        root = unpack(FIXTURES / "basic.tar.gz", tmp_path / name)
        age_tree(root, 30 * DAY)
        return root

    return make


def blob_data(v2: Path, action: dict[str, Any]) -> Path:
    return v2 / action["path"] / "data"


# --------------------------------------------------------------------------
# A push in progress


def _push_again(root: Path, into: str, layer: bytes) -> None:
    with Registry(root) as reg:
        reg.push_blob(into, layer)


@pytest.mark.parametrize("into", ["other", "first"])
def test_a_blob_pushed_again_since_planning_is_kept(tmp_path: Path, into: str) -> None:
    """A client uploads an orphan blob again (into another repository, or the same) between plan and apply.

    The registry finds the data present and only writes a layer link; the data's
    mtime stays. Had apply removed the blob, the client's manifest would be
    accepted (the registry's descriptor cache) and pulls would fail.
    """
    require_registry()
    root = tmp_path / "root"
    layer, other = os.urandom(300), os.urandom(200)
    with Registry(root, Ledger()) as reg:
        digest = reg.push_blob("first", layer)
        untouched = reg.push_blob("first", other)
    v2 = root / V2
    plan, doc = make_plan(root, *UNTAGGED)
    assert {digest, untouched} <= digests(doc, "remove-blob")
    (blob,) = [a for a in actions(doc, "remove-blob") if a["digest"] == digest]
    before = os.stat(blob_data(v2, blob)).st_mtime_ns
    _push_again(root, into, layer)
    assert os.stat(blob_data(v2, blob)).st_mtime_ns == before, "the registry rewrote the data: not the case here"
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert f"skipped {blob['path']}" in err
    assert blob_data(v2, blob).read_bytes() == layer
    # What no client pushed again still goes.
    assert not (v2 / f"blobs/sha256/{untouched[7:9]}/{untouched[7:]}").exists()
    with Registry(root) as reg:
        assert reg.get_blob(into, digest) == layer


# --------------------------------------------------------------------------
# Odd files and places


@pytest.mark.slow
def test_a_fifo_in_place_of_a_tag_link_is_skipped_not_waited_for(aged: Callable[[str], Path]) -> None:
    root = aged("basic")
    v2 = root / V2
    plan, doc = make_plan(root, "--keep-last", "1", "--min-age", "0s")
    tag = actions(doc, "remove-tag")[0]
    link = v2 / tag["path"] / "current" / "link"
    link.unlink()
    os.mkfifo(link)
    proc = subprocess.Popen(
        [sys.executable, "-m", "storage_audit", "apply", str(plan), "--yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("apply waited on the FIFO")
    assert proc.returncode == 0, err
    assert f"skipped {tag['path']}: changed since planning" in err
    assert stat.S_ISFIFO(os.lstat(link).st_mode)


@pytest.mark.parametrize("inside", ["", "blobs", "repositories/team"])
def test_a_quarantine_inside_the_storage_tree_is_refused(aged: Callable[[str], Path], inside: str) -> None:
    root = aged("basic")
    v2 = root / V2
    plan, _ = make_plan(root, *BROAD)
    before = files(v2)
    code, out, err = apply_cli(plan, "--quarantine", v2 / inside)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("storage-audit: error: ") and "outside the storage tree" in last, err
    assert "Traceback" not in err and "internal error" not in err and out == ""
    assert files(v2) == before
    assert not journal_path(plan).exists()


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """Marks files immutable (chattr +i): removing them fails with EPERM even for root; undone afterwards."""
    marked: list[Path] = []

    def mark(path: Path) -> None:
        if shutil.which("chattr") is None:
            pytest.skip("chattr is not installed")
        result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot make a file immutable here: {result.stderr.strip()}")
        marked.append(path)

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@pytest.mark.slow
def test_a_permission_error_fails_its_action_only(
    aged: Callable[[str], Path], immutable: Callable[[Path], None]
) -> None:
    root = aged("basic")
    v2 = root / V2
    reference = copy_tree(root, root.parent / "reference")
    plan, doc = make_plan(root, *UNTAGGED)
    blobs = actions(doc, "remove-blob")
    assert len(blobs) >= 2
    stuck = blobs[0]
    immutable(blob_data(v2, stuck))
    code, out, err = apply_cli(plan)
    assert code == 3, err
    assert f"failed {stuck['path']}" in err and "Operation not permitted" in err
    assert "internal error" not in err and out == ""
    assert blob_data(v2, stuck).is_file()
    # Every other action went on.
    assert all(not (v2 / a["path"]).exists() for a in doc["actions"] if a is not stuck)
    assert broken_invariants(v2) == []
    # Once the cause is gone, the same plan finishes what failed.
    subprocess.run(["chattr", "-i", str(blob_data(v2, stuck))], check=True)
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert apply_cli(retarget(doc, reference, reference.parent / "reference.json"))[0] == 0
    assert files(v2).keys() == files(reference / V2).keys()
    assert directories(v2) == directories(reference / V2)


# --------------------------------------------------------------------------
# Journals


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "journal",
    [
        pytest.param(lambda _h: b"", id="empty"),
        pytest.param(lambda _h: b'{"plan_sha2', id="torn-first-line"),
        pytest.param(lambda _h: b"\xff\xfe\x00 not utf-8\n", id="not-utf-8"),
        pytest.param(lambda h: json.dumps({"plan_sha256": h}).encode() + b'\n{"index":[1]}\n', id="index-a-list"),
        pytest.param(lambda h: json.dumps({"plan_sha256": h}).encode() + b'\n{"index":99999}\n', id="index-too-big"),
    ],
)
def test_a_damaged_journal_of_this_plan_is_no_obstacle(
    aged: Callable[[str], Path], journal: Callable[[str], bytes]
) -> None:
    root = aged("basic")
    v2 = root / V2
    plan, doc = make_plan(root, *BROAD)
    journal_path(plan).write_bytes(journal(_sha256(plan)))
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert all(not (v2 / a["path"]).exists() for a in doc["actions"])
    assert broken_invariants(v2) == []
    code, _, err = apply_cli(plan)
    assert code == 0 and "already applied" in err


def test_a_plan_written_again_over_the_same_file_is_not_blocked(aged: Callable[[str], Path]) -> None:
    root = aged("basic")
    v2 = root / V2
    plan, first = make_plan(root, *UNTAGGED)
    assert interrupted(plan, 2) == 2
    plan_again, second = make_plan(root, *BROAD, out=plan)
    assert plan_again == plan and second != first
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert all(not (v2 / a["path"]).exists() for a in second["actions"])
    # A finished plan is still never applied twice.
    code, _, err = apply_cli(plan)
    assert code == 0 and "already applied" in err


def test_the_journal_is_named_for_the_plans_content(aged: Callable[[str], Path]) -> None:
    root = aged("basic")
    plan, _ = make_plan(root, *UNTAGGED)
    assert apply_cli(plan)[0] == 0
    assert journal_path(plan) == plan.with_name(f"{plan.name}.{_sha256(plan)[:16]}.journal")
    assert journal_path(plan).is_file()


# --------------------------------------------------------------------------
# Resuming


def test_an_action_found_done_still_prunes_what_it_left_empty(aged: Callable[[str], Path]) -> None:
    """A kill right after a removal, before its pruning and its journal line: the rerun finds it gone."""
    root = aged("basic")
    v2 = root / V2
    reference = copy_tree(root, root.parent / "reference")
    plan, doc = make_plan(root, *UNTAGGED)
    assert apply_cli(retarget(doc, reference, reference.parent / "reference.json"))[0] == 0
    for op in ("remove-revision", "remove-layer-link", "remove-blob"):
        done = actions(doc, op)[0]
        target = v2 / done["path"]
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert directories(v2) == directories(reference / V2)
    assert files(v2).keys() == files(reference / V2).keys()


# --------------------------------------------------------------------------
# What the summary says


def test_a_dry_run_says_what_it_would_remove_in_the_table_and_the_summary(aged: Callable[[str], Path]) -> None:
    root = aged("basic")
    v2 = root / V2
    plan, doc = make_plan(root, *BROAD)
    before = files(v2)
    code, _, err = apply_cli(plan, "--dry-run")
    assert code == 0, err
    assert files(v2) == before
    results = {cells[1] for cells in _table_rows(err)}
    assert results == {"would remove"}, err
    lines = err.splitlines()
    n = len(doc["actions"])
    assert re.fullmatch(rf"would remove {n} actions and would free [^;]+ on disk; 0 actions skipped", lines[-1]), err


def test_a_quarantine_says_what_it_moved_not_that_it_freed_it(aged: Callable[[str], Path]) -> None:
    root = aged("basic")
    plan, doc = make_plan(root, *BROAD)
    quarantine = root.parent / "quarantine"  # the same file system: moving frees nothing
    code, _, err = apply_cli(plan, "--quarantine", quarantine)
    assert code == 0, err
    assert "freed" not in err
    # Blob and upload data count, not link files (BROAD leaves no repository of `basic` empty).
    data = [a["path"] for a in doc["actions"] if a["op"] in ("remove-blob", "remove-upload")]
    assert not [a for a in doc["actions"] if a["op"] == "remove-repository"]
    moved = sum(size for rel, (size, _) in files(quarantine).items() if any(rel.startswith(p + "/") for p in data))
    summary = rf"moved \S+ \S+ \({moved:,} bytes\) into the quarantine {re.escape(str(quarantine))}; 0 actions skipped"
    assert re.fullmatch(summary, err.splitlines()[-2]), err
    assert moved > 0 and "Restart the registry" in err.splitlines()[-1]


def _table_rows(text: str) -> list[list[str]]:
    """The body rows of the table on stderr, as their cells."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if line.lstrip().startswith("│") and len(cells) >= 3 and cells[0].startswith("remove-"):
            rows.append(cells)
    return rows


# --------------------------------------------------------------------------
# Two applies of one plan at once


@pytest.mark.slow
def test_a_second_apply_of_a_plan_while_one_runs_is_refused(aged: Callable[[str], Path]) -> None:
    """Two processes apply the same plan: the second is refused at once, and the first ends as if alone."""
    root = aged("basic")
    v2 = root / V2
    reference = copy_tree(root, root.parent / "reference")
    plan, doc = make_plan(root, *BROAD)
    journal = journal_path(plan)
    command = [sys.executable, "-m", "storage_audit", "apply", str(plan), "--yes"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Held still once it holds the journal (its first line is written under the lock).
        deadline = time.monotonic() + 120
        while not (journal.is_file() and journal.read_bytes().endswith(b"\n")):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first apply never wrote its journal"
            time.sleep(0.001)
        first.send_signal(signal.SIGSTOP)
        during = files(v2)
        second = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith("storage-audit: error: ") and len(second.stderr.splitlines()) == 1
        assert "another apply of this plan is running" in second.stderr
        assert files(v2) == during
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    assert "; 0 actions skipped" in err
    assert apply_cli(retarget(doc, reference, reference.parent / "reference.json"))[0] == 0
    assert files(v2).keys() == files(reference / V2).keys()
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sum("plan_sha256" in e for e in entries) == 1 and entries[-1] == {"finished": True}
    assert sorted(e["index"] for e in entries if "index" in e) == list(range(len(doc["actions"])))


def test_a_plan_made_ahead_of_this_machines_clock_is_refused(
    aged: Callable[[str], Path], pin_clock: Callable[[datetime], datetime]
) -> None:
    # A plan's re-checks compare what changed since it was made: made "later" than now, they would miss a push since.
    root = aged("basic")
    pin_clock(datetime.fromisoformat("2261-06-01T00:00:00+00:00"))  # ahead of any machine's clock for centuries
    plan, _ = make_plan(root, *UNTAGGED)
    before = files(root / V2)
    os.environ.pop("STORAGE_AUDIT_NOW")  # applied by the machine's own clock
    code, out, err = apply_cli(plan)
    assert code == 2 and out == ""
    assert err.startswith(
        f"storage-audit: error: {plan}: refusing the plan, nothing was deleted: it was created at 2261"
    )
    assert "later than this machine's clock" in err and err.count("\n") == 1
    assert files(root / V2) == before
    assert not journal_path(plan).exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-zero", "directory"])
def test_a_plan_that_is_no_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    plan = tmp_path / "plan.json"
    if kind == "fifo":
        os.mkfifo(plan)
    elif kind == "directory":
        plan.mkdir()
    else:
        plan.symlink_to("/dev/zero")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "storage_audit", "apply", str(plan), "--yes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"storage-audit: error: {plan}: refusing the plan, nothing was deleted: cannot read")
    assert proc.stderr.count("\n") == 1
    assert time.monotonic() - started < 30


def test_the_blobs_of_a_child_an_index_pushed_since_planning_lists_are_kept(tmp_path: Path) -> None:
    """A manifest planned away with its blobs becomes the child of an index pushed since, then its revision link
    is deleted through the API: the index still lists it, so its config and layers stay, as planning would keep
    them (the fresh look before the blobs follows what indexes list, revision link or not)."""
    require_registry()
    root = tmp_path / "root"
    layer, config = os.urandom(400), b'{"architecture":"arm64","os":"linux","rootfs":{"type":"layers"}}'
    with Registry(root, Ledger()) as reg:
        child = reg.image("app", [layer], config)  # untagged: planned away
    plan, doc = make_plan(root, *UNTAGGED)
    child_blobs = {f"sha256:{hashlib.sha256(b).hexdigest()}" for b in (layer, config)}
    assert child_blobs | {child.digest} <= digests(doc, "remove-blob")
    with Registry(root) as reg:
        reg.index("app", [(child, "linux/arm64")], tags=["multi"])
        reg.delete_manifest("app", child.digest)  # its revision link goes; the index lists it still
    code, _, err = apply_cli(plan)
    assert code == 0, err
    v2 = root / V2
    for digest in child_blobs | {child.digest}:
        assert (v2 / f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data").is_file(), digest

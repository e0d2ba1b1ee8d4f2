"""The operations under the command line, called as a library: each gives the answer its command gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

import storage_audit
from storage_audit import (
    ApplyOptions,
    By,
    CheckOptions,
    CollectOptions,
    DiffBy,
    DiffOptions,
    PlanFormat,
    PlanOptions,
    Policy,
    ReportOptions,
    Snapshot,
    SnapshotOptions,
    UsageError,
    apply,
    check,
    diff,
    load,
    metrics,
    orphans,
    page,
    plan,
    report,
    resolve,
    survey,
    untagged,
)
from storage_audit.analysis.options import Collector, Format
from storage_audit.core.view import View
from storage_audit.output.formats import write
from tests.conftest import FIXTURES, cli, fixtures_built, unpack
from tests.facts import load_expected

V2 = Path("docker/registry/v2")
BASIC = load_expected(FIXTURES / "basic.expected.json")


def as_json(view: View, tmp_path: Path) -> str:
    """The view as `--format json` writes it."""
    out = tmp_path / "view.json"
    write(view, Format.JSON, out)
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The basic fixture's registry root, read by every test and changed by none."""
    return unpack(FIXTURES / "basic.tar.gz", tmp_path_factory.mktemp("basic"))


@pytest.fixture(scope="module")
def snapshot(basic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("snapshots") / "first"
    survey(resolve(basic), snapshot=SnapshotOptions(out))
    return out


@pytest.mark.slow
def test_the_package_loads_nothing_until_a_name_is_asked_for() -> None:
    program = (
        "import sys, storage_audit\n"
        "print(sorted(m for m in sys.modules if m.startswith('storage_audit')), 'pandas' in sys.modules)\n"
        "from storage_audit import resolve, load, survey, Graph, report, check, plan, apply, diff, UsageError\n"
        "print(all(getattr(storage_audit, name) is not None for name in storage_audit.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    # Only the version, from the bottom layer, comes with the package.
    loaded = "['storage_audit', 'storage_audit.core', 'storage_audit.core.version'] False"
    assert out.splitlines() == [loaded, "True"]
    assert set(dir(storage_audit)) >= set(storage_audit.__all__)
    with pytest.raises(AttributeError):
        _ = storage_audit.no_such_name  # type: ignore[attr-defined]


def test_survey_counts_what_scan_says(basic: Path) -> None:
    found = survey(resolve(basic))
    rows = found.totals.rows
    for table in ("tags", "tag_history", "revisions", "manifests", "references", "layer_links", "blobs", "uploads"):
        assert rows[table] == len(BASIC[table]), table
    assert rows["repositories"] == len(BASIC["repositories"]) == 3
    assert found.totals.unlinked_revisions == sum(not r["linked"] for r in BASIC["revisions"]) == 1
    assert found.totals.blob_bytes == sum(b["size"] for b in BASIC["blobs"])
    assert found.unreadable == [] and found.pruned is None and found.remote is None
    code, _, _ = cli("scan", basic)
    assert code == 0


@pytest.mark.slow
def test_survey_writes_a_snapshot_and_keeps_the_newest(basic: Path, tmp_path: Path) -> None:
    tree = resolve(basic)
    first = survey(tree, snapshot=SnapshotOptions(tmp_path / "a"))
    second = survey(tree, snapshot=SnapshotOptions(tmp_path / "b", keep=1))
    assert isinstance(resolve(tmp_path / "b"), Snapshot) and not (tmp_path / "a").exists()
    assert second.pruned is not None and [p.name for p in second.pruned.removed] == ["a"]
    assert first.totals == second.totals == survey(resolve(tmp_path / "b")).totals
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "precious").write_text("keep me")
    with pytest.raises(UsageError, match="not an empty directory"):
        survey(tree, snapshot=SnapshotOptions(tmp_path / "c"))


@pytest.mark.parametrize("source", ["tree", "snapshot"])
@pytest.mark.parametrize("by", list(By))
def test_report_is_the_commands(
    by: By, source: str, basic: Path, snapshot: Path, tmp_path: Path, pin_clock: Callable[[datetime], datetime]
) -> None:
    # An upload's age is counted from now: the operation and the command must see the same now.
    pin_clock(fixtures_built() + timedelta(days=1))
    root = basic if source == "tree" else snapshot
    found = report(resolve(root), ReportOptions(by=by))
    assert found.stored == (source == "snapshot") and found.unreadable == []
    assert as_json(found.view(), tmp_path) == cli("report", root, "--by", by.value, "-f", "json")[1]
    if by is By.REPOSITORY:
        assert sorted(found.frame["repository"]) == BASIC["repositories"]


@pytest.mark.slow
def test_metrics_and_page_are_the_commands(basic: Path, tmp_path: Path) -> None:
    samples = metrics(resolve(basic)).view.frame
    orphan_blobs = samples.loc[samples["metric"] == "storage_audit_orphan_blobs", "value"].tolist()
    assert orphan_blobs == [float(len(orphans(resolve(basic)).view.frame))]
    code, out, _ = cli("report", basic, "-f", "prometheus", "-q")
    assert code == 0 and f"\nstorage_audit_orphan_blobs {orphan_blobs[0]}\n" in out
    text = page(resolve(basic), command_root="ROOT")
    assert text.lstrip().lower().startswith("<!doctype html>") and "storage-audit orphans ROOT" in text
    code, _, _ = cli("report", basic, "-f", "html", "-o", tmp_path / "page.html", "-q")
    assert code == 0 and f"storage-audit orphans {basic}" in (tmp_path / "page.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("collector", [None, *Collector])
def test_untagged_and_orphans_are_the_commands(collector: Collector | None, basic: Path, tmp_path: Path) -> None:
    flag = [] if collector is None else [f"--gc-compatible={collector}"]
    options = CollectOptions(collector=collector)
    found = untagged(resolve(basic), options)
    assert as_json(found.view, tmp_path) == cli("untagged", basic, "-f", "json", "-q", *flag)[1]
    linked = {(r["repository"], r["digest"]) for r in BASIC["revisions"] if r["linked"]}
    tagged = {(t["repository"], t["digest"]) for t in BASIC["tags"]}
    assert set(zip(found.view.frame["repository"], found.view.frame["digest"], strict=True)) <= linked - tagged
    assert [diff.collector for diff in found.gc_differences] == ([*Collector] if collector is None else [])
    for delete_untagged in (False, True):
        options = CollectOptions(delete_untagged=delete_untagged, collector=collector)
        found = orphans(resolve(basic), options)
        flags = [*flag, *(["-m"] if delete_untagged else [])]
        assert as_json(found.view, tmp_path) == cli("orphans", basic, "-f", "json", "-q", *flags)[1]
        assert set(found.view.frame["digest"]) <= {b["digest"] for b in BASIC["blobs"]}


def test_check_is_the_commands(basic: Path, snapshot: Path, tmp_path: Path) -> None:
    found = check(resolve(basic), CheckOptions(verify_digests=True))
    assert found.verified and not found.failed() and found.counts["error"] == 0
    assert as_json(found.views()[0], tmp_path) == cli("check", basic, "--verify-digests", "-f", "json", "-q")[1]
    assert list(found.counts) == ["error", "warning", "info"]
    assert found.counts == dict(
        pd.Series(found.findings["severity"]).value_counts().reindex(found.counts, fill_value=0)
    )
    with pytest.raises(UsageError, match="a snapshot does not hold"):
        check(resolve(snapshot), CheckOptions(verify_digests=True))


@pytest.mark.parametrize("by", list(DiffBy))
def test_diff_is_the_commands(by: DiffBy, basic: Path, snapshot: Path, tmp_path: Path) -> None:
    found = diff(resolve(snapshot), resolve(basic), DiffOptions(by, names=(str(snapshot), str(basic))))
    assert found.unreadable == [] and found.result.frame.empty  # the same tree, before and after
    assert as_json(found.view(), tmp_path) == cli("diff", snapshot, basic, "--by", by.value, "-f", "json", "-q")[1]
    assert found.summary().startswith("+0 B ")


@pytest.mark.slow
def test_plan_and_apply_are_the_commands(
    tmp_path: Path, basic: Path, pin_clock: Callable[[datetime], datetime]
) -> None:
    pin_clock(fixtures_built() + timedelta(days=1))
    tree = shutil.copytree(basic, tmp_path / "tree", symlinks=True)
    policy = Policy(delete_untagged=True, min_age=timedelta(0))
    for fmt in PlanFormat:
        made = plan(resolve(tree), policy, PlanOptions(fmt, registry_url="http://registry:5000"))
        args = ["--format", fmt.value, "--registry-url", "http://registry:5000"]
        assert made.text == cli("plan", tree, "--delete-untagged", "--min-age", "0s", "-q", *args)[1]
    made = plan(resolve(tree), policy)
    doc = json.loads(made.text)
    assert len(doc["actions"]) == len(made.plan.actions) > 0
    with pytest.raises(UsageError, match="not a snapshot"):
        plan(resolve(survey_to(tree, tmp_path / "snap")), policy)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(made.text, encoding="utf-8")
    dry = apply(plan_file, ApplyOptions(dry_run=True))
    assert len(dry.done) == len(made.plan.actions) and dry.failed == [] and dry.dry_run
    said: list[str] = []
    done = apply(plan_file, ApplyOptions(), log=said.append)
    assert [a.path for a in done.done] == [a.path for a in dry.done] and done.bytes == dry.bytes
    assert said == [f"removed {a.path}" for a in done.done]
    for action in made.plan.actions:
        assert not (tree / V2 / action.path).exists(), action.path
    # What is left checks clean of what the plan removed, as after `storage-audit apply`.
    assert check(resolve(tree)).counts["error"] == 0
    with pytest.raises(storage_audit.AlreadyApplied):
        apply(plan_file)


def survey_to(tree: Path, out: Path) -> Path:
    survey(resolve(tree), snapshot=SnapshotOptions(out))
    return out


def test_load_times_a_scan_and_keeps_a_snapshots_time(basic: Path, snapshot: Path) -> None:
    scanned = load(resolve(basic))
    assert scanned.scan_seconds is not None and scanned.scan_seconds > 0
    assert load(resolve(snapshot)).scan_seconds == json.loads((snapshot / "metadata.json").read_text())["scan_seconds"]

"""The space report: its numbers checked against a model read straight from disk, and deletions done by hand."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from storage_audit.analysis.options import ReportError
from storage_audit.analysis.report import By, ReportOptions, report
from storage_audit.inventory.tables import SCHEMA, Inventory, write_snapshot
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage

from .conftest import FIXTURES, REAL_FIXTURES, cli, unpack
from .registry_harness import Registry, require_registry
from .workloads import EDGE_CASES, random_workload

V2 = Path("docker/registry/v2")

# Pinned: scripts read these names, so a change here is a breaking change.
PINNED_COLUMNS: dict[str, list[str]] = {
    "summary": [
        "repositories",
        "tags",
        "manifests",
        "untagged_manifests",
        "blobs",
        "orphan_blobs",
        "physical_bytes",
        "logical_bytes",
        "dedup_ratio",
        "orphan_bytes",
        "untagged_reclaimable_bytes",
        "upload_bytes",
        "findings_error",
        "findings_warning",
        "findings_info",
    ],
    "repository": [
        "repository",
        "tags",
        "manifests",
        "untagged_manifests",
        "total_bytes",
        "exclusive_bytes",
        "shared_bytes",
        "reclaimable_bytes",
        "upload_bytes",
        "last_push",
    ],
    "tag": [
        "repository",
        "tag",
        "digest",
        "media_type",
        "platforms",
        "pushed_at",
        "image_bytes",
        "exclusive_bytes",
        "history",
    ],
    "manifest": ["repository", "digest", "media_type", "artifact_type", "tags", "reachable", "bytes"],
    "blob": ["digest", "size", "repositories", "manifests", "orphan", "kind"],
    "upload": ["repository", "id", "bytes", "started_at", "age"],
}


# --------------------------------------------------------------------------
# A model of the storage read straight from the files, sharing no code with the tool


def _read_link(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


@dataclass
class Disk:
    """What is on disk: blob sizes, present revisions (digest -> link path), tags, and manifest documents."""

    v2: Path
    blobs: dict[str, int]
    revisions: dict[str, dict[str, Path]]
    tags: dict[tuple[str, str], str | None]

    @classmethod
    def read(cls, v2: Path) -> Disk:
        blobs = {f"sha256:{data.parent.name}": data.stat().st_size for data in (v2 / "blobs/sha256").glob("*/*/data")}
        revisions: dict[str, dict[str, Path]] = {}
        tags: dict[tuple[str, str], str | None] = {}
        base = v2 / "repositories"
        for dirpath, dirnames, _ in os.walk(base):
            here = Path(dirpath)
            if "_manifests" in dirnames:
                repo = here.relative_to(base).as_posix()
                links = (here / "_manifests/revisions/sha256").glob("*/link")
                revisions[repo] = {}
                for link in links:
                    digest = _read_link(link)
                    if digest in blobs:
                        revisions[repo][digest] = link
                for current in (here / "_manifests/tags").glob("*/current/link"):
                    tags[(repo, current.parent.parent.name)] = _read_link(current)
            dirnames[:] = [d for d in dirnames if not d.startswith("_")]
        return cls(v2, blobs, revisions, tags)

    def document(self, digest: str) -> dict[str, object]:
        path = self.v2 / "blobs/sha256" / digest[7:9] / digest[7:] / "data"
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def refs(self, digest: str) -> tuple[set[str], set[str], str | None]:
        """(blobs it references directly, child manifests, subject) of a manifest."""
        doc = self.document(digest)
        direct: set[str] = set()
        config = doc.get("config")
        if isinstance(config, dict) and "digest" in config:
            direct.add(config["digest"])
        for key, field in (("layers", "digest"), ("fsLayers", "blobSum")):
            for item in doc.get(key) or []:  # type: ignore[attr-defined]
                direct.add(item[field])
        children = {item["digest"] for item in doc.get("manifests") or []}  # type: ignore[attr-defined]
        subject = doc.get("subject")
        return direct, children, subject["digest"] if isinstance(subject, dict) else None

    def image(self, repo: str, roots: Iterable[str]) -> set[str]:
        """Every stored blob reachable from `roots`: the manifests, their config and layers, children recursively.

        A child counts only while it is a revision of the same repository: the
        registry serves it (and its collector keeps its layers) only then.
        """
        present = self.revisions[repo]
        visited: set[str] = set()
        found: set[str] = set()
        stack = list(roots)
        while stack:
            digest = stack.pop()
            if digest in visited:
                continue
            visited.add(digest)
            direct, children, _ = self.refs(digest)
            found |= {digest} | direct | children
            stack.extend(c for c in children if c in present)
        return found & set(self.blobs)

    def repo_blobs(self, repo: str) -> set[str]:
        return self.image(repo, self.revisions[repo])

    def held(self) -> set[str]:
        """Blobs a plain sweep keeps: whatever a present revision holds, and what a dangling tag names."""
        out: set[str] = set()
        for repo in self.revisions:
            out |= self.repo_blobs(repo)
        for (repo, _), digest in self.tags.items():
            if digest and digest not in self.revisions.get(repo, {}):
                out |= ({digest} | self.refs(digest)[0]) & set(self.blobs)
        return out

    def tag_reached(self, repo: str, skip_tag: str | None = None) -> set[str]:
        """Revisions of `repo` a tag reaches: its target, index children, referrers of anything reached."""
        present = self.revisions[repo]
        reached = {d for (r, t), d in self.tags.items() if r == repo and t != skip_tag and d in present}
        subjects = {d: self.refs(d)[2] for d in present}
        while True:
            more = {c for d in reached for c in self.refs(d)[1] if c in present}
            more |= {d for d, s in subjects.items() if s in reached}
            if more <= reached:
                return reached
            reached |= more

    def untagged(self, repo: str) -> set[str]:
        return set(self.revisions[repo]) - self.tag_reached(repo)


def blob_dir(v2: Path, digest: str) -> Path:
    return v2 / "blobs/sha256" / digest[7:9] / digest[7:]


def freed_by(v2: Path, repo: str, revisions: Iterable[str]) -> int:
    """Bytes of blob data on disk, before minus after collecting `revisions` by hand and rescanning."""
    before = int(scan(LocalStorage(v2)).blobs["size"].sum())
    disk = Disk.read(v2)
    held_before = disk.held()
    for digest in revisions:
        disk.revisions[repo][digest].unlink()
    for digest in held_before - Disk.read(v2).held():
        shutil.rmtree(blob_dir(v2, digest))
    after = int(scan(LocalStorage(v2)).blobs["size"].sum())
    assert after == sum(Disk.read(v2).blobs.values())
    return before - after


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def views(inv: Inventory) -> dict[By, pd.DataFrame]:
    return {by: report(inv, ReportOptions(by=by)) for by in By}


# --------------------------------------------------------------------------
# Invariants on every fixture


def check_invariants(root: Path) -> None:
    v2 = root / V2
    disk = Disk.read(v2)
    inv = scan(LocalStorage(v2))
    got = views(inv)
    summary = got[By.SUMMARY].iloc[0]
    repos = got[By.REPOSITORY].set_index("repository")
    physical = sum(disk.blobs.values())

    assert summary["physical_bytes"] == physical
    assert repos["exclusive_bytes"].sum() <= physical
    held = disk.held()
    assert physical == sum(disk.blobs[b] for b in held) + summary["orphan_bytes"]
    assert summary["logical_bytes"] == repos["total_bytes"].sum()
    for repo in disk.revisions:
        mine = disk.repo_blobs(repo)
        assert repos.loc[repo, "total_bytes"] == sum(disk.blobs[b] for b in mine), repo
        others = set().union(*(disk.repo_blobs(r) for r in disk.revisions if r != repo))
        assert repos.loc[repo, "exclusive_bytes"] == sum(disk.blobs[b] for b in mine - others), repo
        assert repos.loc[repo, "untagged_manifests"] == len(disk.untagged(repo)), repo
    assert (repos["shared_bytes"] == repos["total_bytes"] - repos["exclusive_bytes"]).all()

    blobs = got[By.BLOB].set_index("digest")
    assert set(blobs.index) == set(disk.blobs)
    assert set(blobs.index[blobs["orphan"]]) == set(disk.blobs) - held
    for digest, count in blobs["repositories"].items():
        assert count == sum(digest in disk.repo_blobs(r) for r in disk.revisions), digest

    manifests = got[By.MANIFEST]
    for row in records(manifests):
        assert row["bytes"] == sum(disk.blobs[b] for b in disk.image(row["repository"], [row["digest"]])), row
        assert row["reachable"] == (row["digest"] not in disk.untagged(row["repository"])), row
    for row in records(got[By.TAG]):
        if row["digest"] in disk.revisions.get(row["repository"], {}):
            assert row["image_bytes"] == sum(disk.blobs[b] for b in disk.image(row["repository"], [row["digest"]])), row


@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_invariants_hold_on_fixture(name: str, fixture_root) -> None:  # type: ignore[no-untyped-def]
    check_invariants(fixture_root(name))


def check_reclaimable(root: Path, scratch: Path) -> None:
    """Per repository, collecting its untagged revisions by hand frees exactly reclaimable_bytes."""
    repos = report(scan(LocalStorage(root / V2)), ReportOptions(by=By.REPOSITORY))
    for i, row in enumerate(records(repos)):
        v2 = Path(shutil.copytree(root, scratch / f"repo-{i}", symlinks=True)) / V2
        untagged = Disk.read(v2).untagged(row["repository"])
        assert freed_by(v2, row["repository"], untagged) == row["reclaimable_bytes"], row


def check_tag_exclusive(root: Path, scratch: Path) -> None:
    """Per tag, deleting it alone and collecting what it alone kept frees exactly exclusive_bytes."""
    tags = report(scan(LocalStorage(root / V2)), ReportOptions(by=By.TAG))
    for i, row in enumerate(records(tags)):
        v2 = Path(shutil.copytree(root, scratch / f"tag-{i}", symlinks=True)) / V2
        disk = Disk.read(v2)
        collected = disk.tag_reached(row["repository"]) - disk.tag_reached(row["repository"], skip_tag=row["tag"])
        shutil.rmtree(v2 / "repositories" / row["repository"] / "_manifests/tags" / row["tag"])
        assert freed_by(v2, row["repository"], collected) == row["exclusive_bytes"], row


@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_deleting_what_reclaimable_describes_frees_exactly_that(name: str, tmp_path: Path) -> None:
    check_reclaimable(unpack(FIXTURES / f"{name}.tar.gz", tmp_path / "original"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_deleting_one_tag_frees_its_exclusive_bytes(name: str, tmp_path: Path) -> None:
    check_tag_exclusive(unpack(FIXTURES / f"{name}.tar.gz", tmp_path / "original"), tmp_path)


@pytest.mark.slow
def test_summary_untagged_reclaimable_is_what_collecting_every_untagged_frees(tmp_path: Path) -> None:
    for name in REAL_FIXTURES:
        v2 = unpack(FIXTURES / f"{name}.tar.gz", tmp_path / name) / V2
        summary = report(scan(LocalStorage(v2)), ReportOptions()).iloc[0]
        disk = Disk.read(v2)
        for digest in set(disk.blobs) - disk.held():
            shutil.rmtree(blob_dir(v2, digest))
        freed = 0
        for repo in list(disk.revisions):
            freed += freed_by(v2, repo, Disk.read(v2).untagged(repo))
        assert freed == summary["untagged_reclaimable_bytes"], name


def test_known_numbers_of_basic(fixture_root) -> None:  # type: ignore[no-untyped-def]
    inv = scan(LocalStorage(fixture_root("basic") / V2))
    summary = report(inv, ReportOptions()).iloc[0]
    assert (summary["repositories"], summary["tags"], summary["manifests"], summary["untagged_manifests"]) == (
        3,
        7,
        12,
        1,
    )
    assert summary["dedup_ratio"] == pytest.approx(summary["logical_bytes"] / summary["physical_bytes"])
    tags = report(inv, ReportOptions(by=By.TAG)).set_index(["repository", "tag"])
    # Two tags on one manifest: deleting either alone frees nothing.
    assert tags.loc[("team/app", "latest"), "exclusive_bytes"] == 0
    assert tags.loc[("team/app", "latest"), "history"] == 3
    assert tags.loc[("tools/multi", "v1"), "platforms"] == "linux/amd64,linux/arm64/v8"
    assert tags.loc[("team/app", "1.0"), "platforms"] == ""
    manifests = report(inv, ReportOptions(by=By.MANIFEST))
    signature = manifests[manifests["artifact_type"].notna()].iloc[0]
    assert signature["reachable"]  # a referrer of a tagged image is kept
    uploads = report(inv, ReportOptions(by=By.UPLOAD))
    started: pd.Timestamp = uploads["started_at"].iloc[0]
    expected_age = int((pd.Timestamp(inv.scanned_at) - started).total_seconds())
    assert uploads.loc[0, "age"] == expected_age


def test_empty_registry(tmp_path: Path) -> None:
    (tmp_path / V2 / "blobs").mkdir(parents=True)
    (tmp_path / V2 / "repositories").mkdir()
    got = views(scan(LocalStorage(tmp_path / V2)))
    assert got[By.SUMMARY].iloc[0]["dedup_ratio"] == 0.0
    for by in By:
        assert list(got[by].columns) == PINNED_COLUMNS[by.value]
        assert by is By.SUMMARY or got[by].empty


def test_options_are_checked() -> None:
    for options in (
        ReportOptions(by=By.TAG, sort="nope"),
        ReportOptions(by=By.SUMMARY, top=3),
        ReportOptions(by=By.SUMMARY, repository="x"),
        ReportOptions(by=By.BLOB, top=0),
    ):
        with pytest.raises(ReportError):
            report(Inventory(root="", scanned_at=datetime(2026, 1, 1, tzinfo=UTC)), options)


# --------------------------------------------------------------------------
# The command


def test_report_has_help() -> None:
    code, out, _ = cli("report", "--help")
    assert code == 0 and "--by" in out and "--sort" in out


@pytest.mark.parametrize("by", list(PINNED_COLUMNS))
def test_columns_are_pinned_in_csv_and_json(by: str, fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))
    code, out, _ = cli("report", root, "--by", by, "-f", "csv", "-q")
    assert code == 0
    assert out.splitlines()[0].split(",") == PINNED_COLUMNS[by]
    code, out, _ = cli("report", root, "--by", by, "-f", "json", "-q")
    assert code == 0
    data = json.loads(out)
    rows = [data] if by == "summary" else data
    assert rows and all(list(row) == PINNED_COLUMNS[by] for row in rows)


def test_json_holds_raw_integers_and_iso_times(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))
    summary = json.loads(cli("report", root, "-f", "json")[1])
    assert isinstance(summary["physical_bytes"], int) and isinstance(summary["dedup_ratio"], float)
    repos = json.loads(cli("report", root, "--by", "repository", "-f", "json")[1])
    assert all(isinstance(r["total_bytes"], int) for r in repos)
    assert all(r["last_push"].endswith("Z") for r in repos)
    (upload,) = json.loads(cli("report", root, "--by", "upload", "-f", "json")[1])
    assert isinstance(upload["age"], int) and upload["started_at"].endswith("Z")


@pytest.mark.slow
def test_parquet_keeps_dtypes(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))
    for by in PINNED_COLUMNS:
        out = tmp_path / f"{by}.parquet"
        assert cli("report", root, "--by", by, "-f", "parquet", "-o", str(out))[0] == 0
        frame = pd.read_parquet(out)
        assert list(frame.columns) == PINNED_COLUMNS[by]
    repos = pd.read_parquet(tmp_path / "repository.parquet")
    assert isinstance(repos["last_push"].dtype, pd.DatetimeTZDtype)
    assert repos["total_bytes"].dtype == "int64"
    assert pd.read_parquet(tmp_path / "manifest.parquet")["reachable"].dtype == bool
    assert str(pd.read_parquet(tmp_path / "upload.parquet")["age"].dtype) == "Int64"


def test_parquet_without_output_is_a_usage_error(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("report", str(fixture_root("basic")), "--by", "tag", "-f", "parquet")
    assert code == 2 and out == ""
    assert err == "storage-audit: error: parquet needs an output file: add -o FILE\n"


def test_unknown_sort_column_is_a_usage_error(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("report", str(fixture_root("basic")), "--by", "tag", "--sort", "bytes")
    assert code == 2 and out == ""
    assert err.startswith("storage-audit: error: --sort bytes: no such column in --by tag; one of: repository, tag")
    assert cli("report", str(fixture_root("basic")), "--top", "3")[0] == 2


def test_bad_root_is_a_usage_error(tmp_path: Path) -> None:
    code, out, err = cli("report", str(tmp_path / "nope"))
    assert code == 2 and out == "" and "no such file" in err


def test_top_and_sort(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))
    everything = pd.read_csv(io.StringIO(cli("report", root, "--by", "blob", "-f", "csv")[1]))
    assert everything["size"].is_monotonic_decreasing
    top = pd.read_csv(io.StringIO(cli("report", root, "--by", "blob", "-f", "csv", "--top", "4")[1]))
    assert top.equals(everything.head(4))
    by_name = pd.read_csv(
        io.StringIO(cli("report", root, "--by", "repository", "-f", "csv", "--sort", "repository")[1])
    )
    assert list(by_name["repository"]) == sorted(by_name["repository"])


def test_repository_filter(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))

    def csv(*args: str) -> pd.DataFrame:
        code, out, _ = cli("report", root, "-f", "csv", *args)
        assert code == 0
        return pd.read_csv(io.StringIO(out), keep_default_na=False)

    assert set(csv("--by", "repository", "-r", "team/*")["repository"]) == {"team/app", "team/app/server"}
    assert set(csv("--by", "tag", "-r", "tools/*")["repository"]) == {"tools/multi"}
    assert set(csv("--by", "upload", "-r", "*a*p*/s*")["repository"]) == {"team/app/server"}
    assert csv("--by", "manifest", "-r", "nothing*").empty
    everything = csv("--by", "blob")
    server = csv("--by", "blob", "-r", "team/app/server")
    assert 0 < len(server) < len(everything) and not server["orphan"].any()
    v2 = Path(root) / V2
    expected = Disk.read(v2).repo_blobs("team/app/server")
    assert set(server["digest"]) == expected


@pytest.mark.slow
def test_tables_fit_80_columns(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))
    for by in PINNED_COLUMNS:
        # Piped, a table takes the width COLUMNS says.
        code, out, _ = cli("report", root, "--by", by, env={"COLUMNS": "80"})
        assert code == 0
        assert max(len(line) for line in out.splitlines()) <= 80, out
        assert by == "summary" or "total (" in out
    summary = cli("report", root)[1]
    assert "physical_bytes" in summary and "KiB" in summary
    # The fixture's upload is as old as the fixture: its age reads in words, whatever the unit.
    uploads = cli("report", root, "--by", "upload")[1]
    assert re.search(r"\b(a|an|\d+) (second|minute|hour|day|month|year)s?\b", uploads), uploads


@pytest.mark.slow
def test_snapshot_gives_the_same_report(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = fixture_root("multiarch")
    write_snapshot(scan(LocalStorage(root / V2)), tmp_path / "snap")
    for by in ("summary", "repository", "tag", "manifest", "blob"):
        tree = cli("report", str(root), "--by", by, "-f", "csv")
        snap = cli("report", str(tmp_path / "snap"), "--by", by, "-f", "csv")
        assert tree == snap


@pytest.mark.slow
def test_a_snapshot_stores_whole_views_and_reports_cut_them(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = fixture_root("multiarch")
    snap = tmp_path / "snap"
    assert cli("scan", str(root), "-o", str(snap), "-q")[0] == 0
    views = json.loads((snap / "metadata.json").read_text())["views"]
    assert sorted(views) == sorted(b.value for b in By)
    cases = [("--by", by.value, "-f", fmt) for by in By for fmt in ("csv", "json")] + [
        ("--by", "tag", "--repository", "*/app*", "--sort", "pushed_at", "-f", "csv"),
        ("--by", "manifest", "--top", "2", "-f", "json"),
        ("--by", "repository", "--repository", "no-such-*", "-f", "csv"),
        ("--by", "blob", "--repository", "*", "-f", "csv"),
    ]
    expected = {case: cli("report", str(root), *case) for case in cases}
    # Without its inventory tables the snapshot still answers every report but one:
    # blobs narrowed to some repositories are computed from the inventory.
    for table in SCHEMA:
        shutil.rmtree(snap / table)
    for case, answer in expected.items():
        got = cli("report", str(snap), *case)
        if "blob" in case and "--repository" in case:
            assert got[0] == 2 and "unreadable snapshot" in got[2]
        else:
            assert got == answer, case


# --------------------------------------------------------------------------
# Random registries built through the reference registry


SEEDS = (3, 11, 29, 41, 53, 67, 79, 83, 97, 101)


@pytest.mark.parametrize("case", [*(f"seed-{n}" for n in SEEDS), *EDGE_CASES])
def test_invariants_on_registry_built_workloads(case: str, tmp_path: Path) -> None:
    require_registry()
    root = tmp_path / "root"
    with Registry(root) as reg:
        if case in EDGE_CASES:
            EDGE_CASES[case](reg, random.Random(f"storage-audit-report:{case}"))
        else:
            random_workload(reg, int(case.removeprefix("seed-")))
    check_invariants(root)
    check_reclaimable(root, tmp_path)
    check_tag_exclusive(root, tmp_path)


def test_a_table_shows_its_row_limit_unless_top_asks_for_more() -> None:
    from rich.console import Console

    from storage_audit.core.view import View
    from storage_audit.output.table import MAX_ROWS, render

    rows = MAX_ROWS * 3
    frame = pd.DataFrame({"name": [f"repo-{i:04d}" for i in range(rows)], "count": [1] * rows})

    def shown(view: View) -> tuple[list[str], str]:
        out = io.StringIO()
        render(view, Console(file=out, width=100, no_color=True))
        text = out.getvalue()
        return re.findall(r"repo-\d{4}", text), text

    names, text = shown(View(frame, total_columns=("count",)))
    assert names == [f"repo-{i:04d}" for i in range(MAX_ROWS)]
    assert f"first {MAX_ROWS} of {rows} rows" in text and f"{rows:,}" in text.split("total")[1]
    names, text = shown(View(frame, total_columns=("count",), table_rows=MAX_ROWS * 2))
    assert len(names) == MAX_ROWS * 2 and f"first {MAX_ROWS * 2} of {rows} rows" in text
    names, text = shown(View(frame.head(MAX_ROWS), table_rows=None))
    assert len(names) == MAX_ROWS and "first" not in text

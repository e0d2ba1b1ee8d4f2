"""diff between two audits of a tree built through the real registry: what it reports is what the ledger changed."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import humanize
import pandas as pd
import pytest

from storage_audit.analysis.graph import Graph
from tests.conftest import cli
from tests.registry_harness import Ledger, ManifestPut, Registry, canonical_json, describe_manifest, require_registry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def diff_json(*args: str) -> tuple[list[dict[str, Any]], str]:
    code, out, err = cli("diff", *args, "-f", "json")
    assert code == 0, err
    return json.loads(out), err


# --------------------------------------------------------------------------
# The tree: pushed, snapshotted, changed through the API, snapshotted again


@dataclass(frozen=True)
class State:
    """What the ledger says one moment of the registry holds, replayed from its events, not read from disk."""

    tags: dict[tuple[str, str], str]
    revisions: set[tuple[str, str]]
    repositories: set[str]
    blobs: dict[str, int]
    bodies: dict[str, bytes]

    @classmethod
    def of(cls, events: list[Any]) -> State:
        facts = Ledger(list(events)).expected_facts()
        return cls(
            tags={(t["repository"], t["tag"]): t["digest"] for t in facts["tags"]},
            revisions={(r["repository"], r["digest"]) for r in facts["revisions"] if r["linked"]},
            repositories=set(facts["repositories"]),
            blobs={b["digest"]: b["size"] for b in facts["blobs"]},
            bodies={e.digest: e.body for e in events if isinstance(e, ManifestPut)},
        )

    def holds(self, digest: str) -> set[str]:
        """The blobs an image manifest keeps: itself, its config and its layers."""
        return {digest} | {d for _, d, _ in describe_manifest(self.bodies[digest]).references}

    def image_bytes(self, digest: str) -> int:
        return sum(self.blobs[b] for b in self.holds(digest))


@dataclass(frozen=True)
class History:
    root: Path
    old: Path  # snapshot before the changes
    new: Path  # snapshot after them
    before: State
    after: State


class Images:
    """Distinct small images: each call pushes new layers and a new config."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.n = 0

    def push(self, repo: str, *tags: str, shared: bytes | None = None) -> str:
        self.n += 1
        layers = [f"{repo} layer {self.n} ".encode() * (40 + 13 * self.n)]
        if shared is not None:
            layers.append(shared)
        config = canonical_json({"architecture": "amd64", "os": "linux", "n": self.n})
        return self.reg.image(repo, layers, config, tags=tags).digest


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    require_registry()
    base = tmp_path_factory.mktemp("history")
    root = base / "root"
    ledger = Ledger()
    with Registry(root, ledger) as reg:
        images = Images(reg)
        shared = b"a base layer every image of app and team/new shares " * 30
        images.push("app", "latest", "v1", shared=shared)
        b = images.push("app", "v2")
        images.push("lib/base", "1.0")
        d = images.push("lib/base")  # untagged
        images.push("tools/ci", "stable")
        f = images.push("tools/ci", "old")
        first = len(ledger.events)
        assert cli("scan", str(root), "-o", str(base / "old"), "-q")[0] == 0

        images.push("app", "latest", shared=shared)  # latest moves off a
        reg.put_manifest("app", "v3", _body(ledger, b), _media(ledger, b))
        reg.delete_manifest("app", b)  # v2 and the new v3 go with it
        reg.delete_manifest("lib/base", d)
        reg.delete_manifest("tools/ci", f)
        images.push("tools/ci", "stable")  # moves to a new image
        images.push("team/new", "v1", shared=shared)
        images.push("team/new", "v2")
        assert cli("scan", str(root), "-o", str(base / "new"), "-q")[0] == 0
    yield History(root, base / "old", base / "new", State.of(ledger.events[:first]), State.of(ledger.events))
    shutil.rmtree(base, ignore_errors=True)


def _body(ledger: Ledger, digest: str) -> bytes:
    return next(e.body for e in ledger.events if isinstance(e, ManifestPut) and e.digest == digest)


def _media(ledger: Ledger, digest: str) -> str:
    return next(e.media_type for e in ledger.events if isinstance(e, ManifestPut) and e.digest == digest)


# --------------------------------------------------------------------------
# What the ledger says changed


def expected_tags(h: History) -> set[tuple[str, str, str, str | None, str | None]]:
    out: set[tuple[str, str, str, str | None, str | None]] = set()
    for key in h.before.tags.keys() | h.after.tags.keys():
        old, new = h.before.tags.get(key), h.after.tags.get(key)
        if old is None:
            out.add((*key, "added", None, new))
        elif new is None:
            out.add((*key, "removed", old, None))
        elif old != new:
            out.add((*key, "moved", old, new))
    return out


def test_the_scenario_changes_tags_manifests_and_repositories(history: History) -> None:
    changes = {row[2] for row in expected_tags(history)}
    assert changes == {"added", "removed", "moved"}
    assert history.before.revisions - history.after.revisions
    assert history.after.repositories - history.before.repositories == {"team/new"}


def test_diff_by_tag_is_what_the_ledger_changed(history: History) -> None:
    rows, err = diff_json(str(history.old), str(history.new), "--by", "tag")
    got = {(r["repository"], r["tag"], r["change"], r["old_digest"], r["new_digest"]) for r in rows}
    assert got == expected_tags(history)
    n = Counter(change for *_, change, _, _ in expected_tags(history))
    said = f"{n['added']} tags added, {n['moved']} tags moved, {n['removed']} tags removed"
    assert err.strip().splitlines()[-1].endswith(f": {said}")
    for r in rows:
        old = history.before.image_bytes(r["old_digest"]) if r["old_digest"] else None
        new = history.after.image_bytes(r["new_digest"]) if r["new_digest"] else None
        assert (r["old_image_bytes"], r["new_image_bytes"]) == (old, new), r
        assert r["delta_bytes"] == (new or 0) - (old or 0)
    assert [abs(r["delta_bytes"]) for r in rows] == sorted((abs(r["delta_bytes"]) for r in rows), reverse=True)


def test_diff_by_repository_counts_what_the_ledger_changed(history: History) -> None:
    rows, err = diff_json(str(history.old), str(history.new))
    by_repo = {r["repository"]: r for r in rows}
    tags = expected_tags(history)
    before, after = history.before, history.after
    expected: dict[str, dict[str, int]] = {}
    for repo in before.repositories | after.repositories:
        counts = {
            "tags_added": sum(1 for t in tags if t[0] == repo and t[2] == "added"),
            "tags_removed": sum(1 for t in tags if t[0] == repo and t[2] == "removed"),
            "tags_moved": sum(1 for t in tags if t[0] == repo and t[2] == "moved"),
            "manifests_added": sum(1 for r, _ in after.revisions - before.revisions if r == repo),
            "manifests_removed": sum(1 for r, _ in before.revisions - after.revisions if r == repo),
        }
        if any(counts.values()):
            expected[repo] = counts
    assert set(by_repo) == set(expected)
    for repo, counts in expected.items():
        assert {k: by_repo[repo][k] for k in counts} == counts, repo
    new = by_repo["team/new"]
    assert new["change"] == "new"
    held = set().union(*(after.holds(d) for r, d in after.revisions if r == "team/new"))
    assert new["total_bytes_old"] == 0
    assert new["total_bytes_new"] == new["total_bytes_delta"] == sum(after.blobs[b] for b in held)
    assert {r["change"] for r in rows} == {"new", "changed"}
    deltas = [abs(r["total_bytes_delta"]) for r in rows]
    assert deltas == sorted(deltas, reverse=True)

    added = sum(size for digest, size in after.blobs.items() if digest not in before.blobs)
    pushed = sum(1 for t in tags if t[2] in ("added", "moved"))
    removed = sum(1 for t in tags if t[2] == "removed")
    deleted = len(before.revisions - after.revisions)
    summary = err.strip().splitlines()[-1]
    assert summary.startswith(f"+{humanize.naturalsize(added, binary=True)} in ")
    said = f"{pushed} tags pushed, {removed} tags removed, 1 repository new, {deleted} manifests deleted"
    assert summary.endswith(f": {said}")


def test_diff_by_blob_lists_the_blobs_pushed_and_in_reverse_removed(history: History) -> None:
    before, after = history.before.blobs, history.after.blobs
    pushed = {d: s for d, s in after.items() if d not in before}
    assert pushed and not [d for d in before if d not in after]
    rows, err = diff_json(str(history.old), str(history.new), "--by", "blob")
    assert {r["digest"]: (r["change"], r["size"], r["delta_bytes"]) for r in rows} == {
        d: ("added", s, s) for d, s in pushed.items()
    }
    total = humanize.naturalsize(sum(pushed.values()), binary=True)
    assert f"+{total} physical in " in err
    assert f": {len(pushed)} blobs added ({total}), 0 blobs removed (0 B)" in err

    rows, err = diff_json(str(history.new), str(history.old), "--by", "blob")
    assert {r["digest"]: (r["change"], r["size"], r["delta_bytes"]) for r in rows} == {
        d: ("removed", s, -s) for d, s in pushed.items()
    }
    assert f"-{total} physical in " in err
    assert "NEW was scanned before OLD" in err


def test_a_tree_and_its_snapshot_diff_alike_with_one_graph_for_the_tree(history: History) -> None:
    for by in ("repository", "tag", "blob"):
        from_snapshots, _ = diff_json(str(history.old), str(history.new), "--by", by)
        before = Graph.builds
        from_tree, err = diff_json(str(history.old), str(history.root), "--by", by)
        assert Graph.builds - before == 1
        assert from_tree == from_snapshots
        assert "warning" not in err


def test_two_snapshots_diff_from_their_stored_views_without_analysis(history: History) -> None:
    before = Graph.builds
    rows, _ = diff_json(str(history.old), str(history.new))
    assert rows and Graph.builds == before


# --------------------------------------------------------------------------
# Sides that compare less well, and sides that cannot be read (on a fixture: no registry needed)


@pytest.fixture
def snapshots(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    for target in (old, new):
        assert cli("scan", str(FIXTURES / "demo"), "-o", str(target), "-q")[0] == 0
    return old, new


def _edit_metadata(snapshot: Path, **changes: Any) -> None:
    path = snapshot / "metadata.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_the_same_tree_twice_changes_nothing(snapshots: tuple[Path, Path]) -> None:
    for by in ("repository", "tag", "blob"):
        rows, err = diff_json(*map(str, snapshots), "--by", by)
        assert rows == []
        assert "warning" not in err
    assert err.strip().endswith("0 blobs added (0 B), 0 blobs removed (0 B)")
    _, err = diff_json(*map(str, snapshots))
    assert err.strip().startswith("+0 B in ") and err.strip().endswith(": no tag, repository or manifest changed")


def test_other_versions_and_roots_warn_and_still_diff(snapshots: tuple[Path, Path]) -> None:
    old, new = snapshots
    _edit_metadata(old, version="0.0.1", root="/srv/elsewhere/docker/registry/v2")
    rows, err = diff_json(str(old), str(new))
    assert rows == []
    assert "storage-audit: warning: OLD was written by storage-audit 0.0.1" in err
    assert "storage-audit: warning: OLD and NEW audit different storage: /srv/elsewhere/docker/registry/v2" in err


@pytest.mark.slow
def test_a_column_an_older_version_did_not_write_is_left_empty(snapshots: tuple[Path, Path]) -> None:
    old, new = snapshots
    view = old / "report-tag.parquet"
    pd.read_parquet(view).drop(columns=["image_bytes"]).to_parquet(view, index=False)
    rows, err = diff_json(str(old), str(new), "--by", "tag")
    assert rows == []
    assert "OLD's tag view has no image_bytes" in err


@pytest.mark.slow
def test_an_unreadable_snapshot_exits_2_in_one_line(snapshots: tuple[Path, Path]) -> None:
    old, new = snapshots
    (old / "report-repository.parquet").write_bytes(b"not parquet")
    code, out, err = cli("diff", str(old), str(new))
    assert code == 2 and out == ""
    assert err.startswith(f"storage-audit: error: {old}: unreadable snapshot") and err.count("\n") == 1
    (new / "metadata.json").write_text("{")
    code, out, err = cli("diff", str(FIXTURES / "demo"), str(new), "--by", "blob")
    assert code == 2 and out == ""
    assert err.startswith("storage-audit: error: ") and "unreadable snapshot" in err and err.count("\n") == 1


@pytest.mark.slow
def test_diff_writes_every_format(snapshots: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = snapshots
    code, out, _ = cli("diff", str(old), str(new), "-f", "csv")
    assert code == 0 and out.startswith("repository,change,total_bytes_old,total_bytes_new,total_bytes_delta,")
    code, out, _ = cli("diff", str(old), str(new), "--by", "tag")
    assert code == 0 and "changes per tag" in out
    code, _, err = cli("diff", str(old), str(new), "-f", "parquet", "-o", str(tmp_path / "d.parquet"))
    assert code == 0, err
    assert list(pd.read_parquet(tmp_path / "d.parquet").columns)[:2] == ["repository", "change"]
    code, _, err = cli("diff", str(old), str(new), "-f", "prometheus")
    assert code == 2 and "'prometheus' is not one of 'table', 'csv', 'json', 'parquet'" in err

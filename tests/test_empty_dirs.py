"""No answer depends on empty directories: a tree answers as its copy without them, and as the same registry in S3.

The filesystem driver leaves an empty `_manifests/revisions/sha256/<hex>/` behind when a manifest is
deleted through the API; a bucket has no directories at all, and a copy or an `rmdir` may drop them on
disk. The answers compared are those of `untagged`, `orphans` (every mode), `report` (every view),
`plan`, `check` and the warnings about the stock collector, computed as the commands compute them.
Only the findings about the empty directories themselves may differ (and what counts them).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from storage_audit.analysis import report
from storage_audit.analysis.check import check
from storage_audit.analysis.collect import gc_difference, orphan_frame, untagged_frame
from storage_audit.analysis.graph import Graph, ReachOptions
from storage_audit.analysis.options import By, Collector, ReportOptions
from storage_audit.cleanup.plan import PlanRefused, Policy, make_plan
from storage_audit.core.paths import BlobData, Digest, path_for
from storage_audit.inventory.tables import Inventory
from storage_audit.scan.listing import printable
from storage_audit.scan.run import ScanOptions, scan
from storage_audit.storage.base import LocalStorage, Storage
from storage_audit.storage.bucket import S3Bucket, S3Location, S3Settings
from storage_audit.storage.s3 import S3Storage, _EarlyManifests, _Index
from tests.conftest import BROKEN, FIXTURES, REAL_FIXTURES, cli, unpack
from tests.facts import Facts
from tests.gc3_model import mark_and_sweep
from tests.registry_harness import Client, Ledger, Registry, garbage_collect, parse_gc_output, require_registry
from tests.s3_harness import SeaweedS3, bucket_for, s3_registry
from tests.workloads import deleted_children, random_workload

V2 = Path("docker/registry/v2")
WHEN = datetime(2031, 1, 1, tzinfo=UTC)
"""When the fixture trees are audited: after every time in them, fixed so that no answer reads the clock."""

FIXTURE_TREES = [*REAL_FIXTURES, *(f"broken/{p.name.removesuffix('.tar.gz')}" for p in sorted(BROKEN.glob("*.tar.gz")))]
# The damaged trees with empty directories of their own; the others hold those of `basic`, which they were made
# from, and are swept with the slow tests.
QUICK_DAMAGE = {
    f"broken/{name}"
    for name in (
        "dangling-tag",
        "deleted-revision",
        "empty-repository",
        "index-child-missing",
        "link-is-directory",
        "missing-layer",
        "non-utf8-name",
    )
}
DELETED_CHILDREN_SEEDS = 14
WORLDS = ["deleted-children", *(f"children-seed-{n}" for n in range(DELETED_CHILDREN_SEEDS))]

UNTAGGED = {
    "safe": ReachOptions(delete_untagged=True),
    "no-referrers": ReachOptions(delete_untagged=True, keep_referrers=False),
    "gc-compatible": ReachOptions(delete_untagged=True, collector=Collector.V2_8),
    "gc-compatible=3": ReachOptions(delete_untagged=True, collector=Collector.V3),
}
ORPHANS = {
    "plain": ReachOptions(),
    "plain gc-compatible": ReachOptions(collector=Collector.V2_8),
    "plain gc-compatible=3": ReachOptions(collector=Collector.V3),
    "-m": ReachOptions(delete_untagged=True),
    "-m no-referrers": ReachOptions(delete_untagged=True, keep_referrers=False),
    "-m gc-compatible": ReachOptions(delete_untagged=True, collector=Collector.V2_8),
    "-m gc-compatible=3": ReachOptions(delete_untagged=True, collector=Collector.V3),
}
POLICIES = {
    "delete-untagged": Policy(delete_untagged=True, min_age=timedelta(0)),
    "orphans only": Policy(min_age=timedelta(0)),
    "keep-last 1": Policy(keep_last=1, delete_untagged=True, min_age=timedelta(0), prune_empty_repositories=True),
    "no-referrers": Policy(delete_untagged=True, keep_referrers=False, min_age=timedelta(0)),
}
WRITTEN = frozenset({"mtime", "pushed_at", "last_push", "started_at", "age", "mtime_ns", "id", "objects", "multipart"})
"""What depends on when a registry wrote its tree, the ids it chose for uploads, and what a plan for a bucket
keeps of its listing (each key's ETag, size and time): two registries given the same pushes differ there only."""


# --------------------------------------------------------------------------
# Trees without their empty directories


def without_empty_directories(root: Path, copy: Path) -> set[str]:
    """Copy ROOT `root` to `copy` and remove every empty directory below its `v2`, deepest first, as a copy
    that skips them would leave it (the remaining directories keep their times); the paths removed, as
    findings name them."""
    shutil.copytree(root, copy, symlinks=True)
    v2 = copy / V2
    times = {Path(d): Path(d).stat().st_mtime_ns for d, _, _ in os.walk(v2)}
    removed: set[str] = set()
    for directory, _, _ in os.walk(v2, topdown=False):
        path = Path(directory)
        if path != v2 and not any(path.iterdir()):
            path.rmdir()
            removed.add(printable(path.relative_to(v2).as_posix()))
    for path, mtime in times.items():
        if path.exists():
            os.utime(path, ns=(mtime, mtime))
    return removed


def test_without_empty_directories_removes_nested_ones_only(tmp_path: Path) -> None:
    v2 = tmp_path / "root" / V2
    (v2 / "a/b/c").mkdir(parents=True)
    (v2 / "d/e").mkdir(parents=True)
    (v2 / "d/file").write_text("x")
    removed = without_empty_directories(tmp_path / "root", tmp_path / "copy")
    assert removed == {"a", "a/b", "a/b/c", "d/e"}
    assert sorted(p.relative_to(tmp_path / "copy" / V2).as_posix() for p in (tmp_path / "copy" / V2).rglob("*")) == [
        "d",
        "d/file",
    ]


# --------------------------------------------------------------------------
# Every answer of the commands, as data


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", date_format="iso", date_unit="ns"))


def _plan(graph: Graph, policy: Policy, now: datetime, storage: Storage | None) -> dict[str, Any]:
    try:
        plan = make_plan(graph, policy, now, storage)
    except PlanRefused as exc:
        return {"refused": str(exc)}
    actions = [{k: str(v) if k == "op" else v for k, v in asdict(action).items()} for action in plan.actions]
    return {"actions": actions, "totals": plan.totals(), "held_back": plan.held_back}


def _difference(graph: Graph, delete_untagged: bool) -> dict[str, Any]:
    """What the warnings about the stock collectors say (cli.render.warn_gc_differences), per version."""
    out: dict[str, Any] = {}
    for collector in Collector:
        diff = gc_difference(graph, delete_untagged=delete_untagged, collector=collector)
        fields = asdict(diff)
        rows = diff.manifest_rows
        fields["manifest_rows"] = sorted(zip(rows["repository"], rows["digest"], strict=True))
        out[collector.value] = fields
    return out


def answers(inv: Inventory, when: datetime, storage: Storage | None = None) -> dict[str, Any]:
    """Every answer of the read-only commands and of `plan`, the inventory scanned at `when` (from `storage`, which
    a plan for a bucket needs)."""
    inv = replace(inv, scanned_at=when)
    graph = Graph(inv)
    out: dict[str, Any] = {}
    for name, options in UNTAGGED.items():
        out[f"untagged {name}"] = _rows(untagged_frame(graph, graph.reach(options)))
    for name, options in ORPHANS.items():
        out[f"orphans {name}"] = _rows(orphan_frame(inv, graph.reach(options)))
    for by in By:
        out[f"report --by {by}"] = _rows(report.report(graph, ReportOptions(by=by)))
    for name, policy in POLICIES.items():
        out[f"plan {name}"] = _plan(graph, policy, when, storage)
    out["warning -m"] = _difference(graph, delete_untagged=True)
    out["warning plain"] = _difference(graph, delete_untagged=False)
    out["check"] = _rows(check(graph))
    return out


REFUSED_THERE = "a plan refused for a finding at an empty directory"


def about_the_rest(answers: dict[str, Any], removed: set[str]) -> dict[str, Any]:
    """`answers` without what they say about the `removed` directories: findings there (and their counts), a
    repository that was nothing else (it is gone with them), a plan refused for such a finding (a tag's
    `link` that is a directory) and the actions there (a repository that the plan would remove)."""
    gone = {f"repositories/{row['repository']}" for row in answers[f"report --by {By.REPOSITORY}"]} & removed
    out = {}
    for name, answer in answers.items():
        if name == "check":
            answer = [f for f in answer if f["path"] not in removed]
        elif name == f"report --by {By.SUMMARY}":
            [row] = answer
            row = dict(row, repositories=row["repositories"] - len(gone))
            for finding in answers["check"]:  # what the summary counts
                if finding["path"] in removed:
                    row[f"findings_{finding['severity']}"] -= 1
            answer = [row]
        elif name == f"report --by {By.REPOSITORY}":
            answer = [row for row in answer if f"repositories/{row['repository']}" not in gone]
        elif name.startswith("plan "):
            if "refused" in answer and any(f" {path}:" in answer["refused"] for path in removed):
                answer = REFUSED_THERE
            elif "actions" in answer:
                # The totals are sums over the actions, and would count those left out.
                actions = [action for action in answer["actions"] if action["path"] not in removed]
                answer = {"actions": actions, "held_back": answer["held_back"]}
        out[name] = answer
    return out


def assert_same_but_empty_directories(whole: dict[str, Any], pruned: dict[str, Any], removed: set[str]) -> None:
    """`pruned` answers as `whole` does, but for what they say about the `removed` directories."""
    whole, pruned = about_the_rest(whole, removed), about_the_rest(pruned, removed)
    assert whole.keys() == pruned.keys()
    # What a plan refused for a finding at an empty directory would do without that finding is not known.
    differ = [name for name, answer in whole.items() if answer is not REFUSED_THERE and pruned[name] != answer]
    assert differ == []


def _scanned(root: Path | str | S3Storage) -> Inventory:
    return scan(root if isinstance(root, S3Storage) else LocalStorage(Path(root) / V2))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=() if name in QUICK_DAMAGE or "/" not in name else pytest.mark.slow)
        for name in FIXTURE_TREES
    ],
)
def test_fixture_trees_answer_alike_without_their_empty_directories(
    name: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    root = shared_root(FIXTURES / f"{name}.tar.gz")
    removed = without_empty_directories(root, tmp_path / "pruned")
    whole = answers(_scanned(root), WHEN)
    assert_same_but_empty_directories(whole, answers(_scanned(tmp_path / "pruned"), WHEN), removed)


def test_a_child_without_its_revision_directory_is_read_and_protected(tmp_path: Path) -> None:
    """The index-child-missing tree: the child's content is known, and kept, with or without its empty directory."""
    root = unpack(BROKEN / "index-child-missing.tar.gz", tmp_path / "whole")
    removed = without_empty_directories(root, tmp_path / "pruned")
    [revision] = [f["path"] for f in json.loads((BROKEN / "index-child-missing.json").read_text())["check_info"]]
    assert revision in removed
    child = "sha256:" + revision.rsplit("/", 1)[1]
    # What the child holds, read from its blob here rather than by the scan.
    doc = json.loads((root / V2 / "blobs/sha256" / child[7:9] / child[7:] / "data").read_bytes())
    held = {doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}
    for tree in (root, tmp_path / "pruned"):
        alone = scan(LocalStorage(tree / V2), ScanOptions(workers=1))
        shared = scan(LocalStorage(tree / V2), ScanOptions(workers=2))
        for table, frame in alone.tables().items():
            pd.testing.assert_frame_equal(getattr(shared, table), frame, check_exact=True, obj=table)
        assert child in set(alone.manifests["digest"])
        assert held <= set(alone.references["digest"][alone.references["manifest"] == child])
        graph = Graph(alone)
        assert held.isdisjoint(orphan_frame(alone, graph.reach(ReachOptions()))["digest"])
        # The stock collector marks the child's manifest blob, not what it holds: its own config is swept.
        assert doc["config"]["digest"] in set(
            orphan_frame(alone, graph.reach(ReachOptions(collector=Collector.V2_8)))["digest"]
        )


def test_a_listed_blob_that_is_no_manifest_is_no_manifest_row(tmp_path: Path) -> None:
    """An index that lists a layer (edited in place): the layer is read as a child, found to be none, and left out."""
    v2 = unpack(FIXTURES / "basic.tar.gz", tmp_path) / V2
    target = (v2 / "repositories/tools/multi/_manifests/tags/v2/current/link").read_text()
    index = v2 / "blobs/sha256" / target[7:9] / target[7:] / "data"
    doc = json.loads(index.read_bytes())
    child = doc["manifests"][0]["digest"]
    child_doc = json.loads((v2 / "blobs/sha256" / child[7:9] / child[7:] / "data").read_bytes())
    layer = child_doc["layers"][-1]["digest"]
    doc["manifests"].append({**doc["manifests"][0], "digest": layer})
    index.write_bytes(json.dumps(doc).encode())
    inv = scan(LocalStorage(v2))
    assert layer not in set(inv.manifests["digest"])
    assert not (inv.findings["kind"] == "corrupt-manifest").any()
    found = check(inv)
    assert set(found[found["kind"] == "index-child-missing"]["digest"]) == {layer}


# --------------------------------------------------------------------------
# Registries whose index children were deleted through the API, on disk and in S3, built once


def _workload(name: str) -> Callable[[Client], None]:
    if name == "deleted-children":
        return lambda client: deleted_children(client, random.Random("storage-audit-empty-dirs"))
    seed = int(name.removeprefix("children-seed-"))
    return lambda client: random_workload(client, seed, delete_children=True)


@dataclass
class World:
    """One workload pushed through the real registry twice: on disk (`root`) and into the bucket (`bucket`)."""

    name: str
    root: Path
    rootdirectory: str
    facts: Facts
    bucket: S3Storage
    scratch: Path
    cached: dict[str, Any]

    def answers(self, which: str) -> dict[str, Any]:
        """The answers on disk (`disk`), on disk without empty directories (`pruned`), in the bucket (`s3`).

        All are audited as of the disk scan's time, which is after every push.
        """
        if which not in self.cached:
            disk = self.inventory("disk")
            storage = self.bucket if which == "s3" else None
            self.cached[which] = answers(self.inventory(which), disk.scanned_at, storage)
        return dict(self.cached[which])

    def inventory(self, which: str) -> Inventory:
        key = f"inventory {which}"
        if key not in self.cached:
            if which == "s3":
                self.cached[key] = _scanned(self.bucket)
            elif which == "pruned":
                self.cached["removed"] = without_empty_directories(self.root, self.scratch / "pruned")
                self.cached[key] = _scanned(self.scratch / "pruned")
            else:
                self.cached[key] = _scanned(self.root)
        inv: Inventory = self.cached[key]
        return inv

    @property
    def removed(self) -> set[str]:
        self.inventory("pruned")
        removed: set[str] = self.cached["removed"]
        return removed


@pytest.fixture(scope="session")
def worlds(s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], World]]:
    """`get(name)`: the workload pushed through the registry on disk and through its s3 driver, once per session."""
    require_registry()
    built: dict[str, World] = {}

    def get(name: str) -> World:
        if name not in built:
            scratch = tmp_path_factory.mktemp(f"world-{name}")
            ledger = Ledger()
            with Registry(scratch / "root", ledger) as reg:
                _workload(name)(reg)
            rootdirectory = f"/empty-dirs/{name}"
            with s3_registry(s3_server, rootdirectory) as reg:
                _workload(name)(reg)
            bucket = S3Storage(bucket_for(s3_server, rootdirectory))
            built[name] = World(name, scratch / "root", rootdirectory, ledger.expected_facts(), bucket, scratch, {})
        return built[name]

    yield get


@pytest.mark.parametrize("name", WORLDS)
def test_registry_trees_answer_alike_without_their_empty_directories(name: str, worlds: Callable[[str], World]) -> None:
    world = worlds(name)
    assert any("/_manifests/revisions/" in path for path in world.removed), "no manifest was deleted"
    assert_same_but_empty_directories(world.answers("disk"), world.answers("pruned"), world.removed)


def _timeless(answer: Any) -> Any:
    """`answer` without what depends on when the registry wrote it, rows in a fixed order."""
    if isinstance(answer, dict):
        return {k: _timeless(v) for k, v in answer.items() if k not in WRITTEN}
    if isinstance(answer, list):
        items = [_timeless(v) for v in answer]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    return answer


@pytest.mark.parametrize("name", WORLDS)
def test_the_same_registry_on_disk_and_in_s3_answers_alike(name: str, worlds: Callable[[str], World]) -> None:
    world = worlds(name)
    on_disk, in_bucket = world.answers("disk"), world.answers("s3")
    for side in (on_disk, in_bucket):
        # The newest tags are the last pushed: an order the two registries wrote down with their own clocks
        # (S3 in whole seconds, where the tag name breaks ties).
        del side["plan keep-last 1"]
    removed = world.removed
    # The bucket has no empty directory: what is said about them on disk is all that differs.
    assert {f["kind"] for f in on_disk["check"] if f["path"] in removed} <= {"deleted-revision"}
    assert_same_but_empty_directories(_timeless(on_disk), _timeless(in_bucket), removed)


def test_the_listing_waits_for_the_gets_that_lists_start_meanwhile() -> None:
    """A list's GET starts its children's GETs: reading the listing ends once those are done too."""
    settings = S3Settings(region="us-east-1", endpoint="http://127.0.0.1:9", access_key="k", secret_key="s")
    early = _EarlyManifests(S3Storage(S3Bucket(S3Location("registry", ""), settings, env={})), _Index())
    done: list[str] = []

    async def child() -> None:
        await asyncio.sleep(0.01)
        done.append("child")

    async def index() -> None:
        await asyncio.sleep(0)
        early.tasks.append(asyncio.create_task(child()))
        done.append("index")

    async def listing() -> list[str]:
        early.tasks.append(asyncio.create_task(index()))
        await early.finish()
        return list(done)

    assert asyncio.run(listing()) == ["index", "child"]


@pytest.mark.parametrize("concurrency", [1, None])
def test_a_bucket_fetches_every_manifest_while_it_is_listed(
    concurrency: int | None, worlds: Callable[[str], World], s3_server: SeaweedS3
) -> None:
    """Children known only from an index are fetched as soon as the index is, like those a revision link names.

    One GET at a time, most of them run after the listing: the index's among them, which starts its children's.
    """
    world = worlds("deleted-children")
    settings = {} if concurrency is None else {"concurrency": concurrency}
    storage = S3Storage(bucket_for(s3_server, world.rootdirectory, **settings))
    assert storage.tree.files  # listed, and the manifests fetched meanwhile
    fetched = set(storage._known)
    inv = scan(storage)
    linked = set(inv.revisions["target"][inv.revisions["linked"]].dropna())
    assert len(linked) < len(inv.manifests)  # some manifests are only listed by an index
    assert {path_for(BlobData(Digest.parse(d))) for d in inv.manifests["digest"]} <= fetched


# --------------------------------------------------------------------------
# What the engine keeps of deleted children, from the ledger, and what the stock collector does


HOLDING = ("config", "layer", "child", "fslayer")


@dataclass(frozen=True)
class Expected:
    """From the pushes alone: the orphans of plain `orphans` and of `orphans -m`, and what protection keeps."""

    plain: set[str]
    delete_untagged: set[str]
    protected_plain: set[str]


def expected(facts: Facts) -> Expected:
    linked = {(r["repository"], r["digest"]) for r in facts["revisions"] if r["linked"]}
    children: dict[str, list[str]] = {}
    holds: dict[str, set[str]] = {m["digest"]: {m["digest"]} for m in facts["manifests"]}
    subjects = {m["digest"]: m["subject"] for m in facts["manifests"] if m["subject"]}
    for ref in facts["references"]:
        if ref["ref_type"] == "child":
            children.setdefault(ref["manifest"], []).append(ref["digest"])
        if ref["ref_type"] in HOLDING:
            holds[ref["manifest"]].add(ref["digest"])
    blobs = {b["digest"] for b in facts["blobs"]}

    def held(kept: set[tuple[str, str]]) -> set[str]:
        return set().union(*(holds.get(d, {d}) for _, d in kept))

    def protected(kept: set[tuple[str, str]]) -> set[str]:
        """A child of a kept index without its revision link keeps what its content holds, recursively."""
        out: set[str] = set()
        seen: set[str] = set()
        todo = [c for repo, d in kept for c in children.get(d, ()) if (repo, c) not in linked]
        while todo:
            digest = todo.pop()
            if digest not in seen:
                seen.add(digest)
                out |= holds.get(digest, {digest})
                todo += children.get(digest, ())
        return out

    kept = {(t["repository"], t["digest"]) for t in facts["tags"]} & linked
    while True:
        more = {(repo, c) for repo, d in kept for c in children.get(d, ()) if (repo, c) in linked}
        more |= {(repo, d) for repo, d in linked if (repo, subjects.get(d)) in kept}
        if more <= kept:
            break
        kept |= more
    return Expected(
        plain=blobs - held(linked) - protected(linked),
        delete_untagged=blobs - held(kept) - protected(kept),
        protected_plain=protected(linked) - held(linked),
    )


@pytest.mark.parametrize("name", WORLDS)
def test_deleted_children_keep_their_blobs_and_gc_compatible_is_the_collector(
    name: str, worlds: Callable[[str], World]
) -> None:
    world = worlds(name)
    want = expected(world.facts)
    _, plain_gc, _ = parse_gc_output(garbage_collect(world.root, dry_run=True))
    stock_manifests, stock_gc, _ = parse_gc_output(garbage_collect(world.root, dry_run=True, delete_untagged=True))
    registry_3 = mark_and_sweep(world.root / V2, remove_untagged=True)
    for which in ("disk", "pruned", "s3"):
        got = world.answers(which)
        assert {row["digest"] for row in got["orphans plain"]} == want.plain, which
        assert {row["digest"] for row in got["orphans -m"]} == want.delete_untagged, which
        # The stock collector reads no empty directory either: --gc-compatible is what it would delete.
        assert {row["digest"] for row in got["orphans plain gc-compatible"]} == plain_gc, which
        assert {row["digest"] for row in got["orphans -m gc-compatible"]} == stock_gc, which
        assert {(r["repository"], r["digest"]) for r in got["untagged gc-compatible"]} == stock_manifests, which
        # Plain garbage-collect sweeps what the deleted children held; the warning counts exactly that.
        assert plain_gc - want.plain == want.protected_plain, which
        assert got["warning plain"]["2.8"]["blobs"] == len(want.protected_plain), which
        # Registry 3, as its model reads the tree on disk: the same on every copy.
        assert {row["digest"] for row in got["orphans plain gc-compatible=3"]} == plain_gc, which
        assert {row["digest"] for row in got["orphans -m gc-compatible=3"]} == registry_3.blobs, which
        assert {(r["repository"], r["digest"]) for r in got["untagged gc-compatible=3"]} == registry_3.manifests
        assert got["warning plain"]["3"]["blobs"] == len(want.protected_plain), which
    # Every world has children deleted that plain garbage-collect would break further.
    assert len(want.protected_plain) >= (10 if name == "deleted-children" else 1)


def test_the_warning_names_the_blobs_kept_for_deleted_children(worlds: Callable[[str], World]) -> None:
    world = worlds("deleted-children")
    protected = len(expected(world.facts).protected_plain)
    assert world.removed
    for root in (world.root, world.scratch / "pruned"):
        result = cli("orphans", str(root), "-f", "json")
        assert result.exit_code == 0, result.output
        assert f"would also delete {protected} blobs" in result.stderr
        assert "an index child without a revision link" in result.stderr


def test_a_snapshot_answers_as_its_tree(worlds: Callable[[str], World], tmp_path: Path) -> None:
    world = worlds("deleted-children")
    assert world.removed
    for root in (world.root, world.scratch / "pruned"):
        snapshot = tmp_path / root.name
        result = cli("scan", str(root), "-o", str(snapshot), "-q")
        assert result.exit_code == 0, result.output
        for args in (
            ["orphans", "-f", "json", "-q"],
            ["orphans", "-m", "-f", "json", "-q"],
            ["untagged", "-f", "json"],
        ):
            on_tree = cli(args[0], str(root), *args[1:])
            on_snapshot = cli(args[0], str(snapshot), *args[1:])
            assert on_tree.exit_code == on_snapshot.exit_code == 0, on_snapshot.output
            assert on_snapshot.stdout == on_tree.stdout

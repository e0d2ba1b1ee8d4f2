"""Differential tests: storage-audit's answers against what the reference registry's garbage-collect does."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storage_audit.analysis import collect
from storage_audit.analysis.options import Collector
from storage_audit.analysis.reach import ReachOptions
from storage_audit.cleanup.plan import BLOCKING_KINDS, Op, Plan, PlanRefused, Policy, make_plan
from storage_audit.inventory.frames import isin
from storage_audit.inventory.tables import Inventory
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage
from tests.conftest import cli, fixture_builder
from tests.facts import Facts
from tests.gc3_model import DryRun, mark_and_sweep
from tests.registry_harness import (
    Client,
    Ledger,
    Registry,
    garbage_collect,
    parse_gc_output,
    pull_all,
    require_registry,
)
from tests.workloads import EDGE_CASES, deleted_children, random_workload

V2 = Path("docker/registry/v2")
# Reference types whose target a kept manifest needs in order to be pulled (a `subject` is not one).
HOLDING = ("config", "layer", "child", "fslayer")
SEEDS_ENV = "STORAGE_AUDIT_SEEDS"


def _extra_seeds(spec: str) -> list[int]:
    """`STORAGE_AUDIT_SEEDS` as comma-separated seeds and inclusive ranges: `100,200-299`."""
    seeds: list[int] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        low, _, high = item.partition("-")
        seeds += range(int(low), int(high or low) + 1)
    return seeds


SEEDS = sorted(set(range(20)) | set(_extra_seeds(os.environ.get(SEEDS_ENV, ""))))


def _scenario(name: str) -> Callable[[Client], None]:
    def push(client: Client) -> None:
        builder = fixture_builder()
        if name in builder.SCENARIOS:
            builder.SCENARIOS[name](client, random.Random(f"{builder.SEED}:{name}"))
        else:
            EDGE_CASES[name](client, random.Random(f"storage-audit-differential:{name}"))

    return push


def _seed(seed: int) -> Callable[[Client], None]:
    return lambda client: random_workload(client, seed)


CLI_SEEDS = ["seed-0", "seed-1", "seed-2"]
CASES: dict[str, Callable[[Client], None]] = {
    **{name: _scenario(name) for name in ("basic", "multiarch", "referrers", "churn", *EDGE_CASES)},
    **{f"seed-{seed}": _seed(seed) for seed in SEEDS},
}


# --------------------------------------------------------------------------
# What the ledger says, computed without storage-audit


@dataclass(frozen=True)
class Oracle:
    """The stored state replayed from the ledger, and what each collector should keep of it."""

    linked: frozenset[tuple[str, str]]
    tagged: frozenset[tuple[str, str]]
    children: dict[str, tuple[str, ...]]
    subjects: dict[str, str]
    holds: dict[str, frozenset[str]]

    @classmethod
    def from_facts(cls, facts: Facts) -> Oracle:
        linked = frozenset((r["repository"], r["digest"]) for r in facts["revisions"] if r["linked"])
        children: dict[str, list[str]] = {}
        holds: dict[str, set[str]] = {}
        for ref in facts["references"]:
            if ref["ref_type"] == "child":
                children.setdefault(ref["manifest"], []).append(ref["digest"])
            if ref["ref_type"] in HOLDING:
                holds.setdefault(ref["manifest"], set()).add(ref["digest"])
        return cls(
            linked=linked,
            tagged=frozenset((t["repository"], t["digest"]) for t in facts["tags"]),
            children={m: tuple(c) for m, c in children.items()},
            subjects={m["digest"]: m["subject"] for m in facts["manifests"] if m["subject"]},
            holds={m["digest"]: frozenset({m["digest"], *holds.get(m["digest"], ())}) for m in facts["manifests"]},
        )

    def stock_untagged(self) -> set[tuple[str, str]]:
        return set(self.linked - self.tagged)

    def safe_kept(self) -> set[tuple[str, str]]:
        """Tagged revisions, then, within each repository, the children of kept indexes and referrers of kept ones."""
        kept = set(self.tagged & self.linked)
        while True:
            more = {(repo, c) for repo, d in kept for c in self.children.get(d, ()) if (repo, c) in self.linked}
            more |= {(repo, d) for repo, d in self.linked if (repo, self.subjects.get(d)) in kept}
            if more <= kept:
                return kept
            kept |= more

    def kept_children(self, revisions: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Those of `revisions` that a kept index of their repository lists; the rest are kept as referrers."""
        listed = {(repo, c) for repo, d in self.safe_kept() for c in self.children.get(d, ())}
        return revisions & listed

    def tag_closure(self, repo: str, digest: str) -> set[str]:
        """The manifests pulling `digest` from `repo` fetches: itself and its children, recursively."""
        seen = {digest}
        todo = [digest]
        while todo:
            for child in self.children.get(todo.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return seen


# --------------------------------------------------------------------------
# One build per case, shared by every test of it


@dataclass
class Built:
    name: str
    root: Path
    facts: Facts
    tags: dict[tuple[str, str], str]
    oracle: Oracle
    inv: Inventory
    plain_blobs: set[str]
    stock_manifests: set[tuple[str, str]]
    stock_blobs: set[str]
    scratch: Path
    answers: dict[tuple[str, ReachOptions], set[Any]] = field(default_factory=dict)

    def untagged(self, options: ReachOptions) -> set[tuple[str, str]]:
        """`collect.untagged` as (repository, digest) pairs, computed once per options."""
        key = ("untagged", options)
        if key not in self.answers:
            frame = collect.untagged(self.inv, options)
            self.answers[key] = set(zip(frame["repository"], frame["digest"], strict=True))
        return set(self.answers[key])

    def orphans(self, options: ReachOptions) -> set[str]:
        """`collect.orphans` as digests, computed once per options."""
        key = ("orphans", options)
        if key not in self.answers:
            self.answers[key] = set(collect.orphans(self.inv, options)["digest"])
        return set(self.answers[key])


def _build(name: str, push: Callable[[Client], None], base: Path) -> Built:
    """The registry `push` writes, scanned, with the stock collector's (2.8) dry runs and the ledger's facts."""
    root = base / "root"
    ledger = Ledger()
    with Registry(root, ledger) as reg:
        push(reg)
    plain_manifests, plain_blobs, _ = parse_gc_output(garbage_collect(root, dry_run=True))
    assert plain_manifests == set()
    stock_manifests, stock_blobs, _ = parse_gc_output(garbage_collect(root, dry_run=True, delete_untagged=True))
    facts = ledger.expected_facts()
    return Built(
        name=name,
        root=root,
        facts=facts,
        tags={(t["repository"], t["tag"]): t["digest"] for t in facts["tags"]},
        oracle=Oracle.from_facts(facts),
        inv=scan(LocalStorage(root / V2)),
        plain_blobs=plain_blobs,
        stock_manifests=stock_manifests,
        stock_blobs=stock_blobs,
        scratch=base,
    )


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    require_registry()
    name: str = request.param
    base = tmp_path_factory.mktemp(name)
    yield _build(name, CASES[name], base)
    shutil.rmtree(base, ignore_errors=True)


STOCK = ReachOptions(delete_untagged=True, collector=Collector.V2_8)
SAFE = ReachOptions(delete_untagged=True)


# --------------------------------------------------------------------------
# Dry runs


def test_orphans_equal_plain_gc(built: Built) -> None:
    assert built.orphans(ReachOptions()) == built.plain_blobs


def test_gc_compatible_equals_delete_untagged(built: Built) -> None:
    # The oracle is checked against the collector too, so that the safe-mode test below stands on it.
    assert built.oracle.stock_untagged() == built.stock_manifests
    assert built.untagged(STOCK) == built.stock_manifests
    assert built.orphans(STOCK) == built.stock_blobs


def test_safe_mode_keeps_exactly_index_children_and_referrers(built: Built) -> None:
    oracle = built.oracle
    extra = oracle.safe_kept() - oracle.tagged
    stock_untagged, safe_untagged = built.untagged(STOCK), built.untagged(SAFE)
    assert safe_untagged <= stock_untagged
    assert stock_untagged - safe_untagged == extra
    children = oracle.kept_children(extra)
    assert all((repo, oracle.subjects.get(digest)) in oracle.safe_kept() for repo, digest in extra - children)

    stock_orphans, safe_orphans = built.orphans(STOCK), built.orphans(SAFE)
    assert safe_orphans <= stock_orphans
    held = set().union(*(oracle.holds[d] for _, d in extra))
    assert stock_orphans - safe_orphans <= held


def test_gc_difference_counts_children_and_referrers(built: Built) -> None:
    """The CLI's warning names what kind of manifests the stock collector would also delete."""
    oracle = built.oracle
    extra = oracle.safe_kept() - oracle.tagged
    children = oracle.kept_children(extra)
    extra_blobs = built.orphans(STOCK) - built.orphans(SAFE)
    diff = collect.gc_difference(built.inv)
    counts = (diff.index_children, diff.referrers, diff.other_manifests, diff.blobs)
    assert counts == (len(children), len(extra - children), 0, len(extra_blobs))


# Every CLI call scans again; the named cases and a few seeds cover its paths.
@pytest.mark.parametrize("built", [name for name in CASES if not name.startswith("seed-")] + CLI_SEEDS, indirect=True)
def test_cli_agrees_with_the_collector(built: Built) -> None:
    root = str(built.root)

    result = cli("orphans", root, "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    assert {row["digest"] for row in json.loads(result.stdout)} == built.plain_blobs

    result = cli("orphans", root, "-m", "--gc-compatible", "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    assert {row["digest"] for row in json.loads(result.stdout)} == built.stock_blobs

    result = cli("untagged", root, "--gc-compatible", "-f", "csv", "-q")
    assert result.exit_code == 0, result.output
    rows = csv.DictReader(io.StringIO(result.stdout))
    assert {(row["repository"], row["digest"]) for row in rows} == built.stock_manifests
    assert result.stderr == ""
    report_agrees(built.root, "--gc-compatible", built.stock_manifests, built.plain_blobs, built.stock_blobs)

    # Without -q the safe mode says on stderr, and only there, what the stock collector would also delete.
    result = cli("untagged", root, "-f", "csv")
    assert result.exit_code == 0, result.output
    extra = built.oracle.safe_kept() - built.oracle.tagged
    extra_blobs = built.stock_blobs - built.orphans(SAFE)
    warning = re.search(
        r"registry 2\.8's (?:and 3's )?`garbage-collect --delete-untagged` would also delete (\d+) manifests? .* and "
        r"(\d+) blobs?",
        result.stderr,
    )
    if extra or extra_blobs:
        assert warning is not None, result.stderr
        assert (int(warning[1]), int(warning[2])) == (len(extra), len(extra_blobs))
    else:
        assert warning is None, result.stderr
    assert "warning" not in result.stdout
    rows = csv.DictReader(io.StringIO(result.stdout))
    assert {(row["repository"], row["digest"]) for row in rows} == built.stock_manifests - extra


# --------------------------------------------------------------------------
# Registry 3, against a model of its MarkAndSweep written from its source (tests/gc3_model.py): no registry 3
# binary runs here. The same real-registry trees as above.

V3 = ReachOptions(delete_untagged=True, collector=Collector.V3)
PLAIN_V3 = ReachOptions(collector=Collector.V3)


def agrees_with_registry_3(built: Built) -> DryRun:
    """`--gc-compatible=3` answers as the model does, with and without `--delete-untagged`; the model's dry run."""
    model = mark_and_sweep(built.root / V2, remove_untagged=True)
    plain = mark_and_sweep(built.root / V2, remove_untagged=False)
    # The model reads the tree as the real 2.8 collector does: without -m, both mark every revision's references.
    assert plain.manifests == set() and plain.blobs == built.plain_blobs
    assert built.orphans(PLAIN_V3) == plain.blobs
    assert built.untagged(V3) == model.manifests
    assert built.orphans(V3) == model.blobs
    return model


def test_gc_compatible_3_equals_the_model_of_registry_3(built: Built) -> None:
    model = agrees_with_registry_3(built)
    oracle = built.oracle
    untagged = oracle.linked - oracle.tagged
    assert model.manifests <= untagged
    # Registry 3 keeps the children of tagged indexes (which 2.8 deletes), and every revision whose digest a tag
    # names in any repository.
    pulled = {(repo, child) for repo, digest in oracle.tagged for child in oracle.tag_closure(repo, digest)}
    assert not pulled & model.manifests
    tagged_anywhere = {digest for _, digest in oracle.tagged}
    assert not {(repo, digest) for repo, digest in untagged if digest in tagged_anywhere} & model.manifests
    # It still deletes an untagged referrer that no manifest lists and no tag names.
    listed = set().union(*(oracle.holds[d] - {d} for d in oracle.holds))
    loose = {(r, d) for r, d in untagged if d in oracle.subjects and d not in listed | tagged_anywhere}
    assert loose <= model.manifests
    if built.name in ("referrers", "referrer-chains"):
        assert loose
    if built.name == "shared-manifests":
        # Untagged in shared/dst, tagged (or listed by a tagged list) in shared/src: 2.8 deletes them, 3 does not.
        assert {(r, d) for r, d in built.stock_manifests if r == "shared/dst"} - model.manifests
    if built.name == "marked-elsewhere":
        # The image walk/early's bundle carries is marked there first and never descended into: it stays, and its
        # config and layers go.
        (index,) = (d for r, d in oracle.tagged if r == "walk/late")
        (image,) = oracle.children[index]
        assert ("walk/late", image) not in model.manifests
        assert oracle.holds[image] - {image} <= model.blobs


@pytest.fixture(scope="module")
def gone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Index children deleted by digest (an index child absent from its repository), beside kept copies."""
    require_registry()
    base = tmp_path_factory.mktemp("deleted-children")
    rng = random.Random("storage-audit-differential:deleted-children")
    yield _build("deleted-children", lambda client: deleted_children(client, rng), base)
    shutil.rmtree(base, ignore_errors=True)


def test_both_collectors_where_index_children_are_gone(gone: Built) -> None:
    assert gone.untagged(STOCK) == gone.stock_manifests
    assert gone.orphans(STOCK) == gone.stock_blobs
    model = agrees_with_registry_3(gone)
    # gone/dst's tagged copy of the image gone/src's list lost is walked first: nothing of it is swept.
    (mirror,) = (d for r, d in gone.oracle.tagged if r == "gone/dst")
    assert not gone.oracle.holds[mirror] & model.blobs


@pytest.mark.parametrize(
    "built", ["multiarch", "referrers", "shared-manifests", "marked-elsewhere", "seed-0"], indirect=True
)
def test_cli_answers_as_registry_3(built: Built) -> None:
    root = str(built.root)
    model = mark_and_sweep(built.root / V2, remove_untagged=True)

    result = cli("untagged", root, "--gc-compatible=3", "-f", "csv", "-q")
    assert result.exit_code == 0, result.output
    assert {(row["repository"], row["digest"]) for row in csv.DictReader(io.StringIO(result.stdout))} == model.manifests
    assert result.stderr == ""

    result = cli("orphans", root, "-m", "--gc-compatible=3", "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    assert {row["digest"] for row in json.loads(result.stdout)} == model.blobs
    plain = mark_and_sweep(built.root / V2, remove_untagged=False)
    report_agrees(built.root, "--gc-compatible=3", model.manifests, plain.blobs, model.blobs)

    # The safe answer's warning about registry 3 counts what it alone would delete, and names no index child.
    result = cli("untagged", root, "-f", "csv")
    assert result.exit_code == 0, result.output
    extra = built.oracle.safe_kept() & model.manifests
    extra_blobs = model.blobs - built.orphans(SAFE)
    line = re.search(
        r"^warning: registry (?:2\.8's and )?3's `garbage-collect --delete-untagged` would also delete "
        r"(?:(\d+) manifests? \((.*)\) and )?(\d+) blobs? .*$",
        result.stderr,
        re.M,
    )
    if extra or extra_blobs:
        assert line is not None, result.stderr
        assert (int(line[1] or 0), int(line[3])) == (len(extra), len(extra_blobs))
        assert "2.8's and" in line[0] or "children" not in line[0]
    else:
        assert line is None, result.stderr


# --------------------------------------------------------------------------
# Real collections on copies, then pulls


def report_agrees(root: Path, flag: str, manifests: set[tuple[str, str]], plain: set[str], swept: set[str]) -> None:
    """`report FLAG` counts what a collector's dry runs list: `manifests` and `swept` with --delete-untagged,
    `plain` without; sizes are read from the tree."""

    def size(digests: set[str]) -> int:
        return sum((root / V2 / "blobs/sha256" / d[7:9] / d[7:] / "data").stat().st_size for d in digests)

    def rows(*args: str) -> Any:
        result = cli("report", str(root), flag, "-f", "json", "-q", *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    summary = rows()
    assert (summary["untagged_manifests"], summary["orphan_blobs"]) == (len(manifests), len(plain))
    assert (summary["orphan_bytes"], summary["untagged_reclaimable_bytes"]) == (size(plain), size(swept - plain))
    assert {(r["repository"], r["digest"]) for r in rows("--by", "manifest") if not r["reachable"]} == manifests
    assert sum(r["untagged_manifests"] for r in rows("--by", "repository")) == len(manifests)
    assert {r["digest"] for r in rows("--by", "blob") if r["orphan"]} == plain


def collected_copy(built: Built, delete_untagged: bool) -> Path:
    """A copy of the tree after a real `garbage-collect` (the registry is not serving it)."""
    copy = built.scratch / ("gc-m" if delete_untagged else "gc")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(built.root, copy, symlinks=True)
    garbage_collect(copy, dry_run=False, delete_untagged=delete_untagged)
    return copy


def blobs_on_disk(root: Path) -> set[str]:
    return set(scan(LocalStorage(root / V2)).blobs["digest"])


def pulls_after(copy: Path) -> dict[tuple[str, str], list[str]]:
    with Registry(copy) as reg:
        return pull_all(reg)


def test_plain_gc_keeps_every_blob_orphans_calls_live(built: Built) -> None:
    copy = collected_copy(built, delete_untagged=False)
    live = set(built.inv.blobs["digest"]) - built.orphans(ReachOptions())
    assert blobs_on_disk(copy) == live
    pulls = pulls_after(copy)
    assert set(pulls) == set(built.tags)
    assert {tag: problems for tag, problems in pulls.items() if problems} == {}


def test_stock_delete_untagged_breaks_what_safe_mode_keeps(built: Built) -> None:
    oracle = built.oracle
    extra = oracle.safe_kept() - oracle.tagged
    copy = collected_copy(built, delete_untagged=True)
    assert blobs_on_disk(copy) == set(built.inv.blobs["digest"]) - built.orphans(STOCK)
    with Registry(copy) as reg:
        pulls = pull_all(reg)
        # Every manifest the safe mode keeps beyond the collector is gone by digest: no client can fetch it.
        still_there = {(repo, digest) for repo, digest in extra if reg.manifest_exists(repo, digest)}
    assert still_there == set()
    assert set(pulls) == set(built.tags)
    # A tag fails exactly when pulling it needs an index child the safe mode kept and the collector deleted.
    failing = {tag for tag, problems in pulls.items() if problems}
    broken = {(r, t) for (r, t), d in built.tags.items() if {(r, c) for c in oracle.tag_closure(r, d)} & extra}
    assert failing == broken
    if built.name in ("basic", "multiarch", "nested-index", "referrer-chains"):
        assert failing, "the stock collector no longer breaks tagged multi-platform images"


# --------------------------------------------------------------------------
# plan --gc-compatible: the collector's deletions as a plan, what storage-audit keeps marked refused

FAR = datetime(2100, 1, 1, tzinfo=UTC)
"""When the plans below are made: after every time in the trees, so that no grace period holds anything back."""


def gc_plan(built: Built, collector: Collector) -> tuple[Plan, Plan] | None:
    """The plan `--delete-untagged --gc-compatible=COLLECTOR --min-age 0s` and the safe plan of the same rules;
    None where findings make planning refuse (as both plans then do)."""
    policy = Policy(delete_untagged=True, min_age=timedelta(0), collector=collector)
    safe = dataclasses.replace(policy, collector=None)
    if isin(built.inv.findings["kind"], BLOCKING_KINDS).any():
        for rules in (policy, safe):
            with pytest.raises(PlanRefused):
                make_plan(built.inv, rules, FAR)
        return None
    return make_plan(built.inv, policy, FAR), make_plan(built.inv, safe, FAR)


def deletions(plan: Plan) -> tuple[set[tuple[str | None, str | None]], set[str | None]]:
    revisions = {(a.repository, a.digest) for a in plan.actions if a.op is Op.REMOVE_REVISION}
    return revisions, {a.digest for a in plan.actions if a.op is Op.REMOVE_BLOB}


def refused_exactly_what_the_safe_plan_leaves(plan: Plan, safe: Plan) -> None:
    taken = {a.path for a in safe.actions}
    assert {a.path for a in plan.actions if a.refused is None} == {a.path for a in plan.actions} & taken
    assert all(a.refused.endswith("apply refuses it") for a in plan.actions if a.refused is not None)


def test_plan_gc_compatible_deletes_what_the_collector_deletes(built: Built) -> None:
    plans = gc_plan(built, Collector.V2_8)
    if plans is None:
        return
    plan, safe = plans
    # What the real 2.8.2 collector's dry run with --delete-untagged lists, no more, no less.
    assert deletions(plan) == (built.stock_manifests, built.stock_blobs)
    refused_exactly_what_the_safe_plan_leaves(plan, safe)
    oracle = built.oracle
    extra = oracle.safe_kept() - oracle.tagged
    refused = {(a.repository, a.digest): a.refused or "" for a in plan.actions if a.op is Op.REMOVE_REVISION}
    refused = {key: why for key, why in refused.items() if why}
    assert set(refused) == extra
    children = oracle.kept_children(extra)
    assert all(refused[key].startswith("child of index sha256:") for key in children)
    assert all(refused[key].startswith("referrer ") for key in extra - children)
    if built.name == "multiarch":
        assert children


def test_plan_gc_compatible_3_deletes_what_registry_3_deletes(built: Built) -> None:
    plans = gc_plan(built, Collector.V3)
    if plans is None:
        return
    plan, safe = plans
    model = mark_and_sweep(built.root / V2, remove_untagged=True)
    assert deletions(plan) == (model.manifests, model.blobs)
    refused_exactly_what_the_safe_plan_leaves(plan, safe)

"""The analysis graph: one build per command, and one rule for what broken references keep, on real registry trees."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from storage_audit.analysis.graph import Graph, closure
from tests.conftest import cli, unpack
from tests.registry_harness import (
    Client,
    Ledger,
    Pushed,
    Registry,
    canonical_json,
    garbage_collect,
    parse_gc_output,
    require_registry,
    sha256,
)

V2 = Path("docker/registry/v2")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
POLICY = FIXTURES.parent / "docs" / "examples" / "retention.yaml"


# --------------------------------------------------------------------------
# One graph per command


COMMANDS = [
    ["scan", "{root}", "-o", "{snapshot}", "-q"],
    *(["report", "{root}", "--by", by, "-f", "json", "-q"] for by in ("summary", "repository", "tag", "manifest")),
    *(["report", "{root}", "--by", by, "-f", "json", "-q"] for by in ("blob", "upload")),
    ["report", "{root}", "--by", "blob", "--repository", "team/*", "-f", "json", "-q"],
    ["report", "{root}", "--format", "html", "-o", "{snapshot}.html", "-q"],
    ["untagged", "{root}", "-f", "json"],
    ["untagged", "{root}", "--gc-compatible", "-f", "json"],
    ["orphans", "{root}", "-f", "json"],
    ["orphans", "{root}", "-m", "-f", "json"],
    ["check", "{root}", "-f", "json", "-q"],
    ["report", "{root}", "-f", "prometheus", "-q"],
    ["report", "{snapshot}", "-f", "prometheus", "-q"],
    ["diff", "{snapshot}", "{root}", "-f", "json", "-q"],
    ["plan", "{root}", "--delete-untagged", "--min-age", "0s", "-q"],
    ["plan", "{root}", "--policy", str(POLICY), "--explain", "-f", "json", "-q"],
    ["report", "{root}", "--format", "html", "--policy", str(POLICY), "-o", "{snapshot}.html", "-q"],
]


@pytest.mark.slow
@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a[:1] + a[2:4]) for a in COMMANDS])
def test_each_command_builds_one_graph(argv: list[str], tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    root = shared_root(FIXTURES / "multiarch.tar.gz")
    args = [a.format(root=root, snapshot=tmp_path / "snap") for a in argv]
    if "{snapshot}" in argv[1]:
        assert cli("scan", str(root), "-o", str(tmp_path / "snap"), "-q")[0] == 0
    before = Graph.builds
    code, out, err = cli(*args)
    assert code in (0, 3), err
    assert out or argv[0] == "scan" or Path(f"{tmp_path / 'snap'}.html").stat().st_size
    assert Graph.builds - before == 1


@pytest.mark.slow
def test_a_diff_builds_one_graph_per_tree_and_none_for_snapshots(
    tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    root = shared_root(FIXTURES / "multiarch.tar.gz")
    assert cli("scan", str(root), "-o", str(tmp_path / "snap"), "-q")[0] == 0
    for sides, builds in (((root, root), 2), ((tmp_path / "snap", tmp_path / "snap"), 0)):
        for by in ("repository", "tag", "blob"):
            before = Graph.builds
            code, out, err = cli("diff", *map(str, sides), "--by", by, "-f", "json", "-q")
            assert code == 0 and json.loads(out) == [], err
            assert Graph.builds - before == builds


def test_a_report_from_a_snapshot_builds_none(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    root = shared_root(FIXTURES / "multiarch.tar.gz")
    assert cli("scan", str(root), "-o", str(tmp_path / "snap"), "-q")[0] == 0
    before = Graph.builds
    code, out, _ = cli("report", str(tmp_path / "snap"), "--by", "repository", "-f", "json")
    assert code == 0 and json.loads(out)
    assert Graph.builds == before


@pytest.mark.slow
def test_an_html_report_from_a_snapshot_builds_one(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    # The page needs untagged, orphans and check besides the stored views: one graph of the snapshot's tables.
    root = shared_root(FIXTURES / "multiarch.tar.gz")
    assert cli("scan", str(root), "-o", str(tmp_path / "snap"), "-q")[0] == 0
    before = Graph.builds
    code, _, err = cli("report", str(tmp_path / "snap"), "--format", "html", "-o", str(tmp_path / "r.html"), "-q")
    assert code == 0, err
    assert (tmp_path / "r.html").stat().st_size > 0
    assert Graph.builds - before == 1


def test_the_closure_follows_every_root_through_nesting_and_shared_nodes() -> None:
    # 0 -> 1 -> 2, 0 -> 3 -> 2 (a diamond), 4 -> 5, and 6 with no edges.
    src, dst = np.array([0, 1, 0, 3, 4, 0]), np.array([1, 2, 3, 2, 5, 1])
    pairs = closure(np.array([0, 1, 1, 2, 3]), np.array([0, 4, 6, 2, 3]), src, dst, 7)
    got = set(zip(pairs["root"].tolist(), pairs["node"].tolist(), strict=True))
    assert got == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6), (2, 2), (3, 3), (3, 2)}
    assert len(pairs) == len(got)


# --------------------------------------------------------------------------
# Broken references on a tree built through the registry


@dataclass
class Tree:
    root: Path
    sizes: dict[str, int]  # every blob pushed: digest -> bytes
    keeps: dict[str, set[str]]  # repository -> blobs it keeps alive, protected ones included
    protected: dict[str, set[str]]  # repository -> blobs only its broken references keep
    untagged_only: dict[str, set[str]]  # repository -> blobs only its untagged revisions (and their lists) keep
    images: dict[tuple[str, str], set[str]]  # dangling tag -> the blobs of the image it names
    orphans: set[str]  # blobs nothing references
    stock_plain_extra: set[str]  # blobs plain `garbage-collect` deletes that a dangling tag or index names

    def bytes(self, blobs: set[str]) -> int:
        return sum(self.sizes[b] for b in blobs)


class Pusher:
    """Pushes images through the registry and remembers every blob with its size."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.sizes: dict[str, int] = {}
        self.count = 0

    def blob(self, name: str) -> bytes:
        self.count += 1
        return f"{name} layer {self.count} ".encode() * (50 + 37 * self.count)

    def image(self, repo: str, layers: list[bytes], tags: tuple[str, ...] = ()) -> tuple[Pushed, set[str]]:
        """Push an image; it, and every blob it holds (manifest, config, layers)."""
        self.count += 1
        config = canonical_json({"architecture": "amd64", "os": "linux", "n": self.count})
        pushed = self.client.image(repo, layers, config, tags=tags)
        for data in (*layers, config, pushed.body):
            self.sizes[sha256(data)] = len(data)
        return pushed, {sha256(d) for d in (*layers, config, pushed.body)}

    def index(self, repo: str, children: list[Pushed], tags: tuple[str, ...] = ()) -> set[str]:
        """Push a manifest list of two children; the blob it is."""
        platforms = ("linux/amd64", "linux/arm64")
        pushed = self.client.manifest_list(repo, list(zip(children, platforms, strict=True)), tags=tags)
        self.sizes[pushed.digest] = pushed.size
        return {pushed.digest}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    require_registry()
    base = tmp_path_factory.mktemp("broken-refs")
    root = base / "root"
    with Registry(root, Ledger()) as reg:
        p = Pusher(reg)
        shared = p.blob("shared")
        # team/multi: a tagged list whose arm64 child is deleted by digest through the API.
        amd, amd_blobs = p.image("team/multi", [p.blob("amd")])
        arm, arm_blobs = p.image("team/multi", [p.blob("arm"), shared])
        list_blobs = p.index("team/multi", [amd, arm], tags=("v1",))
        reg.delete_manifest("team/multi", arm.digest)
        # team/other keeps the shared layer through an image of its own.
        _, other_blobs = p.image("team/other", [shared, p.blob("other")], tags=("latest",))
        # team/app: tag 2.0 dangles once its revision link is gone (below, with the registry stopped).
        _, app_blobs = p.image("team/app", [p.blob("app1")], tags=("1.0",))
        gone, gone_blobs = p.image("team/app", [p.blob("app2")], tags=("2.0",))
        # team/scratch: an untagged list whose child is deleted, and a blob no manifest names.
        kid, kid_blobs = p.image("team/scratch", [p.blob("kid")])
        lost, lost_blobs = p.image("team/scratch", [p.blob("lost")])
        scratch_list = p.index("team/scratch", [kid, lost])
        reg.delete_manifest("team/scratch", lost.digest)
        # team/legacy: tag old dangles at a list whose children keep their revision links.
        e1, e1_blobs = p.image("team/legacy", [p.blob("e1")])
        e2, e2_blobs = p.image("team/legacy", [p.blob("e2")])
        legacy_list = p.index("team/legacy", [e1, e2], tags=("old",))
        loose = p.blob("loose")
        reg.push_blob("team/scratch", loose)
        p.sizes[sha256(loose)] = len(loose)
    # As the registry's own delete does: the link goes, the revision's directory stays.
    for repo, digest in (("team/app", gone.digest), ("team/legacy", next(iter(legacy_list)))):
        (root / V2 / "repositories" / repo / "_manifests/revisions" / digest.replace(":", "/") / "link").unlink()

    # A plain collector marks what linked revisions hold: a list's children as manifest blobs only.
    arm_only = arm_blobs - {arm.digest, sha256(shared)}
    stock_plain_extra = arm_only | gone_blobs | (lost_blobs - {lost.digest}) | legacy_list
    yield Tree(
        root=root,
        sizes=p.sizes,
        keeps={
            "team/multi": amd_blobs | arm_blobs | list_blobs,
            "team/other": other_blobs,
            "team/app": app_blobs | gone_blobs,
            "team/scratch": kid_blobs | lost_blobs | scratch_list,
            "team/legacy": e1_blobs | e2_blobs | legacy_list,
        },
        protected={
            "team/multi": arm_only,
            "team/app": gone_blobs,
            "team/scratch": lost_blobs - {lost.digest},
            "team/legacy": e1_blobs | e2_blobs | legacy_list,
        },
        images={("team/app", "2.0"): gone_blobs, ("team/legacy", "old"): e1_blobs | e2_blobs | legacy_list},
        untagged_only={"team/scratch": kid_blobs | lost_blobs | scratch_list},
        orphans={sha256(loose)},
        stock_plain_extra=stock_plain_extra,
    )
    shutil.rmtree(base, ignore_errors=True)


def _json(*args: str) -> object:
    code, out, err = cli(*args, "-f", "json", "-q")
    assert code == 0, err
    return json.loads(out)


def test_the_tree_is_what_the_registry_stored(tree: Tree) -> None:
    on_disk = {p.parent.name for p in (tree.root / V2 / "blobs").glob("sha256/*/*/data")}
    assert {d.removeprefix("sha256:") for d in tree.sizes} == on_disk


def test_repositories_keep_what_their_broken_references_protect(tree: Tree) -> None:
    rows = {r["repository"]: r for r in _json("report", str(tree.root), "--by", "repository")}
    assert set(rows) == set(tree.keeps)
    for repo, blobs in tree.keeps.items():
        others = set().union(*(b for r, b in tree.keeps.items() if r != repo))
        assert rows[repo]["total_bytes"] == tree.bytes(blobs), repo
        assert rows[repo]["exclusive_bytes"] == tree.bytes(blobs - others), repo
        assert rows[repo]["reclaimable_bytes"] == tree.bytes(tree.untagged_only.get(repo, set())), repo


def test_physical_bytes_are_what_repositories_keep_plus_orphans(tree: Tree) -> None:
    (summary,) = [_json("report", str(tree.root))]
    assert isinstance(summary, dict)
    kept = set().union(*tree.keeps.values())
    assert summary["physical_bytes"] == tree.bytes(set(tree.sizes))
    assert summary["orphan_bytes"] == tree.bytes(tree.orphans)
    assert summary["physical_bytes"] == tree.bytes(kept) + summary["orphan_bytes"]
    rows = _json("report", str(tree.root), "--by", "repository")
    assert isinstance(rows, list)
    assert summary["logical_bytes"] == sum(r["total_bytes"] for r in rows) == sum(map(tree.bytes, tree.keeps.values()))
    blobs = {r["digest"]: r for r in _json("report", str(tree.root), "--by", "blob")}  # type: ignore[union-attr]
    assert {d for d, r in blobs.items() if r["orphan"]} == tree.orphans
    for digest, row in blobs.items():
        assert row["repositories"] == sum(digest in b for b in tree.keeps.values()), digest


def test_a_dangling_tag_holds_the_image_it_names(tree: Tree) -> None:
    rows = {(r["repository"], r["tag"]): r for r in _json("report", str(tree.root), "--by", "tag")}  # type: ignore[union-attr]
    for key, blobs in tree.images.items():
        assert rows[key]["image_bytes"] == tree.bytes(blobs), key
        assert rows[key]["exclusive_bytes"] == 0, key


def test_orphans_and_report_agree_with_delete_untagged(tree: Tree) -> None:
    swept = {r["digest"] for r in _json("orphans", str(tree.root), "--delete-untagged")}  # type: ignore[union-attr]
    assert swept == tree.orphans | tree.untagged_only["team/scratch"]
    assert not swept & set().union(*(tree.protected[r] for r in ("team/multi", "team/app", "team/legacy")))
    summary = _json("report", str(tree.root))
    rows = _json("report", str(tree.root), "--by", "repository")
    assert isinstance(summary, dict) and isinstance(rows, list)
    assert summary["untagged_reclaimable_bytes"] + summary["orphan_bytes"] == tree.bytes(swept)
    assert sum(r["reclaimable_bytes"] for r in rows) == summary["untagged_reclaimable_bytes"]


def test_plain_orphans_say_what_the_plain_collector_also_deletes(tree: Tree) -> None:
    _, stock, _ = parse_gc_output(garbage_collect(tree.root, dry_run=True))
    ours = {r["digest"] for r in _json("orphans", str(tree.root))}  # type: ignore[union-attr]
    assert ours == tree.orphans
    assert stock - ours == tree.stock_plain_extra
    code, out, err = cli("orphans", str(tree.root), "-f", "json")
    assert code == 0 and {r["digest"] for r in json.loads(out)} == ours
    warning = re.search(
        r"registry 2\.8's (?:and 3's )?`garbage-collect` would also delete (\d+) blobs \(([^)]+)\)", err
    )
    assert warning is not None, err
    assert int(warning[1]) == len(stock - ours)
    gc_compatible = {r["digest"] for r in _json("orphans", str(tree.root), "--gc-compatible")}  # type: ignore[union-attr]
    assert gc_compatible == stock
    assert "warning" not in cli("orphans", str(tree.root), "--gc-compatible", "-f", "json")[2]


def test_plain_orphans_stay_silent_when_they_match_the_collector(tmp_path: Path) -> None:
    root = unpack(FIXTURES / "basic.tar.gz", tmp_path / "tree")
    _, stock, _ = parse_gc_output(garbage_collect(root, dry_run=True))
    code, out, err = cli("orphans", str(root), "-f", "json")
    assert code == 0 and {r["digest"] for r in json.loads(out)} == stock
    assert "warning" not in err

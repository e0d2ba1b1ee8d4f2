"""One analysis graph per inventory: present revisions, what each holds, their edges and broken references."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage_audit.analysis.options import Collector
from storage_audit.inventory.codes import CodedArray
from storage_audit.inventory.frames import isin, pick, positions
from storage_audit.inventory.tables import Inventory

# Reference types that make a blob live when the referencing manifest is kept:
# what the reference registry's Manifest.References() returns (a referrer's
# `subject` is not among them: pulling an artifact does not need its subject).
HOLDING_REFS = ("config", "layer", "child", "fslayer")


@dataclass(frozen=True)
class ReachOptions:
    """What to keep: every revision, or (delete_untagged) only those a tag reaches.

    collector reproduces that version of the reference registry's `garbage-collect`
    instead (no broken reference protects anything): 2.8 keeps, with
    delete_untagged, only revisions a tag's `current` names, neither the children
    of a tagged index nor the referrers of a kept image; 3 (`analysis/gc3.py`)
    also keeps what a kept manifest marks, index children among them.
    """

    delete_untagged: bool = False
    keep_referrers: bool = True
    collector: Collector | None = None


@dataclass(frozen=True)
class Reachability:
    """The engine's answer, as frames and arrays over the inventory.

    present: linked revisions whose manifest blob exists (repository, digest, target);
    kept: a bool array over `present`; holds: (owner, blob) for every present
    revision and every stored blob it keeps alive (itself and HOLDING_REFS), as
    positions in `present` and in the inventory's blobs; protected: (repository,
    blob) for what broken references keep (empty with a collector), the
    repository being that of the reference; marked: a bool array over the
    inventory's blobs, those some kept revision or broken reference holds.
    """

    present: pd.DataFrame
    kept: np.ndarray
    holds: pd.DataFrame
    marked: np.ndarray
    orphans: pd.DataFrame
    protected: pd.DataFrame

    @property
    def dropped_revisions(self) -> pd.DataFrame:
        return self.present[~self.kept].reset_index(drop=True)


def present_revisions(inv: Inventory) -> pd.DataFrame:
    """Linked revisions whose manifest blob exists, one row per (repository, digest)."""
    rev = inv.revisions
    rev = rev[rev["linked"] & isin(rev["target"], inv.blobs["digest"])]
    return rev[["repository", "digest", "target", "pushed_at"]].reset_index(drop=True)


class RevisionIndex:
    """Finds present revisions by (repository, digest), through integer codes rather than pairs of strings.

    A name's code is the first position in `present` that carries it.
    """

    def __init__(self, present: pd.DataFrame) -> None:
        self.present = present
        self.repositories = positions(present["repository"], present["repository"])
        self.digests = positions(present["digest"], present["digest"])
        self._keys = pa.array(self._key(self.repositories, self.digests), type=pa.int64())

    def _key(self, repositories: np.ndarray, digests: np.ndarray) -> np.ndarray:
        return np.where((repositories >= 0) & (digests >= 0), repositories * len(self.present) + digests, -1)

    def rows(self, repositories: np.ndarray, digests: np.ndarray) -> np.ndarray:
        """The position of each (repository, digest) pair of codes; -1 when that is no present revision."""
        found = pc.index_in(self._key(repositories, digests), value_set=self._keys)
        return pc.fill_null(found, -1).to_numpy().astype(np.int64)

    def find(self, repositories: pd.Series, digests: pd.Series) -> np.ndarray:
        """The position of each (repository, digest) pair of names; -1 when that is no present revision."""
        present = self.present
        return self.rows(positions(repositories, present["repository"]), positions(digests, present["digest"]))


def references(inv: Inventory, *types: str) -> pd.DataFrame:
    """(manifest, digest) of the references of these types, copied without the rest of the table."""
    refs = inv.references
    rows = isin(refs["ref_type"], types).to_numpy()
    return pd.DataFrame({"manifest": refs["manifest"][rows], "digest": refs["digest"][rows]}).reset_index(drop=True)


def digest_codes(inv: Inventory, digests: pd.Series | pd.Index) -> np.ndarray:
    """The code of each of `digests` in the inventory's dictionary of digests; -1 for null or unknown ones."""
    array = inv.blobs["digest"].array
    assert isinstance(array, CodedArray)
    return array.codes_of(digests)


def blob_rows(inv: Inventory) -> np.ndarray:
    """For each digest code, the position of its blob in `inv.blobs`; -1 when no blob has it.

    One more slot, last, is -1: indexing with the code -1 (null, unknown) finds no blob.
    """
    return positions(pd.Series(CodedArray(np.arange(len(inv.digests)), inv.digests)), inv.blobs["digest"])


def _runs(values: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `wanted`, where its run of equal values starts and ends in the sorted `values`."""
    order = np.argsort(wanted, kind="stable")
    lo, hi = np.empty(len(wanted), dtype=np.int64), np.empty(len(wanted), dtype=np.int64)
    lo[order] = np.searchsorted(values, wanted[order], "left")
    hi[order] = np.searchsorted(values, wanted[order], "right")
    return lo, hi


def holdings(inv: Inventory, owners: pd.DataFrame) -> pd.DataFrame:
    """(owner, blob) for each owner row: its own blob and what its manifest references.

    Both are positions, `owner` in `owners` and `blob` in `inv.blobs`; blobs that are not stored are left out.
    Pairs are distinct: first every owner's own blob, then owner by owner the blobs its manifest references.
    """
    blob_of = np.append(blob_rows(inv), -1).astype(np.int32)
    targets = digest_codes(inv, owners["target"])
    refs = inv.references
    held = isin(refs["ref_type"], HOLDING_REFS).to_numpy()
    manifests = digest_codes(inv, refs["manifest"])[held]
    blobs = blob_of[digest_codes(inv, refs["digest"])[held]]
    del held
    # Only stored blobs, and only the references of the owners' manifests.
    wanted = np.zeros(len(blob_of), dtype=bool)
    wanted[targets[targets >= 0]] = True
    keep = np.flatnonzero((blobs >= 0) & wanted[manifests])
    manifests, blobs = manifests[keep], blobs[keep]
    del keep, wanted
    # Each manifest's distinct references, one run per manifest, by sorting (manifest, blob) pairs.
    key = manifests.astype(np.int64) * len(blob_of) + blobs
    order = np.argsort(key)
    key = key[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    order = order[first]
    manifests, blobs = manifests[order], blobs[order]
    del key, order, first
    # Each owner takes the references of its manifest's run (found for the targets in order: fast).
    lo, hi = _runs(manifests, targets)
    counts = np.where(targets >= 0, hi - lo, 0)
    owner = np.repeat(np.arange(len(owners), dtype=np.int64), counts)
    referenced = blobs[np.arange(int(counts.sum())) + np.repeat(lo - (np.cumsum(counts) - counts), counts)]
    own = blob_of[targets]
    # A manifest cannot reference its own blob (its digest would hash itself); the check costs little.
    differ = referenced != own[owner]
    return pd.DataFrame(
        {
            "owner": np.concatenate([np.flatnonzero(own >= 0), owner[differ]]),
            "blob": np.concatenate([own[own >= 0], referenced[differ]]).astype(np.int64),
        }
    )


def closure(root: np.ndarray, node: np.ndarray, src: np.ndarray, dst: np.ndarray, nodes: int) -> pd.DataFrame:
    """(root, node) for every node reachable along the (src, dst) edges from each given (root, node) pair,
    the pairs themselves included; node ids are below `nodes`.

    The one closure of the analyses: a set of roots is one root id for all of them.
    """
    order = np.argsort(src, kind="stable")
    src, dst = src[order].astype(np.int64), dst[order].astype(np.int64)
    seen = np.unique(root.astype(np.int64) * nodes + node.astype(np.int64))
    frontier = seen
    # One step per level of nesting, over every root at once; content addressing rules out
    # cycles, and `seen` only grows, so this ends anyway.
    while frontier.size:
        roots, at = np.divmod(frontier, nodes)
        lo, hi = np.searchsorted(src, at, "left"), np.searchsorted(src, at, "right")
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            break
        starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        step = np.unique(np.repeat(roots, counts) * nodes + dst[np.arange(total) + starts])
        frontier = step[~np.isin(step, seen, assume_unique=True)]
        seen = np.union1d(seen, frontier)
    roots, at = np.divmod(seen, nodes)
    return pd.DataFrame({"root": roots, "node": at})


def _reached(roots: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """A bool array: everything reachable from `roots` (a bool array) along the (src, dst) edges."""
    start = np.flatnonzero(roots)
    pairs = closure(np.zeros(len(start), dtype=np.int64), start, src, dst, max(len(roots), 1))
    reached = np.zeros(len(roots), dtype=bool)
    reached[pairs["node"].to_numpy()] = True
    return reached


_NO_PROTECTION = pd.DataFrame({"repository": pd.Series(dtype="string"), "blob": pd.Series(dtype="int64")})


class Graph:
    """What holds what in one inventory, built once and shared by every analysis of a command.

    Revisions are positions in `present`; blobs are positions in `inv.blobs`.
    Parts are computed when first asked for, and reachability answers are kept per options.
    """

    builds: ClassVar[int] = 0
    """Graphs built in this process: a command builds one."""

    def __init__(self, inv: Inventory) -> None:
        Graph.builds += 1
        self.inv = inv
        self.present = present_revisions(inv)
        self.index = RevisionIndex(self.present)
        self._answers: dict[ReachOptions, Reachability] = {}
        # Per kept set (as bytes; None: dangling tags alone), with every tag.
        self._protections: dict[bytes | None, pd.DataFrame] = {}

    @classmethod
    def of(cls, source: Graph | Inventory) -> Graph:
        """`source` itself when it is a graph, else the graph of that inventory."""
        return source if isinstance(source, Graph) else cls(source)

    # -- structure ---------------------------------------------------------------

    @cached_property
    def holds(self) -> pd.DataFrame:
        """(owner, blob): every present revision and each stored blob it holds."""
        return holdings(self.inv, self.present)

    @cached_property
    def children(self) -> pd.DataFrame:
        """(manifest, digest) of every child reference of a list or index."""
        return references(self.inv, "child")

    @cached_property
    def _child_edges(self) -> tuple[np.ndarray, np.ndarray]:
        # The revision of an index keeps the revisions of its children in its repository.
        return self._naming(self.children["manifest"], self.children["digest"])

    @cached_property
    def _referrer_edges(self) -> tuple[np.ndarray, np.ndarray]:
        # The revision of a subject keeps the revisions in its repository of the manifests that name it.
        manifests = self.inv.manifests
        subjects = manifests["subject"].notna().to_numpy()
        referrers, named = self._naming(manifests["digest"][subjects], manifests["subject"][subjects])
        return named, referrers

    def edges(self, keep_referrers: bool) -> tuple[np.ndarray, np.ndarray]:
        """(src, dst) positions in `present`: keeping src keeps dst (index child, referrer of a subject)."""
        parts = [self._child_edges, self._referrer_edges] if keep_referrers else [self._child_edges]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def parents(self, keep_referrers: bool = True) -> pd.DataFrame:
        """(src, dst, kind) positions in `present`: src keeps dst as its `child` (an index's) or its `referrer`."""
        parts = [("child", self._child_edges)] + ([("referrer", self._referrer_edges)] if keep_referrers else [])
        return pd.concat(
            [pd.DataFrame({"src": src, "dst": dst, "kind": kind}) for kind, (src, dst) in parts], ignore_index=True
        )

    def _naming(self, manifests: pd.Series, digests: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Pairs of positions in `present`: a revision whose target is one of `manifests`, and the revision
        of its repository whose digest is the matching one of `digests`, when there is one."""
        present, index = self.present, self.index
        targets = pd.DataFrame({"node": np.arange(len(present)), "first": self.target_codes})
        names = pd.DataFrame(
            {"first": positions(manifests, present["target"]), "digest": positions(digests, present["digest"])}
        )
        pairs = targets.merge(names[(names["first"] >= 0) & (names["digest"] >= 0)], on="first")
        node = pairs["node"].to_numpy()
        named = index.rows(index.repositories[node], pairs["digest"].to_numpy())
        return node[named >= 0], named[named >= 0]

    @cached_property
    def target_codes(self) -> np.ndarray:
        """For each row of `present`, the first row with the same target (its blob): one code per manifest blob."""
        return positions(self.present["target"], self.present["target"])

    def reached(self, roots: np.ndarray, keep_referrers: bool = True) -> np.ndarray:
        """A bool array over `present`: the `roots` and what they keep through children (and referrers)."""
        return _reached(roots, *self.edges(keep_referrers))

    @cached_property
    def tag_rows(self) -> np.ndarray:
        """For each of the inventory's tags, the position in `present` of the revision it names; -1 when none."""
        return self.index.find(self.inv.tags["repository"], self.inv.tags["digest"])

    def _rows_of(self, tags: pd.DataFrame | None) -> tuple[pd.DataFrame, np.ndarray]:
        if tags is None:
            return self.inv.tags, self.tag_rows
        # A subset of the inventory's tags (what stays after a plan) reuses their lookup.
        if tags.index.isin(self.inv.tags.index).all():
            return tags, pd.Series(self.tag_rows, index=self.inv.tags.index)[tags.index].to_numpy()
        return tags, self.index.find(tags["repository"], tags["digest"])

    def tagged(self, tags: pd.DataFrame | None = None) -> np.ndarray:
        """A bool array over `present`: some tag (of `tags`, by default all) names the revision."""
        rows = self._rows_of(tags)[1]
        flags = np.zeros(len(self.present), dtype=bool)
        flags[rows[rows >= 0]] = True
        return flags

    # -- broken references ---------------------------------------------------------

    def dangling_tags(self, tags: pd.DataFrame | None = None) -> pd.DataFrame:
        """Tags whose `current` names a digest that is no present revision of their repository."""
        frame, rows = self._rows_of(tags)
        return frame[rows < 0][["repository", "tag", "digest"]].reset_index(drop=True)

    @cached_property
    def _missing_children(self) -> pd.DataFrame:
        """(owner, digest): a present revision holds an index listing this child, no present revision of its
        repository (the revision link was deleted, or the manifest never stored)."""
        children, blobs, index = self.children, self.inv.blobs, self.index
        lists = pd.DataFrame({"blob": positions(children["manifest"], blobs["digest"]), "child": children.index})
        lists = lists[lists["blob"] >= 0]
        # Only the holds of lists and indexes meet a child: the rest stay out of the merge.
        holds = self.holds[np.isin(self.holds["blob"].to_numpy(), lists["blob"].to_numpy())]
        listed = holds.merge(lists, on="blob")
        child = listed["child"].to_numpy()
        owner = listed["owner"].to_numpy()
        rows = index.rows(index.repositories[owner], positions(children["digest"], self.present["digest"])[child])
        missing = rows < 0
        return pd.DataFrame(
            {"owner": owner[missing], "digest": pick(children["digest"], child[missing])}
        ).drop_duplicates(ignore_index=True)

    def broken(self, kept: np.ndarray | None, tags: pd.DataFrame | None = None) -> pd.DataFrame:
        """(repository, digest) of the manifests broken references name: the targets of dangling tags (of
        `tags`, by default all) and, when `kept` is given, the missing children of what the kept revisions hold."""
        dangling = self.dangling_tags(tags).dropna(subset=["digest"])[["repository", "digest"]]
        parts = [dangling]
        if kept is not None:
            missing = self._missing_children
            missing = missing[kept[missing["owner"].to_numpy()]].reset_index(drop=True)
            repositories = pick(self.present["repository"], missing["owner"].to_numpy())
            parts.append(pd.DataFrame({"repository": repositories, "digest": missing["digest"]}))
        return pd.concat(parts, ignore_index=True).drop_duplicates(ignore_index=True)

    def protection(self, kept: np.ndarray | None, tags: pd.DataFrame | None = None) -> pd.DataFrame:
        """(repository, blob): what the broken references of `broken(kept, tags)` keep, by their repository.

        Someone may restore what they name, so the named manifests' blobs and,
        through their own contents (children included), everything they
        reference stay. The rule for bytes: they belong to the repository of
        the reference (the dangling tag's, or the listing index's).
        """
        key = None if tags is not None else (None if kept is None else kept.tobytes())
        if tags is None and key in self._protections:
            return self._protections[key]
        named = self.broken(kept, tags)
        contents = self.content_closure(named["digest"])
        roots = contents["root"].to_numpy()
        owners = pd.DataFrame({"target": contents["digest"]})
        held = holdings(self.inv, owners)
        repository = pick(named["repository"], roots[held["owner"].to_numpy()])
        frame = pd.DataFrame({"repository": repository, "blob": held["blob"].to_numpy()})
        frame = frame.drop_duplicates(ignore_index=True)
        if tags is None:
            self._protections[key] = frame
        return frame

    @cached_property
    def _content(self) -> tuple[pd.Series, np.ndarray, np.ndarray]:
        """The manifests that lists name or are, as nodes, and the (list, child) edges between them."""
        children = self.children
        nodes = pd.Series(pd.concat([children["manifest"], children["digest"]], ignore_index=True).dropna().unique())
        src, dst = positions(children["manifest"], nodes), positions(children["digest"], nodes)
        valid = (src >= 0) & (dst >= 0)
        return nodes, src[valid], dst[valid]

    def content_closure(self, digests: pd.Series) -> pd.DataFrame:
        """(root, digest): each of `digests` (root: its position) and, recursively, the children its manifest
        content lists, whatever the revision links say."""
        nodes, src, dst = self._content
        roots = digests.reset_index(drop=True)
        at = positions(roots, nodes)
        # A digest that no list names and no list is has no edges: it gets a node of its own.
        alone = np.flatnonzero(at < 0)
        at[alone] = len(nodes) + np.arange(len(alone))
        valid = roots.notna().to_numpy()
        pairs = closure(np.flatnonzero(valid), at[valid], src, dst, len(nodes) + len(alone))
        # Names are taken from Arrow's buffers, never as Python objects.
        names = pd.concat([nodes, roots.iloc[alone]], ignore_index=True)
        return pd.DataFrame({"root": pairs["root"].to_numpy(), "digest": pick(names, pairs["node"].to_numpy())})

    # -- answers --------------------------------------------------------------------

    def marked(self, kept: np.ndarray, protect: bool = True, tags: pd.DataFrame | None = None) -> np.ndarray:
        """A bool array over the blobs: what the kept revisions hold and, when protecting, what broken
        references (tags: `tags`, by default all) keep."""
        holds = self.holds
        marked = np.zeros(len(self.inv.blobs), dtype=bool)
        marked[holds["blob"].to_numpy()[kept[holds["owner"].to_numpy()]]] = True
        if protect:
            marked[self.protection(kept, tags)["blob"].to_numpy()] = True
        return marked

    def kept(self, options: ReachOptions) -> np.ndarray:
        """A bool array over `present`: the revisions `options` keep."""
        if not options.delete_untagged:
            return np.ones(len(self.present), dtype=bool)
        if options.collector is Collector.V2_8:
            return self.tagged()
        if options.collector is Collector.V3:
            return self._v3(options.delete_untagged)[0]
        return self.reached(self.tagged(), options.keep_referrers)

    def _v3(self, delete_untagged: bool) -> tuple[np.ndarray, np.ndarray]:
        from storage_audit.analysis.gc3 import mark

        return mark(self, delete_untagged, HOLDING_REFS)

    def reach(self, options: ReachOptions | None = None) -> Reachability:
        """Mark from the roots of `options`: what no kept revision holds and no broken reference protects is orphan."""
        options = options or ReachOptions()
        if options.collector or not options.delete_untagged:
            # keep_referrers changes nothing when every revision is kept, or a collector's rule decides.
            options = ReachOptions(options.delete_untagged, True, options.collector)
        if options not in self._answers:
            protect = options.collector is None
            if options.collector is Collector.V3:
                kept, marked = self._v3(options.delete_untagged)
            else:
                kept = self.kept(options)
                marked = self.marked(kept, protect=protect)
            protected = self.protection(kept) if protect else _NO_PROTECTION
            orphans = self.inv.blobs[~marked].reset_index(drop=True)
            self._answers[options] = Reachability(self.present, kept, self.holds, marked, orphans, protected)
        return self._answers[options]

    @cached_property
    def repository_codes(self) -> np.ndarray:
        """For each present revision, the position of its repository in `inv.repositories`."""
        return positions(self.present["repository"], self.inv.repositories["repository"])

    def repository_blobs(self) -> pd.DataFrame:
        """Distinct (repository, blob) of what each repository keeps alive: what its present revisions hold
        and what its broken references protect (as plain `orphans` keeps them); repositories by position
        in `inv.repositories`.

        Every blob that is no orphan of plain `orphans` is in some pair, and no orphan is.
        """
        holds = self.holds
        protected = self.reach().protected
        repository = np.concatenate(
            [
                self.repository_codes[holds["owner"].to_numpy()],
                positions(protected["repository"], self.inv.repositories["repository"]),
            ]
        )
        blob = np.concatenate([holds["blob"].to_numpy(), protected["blob"].to_numpy()])
        # Distinct pairs by one integer key (repositories from -1, unknown).
        first = ~pd.Series((repository + 1) * max(len(self.inv.blobs), 1) + blob).duplicated().to_numpy()
        return pd.DataFrame({"repository": repository[first], "blob": blob[first]})

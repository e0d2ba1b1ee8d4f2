"""The reachability engine: which manifest revisions are kept and which blobs a sweep would remove."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .findings import Finding, Kind
from .frames import isin, positions
from .inventory import Inventory
from .paths import Digest, LayerLink, TagCurrentLink, path_for

# Reference types that make a blob live when the referencing manifest is kept:
# what the reference registry's Manifest.References() returns (a referrer's
# `subject` is not among them: pulling an artifact does not need its subject).
HOLDING_REFS = ("config", "layer", "child", "fslayer")
BLOB_KINDS = ("unknown", "layer", "config", "manifest")


@dataclass(frozen=True)
class ReachOptions:
    """What to keep: every revision, or (delete_untagged) only those a tag reaches.

    gc_compatible reproduces the reference registry 2.8's `garbage-collect`:
    with delete_untagged only revisions a tag's `current` names are kept; the
    children of a tagged index and the referrers of a kept image are not.
    """

    delete_untagged: bool = False
    keep_referrers: bool = True
    gc_compatible: bool = False


@dataclass(frozen=True)
class Reachability:
    """The engine's answer, as frames and arrays over the inventory.

    present: linked revisions whose manifest blob exists (repository, digest, target);
    kept: a bool array over `present`; holds: (owner, blob) for every present
    revision and every stored blob it keeps alive (itself and HOLDING_REFS), as
    positions in `present` and in the inventory's blobs; marked: a bool array over
    the inventory's blobs, those some kept revision (or a dangling tag) holds.
    """

    present: pd.DataFrame
    kept: np.ndarray
    holds: pd.DataFrame
    marked: np.ndarray
    orphans: pd.DataFrame

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
        self._keys = self._key(self.repositories, self.digests)

    def _key(self, repositories: np.ndarray, digests: np.ndarray) -> np.ndarray:
        return np.where((repositories >= 0) & (digests >= 0), repositories * len(self.present) + digests, -1)

    def rows(self, repositories: np.ndarray, digests: np.ndarray) -> np.ndarray:
        """The position of each (repository, digest) pair of codes; -1 when that is no present revision."""
        found = pc.index_in(self._key(repositories, digests), value_set=pa.array(self._keys, type=pa.int64()))
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


def holdings(inv: Inventory, owners: pd.DataFrame) -> pd.DataFrame:
    """(owner, blob) for each owner row: its own blob and what its manifest references.

    Both are positions, `owner` in `owners` and `blob` in `inv.blobs`; blobs that are not stored are left out.
    """
    targets, blobs = owners["target"], inv.blobs["digest"]
    refs = inv.references
    # Owners and references meet on a target's first position among the owners.
    first = positions(refs["manifest"], targets)
    held = (first >= 0) & isin(refs["ref_type"], HOLDING_REFS).to_numpy()
    # Only the owners' references are looked up: in place when they are most of them, else copied
    # out first (few when the owners are the targets of dangling tags).
    digests = refs["digest"]
    found = positions(digests, blobs)[held] if 2 * held.sum() > len(refs) else positions(digests[held], blobs)
    lists = pd.DataFrame({"first": first[held], "blob": found})
    owner = np.arange(len(owners))
    referenced = pd.DataFrame({"owner": owner, "first": positions(targets, targets)}).merge(
        lists[lists["blob"] >= 0], on="first"
    )
    own = pd.DataFrame({"owner": owner, "blob": positions(targets, blobs)})
    return pd.concat([own[own["blob"] >= 0], referenced[["owner", "blob"]]], ignore_index=True).drop_duplicates(
        ignore_index=True
    )


def edges(inv: Inventory, present: pd.DataFrame, keep_referrers: bool) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) positions in `present`: keeping src keeps dst (index child, referrer of a subject)."""
    index = RevisionIndex(present)
    children = references(inv, "child")
    # The revision of an index keeps the revisions of its children in its repository.
    parents, listed = _naming(index, children["manifest"], children["digest"])
    src, dst = [parents], [listed]
    if keep_referrers:
        # The revision of a subject keeps the revisions in its repository of the manifests that name it.
        manifests = inv.manifests
        subjects = manifests["subject"].notna().to_numpy()
        referrers, named = _naming(index, manifests["digest"][subjects], manifests["subject"][subjects])
        src.append(named)
        dst.append(referrers)
    return np.concatenate(src), np.concatenate(dst)


def _naming(index: RevisionIndex, manifests: pd.Series, digests: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of positions in `present`: a revision whose target is one of `manifests`, and the revision
    of its repository whose digest is the matching one of `digests`, when there is one."""
    present = index.present
    targets = pd.DataFrame({"node": np.arange(len(present)), "first": positions(present["target"], present["target"])})
    names = pd.DataFrame(
        {"first": positions(manifests, present["target"]), "digest": positions(digests, present["digest"])}
    )
    pairs = targets.merge(names[(names["first"] >= 0) & (names["digest"] >= 0)], on="first")
    node = pairs["node"].to_numpy()
    named = index.rows(index.repositories[node], pairs["digest"].to_numpy())
    return node[named >= 0], named[named >= 0]


def tagged(present: pd.DataFrame, tags: pd.DataFrame) -> np.ndarray:
    """A bool array over `present`: some tag's `current` names the revision."""
    rows = RevisionIndex(present).find(tags["repository"], tags["digest"])
    flags = np.zeros(len(present), dtype=bool)
    flags[rows[rows >= 0]] = True
    return flags


def closure(roots: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Everything reachable from `roots` (a bool array) along the (src, dst) edges."""
    reached = roots.copy()
    while True:
        step = dst[reached[src] & ~reached[dst]]
        if step.size == 0:
            return reached
        reached[step] = True


def dangling_tag_targets(inv: Inventory, present: pd.DataFrame, tags: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tags whose `current` names a digest that is no present revision of their repository."""
    tags = (inv.tags if tags is None else tags)[["repository", "tag", "digest"]]
    return tags[RevisionIndex(present).find(tags["repository"], tags["digest"]) < 0].reset_index(drop=True)


def reach(inv: Inventory, options: ReachOptions | None = None) -> Reachability:
    """Mark from the roots the options define; every blob no kept revision holds is an orphan."""
    options = options or ReachOptions()
    present = present_revisions(inv)
    if not options.delete_untagged:
        kept = np.ones(len(present), dtype=bool)
    elif options.gc_compatible:
        kept = tagged(present, inv.tags)
    else:
        src, dst = edges(inv, present, options.keep_referrers)
        kept = closure(tagged(present, inv.tags), src, dst)
    holds = holdings(inv, present)
    marked = mark(inv, present, holds, kept, protect_dangling=not options.gc_compatible)
    orphans = inv.blobs[~marked].reset_index(drop=True)
    return Reachability(present=present, kept=kept, holds=holds, marked=marked, orphans=orphans)


def mark(
    inv: Inventory,
    present: pd.DataFrame,
    holds: pd.DataFrame,
    kept: np.ndarray,
    protect_dangling: bool = True,
    tags: pd.DataFrame | None = None,
) -> np.ndarray:
    """A bool array over `inv.blobs`: what the kept revisions hold and, when protecting, what broken references name.

    Protection covers manifests that are named but are no present revision of
    the repository: the targets of dangling tags, and index children whose
    revision link is gone. Someone may restore them, so their blobs and, through
    their own contents (children included), everything they reference stay.
    """
    kept_holds = holds[kept[holds["owner"].to_numpy()]]
    marked = np.zeros(len(inv.blobs), dtype=bool)
    marked[kept_holds["blob"].to_numpy()] = True
    if protect_dangling:
        dangling = dangling_tag_targets(inv, present, tags)["digest"].dropna()
        children = references(inv, "child")
        lists = pd.DataFrame({"blob": positions(children["manifest"], inv.blobs["digest"]), "child": children.index})
        listed = kept_holds.merge(lists[lists["blob"] >= 0], on="blob")
        index = RevisionIndex(present)
        child = listed["child"].to_numpy()
        rows = index.rows(
            index.repositories[listed["owner"].to_numpy()], positions(children["digest"], present["digest"])[child]
        )
        orphaned = children["digest"].iloc[child[rows < 0]]
        named = _content_closure(inv, set(dangling) | set(orphaned))
        names = pd.Series(sorted(named), dtype="string")
        owners = pd.DataFrame(
            {"repository": pd.Series("", index=names.index, dtype="string"), "digest": names, "target": names}
        )
        marked[holdings(inv, owners)["blob"].to_numpy()] = True
    return marked


def _content_closure(inv: Inventory, digests: set[str]) -> set[str]:
    """`digests` and, recursively, the children their manifest contents list."""
    children = references(inv, "child")
    seen, frontier = set(digests), set(digests)
    while frontier:
        step = set(children[isin(children["manifest"], frontier)]["digest"]) - seen
        seen |= step
        frontier = step
    return seen


def blob_kinds(inv: Inventory, blobs: pd.DataFrame | None = None) -> pd.Series:
    """For each of `blobs` (by default all): manifest, config, layer or unknown, from how anything references it.

    Indexed like `blobs`.
    """
    blobs = inv.blobs if blobs is None else blobs
    refs = inv.references
    found = positions(refs["digest"], blobs["digest"])
    kinds = np.zeros(len(blobs), dtype=np.int8)
    for kind, types in (("layer", ("layer", "fslayer")), ("config", ("config",)), ("manifest", ("child",))):
        named = found[isin(refs["ref_type"], types).to_numpy()]
        kinds[named[named >= 0]] = BLOB_KINDS.index(kind)
    manifests = positions(inv.manifests["digest"], blobs["digest"])
    kinds[manifests[manifests >= 0]] = BLOB_KINDS.index("manifest")
    return pd.Series(pc.take(pa.array(BLOB_KINDS), kinds), index=blobs.index, dtype="string")


def reclaimable_alone(inv: Inventory, result: Reachability, rows: np.ndarray) -> np.ndarray:
    """Bytes freed by deleting each revision at `rows` in `result.present` alone, every other revision staying.

    A blob counts when the revision is its only holder across all repositories
    (and no dangling tag names it).
    """
    holds = result.holds
    blob = holds["blob"].to_numpy()
    sole = np.bincount(blob, minlength=len(inv.blobs)) == 1
    extra = dangling_tag_targets(inv, result.present).dropna(subset=["digest"])
    sole[holdings(inv, extra.assign(target=extra["digest"]))["blob"].to_numpy()] = False
    mine = holds[sole[blob]]
    sizes = pd.Series(inv.blobs["size"].to_numpy()[mine["blob"].to_numpy()], index=mine.index)
    freed = sizes.groupby(mine["owner"]).sum()
    return freed.reindex(rows, fill_value=0).to_numpy(dtype=np.int64)


def reach_findings(inv: Inventory, result: Reachability) -> list[Finding]:
    """What the engine notices: dangling tags and layer links to blobs that are gone or orphaned."""
    out: list[Finding] = []
    for row in dangling_tag_targets(inv, result.present).itertuples(index=False):
        missing = pd.isna(row.digest)
        what = "names no valid digest" if missing else f"names {row.digest}, which is no stored manifest"
        path = path_for(TagCurrentLink(row.repository, row.tag))
        digest = None if missing else row.digest
        out.append(Finding(Kind.DANGLING_TAG, path, f"tag {row.tag} {what}", row.repository, digest))
    links = inv.layer_links
    gone = links[links["target"].notna() & ~isin(links["target"], inv.blobs["digest"])]
    swept = links[isin(links["target"], result.orphans["digest"])]
    for rows, detail in (
        (gone, "layer link to a blob that is gone"),
        (swept, "layer link to a blob that no kept manifest references"),
    ):
        for row in rows.itertuples(index=False):
            path = path_for(LayerLink(row.repository, Digest.parse(row.digest)))
            out.append(Finding(Kind.ORPHAN_LAYER_LINK, path, detail, row.repository, row.target))
    return out

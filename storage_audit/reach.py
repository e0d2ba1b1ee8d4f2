"""The reachability engine: which manifest revisions are kept and which blobs a sweep would remove."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .findings import Finding, Kind
from .frames import isin
from .inventory import Inventory
from .paths import Digest, LayerLink, TagCurrentLink, path_for

# Reference types that make a blob live when the referencing manifest is kept:
# what the reference registry's Manifest.References() returns (a referrer's
# `subject` is not among them: pulling an artifact does not need its subject).
HOLDING_REFS = ("config", "layer", "child", "fslayer")


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
    """The engine's answer, as frames over the inventory.

    present: linked revisions whose manifest blob exists (repository, digest, target);
    kept: a bool array over `present`; holds: (repository, digest, blob) for every
    present revision and every blob it keeps alive (itself and HOLDING_REFS);
    marked: the blob digests some kept revision (or a dangling tag) holds.
    """

    present: pd.DataFrame
    kept: np.ndarray
    holds: pd.DataFrame
    marked: pd.Index
    orphans: pd.DataFrame

    @property
    def dropped_revisions(self) -> pd.DataFrame:
        return self.present[~self.kept].reset_index(drop=True)


def present_revisions(inv: Inventory) -> pd.DataFrame:
    """Linked revisions whose manifest blob exists, one row per (repository, digest)."""
    rev = inv.revisions
    rev = rev[rev["linked"] & isin(rev["target"], inv.blobs["digest"])]
    return rev[["repository", "digest", "target", "pushed_at"]].reset_index(drop=True)


def holdings(inv: Inventory, owners: pd.DataFrame) -> pd.DataFrame:
    """(repository, digest, blob) for each owner row: its own blob and what its manifest references."""
    own = owners[["repository", "digest", "target"]].rename(columns={"target": "blob"})
    refs = inv.references
    # Only the owners' references are copied: few when the owners are the targets of dangling tags.
    refs = refs[isin(refs["ref_type"], HOLDING_REFS) & isin(refs["manifest"], owners["target"])][["manifest", "digest"]]
    refs = refs.rename(columns={"manifest": "target", "digest": "blob"})
    referenced = owners[["repository", "digest", "target"]].merge(refs, on="target")[["repository", "digest", "blob"]]
    return pd.concat([own[["repository", "digest", "blob"]], referenced], ignore_index=True).drop_duplicates(
        ignore_index=True
    )


def edges(inv: Inventory, present: pd.DataFrame, keep_referrers: bool) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) positions in `present`: keeping src keeps dst (index child, referrer of a subject)."""
    node = present[["repository", "digest"]].assign(node=np.arange(len(present)))
    refs = inv.references
    children = present.merge(
        refs[refs["ref_type"] == "child"][["manifest", "digest"]].rename(
            columns={"manifest": "target", "digest": "dst_digest"}
        ),
        on="target",
    )
    pairs = [children[["repository", "digest", "dst_digest"]]]
    if keep_referrers:
        subjects = inv.manifests[inv.manifests["subject"].notna()][["digest", "subject"]]
        referrers = present.merge(subjects.rename(columns={"digest": "target"}), on="target")
        pairs.append(
            referrers.rename(columns={"digest": "dst_digest", "subject": "digest"})[
                ["repository", "digest", "dst_digest"]
            ]
        )
    edges = pd.concat(pairs, ignore_index=True)
    edges = edges.merge(node, on=["repository", "digest"]).rename(columns={"node": "src"})
    edges = edges.merge(node.rename(columns={"digest": "dst_digest", "node": "dst"}), on=["repository", "dst_digest"])
    return edges["src"].to_numpy(), edges["dst"].to_numpy()


def tagged(present: pd.DataFrame, tags: pd.DataFrame) -> np.ndarray:
    """A bool array over `present`: some tag's `current` names the revision."""
    tags = tags[tags["digest"].notna()][["repository", "digest"]].drop_duplicates()
    flags = present[["repository", "digest"]].merge(tags, how="left", indicator=True)["_merge"] == "both"
    return flags.to_numpy()


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
    joined = tags.merge(present[["repository", "digest"]], how="left", on=["repository", "digest"], indicator=True)
    return joined[joined["_merge"] == "left_only"].drop(columns="_merge").reset_index(drop=True)


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
    orphans = inv.blobs[~isin(inv.blobs["digest"], marked)].reset_index(drop=True)
    return Reachability(present=present, kept=kept, holds=holds, marked=marked, orphans=orphans)


def mark(
    inv: Inventory,
    present: pd.DataFrame,
    holds: pd.DataFrame,
    kept: np.ndarray,
    protect_dangling: bool = True,
    tags: pd.DataFrame | None = None,
) -> pd.Index:
    """The blobs the kept revisions hold; when protecting, also what broken references still name.

    Protection covers manifests that are named but are no present revision of
    the repository: the targets of dangling tags, and index children whose
    revision link is gone. Someone may restore them, so their blobs and, through
    their own contents (children included), everything they reference stay.
    """
    kept_keys = present[kept][["repository", "digest"]]
    kept_holds = holds.merge(kept_keys, on=["repository", "digest"])
    marked = [kept_holds["blob"]]
    if protect_dangling:
        dangling = dangling_tag_targets(inv, present, tags)["digest"].dropna()
        children = inv.references[inv.references["ref_type"] == "child"]
        kept_children = kept_holds.merge(
            children[["manifest", "digest"]].rename(columns={"manifest": "target_blob", "digest": "child"}),
            left_on="blob",
            right_on="target_blob",
        )[["repository", "child"]].rename(columns={"child": "digest"})
        orphaned = kept_children.merge(present[["repository", "digest"]], how="left", indicator=True)
        orphaned = orphaned[orphaned["_merge"] == "left_only"]["digest"]
        named = _content_closure(inv, set(dangling) | set(orphaned))
        names = pd.Series(sorted(named), dtype="string")
        owners = pd.DataFrame(
            {"repository": pd.Series("", index=names.index, dtype="string"), "digest": names, "target": names}
        )
        marked.append(holdings(inv, owners)["blob"])
    return pd.Index(pd.concat(marked, ignore_index=True).unique())


def _content_closure(inv: Inventory, digests: set[str]) -> set[str]:
    """`digests` and, recursively, the children their manifest contents list."""
    children = inv.references[inv.references["ref_type"] == "child"][["manifest", "digest"]]
    seen, frontier = set(digests), set(digests)
    while frontier:
        step = set(children[isin(children["manifest"], frontier)]["digest"]) - seen
        seen |= step
        frontier = step
    return seen


def blob_kinds(inv: Inventory) -> pd.Series:
    """For every blob digest: manifest, config, layer or unknown, from how anything references it."""
    kinds = pd.Series("unknown", index=pd.Index(inv.blobs["digest"], name="digest"), dtype="string")
    refs = inv.references
    layer = refs[isin(refs["ref_type"], ("layer", "fslayer"))]["digest"]
    config = refs[refs["ref_type"] == "config"]["digest"]
    manifest = pd.concat([inv.manifests["digest"], refs[refs["ref_type"] == "child"]["digest"]])
    for name, digests in (("layer", layer), ("config", config), ("manifest", manifest)):
        kinds[isin(inv.blobs["digest"], digests).to_numpy()] = name
    return kinds


def reclaimable_alone(inv: Inventory, result: Reachability, revisions: pd.DataFrame) -> pd.Series:
    """Bytes freed by deleting each of `revisions` alone, every other revision staying.

    A blob counts when the revision is its only holder across all repositories
    (and no dangling tag names it). Indexed like `revisions`.
    """
    holders = result.holds.groupby("blob").size()
    extra = dangling_tag_targets(inv, result.present).dropna(subset=["digest"])
    protected = set(holdings(inv, extra.assign(target=extra["digest"]))["blob"])
    sole = holders[holders == 1].index.difference(pd.Index(list(protected)))
    sizes = inv.blobs.set_index("digest")["size"]
    mine = revisions[["repository", "digest"]].reset_index().merge(result.holds, on=["repository", "digest"])
    mine = mine[isin(mine["blob"], sole)]
    mine = mine.assign(size=mine["blob"].map(sizes).fillna(0).astype("int64"))
    freed = mine.groupby("index")["size"].sum()
    return freed.reindex(revisions.index, fill_value=0).astype("int64")


def reach_findings(inv: Inventory, result: Reachability) -> list[Finding]:
    """What the engine notices: dangling tags and layer links to blobs that are gone or orphaned."""
    out: list[Finding] = []
    for row in dangling_tag_targets(inv, result.present).itertuples(index=False):
        missing = pd.isna(row.digest)
        what = "names no valid digest" if missing else f"names {row.digest}, which is no stored manifest"
        path = path_for(TagCurrentLink(row.repository, row.tag))
        digest = None if missing else row.digest
        out.append(Finding(Kind.DANGLING_TAG, path, f"tag {row.tag} {what}", row.repository, digest))
    links = inv.layer_links.dropna(subset=["target"])
    gone = links[~isin(links["target"], inv.blobs["digest"])]
    swept = links[isin(links["target"], result.orphans["digest"])]
    for rows, detail in (
        (gone, "layer link to a blob that is gone"),
        (swept, "layer link to a blob that no kept manifest references"),
    ):
        for row in rows.itertuples(index=False):
            path = path_for(LayerLink(row.repository, Digest.parse(row.digest)))
            out.append(Finding(Kind.ORPHAN_LAYER_LINK, path, detail, row.repository, row.target))
    return out

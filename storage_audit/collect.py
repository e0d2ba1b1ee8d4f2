"""What a garbage collection would remove: untagged manifests and orphan blobs, with what they free."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .frames import isin, join_groups, pick, positions
from .inventory import Inventory
from .reach import Reachability, ReachOptions, blob_kinds, reach, reclaimable_alone, references

UNTAGGED_COLUMNS = [
    "repository",
    "digest",
    "media_type",
    "artifact_type",
    "subject",
    "pushed_at",
    "manifest_bytes",
    "reclaimable_bytes",
]
ORPHAN_COLUMNS = ["digest", "size", "mtime", "kind", "linked_from"]


def untagged(inv: Inventory, options: ReachOptions) -> pd.DataFrame:
    """Per repository, the revisions no tag reaches under `options` (delete_untagged is implied)."""
    return untagged_frame(inv, reach(inv, _untagged_options(options)))


def untagged_frame(inv: Inventory, result: Reachability) -> pd.DataFrame:
    """The rows of `untagged` from an engine answer given with delete_untagged."""
    dropped = result.dropped_revisions
    manifests = inv.manifests
    info = positions(dropped["target"], manifests["digest"])
    stored = positions(dropped["target"], inv.blobs["digest"])
    frame = pd.DataFrame(
        {
            "repository": dropped["repository"],
            "digest": dropped["digest"],
            "media_type": pick(manifests["media_type"], info, dropped.index),
            "artifact_type": pick(manifests["artifact_type"], info, dropped.index),
            "subject": pick(manifests["subject"], info, dropped.index),
            "pushed_at": dropped["pushed_at"],
            "manifest_bytes": np.where(stored >= 0, inv.blobs["size"].to_numpy()[stored], 0),
            "reclaimable_bytes": reclaimable_alone(inv, result, np.flatnonzero(~result.kept)),
        }
    )
    for col in ("media_type", "artifact_type", "subject", "repository", "digest"):
        frame[col] = frame[col].astype("string")
    return frame.sort_values(["repository", "pushed_at", "digest"], ignore_index=True)[UNTAGGED_COLUMNS]


def _untagged_options(options: ReachOptions) -> ReachOptions:
    return ReachOptions(
        delete_untagged=True, keep_referrers=options.keep_referrers, gc_compatible=options.gc_compatible
    )


def orphans(inv: Inventory, options: ReachOptions) -> pd.DataFrame:
    """The blobs a sweep would remove under `options`."""
    return orphan_frame(inv, reach(inv, options))


def orphan_frame(inv: Inventory, result: Reachability) -> pd.DataFrame:
    blobs = result.orphans
    links = inv.layer_links
    # Links go by the position of their target among the orphans.
    orphan = positions(links["target"], blobs["digest"])
    held = orphan >= 0
    links = pd.DataFrame({"orphan": orphan[held], "repository": links["repository"][held].reset_index(drop=True)})
    linked_from = join_groups(links.drop_duplicates().sort_values(["orphan", "repository"]), "orphan", "repository")
    frame = pd.DataFrame(
        {
            "digest": blobs["digest"],
            "size": blobs["size"],
            "mtime": blobs["mtime"],
            "kind": blob_kinds(inv, blobs),
            "linked_from": linked_from.reindex(np.arange(len(blobs))).set_axis(blobs.index).fillna(""),
        }
    )
    return frame.sort_values(["size", "digest"], ascending=[False, True], ignore_index=True)[ORPHAN_COLUMNS]


@dataclass(frozen=True)
class GcDifference:
    """What the reference `garbage-collect --delete-untagged` would delete that this tool keeps."""

    index_children: int
    referrers: int
    other_manifests: int
    manifest_rows: pd.DataFrame
    blob_bytes: int
    blobs: int

    @property
    def manifests(self) -> int:
        return len(self.manifest_rows)


def gc_difference(inv: Inventory, keep_referrers: bool = True, safe: Reachability | None = None) -> GcDifference:
    """Compare the stock collector's `--delete-untagged` answer with the safe one (reused when given)."""
    stock = reach(inv, ReachOptions(delete_untagged=True, gc_compatible=True))
    if safe is None:
        safe = reach(inv, ReachOptions(delete_untagged=True, keep_referrers=keep_referrers))
    extra = stock.present[~stock.kept & safe.kept].reset_index(drop=True)
    # A child counts as such when a manifest the safe mode keeps, in the same repository, lists it.
    refs = references(inv, "child")
    parents = safe.present[safe.kept][["repository", "target"]].rename(columns={"target": "manifest"})
    listed = parents.merge(refs, on="manifest")[["repository", "digest"]].drop_duplicates()
    is_child = extra[["repository", "digest"]].merge(listed, how="left", indicator=True)["_merge"].eq("both")
    subjects = inv.manifests[inv.manifests["subject"].notna()]["digest"]
    is_referrer = isin(extra["target"], subjects) & ~is_child
    extra_blobs = inv.blobs[safe.marked & ~stock.marked]
    return GcDifference(
        index_children=int(is_child.sum()),
        referrers=int(is_referrer.sum()),
        other_manifests=int((~is_child & ~is_referrer).sum()),
        manifest_rows=extra,
        blob_bytes=int(extra_blobs["size"].sum()),
        blobs=len(extra_blobs),
    )

"""What a garbage collection would remove: untagged manifests and orphan blobs, with what they free."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from storage_audit.analysis.graph import Graph, Reachability, ReachOptions
from storage_audit.analysis.options import Collector
from storage_audit.analysis.reach import blob_kinds, reclaimable_alone
from storage_audit.inventory.frames import distinct_joined, isin, pick, positions, sorted_rows
from storage_audit.inventory.tables import Inventory

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


def untagged(source: Graph | Inventory, options: ReachOptions) -> pd.DataFrame:
    """Per repository, the revisions no tag reaches under `options` (delete_untagged is implied)."""
    graph = Graph.of(source)
    return untagged_frame(graph, graph.reach(_untagged_options(options)))


def untagged_frame(graph: Graph, result: Reachability) -> pd.DataFrame:
    """The rows of `untagged` from an engine answer given with delete_untagged."""
    inv = graph.inv
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
            "reclaimable_bytes": reclaimable_alone(graph, result, np.flatnonzero(~result.kept)),
        }
    )
    for col in ("media_type", "artifact_type", "subject", "repository", "digest"):
        frame[col] = frame[col].astype("string")
    return frame.sort_values(["repository", "pushed_at", "digest"], ignore_index=True)[UNTAGGED_COLUMNS]


def _untagged_options(options: ReachOptions) -> ReachOptions:
    return ReachOptions(delete_untagged=True, keep_referrers=options.keep_referrers, collector=options.collector)


def orphans(source: Graph | Inventory, options: ReachOptions) -> pd.DataFrame:
    """The blobs a sweep would remove under `options`."""
    graph = Graph.of(source)
    return orphan_frame(graph.inv, graph.reach(options))


def orphan_frame(inv: Inventory, result: Reachability) -> pd.DataFrame:
    blobs = result.orphans
    links = inv.layer_links
    # Links go by the position of their target among the orphans.
    orphan = positions(links["target"], blobs["digest"])
    held = orphan >= 0
    linked_from = distinct_joined(orphan[held], links["repository"][held], len(blobs))
    frame = pd.DataFrame(
        {
            "digest": blobs["digest"],
            "size": blobs["size"],
            "mtime": blobs["mtime"],
            "kind": blob_kinds(inv, blobs),
            "linked_from": linked_from.set_axis(blobs.index),
        }
    )
    return sorted_rows(frame, [("size", "descending"), ("digest", "ascending")])[ORPHAN_COLUMNS]


@dataclass(frozen=True)
class GcDifference:
    """What one version of the reference `garbage-collect` (with or without `--delete-untagged`) would delete that
    this tool keeps.

    Blobs count apart: `protected_blobs` of them are kept only because broken
    references (dangling tags, index children without a revision link) name them.
    """

    collector: Collector
    index_children: int
    referrers: int
    other_manifests: int
    manifest_rows: pd.DataFrame
    blob_bytes: int
    blobs: int
    protected_blobs: int = 0
    protected_bytes: int = 0

    @property
    def manifests(self) -> int:
        return len(self.manifest_rows)


def gc_difference(
    source: Graph | Inventory,
    keep_referrers: bool = True,
    safe: Reachability | None = None,
    delete_untagged: bool = True,
    collector: Collector = Collector.V2_8,
) -> GcDifference:
    """Compare a stock collector's answer (`--delete-untagged` or plain) with the safe one (reused when given)."""
    graph = Graph.of(source)
    inv = graph.inv
    stock = graph.reach(ReachOptions(delete_untagged=delete_untagged, collector=collector))
    if safe is None:
        safe = graph.reach(ReachOptions(delete_untagged=delete_untagged, keep_referrers=keep_referrers))
    extra = stock.present[~stock.kept & safe.kept].reset_index(drop=True)
    # A child counts as such when a manifest the safe mode keeps, in the same repository, lists it.
    refs = graph.children
    parents = safe.present[safe.kept][["repository", "target"]].rename(columns={"target": "manifest"})
    listed = parents.merge(refs, on="manifest")[["repository", "digest"]].drop_duplicates()
    is_child = extra[["repository", "digest"]].merge(listed, how="left", indicator=True)["_merge"].eq("both")
    subjects = inv.manifests[inv.manifests["subject"].notna()]["digest"]
    is_referrer = isin(extra["target"], subjects) & ~is_child
    extra_marks = safe.marked & ~stock.marked
    extra_blobs = inv.blobs[extra_marks]
    # What no kept revision holds is kept for the broken references alone.
    held = np.zeros(len(inv.blobs), dtype=bool)
    held[safe.holds["blob"].to_numpy()[safe.kept[safe.holds["owner"].to_numpy()]]] = True
    protected = inv.blobs[extra_marks & ~held]
    return GcDifference(
        collector=collector,
        index_children=int(is_child.sum()),
        referrers=int(is_referrer.sum()),
        other_manifests=int((~is_child & ~is_referrer).sum()),
        manifest_rows=extra,
        blob_bytes=int(extra_blobs["size"].sum()),
        blobs=len(extra_blobs),
        protected_blobs=len(protected),
        protected_bytes=int(protected["size"].sum()),
    )

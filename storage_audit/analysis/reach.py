"""The reachability engine: which manifest revisions are kept and which blobs a sweep would remove."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage_audit.analysis.graph import (
    HOLDING_REFS,
    Graph,
    Reachability,
    ReachOptions,
    RevisionIndex,
    holdings,
    present_revisions,
    references,
)
from storage_audit.core.findings import Finding, Kind
from storage_audit.core.paths import Digest, LayerLink, TagCurrentLink, path_for
from storage_audit.inventory.frames import isin, positions
from storage_audit.inventory.tables import Inventory

BLOB_KINDS = ("unknown", "layer", "config", "manifest")

__all__ = [
    "BLOB_KINDS",
    "HOLDING_REFS",
    "Graph",
    "ReachOptions",
    "Reachability",
    "RevisionIndex",
    "blob_kinds",
    "holdings",
    "present_revisions",
    "reach",
    "reach_findings",
    "reclaimable_alone",
    "references",
]


def reach(source: Graph | Inventory, options: ReachOptions | None = None) -> Reachability:
    """The engine's answer under `options`, from the graph (built here when given an inventory)."""
    return Graph.of(source).reach(options)


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


def reclaimable_alone(graph: Graph, result: Reachability, rows: np.ndarray) -> np.ndarray:
    """Bytes freed by deleting each revision at `rows` in `result.present` alone, every other revision staying.

    A blob counts when the revision is its only holder across all repositories
    and no broken reference of the safe engine protects it (result.kept staying kept).
    """
    inv = graph.inv
    holds = result.holds
    blob = holds["blob"].to_numpy()
    sole = np.bincount(blob, minlength=len(inv.blobs)) == 1
    sole[graph.protection(result.kept)["blob"].to_numpy()] = False
    mine = holds[sole[blob]]
    sizes = pd.Series(inv.blobs["size"].to_numpy()[mine["blob"].to_numpy()], index=mine.index)
    freed = sizes.groupby(mine["owner"]).sum()
    return freed.reindex(rows, fill_value=0).to_numpy(dtype=np.int64)


def reach_findings(graph: Graph, result: Reachability) -> list[Finding]:
    """What the engine notices: dangling tags and layer links to blobs that are gone or orphaned."""
    inv = graph.inv
    out: list[Finding] = []
    for row in graph.dangling_tags().itertuples(index=False):
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

"""Registry 3's `garbage-collect` mark, as distribution's `MarkAndSweep` does it, over one analysis graph.

Read from distribution/distribution `registry/storage/garbagecollect.go` at commit
011b49ce4402b5cbcb72628f2d34d87300328951 (main, the v3 module). Repositories are walked one after the
other, each marking from its roots: with `--delete-untagged` the revisions some tag's `current` names,
else every revision. A marked manifest marks each reference and descends into it only when that
reference was not marked before and is a revision of the same repository (`markManifestReferences`),
so what gets marked depends on the order of the walk. An untagged revision is only a candidate: it is
deleted when its digest ends up marked nowhere (`unmarkReferencedManifest`), and it is neither a
candidate nor marked when its repository has no tags (`Tags.All` answers ErrRepositoryUnknown).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from storage_audit.inventory.frames import isin, positions

if TYPE_CHECKING:
    from storage_audit.analysis.graph import Graph


def walk_ranks(names: list[str]) -> np.ndarray:
    """The rank of each repository in registry 3's walk of `repositories/`: depth first, each directory's
    entries in byte order, a repository met at its `_manifests` entry (so `a/0x` comes before `a`, `a` and
    `a/b` before `a-b`). This is the filesystem driver's order; a flat listing of a bucket may differ where
    a name continues with `-` or `.` after another ends."""
    keys = [(*name.split("/"), "_manifests") for name in names]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[order] = np.arange(len(keys))
    return ranks


def mark(graph: Graph, delete_untagged: bool, holding: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(kept, marked): a bool array over `graph.present`, the revisions registry 3 keeps, and one over the
    inventory's blobs, those its mark reaches; `holding` are the reference types `References()` returns."""
    inv, present, index = graph.inv, graph.present, graph.index
    rows = len(present)
    repository = index.repositories
    # Each repository's rank in the walk, by its code (the first row of its name).
    codes = np.unique(repository)
    rank_of = np.zeros(max(rows, 1), dtype=np.int64)
    rank_of[codes] = walk_ranks([str(name) for name in present["repository"].iloc[codes]])
    rank = rank_of[repository]
    roots = graph.tagged() if delete_untagged else np.ones(rows, dtype=bool)
    expanded = _descend(graph, roots, rank, holding)
    holds = graph.holds
    marked = np.zeros(len(inv.blobs), dtype=bool)
    marked[holds["blob"].to_numpy()[expanded[holds["owner"].to_numpy()]]] = True
    if not delete_untagged:
        return np.ones(rows, dtype=bool), marked
    # A candidate stays when its digest is marked anywhere; so does every revision of a repository without tags.
    blob_of = positions(present["target"], inv.blobs["digest"])
    marked_here = marked[np.maximum(blob_of, 0)] & (blob_of >= 0)
    has_tags = isin(present["repository"], inv.tags["repository"]).to_numpy()
    return roots | marked_here | ~has_tags, marked


def _descend(graph: Graph, roots: np.ndarray, rank: np.ndarray, holding: tuple[str, ...]) -> np.ndarray:
    """A bool array over `graph.present`: the revisions whose references get marked, the roots and the
    references the walk descends into.

    Only references that are themselves revisions somewhere can be descended into, so only those are
    followed one by one; every root is descended into whatever was marked before.
    """
    inv, present, index = graph.inv, graph.present, graph.index
    repository, digest, target = index.repositories, index.digests, graph._target_codes
    refs = inv.references
    held = isin(refs["ref_type"], holding).to_numpy()
    parents = positions(refs["manifest"][held], present["target"])
    children = positions(refs["digest"][held], present["digest"])
    valid = (parents >= 0) & (children >= 0)
    edges: dict[int, list[int]] = {}
    for key in np.unique(parents[valid] * len(present) + children[valid]).tolist():
        parent, child = divmod(key, len(present))
        edges.setdefault(parent, []).append(child)
    expanded = roots.copy()
    if not edges:
        return expanded
    # The earliest rank at which each digest is a root: marked from then on.
    never = np.iinfo(np.int64).max
    first_root = np.full(len(present), never, dtype=np.int64)
    np.minimum.at(first_root, digest[roots], rank[roots])
    # The present revisions of the digests some reference names, by (repository code, digest code).
    named = np.flatnonzero(np.isin(digest, np.fromiter({c for cs in edges.values() for c in cs}, dtype=np.int64)))
    revision = {(int(repository[row]), int(digest[row])): int(row) for row in named}
    marked: set[int] = set()
    starts = np.flatnonzero(roots & np.isin(target, np.fromiter(edges, dtype=np.int64)))
    for start in starts[np.argsort(rank[starts], kind="stable")]:
        here, at = int(rank[start]), int(repository[start])
        todo = [int(start)]
        while todo:
            for child in edges.get(int(target[todo.pop()]), ()):
                # Marked before (as a root of an earlier repository, or as a reference): not descended into.
                if child in marked or first_root[child] < here:
                    continue
                marked.add(child)
                row = revision.get((at, child))
                if row is not None:
                    expanded[row] = True
                    todo.append(row)
    return expanded

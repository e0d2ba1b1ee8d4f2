"""Space reports: where the bytes are, per repository, tag, manifest, blob and upload, plus a summary."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from storage_audit.analysis.check import check as check_findings
from storage_audit.analysis.check import severity_counts
from storage_audit.analysis.graph import Graph, Reachability, ReachOptions, closure, holdings
from storage_audit.analysis.options import COLUMNS, By, Collector, ReportOptions, check
from storage_audit.analysis.reach import blob_kinds
from storage_audit.core.text import size
from storage_audit.core.view import View
from storage_audit.inventory.frames import isin, join_groups, pick, positions
from storage_audit.inventory.tables import Inventory

STR: Final = "string"
INT: Final = "int64"


# The default sort, largest first, and the columns that break its ties (always ascending).
MAIN_BYTES: dict[By, str] = {
    By.REPOSITORY: "total_bytes",
    By.TAG: "image_bytes",
    By.MANIFEST: "bytes",
    By.BLOB: "size",
    By.UPLOAD: "bytes",
}
KEYS: dict[By, tuple[str, ...]] = {
    By.REPOSITORY: ("repository",),
    By.TAG: ("repository", "tag"),
    By.MANIFEST: ("repository", "digest"),
    By.BLOB: ("digest",),
    By.UPLOAD: ("repository", "id"),
}


def report(source: Graph | Inventory, options: ReportOptions) -> pd.DataFrame:
    """The view `options.by` of an inventory (or its graph), filtered, sorted and cut as asked; raises ReportError."""
    check(options)
    graph = Graph.of(source)
    if options.by is By.BLOB and options.repository is not None:
        frame = blobs(graph, options.repository, options.collector)
        return arrange(frame, options.by, options.sort, options.top)
    return finish(whole(graph, options.by, options.collector), options)


def whole(source: Graph | Inventory, by: By, collector: Collector | None = None) -> pd.DataFrame:
    """The view `by` of every repository, before narrowing, sorting and cutting: what a snapshot stores (with a
    collector: what is untagged, orphan and reclaimable by that version of the stock collector's answer)."""
    graph = Graph.of(source)
    builders: dict[By, Callable[[], pd.DataFrame]] = {
        By.SUMMARY: lambda: summary(graph, collector),
        By.REPOSITORY: lambda: repositories(graph, collector),
        By.TAG: lambda: tags(graph),
        By.MANIFEST: lambda: manifests(graph, collector),
        By.BLOB: lambda: blobs(graph, collector=collector),
        By.UPLOAD: lambda: uploads(graph),
    }
    return builders[by]()


class WholeViews(Mapping[str, pd.DataFrame]):
    """Every whole view of a graph by name, each computed when asked for and not kept: writing them one
    after the other holds one at a time."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def __getitem__(self, name: str) -> pd.DataFrame:
        return whole(self.graph, By(name))

    def __iter__(self) -> Iterator[str]:
        return iter(by.value for by in By)

    def __len__(self) -> int:
        return len(By)


def finish(frame: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Narrow a whole view to the repositories matching the glob, then sort and cut it; raises ReportError."""
    check(options)
    if options.by is By.SUMMARY:
        return frame
    if options.repository is not None:
        frame = frame[_matching(frame["repository"], options.repository)].reset_index(drop=True)
    return arrange(frame, options.by, options.sort, options.top)


def arrange(frame: pd.DataFrame, by: By, sort: str | None = None, top: int | None = None) -> pd.DataFrame:
    """Sort largest (or latest) first for numbers and times, A to Z for text; ties by the view's keys."""
    column = sort or MAIN_BYTES[by]
    dtype = frame[column].dtype
    descending = pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    descending = descending or isinstance(dtype, pd.DatetimeTZDtype)
    keys = [k for k in KEYS[by] if k != column]
    out = frame.sort_values(
        [column, *keys], ascending=[not descending] + [True] * len(keys), na_position="last", kind="stable"
    )
    if top is not None:
        out = out.head(top)
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------
# Shared pieces


def _sizes(graph: Graph, blobs: pd.Series) -> pd.Series:
    """The size of each blob, given by its position in `inv.blobs`, indexed like `blobs`."""
    return pd.Series(graph.inv.blobs["size"].to_numpy()[blobs.to_numpy()], index=blobs.index)


def _bytes_by(pairs: pd.DataFrame, key: str, graph: Graph) -> pd.Series:
    """Sum of the sizes of the distinct blobs (positions in `inv.blobs`) each `key` holds."""
    distinct = pairs[[key, "blob"]].drop_duplicates()
    return _sizes(graph, distinct["blob"]).groupby(distinct[key]).sum()


def _protected(graph: Graph, kept: np.ndarray | None) -> np.ndarray:
    """A bool array over the blobs: those broken references keep (dangling tags; with `kept`, the missing
    children of what those revisions hold), which the engine never sweeps, so no deletion frees."""
    protected = np.zeros(len(graph.inv.blobs), dtype=bool)
    protected[graph.protection(kept)["blob"].to_numpy()] = True
    return protected


def _matching(names: pd.Series, pattern: str | None) -> pd.Series:
    """Rows whose repository name matches the glob; each distinct name is tested once."""
    if pattern is None:
        return pd.Series(True, index=names.index)
    return isin(names, [name for name in names.dropna().unique() if fnmatch.fnmatchcase(name, pattern)])


def _safe(graph: Graph, collector: Collector | None = None) -> Reachability:
    """What deleting untagged manifests keeps: the safe answer, or that collector's."""
    return graph.reach(ReachOptions(delete_untagged=True, collector=collector))


@dataclass(frozen=True)
class _Nodes:
    """Owners of blobs: every present revision, then one per distinct target of a dangling tag.

    Positions below len(present) are the graph's positions in `present`, so
    its edge arrays index these nodes directly.
    """

    frame: pd.DataFrame  # repository, digest, target, node
    holds: pd.DataFrame  # node, blob


def _nodes(graph: Graph) -> _Nodes:
    dangling = graph.dangling_tags().dropna(subset=["digest"])
    owners = dangling[["repository", "digest"]].drop_duplicates().assign(target=lambda f: f["digest"])
    # A dangling target holds what the engine protects for it: its content, children included.
    contents = graph.content_closure(owners["digest"])
    held = holdings(graph.inv, pd.DataFrame({"target": contents["digest"]}))
    owner = contents["root"].to_numpy()[held["owner"].to_numpy()] + len(graph.present)
    extra = pd.DataFrame({"owner": owner, "blob": held["blob"].to_numpy()})
    frame = pd.concat([graph.present[["repository", "digest", "target"]], owners], ignore_index=True)
    frame = frame.assign(node=np.arange(len(frame)))
    holds = pd.concat([graph.holds, extra], ignore_index=True).rename(columns={"owner": "node"})
    return _Nodes(frame=frame, holds=holds)


def _tag_nodes(graph: Graph, nodes: _Nodes) -> np.ndarray:
    """For each tag, its node: the revision it names, else the node of its dangling target; -1 for neither."""
    node = graph.tag_rows.copy()
    dangling = np.flatnonzero(node < 0)
    owners = nodes.frame.iloc[len(graph.present) :][["repository", "digest", "node"]]
    named = graph.inv.tags.iloc[dangling][["repository", "digest"]].reset_index(drop=True)
    node[dangling] = named.merge(owners, how="left", on=["repository", "digest"])["node"].fillna(-1).to_numpy(np.int64)
    return node


def _closure_pairs(roots: pd.DataFrame, graph: Graph, nodes: _Nodes, keep_referrers: bool) -> pd.DataFrame:
    """(root, node) for every node reachable from each root's node along the graph's edges, the root's own included."""
    return closure(roots["root"].to_numpy(), roots["node"].to_numpy(), *graph.edges(keep_referrers), len(nodes.frame))


def _strings(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    for col in columns:
        frame[col] = frame[col].astype(STR)
    return frame


# --------------------------------------------------------------------------
# Views


def repositories(graph: Graph, collector: Collector | None = None) -> pd.DataFrame:
    """One row per repository: counts, and the bytes it keeps alive, alone and shared.

    A repository keeps what its present revisions hold and what its broken
    references (dangling tags, index children without a revision link) protect.
    """
    inv = graph.inv
    safe = _safe(graph, collector)
    names = inv.repositories["repository"]
    codes = graph.repository_codes
    per_repo = graph.repository_blobs()
    blob = per_repo["blob"].to_numpy()
    sizes = _sizes(graph, per_repo["blob"])
    holders = np.bincount(blob, minlength=len(inv.blobs))
    total = sizes.groupby(per_repo["repository"]).sum()
    exclusive = sizes[holders[blob] == 1].groupby(per_repo["repository"]).sum()

    # Reclaimable: one repository keeps the blob, and deleting untagged manifests leaves it unmarked (no kept
    # revision holds it, and no broken reference the safe engine follows protects it).
    freed = (holders == 1) & ~safe.marked
    reclaimable = sizes[freed[blob]].groupby(per_repo["repository"]).sum()

    def per(series: pd.Series) -> pd.Series:
        return series.reindex(names, fill_value=0).set_axis(names.index).astype(INT)

    def per_code(series: pd.Series) -> pd.Series:
        return series.reindex(np.arange(len(names)), fill_value=0).set_axis(names.index).astype(INT)

    frame = pd.DataFrame(
        {
            "repository": names,
            "tags": per(inv.tags.groupby("repository").size()),
            "manifests": per_code(pd.Series(codes).value_counts()),
            "untagged_manifests": per_code(pd.Series(codes[~safe.kept]).value_counts()),
            "total_bytes": per_code(total),
            "exclusive_bytes": per_code(exclusive),
            "reclaimable_bytes": per_code(reclaimable),
            "upload_bytes": per(inv.uploads.groupby("repository")["bytes"].sum()),
            "last_push": inv.tags.groupby("repository")["pushed_at"].max().reindex(names).set_axis(names.index),
        }
    )
    frame["shared_bytes"] = frame["total_bytes"] - frame["exclusive_bytes"]
    frame["last_push"] = pd.to_datetime(frame["last_push"], utc=True)
    return _strings(frame, ("repository",))[list(COLUMNS[By.REPOSITORY])]


def tags(graph: Graph) -> pd.DataFrame:
    """One row per tag: what it names, the image's bytes, and what deleting it alone would free."""
    inv = graph.inv
    nodes = _nodes(graph)
    tag_rows = inv.tags.reset_index(drop=True)
    node = _tag_nodes(graph, nodes)
    roots = pd.DataFrame({"root": np.arange(len(tag_rows)), "node": node})[node >= 0]

    image = _closure_pairs(roots, graph, nodes, keep_referrers=False)
    image_bytes = _bytes_by(image.merge(nodes.holds, on="node"), "root", graph)

    # Under the safe semantics a node stays while some tag reaches it (children and
    # referrers included), so a blob goes with a tag when every holder is reached by that tag alone.
    kept = _closure_pairs(roots, graph, nodes, keep_referrers=True)
    reached_by = kept.groupby("node")["root"].agg(["nunique", "first"])
    sole = reached_by[reached_by["nunique"] == 1]["first"].rename("sole")
    marks = nodes.holds.merge(sole, left_on="node", right_index=True, how="left")
    per_blob = marks.groupby("blob")["sole"].agg(solo="count", holders="size", tags="nunique", root="first")
    freed = per_blob[(per_blob["solo"] == per_blob["holders"]) & (per_blob["tags"] == 1)]
    # Which indexes stay depends on the tag deleted: only what dangling tags protect is certain to stay.
    freed = freed[~_protected(graph, None)[freed.index.to_numpy()]].astype({"root": INT})
    exclusive = _sizes(graph, freed.index.to_series()).groupby(freed["root"]).sum()

    targets = pick(nodes.frame["target"], node, tag_rows.index).fillna(tag_rows["digest"])
    children = inv.references[(inv.references["ref_type"] == "child") & inv.references["platform"].notna()]
    platforms = join_groups(children.sort_values(["manifest", "position"]), "manifest", "platform")
    history = inv.tag_history.groupby(["repository", "tag"]).size().rename("history")
    position = pd.Series(np.arange(len(tag_rows)), index=tag_rows.index)

    frame = pd.DataFrame(
        {
            "repository": tag_rows["repository"],
            "tag": tag_rows["tag"],
            "digest": tag_rows["digest"],
            "media_type": pick(inv.manifests["media_type"], positions(targets, inv.manifests["digest"]), targets.index),
            "platforms": pick(platforms, positions(targets, platforms.index), targets.index).fillna(""),
            "pushed_at": tag_rows["pushed_at"],
            "image_bytes": position.map(image_bytes).fillna(0).astype(INT),
            "exclusive_bytes": position.map(exclusive).fillna(0).astype(INT),
        }
    )
    frame = frame.merge(history, left_on=["repository", "tag"], right_index=True, how="left")
    frame["history"] = frame["history"].fillna(0).astype(INT)
    frame = _strings(frame, ("repository", "tag", "digest", "media_type", "platforms"))[list(COLUMNS[By.TAG])]
    return frame.reset_index(drop=True)


def manifests(graph: Graph, collector: Collector | None = None) -> pd.DataFrame:
    """One row per present revision: its kind, its tags, whether a tag reaches it (with a collector: whether that
    collector keeps it), and its image's bytes."""
    inv = graph.inv
    safe = _safe(graph, collector)
    present = graph.present
    nodes = _nodes(graph)
    roots = nodes.frame.iloc[: len(present)][["node"]].assign(root=lambda f: f["node"])
    image = _closure_pairs(roots, graph, nodes, keep_referrers=False)
    image_bytes = _bytes_by(image.merge(nodes.holds, on="node"), "root", graph)
    named = inv.tags.sort_values(["repository", "tag"])
    named = named.assign(node=graph.index.find(named["repository"], named["digest"]))
    tag_names = join_groups(named[named["node"] >= 0], "node", "tag")
    info = positions(present["target"], inv.manifests["digest"])

    frame = pd.DataFrame(
        {
            "repository": present["repository"],
            "digest": present["digest"],
            "media_type": pick(inv.manifests["media_type"], info, present.index),
            "artifact_type": pick(inv.manifests["artifact_type"], info, present.index),
            "tags": tag_names.reindex(present.index).astype(STR).fillna(""),
            "reachable": safe.kept,
            "bytes": pd.Series(np.arange(len(present))).map(image_bytes).fillna(0).astype(INT),
        }
    )
    frame = _strings(frame, ("repository", "digest", "media_type", "artifact_type", "tags"))
    return frame[list(COLUMNS[By.MANIFEST])].reset_index(drop=True)


def blobs(graph: Graph, pattern: str | None = None, collector: Collector | None = None) -> pd.DataFrame:
    """One row per stored blob: who keeps it, and whether anything references it at all (with a collector: whether
    its plain sweep removes it)."""
    inv = graph.inv
    plain = graph.reach(ReachOptions(collector=collector))
    holds = plain.holds
    owner = holds["owner"].to_numpy()
    # Manifests go by the code of their digest: one revision pushed to several repositories counts once.
    digests = graph.index.digests[owner]
    manifests = pd.DataFrame({"digest": digests, "blob": holds["blob"]}).drop_duplicates()["blob"]
    per_repo = graph.repository_blobs()
    frame = pd.DataFrame(
        {
            "digest": inv.blobs["digest"],
            "size": inv.blobs["size"].astype(INT),
            "repositories": np.bincount(per_repo["blob"], minlength=len(inv.blobs)),
            "manifests": np.bincount(manifests, minlength=len(inv.blobs)),
            "orphan": ~plain.marked,
            "kind": blob_kinds(inv),
        }
    )
    frame = _strings(frame, ("digest", "kind"))[list(COLUMNS[By.BLOB])]
    if pattern is not None:
        names = inv.repositories["repository"]
        matching = _matching(names, pattern).to_numpy()
        code = per_repo["repository"].to_numpy()
        wanted = np.zeros(len(inv.blobs), dtype=bool)
        wanted[per_repo["blob"].to_numpy()[(code >= 0) & matching[np.maximum(code, 0)]]] = True
        frame = frame[wanted]
    return frame.reset_index(drop=True)


def uploads(graph: Graph) -> pd.DataFrame:
    """One row per upload in progress, with its age at scan time."""
    inv = graph.inv
    up = inv.uploads
    scanned_at = pd.Timestamp(inv.scanned_at)
    scanned_at = scanned_at.tz_localize("UTC") if scanned_at.tzinfo is None else scanned_at
    age = (scanned_at - up["started_at"]).dt.total_seconds()
    frame = pd.DataFrame(
        {
            "repository": up["repository"],
            "id": up["id"],
            "bytes": up["bytes"].astype(INT),
            "started_at": up["started_at"],
            "age": np.floor(age).astype("Int64"),
        }
    )
    return _strings(frame, ("repository", "id"))[list(COLUMNS[By.UPLOAD])].reset_index(drop=True)


def summary(graph: Graph, collector: Collector | None = None) -> pd.DataFrame:
    """One row: counts, physical and logical bytes, what collecting would free, findings by severity.

    The findings are `check`'s with its default options, so the summary counts what `check`, the HTML
    page and the metrics count.
    """
    inv = graph.inv
    plain = graph.reach(ReachOptions(collector=collector))
    safe = _safe(graph, collector)
    physical = int(inv.blobs["size"].sum())
    logical = int(_sizes(graph, graph.repository_blobs()["blob"]).sum())
    orphan_bytes = int(plain.orphans["size"].sum())
    severities = severity_counts(check_findings(graph))
    row = {
        "repositories": len(inv.repositories),
        "tags": len(inv.tags),
        "manifests": len(safe.present),
        "untagged_manifests": int((~safe.kept).sum()),
        "blobs": len(inv.blobs),
        "orphan_blobs": len(plain.orphans),
        "physical_bytes": physical,
        "logical_bytes": logical,
        "dedup_ratio": logical / physical if physical else 0.0,
        "orphan_bytes": orphan_bytes,
        "untagged_reclaimable_bytes": int(safe.orphans["size"].sum()) - orphan_bytes,
        "upload_bytes": int(inv.uploads["bytes"].sum()),
        "findings_error": severities["error"],
        "findings_warning": severities["warning"],
        "findings_info": severities["info"],
    }
    frame = pd.DataFrame([row], columns=list(COLUMNS[By.SUMMARY]))
    return frame.astype({c: INT for c in COLUMNS[By.SUMMARY] if c != "dedup_ratio"} | {"dedup_ratio": "float64"})


# --------------------------------------------------------------------------
# Presentation hints


def summary_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """The summary as (key, value) rows for people: sizes humanized, counts with separators."""
    row = frame.iloc[0]
    values = []
    for key in frame.columns:
        value = row[key]
        if key.endswith("_bytes"):
            values.append(size(int(value)))
        elif key == "dedup_ratio":
            values.append(f"{float(value):.2f}")
        else:
            values.append(f"{int(value):,}")
    return pd.DataFrame({"key": list(frame.columns), "value": values}, dtype=STR)


def view(by: By, frame: pd.DataFrame, table: bool = False) -> View:
    """How to show `frame`: the summary as one object (or key/value rows in a table), the rest as rows."""
    if by is By.SUMMARY:
        if table:
            return View(summary_pairs(frame), title="storage summary")
        return View(frame, title="storage summary", single=True)
    hints: dict[By, View] = {
        By.REPOSITORY: View(
            frame,
            title="space per repository",
            size_columns=("total_bytes", "exclusive_bytes", "shared_bytes", "reclaimable_bytes", "upload_bytes"),
            optional_columns=("last_push", "upload_bytes", "shared_bytes", "untagged_manifests", "tags", "manifests"),
            total_columns=(
                "tags",
                "manifests",
                "untagged_manifests",
                "total_bytes",
                "exclusive_bytes",
                "shared_bytes",
                "reclaimable_bytes",
                "upload_bytes",
            ),
        ),
        By.TAG: View(
            frame,
            title="space per tag",
            size_columns=("image_bytes", "exclusive_bytes"),
            optional_columns=("media_type", "platforms", "history", "pushed_at", "digest"),
            total_columns=("exclusive_bytes",),
        ),
        By.MANIFEST: View(
            frame,
            title="space per manifest",
            size_columns=("bytes",),
            optional_columns=("artifact_type", "media_type", "tags"),
            total_columns=("reachable",),
        ),
        By.BLOB: View(
            frame,
            title="blobs",
            size_columns=("size",),
            optional_columns=("manifests", "kind"),
            total_columns=("size",),
        ),
        By.UPLOAD: View(
            frame,
            title="uploads in progress",
            size_columns=("bytes",),
            optional_columns=("started_at", "id"),
            total_columns=("bytes",),
            duration_columns=("age",),
        ),
    }
    return hints[by]

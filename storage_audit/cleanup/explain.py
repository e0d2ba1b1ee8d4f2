"""The plan's verdict on every tag and untagged revision of the repositories its rules touch, with its reason and
the bytes each deletion frees: what `plan --explain` shows and the HTML report's retention section."""

from __future__ import annotations

import numpy as np
import pandas as pd

from storage_audit.analysis.graph import Graph
from storage_audit.cleanup.plan import Decision, revision_reason
from storage_audit.core.view import View

COLUMNS = ("repository", "tag", "digest", "verdict", "reason", "frees_bytes")
KEPT, DELETED = "kept", "deleted"


def explanation(graph: Graph, decision: Decision) -> pd.DataFrame:
    """One row per tag of a touched repository and per revision there that no tag names or that the plan
    removes: its verdict and reason from `decision` (the one the plan's actions come from), and for a deletion
    the bytes it frees: for a tag, the bytes no other tag keeps (the report's exclusive_bytes, which count what
    it reached); for a revision no tag reached, those of the blobs the plan removes that no other revision
    holds."""
    from storage_audit.analysis import report

    inv = graph.inv
    verdicts = decision.tags
    exclusive = report.tags(graph)["exclusive_bytes"].to_numpy()
    touched = verdicts["touched"].to_numpy()
    tags = inv.tags[touched]
    tag_rows = pd.DataFrame(
        {
            "repository": tags["repository"].astype("string"),
            "tag": tags["tag"].astype("string"),
            "digest": tags["digest"].astype("string"),
            "verdict": np.where(verdicts["deleted"][touched], DELETED, KEPT),
            "reason": verdicts["reason"][touched].astype("string"),
            "frees_bytes": np.where(verdicts["deleted"][touched], exclusive[touched], 0),
            "_order": 0,
        }
    )
    return (
        pd.concat([tag_rows, _revision_rows(graph, decision)], ignore_index=True)
        .sort_values(["repository", "_order", "tag", "digest"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _revision_rows(graph: Graph, decision: Decision) -> pd.DataFrame:
    inv = graph.inv
    present = graph.present
    remaining = inv.tags[~decision.tags["deleted"]]
    named_now = graph.tagged()
    named_after = graph.tagged(remaining)
    removed = ~decision.kept
    rows = decision.in_scope & (~named_now | removed)
    reason = pd.Series("", index=present.index, dtype="object")
    for i in np.flatnonzero(rows & removed):
        reason[i] = revision_reason(bool(decision.reached_before[i]))
    # What keeps a revision no tag names: a kept revision that lists it (an index) or that it refers to.
    parents = graph.parents(keep_referrers=True)
    parents = parents[decision.kept[parents["src"].to_numpy()]]
    parents = parents[~(parents["kind"] == "referrer") | decision.keep_referrers[parents["dst"].to_numpy()]]
    parent_of = parents.drop_duplicates("dst").set_index("dst")
    tag_of = remaining.assign(row=graph.tag_rows[~decision.tags["deleted"].to_numpy()]).sort_values("tag")
    tag_of = tag_of[tag_of["row"] >= 0].drop_duplicates("row").set_index("row")["tag"]
    one_run = decision.retention.source is None
    for i in np.flatnonzero(rows & ~removed):
        if i in parent_of.index:
            src, kind = int(parent_of.at[i, "src"]), parent_of.at[i, "kind"]
            tagged = named_after[src]
            what = tag_of[src] if tagged and src in tag_of.index else f"{present.at[src, 'digest'][:19]}…"
            if kind == "child":
                reason[i] = f"child of {'tagged' if tagged else 'kept'} index {what}"
            else:
                reason[i] = f"referrer of {'tagged' if tagged else 'kept'} image {what}"
        elif not decision.delete_untagged[i]:
            reason[i] = (
                "untagged: no --delete-untagged" if one_run else "untagged: not every rule here deletes untagged"
            )
        else:
            reason[i] = "pushed too recently for the grace period or keep_within"
    frees = _revision_bytes(graph, decision)
    picked = present[rows]
    return pd.DataFrame(
        {
            "repository": picked["repository"].astype("string"),
            "tag": pd.Series("", index=picked.index, dtype="string"),
            "digest": picked["digest"].astype("string"),
            "verdict": np.where(removed[rows], DELETED, KEPT),
            "reason": reason[rows].astype("string"),
            # What a deleted tag reached is counted in its exclusive bytes: not again here.
            "frees_bytes": np.where(removed[rows] & ~decision.reached_before[rows], frees[rows], 0),
            "_order": 1,
        }
    )


def _revision_bytes(graph: Graph, decision: Decision) -> np.ndarray:
    """Per present revision, the bytes of the blobs the plan removes that it alone holds."""
    blobs = graph.inv.blobs
    holds = graph.holds
    gone = np.zeros(len(blobs), dtype=bool)
    gone[blobs.index.get_indexer(decision.removed_blobs.index)] = True
    holders = np.bincount(holds["blob"].to_numpy(), minlength=len(blobs))
    sole = holds[(holders[holds["blob"].to_numpy()] == 1) & gone[holds["blob"].to_numpy()]]
    sizes = blobs["size"].to_numpy()[sole["blob"].to_numpy()]
    return np.bincount(sole["owner"].to_numpy(), weights=sizes, minlength=len(graph.present)).astype(np.int64)


def view(frame: pd.DataFrame) -> View:
    """The explanation as a View: a table for people (sizes humanized, the bytes freed totalled), csv or json."""
    return View(
        frame[list(COLUMNS)],
        title="retention: every tag and untagged revision, and why",
        size_columns=("frees_bytes",),
        total_columns=("frees_bytes",),
        optional_columns=("digest",),
    )

"""What a collector would remove from ROOT: the manifests no tag reaches, the blobs nothing kept references."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from storage_audit.analysis.options import Collector, Engine
from storage_audit.operations.inventory import engine_analysis, load, snapshot_findings, unreadable_paths
from storage_audit.roots.resolve import Root, Snapshot

if TYPE_CHECKING:
    import pandas as pd

    from storage_audit.analysis.collect import GcDifference
    from storage_audit.analysis.graph import Graph, Reachability
    from storage_audit.core.view import Rows, View
    from storage_audit.scan.run import ScanOptions


TABLE_ROWS = 100
"""The rows of an answer a table shows (`output.table.MAX_ROWS`, which a test holds equal)."""


@dataclass(frozen=True)
class CollectOptions:
    """What is kept, as `ReachOptions` says (`collector`: answer as that version of the stock collector);
    `compare_gc` also works out what each stock collector would remove beyond the safe answer (not with a
    collector, whose answer it is). `engine` computes the answer: pandas (the analysis graph), or DuckDB from a
    snapshot (no stock collector compared, and registry 3's rule not offered)."""

    delete_untagged: bool = False
    keep_referrers: bool = True
    collector: Collector | None = None
    compare_gc: bool = True
    engine: Engine = Engine.PANDAS
    first: int | None = None


@dataclass(frozen=True)
class Collected:
    """The rows to show, what each stock collector would remove beyond them (one per version; none when not
    compared), and the paths that could not be read, whose content the answer leaves out."""

    view: View
    gc_differences: tuple[GcDifference, ...]
    unreadable: list[str]


def _compared(graph: Graph, options: CollectOptions, result: Reachability) -> tuple[GcDifference, ...]:
    """What each version of the stock collector would remove beyond `result`, in the same mode."""
    if not options.compare_gc or options.collector is not None:
        return ()
    from storage_audit.analysis.collect import gc_difference

    return tuple(
        gc_difference(graph, safe=result, delete_untagged=options.delete_untagged, collector=collector)
        for collector in Collector
    )


def _on_engine(root: Root, options: CollectOptions, untagged: bool) -> Collected:
    """`untagged` or `orphans` computed by SQL from a snapshot, on the engine of `options`."""
    from storage_audit.analysis.engine import Keep

    keep = Keep(options.delete_untagged, options.keep_referrers, options.collector)
    keep.normal()  # refuses what the engine does not offer before the snapshot is read
    rows: Rows
    with ExitStack() as engine:
        analysis = engine.enter_context(engine_analysis(root, options.engine))
        if options.first is not None and not untagged:
            first, rows = analysis.orphans_first(keep, options.first)
        else:
            # Every row is read from the engine as it is written: the answer keeps the engine open till then.
            answer = analysis.untagged_answer(keep) if untagged else analysis.orphans_answer(keep)
            first, rows = answer.head(TABLE_ROWS), answer
            answer.keep_open(engine.pop_all())
    assert isinstance(root, Snapshot)
    view = replace(_untagged_view(first) if untagged else _orphans_view(first), rows=rows)
    return Collected(view, (), unreadable_paths(snapshot_findings(root)))


def _untagged_view(frame: pd.DataFrame) -> View:
    from storage_audit.core.view import View

    return View(
        frame,
        title="untagged manifests",
        size_columns=("manifest_bytes", "reclaimable_bytes"),
        optional_columns=("artifact_type", "subject", "media_type", "manifest_bytes", "pushed_at"),
        total_columns=("manifest_bytes", "reclaimable_bytes"),
    )


def _orphans_view(frame: pd.DataFrame) -> View:
    from storage_audit.core.view import View

    return View(
        frame,
        title="orphan blobs",
        size_columns=("size",),
        optional_columns=("linked_from", "mtime"),
        total_columns=("size",),
    )


def untagged(root: Root, options: CollectOptions | None = None, scan: ScanOptions | None = None) -> Collected:
    """The manifest revisions no tag reaches, per repository, with the bytes each would free alone.

    `options.delete_untagged` is implied: it is what makes a revision untagged.
    """
    options = options or CollectOptions()
    if options.engine is not Engine.PANDAS:
        return _on_engine(root, replace(options, delete_untagged=True), untagged=True)
    inv = load(root, scan)
    from storage_audit.analysis.collect import untagged_frame
    from storage_audit.analysis.graph import Graph, ReachOptions

    graph = Graph(inv)
    options = replace(options, delete_untagged=True)
    result = graph.reach(ReachOptions(True, options.keep_referrers, options.collector))
    view = _untagged_view(untagged_frame(graph, result))
    return Collected(view, _compared(graph, options, result), unreadable_paths(inv.findings))


def orphans(root: Root, options: CollectOptions | None = None, scan: ScanOptions | None = None) -> Collected:
    """The blobs a sweep would remove: no kept manifest in any repository references them.

    The stock collector is compared in the same mode: with `--delete-untagged` or plain.
    """
    options = options or CollectOptions()
    if options.engine is not Engine.PANDAS:
        return _on_engine(root, options, untagged=False)
    inv = load(root, scan)
    from storage_audit.analysis.collect import orphan_frame
    from storage_audit.analysis.graph import Graph, ReachOptions

    graph = Graph(inv)
    result = graph.reach(ReachOptions(options.delete_untagged, options.keep_referrers, options.collector))
    view = _orphans_view(orphan_frame(inv, result))
    return Collected(view, _compared(graph, options, result), unreadable_paths(inv.findings))

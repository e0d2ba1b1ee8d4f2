"""What a collector would remove from ROOT: the manifests no tag reaches, the blobs nothing kept references."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from storage_audit.analysis.options import Collector
from storage_audit.operations.inventory import load, unreadable_paths
from storage_audit.roots.resolve import Root

if TYPE_CHECKING:
    from storage_audit.analysis.collect import GcDifference
    from storage_audit.analysis.graph import Graph, Reachability
    from storage_audit.core.view import View
    from storage_audit.scan.run import ScanOptions


@dataclass(frozen=True)
class CollectOptions:
    """What is kept, as `ReachOptions` says (`collector`: answer as that version of the stock collector);
    `compare_gc` also works out what each stock collector would remove beyond the safe answer (not with a
    collector, whose answer it is)."""

    delete_untagged: bool = False
    keep_referrers: bool = True
    collector: Collector | None = None
    compare_gc: bool = True


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


def untagged(root: Root, options: CollectOptions | None = None, scan: ScanOptions | None = None) -> Collected:
    """The manifest revisions no tag reaches, per repository, with the bytes each would free alone.

    `options.delete_untagged` is implied: it is what makes a revision untagged.
    """
    options = options or CollectOptions()
    inv = load(root, scan)
    from storage_audit.analysis.collect import untagged_frame
    from storage_audit.analysis.graph import Graph, ReachOptions
    from storage_audit.core.view import View

    graph = Graph(inv)
    options = replace(options, delete_untagged=True)
    result = graph.reach(ReachOptions(True, options.keep_referrers, options.collector))
    view = View(
        untagged_frame(graph, result),
        title="untagged manifests",
        size_columns=("manifest_bytes", "reclaimable_bytes"),
        optional_columns=("artifact_type", "subject", "media_type", "manifest_bytes", "pushed_at"),
        total_columns=("manifest_bytes", "reclaimable_bytes"),
    )
    return Collected(view, _compared(graph, options, result), unreadable_paths(inv.findings))


def orphans(root: Root, options: CollectOptions | None = None, scan: ScanOptions | None = None) -> Collected:
    """The blobs a sweep would remove: no kept manifest in any repository references them.

    The stock collector is compared in the same mode: with `--delete-untagged` or plain.
    """
    options = options or CollectOptions()
    inv = load(root, scan)
    from storage_audit.analysis.collect import orphan_frame
    from storage_audit.analysis.graph import Graph, ReachOptions
    from storage_audit.core.view import View

    graph = Graph(inv)
    result = graph.reach(ReachOptions(options.delete_untagged, options.keep_referrers, options.collector))
    view = View(
        orphan_frame(inv, result),
        title="orphan blobs",
        size_columns=("size",),
        optional_columns=("linked_from", "mtime"),
        total_columns=("size",),
    )
    return Collected(view, _compared(graph, options, result), unreadable_paths(inv.findings))

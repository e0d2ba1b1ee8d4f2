"""The inventory of what ROOT designates: a snapshot read, or a storage tree scanned now (and how long that took)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from storage_audit.analysis.options import Engine
from storage_audit.core.errors import UsageError
from storage_audit.roots.resolve import Bucket, LocalTree, Root, RootError, Snapshot

if TYPE_CHECKING:
    import pandas as pd

    from storage_audit.analysis.engine import Analysis
    from storage_audit.inventory.tables import Inventory
    from storage_audit.scan.run import ScanOptions


def load(root: Root, options: ScanOptions | None = None) -> Inventory:
    """The inventory of `root`: read from the snapshot, or scanned now; raises RootError for an unreadable snapshot.

    A scan records its duration (`scan_seconds`); a snapshot keeps the one it stored.
    Operations call this before importing their analysis: a process that has not
    loaded pandas yet has one thread, and starts its scan workers by forking.
    """
    match root:
        case Snapshot(path):
            from storage_audit.inventory.tables import read_snapshot

            try:
                return read_snapshot(path)
            except ValueError as exc:
                raise RootError(f"{path}: {exc}") from exc
        case LocalTree(storage) | Bucket(storage):
            from storage_audit.scan.run import scan

            started = time.monotonic()
            # The tree was found already: an unreadable v2 is the scan's finding, not a ROOT to resolve again.
            inv = scan(storage, options)
            inv.scan_seconds = time.monotonic() - started
            return inv


def snapshot_findings(snapshot: Snapshot) -> pd.DataFrame:
    """The kind and path of each finding a snapshot holds: what a report cut from its stored views rests on.

    None are known of a snapshot stripped down to its views (their figures then stand as they were stored).
    """
    from storage_audit.inventory.tables import read_findings

    try:
        return read_findings(snapshot.path)
    except ValueError as exc:
        raise RootError(f"{snapshot.path}: {exc}") from exc


def unreadable_paths(findings: pd.DataFrame) -> list[str]:
    """The paths of the `unreadable` findings, in their order: what an answer leaves out (relative to `v2`)."""
    return [str(path) for path in findings.loc[findings["kind"] == "unreadable", "path"]]


@contextmanager
def engine_analysis(root: Root, engine: Engine) -> Iterator[Analysis]:
    """The SQL analysis of a snapshot on `engine` (DuckDB), open while in the block; raises UsageError for any
    other ROOT, and RootError for an unreadable snapshot."""
    if not isinstance(root, Snapshot):
        raise UsageError(
            f"--engine {engine.value} reads a snapshot: write one with `storage-audit scan ROOT -o DIR` and give DIR"
        )
    from storage_audit.analysis.engine import duckdb_analysis

    try:
        with duckdb_analysis(root.path) as analysis:
            yield analysis
    except ValueError as exc:
        raise RootError(f"{root.path}: {exc}") from exc

"""The inventory of what ROOT designates: a snapshot read, or a storage tree scanned now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage_audit.roots.resolve import Bucket, LocalTree, Root, RootError, Snapshot

if TYPE_CHECKING:
    import pandas as pd

    from storage_audit.inventory.tables import Inventory
    from storage_audit.scan.run import ScanOptions


def load(root: Root, options: ScanOptions | None = None) -> Inventory:
    """The inventory of `root`: read from the snapshot, or scanned now; raises RootError for an unreadable snapshot."""
    match root:
        case Snapshot(path):
            from storage_audit.inventory.tables import read_snapshot

            try:
                return read_snapshot(path)
            except ValueError as exc:
                raise RootError(f"{path}: {exc}") from exc
        case LocalTree(storage) | Bucket(storage):
            from storage_audit.scan.run import scan

            # The tree was found already: an unreadable v2 is the scan's finding, not a ROOT to resolve again.
            return scan(storage, options)


def snapshot_findings(snapshot: Snapshot) -> pd.DataFrame:
    """The kind and path of each finding a snapshot holds: what a report cut from its stored views rests on.

    None are known of a snapshot stripped down to its views (their figures then stand as they were stored).
    """
    from storage_audit.inventory.tables import read_findings

    try:
        return read_findings(snapshot.path)
    except ValueError as exc:
        raise RootError(f"{snapshot.path}: {exc}") from exc

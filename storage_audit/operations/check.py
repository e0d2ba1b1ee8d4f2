"""Check ROOT for damage: every finding, errors first, and their count per severity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from storage_audit.analysis.options import UPLOAD_AGE
from storage_audit.core.errors import UsageError
from storage_audit.operations.inventory import load
from storage_audit.roots.resolve import Root, Snapshot

if TYPE_CHECKING:
    import pandas as pd

    from storage_audit.analysis.check import HashProgress
    from storage_audit.core.view import View
    from storage_audit.scan.run import ScanOptions


@dataclass(frozen=True)
class CheckOptions:
    """What to check beyond the scan's findings: an upload started more than `upload_age` before the scan is stale;
    `verify_digests` hashes every blob with `workers` threads (0: one per CPU), saying so to `progress`."""

    verify_digests: bool = False
    upload_age: timedelta = UPLOAD_AGE
    workers: int = 0
    progress: HashProgress | None = None


@dataclass(frozen=True)
class Checked:
    """The findings (kind, severity, path, detail), their count per severity, and whether blob content was hashed."""

    findings: pd.DataFrame
    counts: dict[str, int]
    verified: bool

    def views(self, table: bool = False) -> list[View]:
        """The findings as views: for a table, one with a count per kind after the list."""
        from storage_audit.analysis.check import views

        return views(self.findings, table=table)

    def failed(self, strict: bool = False) -> bool:
        """Whether the check failed: an error finding, or with `strict` a warning too."""
        return bool(self.counts["error"] or (strict and self.counts["warning"]))


def check(root: Root, options: CheckOptions | None = None, scan: ScanOptions | None = None) -> Checked:
    """Every finding about `root`'s storage; with `options.verify_digests`, blob content is read from the tree and
    hashed, which a snapshot cannot give (UsageError)."""
    options = options or CheckOptions()
    if options.verify_digests and isinstance(root, Snapshot):
        raise UsageError(
            f"{root.location}: --verify-digests reads blob content, which a snapshot does not hold; "
            "give the storage tree"
        )
    inv = load(root, scan)
    from storage_audit.analysis import check as checking
    from storage_audit.analysis.graph import Graph

    storage = None if isinstance(root, Snapshot) else root.storage
    found = checking.CheckOptions(
        options.verify_digests, options.upload_age, options.workers, options.progress, storage
    )
    findings = checking.check(Graph(inv), found)
    return Checked(findings, checking.severity_counts(findings), options.verify_digests)

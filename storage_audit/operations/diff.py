"""What changed between two audits of ROOTs: a snapshot's stored views as they are, a storage tree scanned now."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage_audit.analysis.options import DiffBy
from storage_audit.operations.inventory import load, snapshot_findings, unreadable_paths
from storage_audit.roots.resolve import Root, Snapshot

if TYPE_CHECKING:
    from storage_audit.analysis.diff import Audit, Diff
    from storage_audit.core.view import View
    from storage_audit.scan.run import ScanOptions


@dataclass(frozen=True)
class DiffOptions:
    """What each row is; `names` call the two sides in warnings and rows (default: where each was taken)."""

    by: DiffBy = DiffBy.REPOSITORY
    names: tuple[str, str] | None = None


@dataclass(frozen=True)
class Diffed:
    """The differences (rows, the summary's counts, warnings about the sides), and the paths of either side that
    could not be read."""

    result: Diff
    unreadable: list[str]

    def view(self) -> View:
        from storage_audit.analysis.diff import view

        return view(self.result)

    def summary(self) -> str:
        """One line for people: `+12.4 GiB in 3 days: 61 tags pushed, 4 repositories new`."""
        from storage_audit.analysis.diff import summary_line

        return summary_line(self.result)


def diff(old: Root, new: Root, options: DiffOptions | None = None, scan: ScanOptions | None = None) -> Diffed:
    """Compare an earlier audit `old` with a later one `new`; raises DiffError when a side cannot be read."""
    options = options or DiffOptions()
    names = options.names or (old.location, new.location)
    audits: list[Audit] = []
    unreadable: list[str] = []
    for root, name in zip((old, new), names, strict=True):
        if isinstance(root, Snapshot):
            from storage_audit.analysis.diff import Audit

            audits.append(Audit.of_snapshot(root.path, name))
            unreadable += unreadable_paths(snapshot_findings(root))
        else:
            # Scanned before the analysis loads: see load.
            inv = load(root, scan)
            from storage_audit.analysis.diff import Audit

            audits.append(Audit.of_inventory(inv, name))
            unreadable += unreadable_paths(inv.findings)
    from storage_audit.analysis.diff import diff as compare

    return Diffed(compare(audits[0], audits[1], options.by), unreadable)

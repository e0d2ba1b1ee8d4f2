"""storage-audit: audit a Docker/OCI registry's storage offline; its operations and their types, importable from here.

`from storage_audit import resolve, report` loads only what those need, on first
use (PEP 562): `import storage_audit`, and the command line's start, stay light.
The operations print nothing and raise `AuditError`s; see docs/python.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from storage_audit.core.version import __version__

_FROM: dict[str, str] = {
    # ROOT, and its inventory
    "resolve": "storage_audit.roots.resolve",
    "Root": "storage_audit.roots.resolve",
    "LocalTree": "storage_audit.roots.resolve",
    "Bucket": "storage_audit.roots.resolve",
    "Snapshot": "storage_audit.roots.resolve",
    "RemoteOptions": "storage_audit.roots.resolve",
    "load": "storage_audit.operations.inventory",
    "Inventory": "storage_audit.inventory.tables",
    "ScanOptions": "storage_audit.scan.run",
    "Shard": "storage_audit.core.shard",
    "Graph": "storage_audit.analysis.graph",
    # The operations, one per command, with their options and answers
    "survey": "storage_audit.operations.scan",
    "SnapshotOptions": "storage_audit.operations.scan",
    "Survey": "storage_audit.operations.scan",
    "untagged": "storage_audit.operations.collect",
    "orphans": "storage_audit.operations.collect",
    "CollectOptions": "storage_audit.operations.collect",
    "Collected": "storage_audit.operations.collect",
    "Collector": "storage_audit.analysis.options",
    "Engine": "storage_audit.analysis.options",
    "report": "storage_audit.operations.report",
    "page": "storage_audit.operations.report",
    "metrics": "storage_audit.operations.report",
    "Report": "storage_audit.operations.report",
    "Metrics": "storage_audit.operations.report",
    "ReportOptions": "storage_audit.analysis.options",
    "By": "storage_audit.analysis.options",
    "check": "storage_audit.operations.check",
    "CheckOptions": "storage_audit.operations.check",
    "Checked": "storage_audit.operations.check",
    "plan": "storage_audit.operations.plan",
    "PlanOptions": "storage_audit.operations.plan",
    "Planned": "storage_audit.operations.plan",
    "PlanFormat": "storage_audit.analysis.options",
    "Policy": "storage_audit.cleanup.plan",
    "Plan": "storage_audit.cleanup.plan",
    "apply": "storage_audit.operations.apply",
    "open_plan": "storage_audit.operations.apply",
    "ApplyOptions": "storage_audit.operations.apply",
    "Application": "storage_audit.operations.apply",
    "Outcome": "storage_audit.cleanup.apply",
    "diff": "storage_audit.operations.diff",
    "DiffOptions": "storage_audit.operations.diff",
    "Diffed": "storage_audit.operations.diff",
    "DiffBy": "storage_audit.analysis.options",
    "View": "storage_audit.output.formats",
    # What they raise: each carries the exit code the command line exits with
    "AuditError": "storage_audit.core.errors",
    "UsageError": "storage_audit.core.errors",
    "UncertainError": "storage_audit.core.errors",
    "StorageError": "storage_audit.core.errors",
    "AlreadyApplied": "storage_audit.cleanup.journal",
}

__all__ = [
    "AlreadyApplied",
    "Application",
    "ApplyOptions",
    "AuditError",
    "Bucket",
    "By",
    "CheckOptions",
    "Checked",
    "CollectOptions",
    "Collected",
    "Collector",
    "DiffBy",
    "DiffOptions",
    "Diffed",
    "Engine",
    "Graph",
    "Inventory",
    "LocalTree",
    "Metrics",
    "Outcome",
    "Plan",
    "PlanFormat",
    "PlanOptions",
    "Planned",
    "Policy",
    "RemoteOptions",
    "Report",
    "ReportOptions",
    "Root",
    "ScanOptions",
    "Shard",
    "Snapshot",
    "SnapshotOptions",
    "StorageError",
    "Survey",
    "UncertainError",
    "UsageError",
    "View",
    "__version__",
    "apply",
    "check",
    "diff",
    "load",
    "metrics",
    "open_plan",
    "orphans",
    "page",
    "plan",
    "report",
    "resolve",
    "survey",
    "untagged",
]


def __getattr__(name: str) -> Any:
    module = _FROM.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found once: the next lookup is an ordinary one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from storage_audit.analysis.graph import Graph
    from storage_audit.analysis.options import By, Collector, DiffBy, Engine, PlanFormat, ReportOptions
    from storage_audit.cleanup.apply import Outcome
    from storage_audit.cleanup.journal import AlreadyApplied
    from storage_audit.cleanup.plan import Plan, Policy
    from storage_audit.core.errors import AuditError, StorageError, UncertainError, UsageError
    from storage_audit.core.shard import Shard
    from storage_audit.core.view import View
    from storage_audit.inventory.tables import Inventory
    from storage_audit.operations.apply import Application, ApplyOptions, apply, open_plan
    from storage_audit.operations.check import Checked, CheckOptions, check
    from storage_audit.operations.collect import Collected, CollectOptions, orphans, untagged
    from storage_audit.operations.diff import Diffed, DiffOptions, diff
    from storage_audit.operations.inventory import load
    from storage_audit.operations.plan import Planned, PlanOptions, plan
    from storage_audit.operations.report import Metrics, Report, metrics, page, report
    from storage_audit.operations.scan import SnapshotOptions, Survey, survey
    from storage_audit.roots.resolve import Bucket, LocalTree, Root, Snapshot, resolve
    from storage_audit.scan.run import ScanOptions
    from storage_audit.storage.base import RemoteOptions

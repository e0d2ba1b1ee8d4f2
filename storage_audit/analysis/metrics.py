"""Monitoring metrics of one audit: the report's figures and the check's findings as Prometheus gauge samples."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import pandas as pd

from storage_audit.analysis.check import CheckOptions, check
from storage_audit.analysis.graph import Graph
from storage_audit.analysis.options import By
from storage_audit.analysis.report import whole
from storage_audit.core.findings import SEVERITY
from storage_audit.core.view import View

PREFIX: Final = "storage_audit_"

# Columns of `report --by repository` exported per repository, with their help text.
REPOSITORY_GAUGES: dict[str, str] = {
    "total_bytes": "Bytes of the distinct blobs the repository keeps alive, shared ones included.",
    "exclusive_bytes": "Bytes of the blobs only this repository keeps alive.",
    "shared_bytes": "Bytes of the blobs this repository keeps alive that others keep too.",
    "reclaimable_bytes": "Bytes a safe delete-untagged collection would free in this repository.",
    "tags": "Tags of the repository.",
    "manifests": "Present manifest revisions of the repository.",
    "untagged_manifests": "Manifest revisions of the repository that no tag reaches.",
    "upload_bytes": "Bytes of the repository's uploads in progress.",
}

# Columns of `report --by summary` exported as registry totals; its findings_* columns are storage_audit_findings
# summed by severity (both count what `check` finds), exported once, by kind, instead.
SUMMARY_GAUGES: dict[str, str] = {
    "repositories": "Repositories in the registry.",
    "tags": "Tags in the registry.",
    "manifests": "Present manifest revisions in the registry.",
    "untagged_manifests": "Manifest revisions no tag reaches.",
    "blobs": "Stored blobs.",
    "orphan_blobs": "Stored blobs nothing references.",
    "physical_bytes": "Bytes of all stored blobs, each counted once.",
    "logical_bytes": "Bytes the repositories keep alive, a blob counted once per repository.",
    "dedup_ratio": "Logical bytes over physical bytes.",
    "orphan_bytes": "Bytes of the blobs nothing references.",
    "untagged_reclaimable_bytes": "Bytes a safe delete-untagged collection would free beyond the orphans.",
    "upload_bytes": "Bytes of uploads in progress.",
}

FINDINGS_HELP: Final = "Findings of `storage-audit check`, by kind and severity (every kind, 0 when none)."
SCAN_TIME_HELP: Final = "When the scan began, in seconds since the Unix epoch."
SCAN_DURATION_HELP: Final = "How long the scan took, in seconds."

SAMPLE_COLUMNS: Final = ("metric", "help", "labels", "value")


@dataclass(frozen=True)
class ScanFacts:
    """When the audited scan began, and how long it took when that is known (not for snapshots of old versions)."""

    scanned_at: datetime
    scan_seconds: float | None


def metrics(graph: Graph, options: CheckOptions | None = None) -> pd.DataFrame:
    """Every gauge sample of an audit: per repository, registry totals, findings, the scan's time and duration."""
    inv = graph.inv
    return samples(
        whole(graph, By.SUMMARY),
        whole(graph, By.REPOSITORY),
        check(graph, options),
        ScanFacts(inv.scanned_at, inv.scan_seconds),
    )


def samples(summary: pd.DataFrame, repositories: pd.DataFrame, findings: pd.DataFrame, scan: ScanFacts) -> pd.DataFrame:
    """Gauge samples from a summary view, a repository view and check findings: one row per sample.

    Columns: metric (full name), help, labels (a dict of label name to value), value (a float);
    rows of one metric are contiguous, in the order they are exposed.
    """
    rows: list[tuple[str, str, dict[str, str], float]] = []
    for column, help_text in REPOSITORY_GAUGES.items():
        name = f"{PREFIX}repository_{column}"
        for repository, value in zip(repositories["repository"], repositories[column], strict=True):
            rows.append((name, help_text, {"repository": str(repository)}, float(value)))
    total = summary.iloc[0]
    rows += [(f"{PREFIX}{column}", help_text, {}, float(total[column])) for column, help_text in SUMMARY_GAUGES.items()]
    # Every kind is exposed, 0 when none is found: an alert on a kind then never meets a missing series.
    counts = findings.groupby(["kind", "severity"]).size()
    pairs = [(kind.value, severity.value) for kind, severity in SEVERITY.items()]
    pairs += [pair for pair in counts.index if pair not in pairs]
    for kind, severity in pairs:
        labels = {"kind": str(kind), "severity": str(severity)}
        rows.append((f"{PREFIX}findings", FINDINGS_HELP, labels, float(counts.get((kind, severity), 0))))
    rows.append((f"{PREFIX}scan_timestamp_seconds", SCAN_TIME_HELP, {}, scan.scanned_at.timestamp()))
    if scan.scan_seconds is not None:
        rows.append((f"{PREFIX}scan_duration_seconds", SCAN_DURATION_HELP, {}, float(scan.scan_seconds)))
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def view(frame: pd.DataFrame) -> View:
    """The samples as a view for the prometheus format."""
    return View(frame, title="metrics")

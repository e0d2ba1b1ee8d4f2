"""The command line's fixed choices, in a module that imports nothing heavy, so the CLI starts fast.

The report views (`By`) and their columns are the stored views' schema, defined with the inventory's tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Final

from storage_audit.core.errors import UsageError
from storage_audit.inventory.schema import COLUMNS, By

__all__ = [
    "COLUMNS",
    "EXPLAIN_FORMATS",
    "UPLOAD_AGE",
    "AgeFrom",
    "By",
    "Collector",
    "DiffBy",
    "Engine",
    "Format",
    "PlanFormat",
    "PlanOutput",
    "ReportError",
    "ReportFormat",
    "ReportOptions",
    "ViewFormat",
    "check",
    "needs_inventory",
]

UPLOAD_AGE: Final = timedelta(hours=168)
"""The default age past which an upload is stale: the reference registry's purge age. Every view that counts
findings (check, the report's summary, the HTML page, the metrics) judges uploads by it unless told otherwise."""


class Format(StrEnum):
    """How a result is written: each has its writer (`output.formats`)."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"
    PROMETHEUS = "prometheus"


class Collector(StrEnum):
    """A version of the reference registry's `garbage-collect` whose answer `--gc-compatible` reproduces."""

    V2_8 = "2.8"
    V3 = "3"


class Engine(StrEnum):
    """What computes the answers of `untagged`, `orphans` and `report --by repository`: the analysis graph in
    memory, or SQL on DuckDB over a snapshot's Parquet tables, spilling to disk (`analysis/engine.py`)."""

    PANDAS = "pandas"
    DUCKDB = "duckdb"


class ViewFormat(StrEnum):
    """How rows are written where neither metrics nor a page are: the formats untagged, orphans, check and diff
    take."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"


class DiffBy(StrEnum):
    """What one row of a diff between two audits is."""

    REPOSITORY = "repository"
    TAG = "tag"
    BLOB = "blob"


class ReportFormat(StrEnum):
    """How a report is written: the formats of every view, or one HTML page of the whole storage."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"
    PROMETHEUS = "prometheus"
    HTML = "html"


class PlanFormat(StrEnum):
    """How a deletion plan is written."""

    JSON = "json"
    SH = "sh"
    HTTP = "http"


class PlanOutput(StrEnum):
    """What `plan --format` takes: a PlanFormat for the plan, or, with --explain, table, csv or json."""

    JSON = "json"
    SH = "sh"
    HTTP = "http"
    TABLE = "table"
    CSV = "csv"


EXPLAIN_FORMATS = {PlanOutput.TABLE: Format.TABLE, PlanOutput.CSV: Format.CSV, PlanOutput.JSON: Format.JSON}
"""The formats of `plan --explain`, as the output formats that write them."""


class AgeFrom(StrEnum):
    """What a tag's age is for the retention rules: when it was pushed, or when its image was built."""

    PUSH = "push"
    """The mtime of the tag's `current/link`: lost by a copy that does not keep times."""
    CREATED = "created"
    """The `created` time in the image's config blob (an index: the newest of its children's): copies keep it."""


class ReportError(UsageError, ValueError):
    """Report options that cannot be honoured (an unknown sort column, say)."""


@dataclass(frozen=True)
class ReportOptions:
    """Which view, narrowed to repositories matching a glob, sorted by a column, cut to the top rows; with a
    collector, what is untagged, orphan and reclaimable is that version of the stock collector's answer."""

    by: By = By.SUMMARY
    repository: str | None = None
    sort: str | None = None
    top: int | None = None
    collector: Collector | None = None


def check(options: ReportOptions) -> None:
    """Refuse options that make no sense for the view, before any work is done; raises ReportError."""
    if options.by is By.SUMMARY:
        for name, value in (("--repository", options.repository), ("--sort", options.sort), ("--top", options.top)):
            if value is not None:
                raise ReportError(f"{name} applies to row views, not to --by summary")
        return
    if options.sort is not None and options.sort not in COLUMNS[options.by]:
        known = ", ".join(COLUMNS[options.by])
        raise ReportError(f"--sort {options.sort}: no such column in --by {options.by.value}; one of: {known}")
    if options.top is not None and options.top < 1:
        raise ReportError(f"--top {options.top}: must be at least 1")


def needs_inventory(options: ReportOptions) -> bool:
    """True when the answer cannot be cut from the whole view a snapshot stores: blobs narrowed to what some
    repositories reach, or a stock collector's answer (the stored views are the safe one)."""
    return (options.by is By.BLOB and options.repository is not None) or options.collector is not None

"""The command line's fixed choices, in a module that imports nothing heavy, so the CLI starts fast."""

from __future__ import annotations

from enum import StrEnum


class By(StrEnum):
    """What one row of a report is."""

    SUMMARY = "summary"
    REPOSITORY = "repository"
    TAG = "tag"
    MANIFEST = "manifest"
    BLOB = "blob"
    UPLOAD = "upload"


class Format(StrEnum):
    """How a result is written."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"


class PlanFormat(StrEnum):
    """How a deletion plan is written."""

    JSON = "json"
    SH = "sh"
    HTTP = "http"

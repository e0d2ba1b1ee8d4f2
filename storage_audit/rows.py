"""The rows a scan reads, one NamedTuple per inventory table, and how a worker sends them as columns.

Nothing here imports pyarrow or pandas: a worker starts in milliseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, cast

from .findings import Finding
from .manifest import Reference
from .schema import SCHEMA


class RepositoryRow(NamedTuple):
    repository: str
    has_manifests: bool
    has_layers: bool
    has_uploads: bool
    layers_changed_at: int | None


class TagRow(NamedTuple):
    repository: str
    tag: str
    digest: str | None
    pushed_at: int | None


class HistoryRow(NamedTuple):
    repository: str
    tag: str
    digest: str
    pushed_at: int


class RevisionRow(NamedTuple):
    repository: str
    digest: str
    target: str | None
    linked: bool
    pushed_at: int | None


class ManifestRow(NamedTuple):
    digest: str
    size: int
    kind: str
    media_type: str | None
    schema_version: int | None
    artifact_type: str | None
    subject: str | None
    config_media_type: str | None


class ReferenceRow(NamedTuple):
    manifest: str
    ref_type: str
    digest: str
    media_type: str | None
    size: int | None
    platform: str | None
    position: int


class LayerLinkRow(NamedTuple):
    repository: str
    digest: str
    target: str | None


class BlobRow(NamedTuple):
    digest: str
    size: int
    mtime: int


class UploadRow(NamedTuple):
    repository: str
    id: str
    bytes: int
    started_at: str | None


ROW_TYPES: dict[str, type[tuple[Any, ...]]] = {
    "repositories": RepositoryRow,
    "tags": TagRow,
    "tag_history": HistoryRow,
    "revisions": RevisionRow,
    "layer_links": LayerLinkRow,
    "blobs": BlobRow,
    "uploads": UploadRow,
    "manifests": ManifestRow,
    "references": ReferenceRow,
}
"""The row type of every table a scan reads; its fields are the table's SCHEMA columns, in order."""


def reference_row(manifest: str, ref: Reference) -> ReferenceRow:
    return ReferenceRow(manifest, *ref)


@dataclass
class Part:
    """Rows read from part of the tree, and the findings met there."""

    findings: list[Finding] = field(default_factory=list)
    repositories: list[RepositoryRow] = field(default_factory=list)
    tags: list[TagRow] = field(default_factory=list)
    history: list[HistoryRow] = field(default_factory=list)
    revisions: list[RevisionRow] = field(default_factory=list)
    layer_links: list[LayerLinkRow] = field(default_factory=list)
    blobs: list[BlobRow] = field(default_factory=list)
    uploads: list[UploadRow] = field(default_factory=list)
    manifests: list[ManifestRow] = field(default_factory=list)
    references: list[ReferenceRow] = field(default_factory=list)

    def columns(self, rows: bool = True) -> Columns:
        """The rows as one sequence per column, in the inventory's column order: quick to send from a worker.

        Without `rows`, only their totals go, and the revisions and tags (the manifests to read come from them).
        """
        tables: dict[str, list[Sequence[object]]] = {}
        totals = None if rows else Totals()
        for f in fields(self):
            if f.name == "findings":
                continue
            table = TABLE_OF_PART.get(f.name, f.name)
            part_rows = getattr(self, f.name)
            columns: list[Sequence[object]] = (
                list(zip(*part_rows, strict=True)) if part_rows else [() for _ in SCHEMA[table]]
            )
            part_rows.clear()
            if totals is not None:
                totals.add(table, columns)
                if table not in SENT_WITH_TOTALS:
                    continue
            tables[table] = columns
        return Columns(self.findings, tables, totals)


SENT_WITH_TOTALS = ("revisions", "tags", "tag_history")
"""Tables sent whole even when only totals are asked for: the manifests to read come from them."""
TABLE_OF_PART = {"history": "tag_history"}
"""Inventory table of each Part field whose name differs."""
TABLES = tuple(TABLE_OF_PART.get(f.name, f.name) for f in fields(Part) if f.name != "findings")
"""The inventory's tables that a scan reads, in the order it reads them."""


def _column(table: str, name: str) -> int:
    return list(SCHEMA[table]).index(name)


@dataclass
class Totals:
    """What `scan` prints: rows per table and the sums it shows, counted without keeping any table."""

    rows: Counter[str] = field(default_factory=Counter)
    unlinked_revisions: int = 0
    blob_bytes: int = 0
    upload_bytes: int = 0

    def add(self, table: str, columns: Sequence[Sequence[object]]) -> None:
        """Count one part of `table`, as columns."""
        self.rows[table] += len(columns[0])
        if table == "revisions":
            linked = columns[_column(table, "linked")]
            self.unlinked_revisions += len(linked) - sum(map(bool, linked))
        elif table == "blobs":
            self.blob_bytes += sum(cast("Sequence[int]", columns[_column(table, "size")]))
        elif table == "uploads":
            self.upload_bytes += sum(cast("Sequence[int]", columns[_column(table, "bytes")]))

    def merge(self, other: Totals) -> None:
        self.rows.update(other.rows)
        self.unlinked_revisions += other.unlinked_revisions
        self.blob_bytes += other.blob_bytes
        self.upload_bytes += other.upload_bytes

    @classmethod
    def of(cls, tables: Mapping[str, Any]) -> Totals:
        """The totals of an inventory's tables, as DataFrames or Arrow tables."""
        import numpy as np

        def total(table: str, column: str) -> int:
            return int(np.asarray(tables[table][column]).sum())

        return cls(
            rows=Counter({name: len(tables[name]) for name in TABLES}),
            unlinked_revisions=len(tables["revisions"]) - total("revisions", "linked"),
            blob_bytes=total("blobs", "size"),
            upload_bytes=total("uploads", "bytes"),
        )


@dataclass
class Columns:
    """What part of a scan found, as columns per inventory table, plus its findings.

    Columns hold mtimes as integer nanoseconds and `startedat` as the text read.
    `totals` are there when only they were asked for.
    """

    findings: list[Finding] = field(default_factory=list)
    tables: dict[str, list[Sequence[object]]] = field(default_factory=dict)
    totals: Totals | None = None

    def rows(self) -> int:
        if self.totals is not None:
            return len(self.findings) + self.totals.rows.total()
        return len(self.findings) + sum(len(columns[0]) for columns in self.tables.values() if columns)

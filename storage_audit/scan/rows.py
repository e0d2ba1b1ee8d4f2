"""The rows a scan reads, one NamedTuple per inventory table, and how a worker sends them as columns.

Nothing here imports pyarrow or pandas: a worker starts in milliseconds.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import accumulate, pairwise
from typing import Any, NamedTuple, cast, overload

from storage_audit.core.findings import Finding
from storage_audit.inventory.schema import BOOL, SCHEMA, STR


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
    listed: list[tuple[str, str]] = field(default_factory=list)
    """(repository, digest) of the manifests that lists and indexes read here name, and that were not read here."""

    def columns(self, rows: bool = True) -> Columns:
        """The rows as one sequence per column, in the inventory's column order: quick to send from a worker.

        Without `rows`, only their totals go, and the revisions and tags (the manifests to read come from them).
        """
        tables: dict[str, list[Sequence[object]]] = {}
        totals = None if rows else Totals()
        for f in fields(self):
            if f.name in NOT_TABLES:
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
        return Columns(self.findings, tables, totals, self.listed)


NOT_TABLES = ("findings", "listed")
"""The fields of a Part that are no inventory table."""
SENT_WITH_TOTALS = ("revisions", "tags", "tag_history")
"""Tables sent whole even when only totals are asked for: the manifests to read come from them."""
TABLE_OF_PART = {"history": "tag_history"}
"""Inventory table of each Part field whose name differs."""
TABLES = tuple(TABLE_OF_PART.get(f.name, f.name) for f in fields(Part) if f.name not in NOT_TABLES)
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
    `totals` are there when only they were asked for. `listed` are the manifests still to read that
    the lists and indexes read here name (see Part.listed), sent whatever else is.
    """

    findings: list[Finding] = field(default_factory=list)
    tables: dict[str, list[Sequence[object]]] = field(default_factory=dict)
    totals: Totals | None = None
    listed: list[tuple[str, str]] = field(default_factory=list)

    def packed(self) -> Columns:
        """These columns packed (see Packed), to cross to another process; in place.

        A column equal to an earlier one of its table (a link naming its own digest) becomes
        the very same Packed object: pickled once, and turned into one Arrow array.
        """
        for table, columns in self.tables.items():
            kinds = [STR if (table, name) in SENT_AS_TEXT else kind for name, (kind, _) in SCHEMA[table].items()]
            packed: list[Sequence[object]] = []
            for i, (kind, values) in enumerate(zip(kinds, columns, strict=True)):
                same = next((j for j in range(i) if kinds[j] == kind and columns[j] == values), None)
                packed.append(packed[same] if same is not None else pack(kind, values))
            self.tables[table] = packed
        return self

    def rows(self) -> int:
        if self.totals is not None:
            return len(self.findings) + self.totals.rows.total()
        return len(self.findings) + sum(len(columns[0]) for columns in self.tables.values() if columns)


SENT_AS_TEXT = {("uploads", "started_at")}
"""Columns the walker sends as the text it read, whatever their dtype: the inventory parses them."""
FILL: dict[str, object] = {STR: "", BOOL: False}
"""What stands in a packed column's values for a null (integers: 0)."""


class Packed(Sequence[object]):
    """One column as Arrow lays it out, a few buffers where a list would hold a Python object per value.

    `data` holds the values: UTF-8 text cut at `offsets` (8-byte integers), 8-byte integers,
    or a byte per boolean; `valid` holds a byte per row, 0 for a null, or is None when none is.
    A worker sends its columns so: a digest costs its 71 bytes, not a 120-byte object to pickle,
    unpickle and convert again. Iterating gives the values back.
    """

    __slots__ = ("data", "kind", "length", "offsets", "valid")

    def __init__(
        self, kind: str, length: int, data: bytes, offsets: bytes | None = None, valid: bytes | None = None
    ) -> None:
        self.kind, self.length, self.data, self.offsets, self.valid = kind, length, data, offsets, valid

    def __reduce__(self) -> tuple[type[Packed], tuple[str, int, bytes, bytes | None, bytes | None]]:
        return Packed, (self.kind, self.length, self.data, self.offsets, self.valid)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[object]:
        values = self._values()
        if self.valid is None:
            return iter(values)
        return (value if ok else None for value, ok in zip(values, self.valid, strict=True))

    @overload
    def __getitem__(self, index: int) -> object: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[object]: ...
    def __getitem__(self, index: int | slice) -> object | Sequence[object]:
        return list(self)[index]

    def integers(self) -> array[int]:
        """The 8-byte integers of `data` (0 where null), in memory of their own, aligned as Arrow needs."""
        values = array("q")
        values.frombytes(self.data)
        return values

    def _values(self) -> list[Any]:
        if self.offsets is not None:
            offsets = array("q")
            offsets.frombytes(self.offsets)
            if self.data.isascii():
                text = self.data.decode("ascii")
                return [text[start:end] for start, end in pairwise(offsets)]
            return [self.data[start:end].decode() for start, end in pairwise(offsets)]
        if self.kind == BOOL:
            return list(map(bool, self.data))
        return self.integers().tolist()


def pack(kind: str, values: Sequence[object]) -> Sequence[object]:
    """One column of dtype `kind` as a Packed; `values` themselves when they do not fit one (text not UTF-8)."""
    given, valid = values, None
    if None in values:
        valid = bytes(value is not None for value in values)
        fill = FILL.get(kind, 0)
        values = [fill if value is None else value for value in values]
    try:
        if kind == STR:
            texts = cast("Sequence[str]", values)
            joined = "".join(texts)
            if joined.isascii():
                data, lengths = joined.encode("ascii"), list(map(len, texts))
            else:
                encoded = [text.encode() for text in texts]
                data, lengths = b"".join(encoded), list(map(len, encoded))
            del joined
            offsets = array("q", accumulate(lengths, initial=0)).tobytes()
            return Packed(kind, len(values), data, offsets, valid)
        if kind == BOOL:
            return Packed(kind, len(values), bytes(cast("Sequence[bool]", values)), None, valid)
        return Packed(kind, len(values), array("q", cast("Sequence[int]", values)).tobytes(), None, valid)
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
        return given

"""Refuse snapshot files that no scan writes: metadata, tables and views of the wrong types, names, digests or signs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage_audit.core.findings import Kind, Severity
from storage_audit.core.paths import is_digest, valid_repository, valid_tag
from storage_audit.inventory.codes import CodedArray, DigestDictionary, TextDictionary
from storage_audit.inventory.schema import BOOL, CODED, COLUMNS, DIGESTS, INT, NAMES, OPT_INT, SCHEMA, STR, TIME, By


class SnapshotError(ValueError):
    """A file of a snapshot that is not what `scan -o` writes, with what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def below(self, directory: Path) -> str:
        """The message, naming the file as the snapshot `directory` holds it (`blobs/part-00000.parquet`)."""
        try:
            name = self.path.relative_to(directory)
        except ValueError:
            name = self.path
        return f"{name}: {self.problem}"


# -- metadata.json ----------------------------------------------------------------


def scanned_at(meta: Mapping[str, Any]) -> datetime | str:
    """When the snapshot's scan began, from its metadata: a time with its UTC offset; else what is wrong."""
    text = meta.get("scanned_at")
    try:
        when = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        return f"scanned_at {str(text)[:40]!r} is not a time with its UTC offset"
    return when


def metadata_problem(meta: Mapping[str, Any]) -> str | None:
    """What is wrong with the fields of a snapshot's metadata (known to be the tool's, of a known format)."""
    when = scanned_at(meta)
    if isinstance(when, str):
        return when
    if not isinstance(meta.get("root"), str):
        return "root is not a string"
    seconds = meta.get("scan_seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0):
        return "scan_seconds is not a number of seconds"
    views = meta.get("views", [])
    if not isinstance(views, list) or not all(isinstance(v, str) and v in By.__members__.values() for v in views):
        return "views is not a list of report views"
    return None


# -- the tables -------------------------------------------------------------------

_WANTED = {STR: "text", INT: "integers", OPT_INT: "integers", BOOL: "booleans", TIME: "times with a time zone"}


def _fits(dtype: str, kind: pa.DataType) -> bool:
    """Whether an Arrow column of type `kind` holds what the schema's `dtype` stands for (null: an empty column)."""
    if dtype == STR:
        return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
    if dtype in (INT, OPT_INT):
        return pa.types.is_integer(kind) or (dtype == OPT_INT and pa.types.is_null(kind))
    if dtype == BOOL:
        return pa.types.is_boolean(kind)
    return (pa.types.is_timestamp(kind) and kind.tz is not None) or pa.types.is_null(kind)


def schema_problem(table: str, schema: pa.Schema) -> str | None:
    """What is wrong with the columns of a part of `table`: one missing, or of another type."""
    for column, (dtype, _) in SCHEMA[table].items():
        at = schema.get_field_index(column)
        if at < 0:
            return f"no column {column}"
        if not _fits(dtype, schema.field(at).type):
            return f"column {column} holds {schema.field(at).type}, not {_WANTED[dtype]}"
    return None


REQUIRED: dict[str, tuple[str, ...]] = {
    "repositories": ("repository",),
    "tags": ("repository", "tag"),
    "tag_history": ("repository", "tag", "digest"),
    "revisions": ("repository", "digest"),
    "manifests": ("digest",),
    "references": ("manifest", "digest"),
    "layer_links": ("repository", "digest"),
    "blobs": ("digest",),
    "uploads": ("repository", "id"),
    "findings": ("kind", "severity", "path"),
}
"""The columns a scan never leaves empty: names and digests read from paths, and what each finding is."""
SIZES: dict[str, tuple[str, ...]] = {
    "blobs": ("size",),
    "manifests": ("size",),
    "references": ("size",),
    "uploads": ("bytes",),
}
"""The columns of byte counts, never negative."""

Rows = Callable[[pa.ChunkedArray], pa.ChunkedArray | pa.Array]
"""The bad rows of one part's column, as a boolean mask."""


class Bad:
    """What is wrong with one column of a table, and how to find the rows it is wrong in (to name their file)."""

    def __init__(self, table: str, column: str, problem: str, rows: Rows) -> None:
        self.table = table
        self.column = column
        self.problem = problem
        self.rows = rows

    def found_in(self, values: pa.ChunkedArray) -> bool:
        """Whether one part's column holds a bad row."""
        return _any(self.rows(values))


def _any(mask: pa.ChunkedArray | pa.Array) -> bool:
    return bool(pc.any(pc.fill_null(mask, False)).as_py())


def _first(values: Iterable[Any], valid: Callable[[Any], bool]) -> Any:
    return next((value for value in values if not valid(value)), None)


def _equal(value: str) -> Rows:
    return lambda values: pc.equal(values, value)


def _null(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.is_null(values)


def _negative(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.less(values, 0)


def bad_rows(tables: Mapping[str, pd.DataFrame]) -> Bad | None:
    """The first thing wrong with the tables read from a snapshot, or None when they hold what a scan writes."""
    names, digests = tables["repositories"]["repository"].array, tables["blobs"]["digest"].array
    assert isinstance(names, CodedArray) and isinstance(digests, CodedArray)
    assert isinstance(names.dictionary, TextDictionary) and isinstance(digests.dictionary, DigestDictionary)
    # Each distinct name and digest is held once, in its dictionary; canonical sha256 digests were already
    # parsed as such, so only the other strings need a look.
    name = _first(names.dictionary.values.to_pylist(), valid_repository)
    if name is not None:
        return _holding(tables, NAMES, name, f"invalid repository name {name[:80]!r}")
    digest = _first(digests.dictionary.others.to_pylist(), is_digest)
    if digest is not None:
        return _holding(tables, DIGESTS, digest, f"invalid digest {digest[:80]!r}")
    for table, columns in REQUIRED.items():
        for column in columns:
            if tables[table][column].isna().any():
                return Bad(table, column, f"{column} is empty where a scan always writes one", _null)
    for table in ("tags", "tag_history"):
        tag = _first(tables[table]["tag"].dropna().unique(), valid_tag)
        if tag is not None:
            return Bad(table, "tag", f"invalid tag {tag[:80]!r}", _equal(tag))
    for column, known in (("kind", set(Kind)), ("severity", set(Severity))):
        value = _first(tables["findings"][column].dropna().unique(), known.__contains__)
        if value is not None:
            return Bad("findings", column, f"unknown {column} {value[:80]!r}", _equal(value))
    for table, columns in SIZES.items():
        for column in columns:
            if (tables[table][column].fillna(0) < 0).any():
                return Bad(table, column, f"{column} holds negative values", _negative)
    return None


def _holding(tables: Mapping[str, pd.DataFrame], kind: str, value: str, problem: str) -> Bad:
    """The first column coded against the dictionary `kind` that holds `value`."""
    for table, columns in CODED.items():
        for column, of in columns.items():
            if of == kind and (tables[table][column] == value).any():
                return Bad(table, column, problem, _equal(value))
    raise AssertionError(f"{value!r} is in a dictionary but in no column")


# -- the report views -------------------------------------------------------------

_VIEW_TEXT = frozenset({"repository", "tag", "digest", "media_type", "platforms", "artifact_type", "id", "kind"})
_VIEW_TIMES = frozenset({"last_push", "pushed_at", "started_at"})
_VIEW_FLAGS = frozenset({"reachable", "orphan"})
_VIEW_RATIOS = frozenset({"dedup_ratio"})
_VIEW_SIGNED = frozenset({"age"})
"""Integer columns that may be negative: an upload's age counts from a clock that may have been behind."""


def _view_fits(by: By, column: str, kind: pa.DataType) -> tuple[bool, str]:
    """Whether column `column` of the view `by` may be of type `kind`, and what it should hold."""
    if column in _VIEW_TEXT or (by is By.MANIFEST and column == "tags"):
        return _fits(STR, kind), _WANTED[STR]
    if column in _VIEW_TIMES:
        return _fits(TIME, kind), _WANTED[TIME]
    if column in _VIEW_FLAGS:
        return _fits(BOOL, kind) or pa.types.is_null(kind), _WANTED[BOOL]
    if column in _VIEW_RATIOS:
        return pa.types.is_floating(kind) or pa.types.is_integer(kind), "numbers"
    return _fits(OPT_INT, kind), _WANTED[INT]


def view_problem(by: By, view: pa.Table, every_column: bool = True) -> str | None:
    """What is wrong with a stored report view: a column of `by` of another type, or holding negative counts, or
    (with `every_column`) missing."""
    for column in COLUMNS[by]:
        if column not in view.column_names:
            if every_column:
                return f"not the {by.value} view this version reads: no column {column}"
            continue
        kind = view.schema.field(column).type
        fits, wanted = _view_fits(by, column, kind)
        if not fits:
            return f"column {column} holds {kind}, not {wanted}"
        if pa.types.is_integer(kind) and column not in _VIEW_SIGNED and _any(_negative(view.column(column))):
            return f"column {column} holds negative values"
    return None

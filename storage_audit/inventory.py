"""The inventory: one pandas DataFrame per kind of stored object, and its Parquet snapshots."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .codes import CodedDtype, DigestCoder, TextCoder
from .schema import (
    CODED,
    DIGESTS,
    METADATA_FILE,
    NAMES,
    OPT_INT,
    PART_PATTERN,
    READABLE_FORMATS,
    SCHEMA,
    SNAPSHOT_FORMAT,
    STR,
    TIME,
    VIEW_FILE,
)

# The system allocator gives back to the system what the analyses' many short-lived Arrow arrays free;
# Arrow's default one kept some 90 MB more at the peak of `orphans` on a tree of 600,000 blobs.
pa.set_memory_pool(pa.system_memory_pool())

WRITE_ROWS = 1024 * 1024
"""Rows of a frame converted to Arrow at a time when it is written."""


def frame(table: str, rows: Any = None) -> pd.DataFrame:
    """A DataFrame of `table`'s columns and dtypes, from a list of rows or a dict of columns."""
    columns = SCHEMA[table]
    df = pd.DataFrame(rows if rows is not None else [], columns=list(columns))
    return conform(table, df)


def conform(table: str, df: pd.DataFrame) -> pd.DataFrame:
    """Cast `df` to `table`'s schema so that scans and snapshots compare equal."""
    columns = SCHEMA[table]
    out = df.loc[:, list(columns)].reset_index(drop=True)
    for name, (dtype, _) in columns.items():
        if dtype == STR and isinstance(out[name].dtype, CodedDtype):
            continue
        if dtype == TIME:
            out[name] = pd.to_datetime(out[name], utc=True).astype(TIME)
        else:
            out[name] = out[name].astype(dtype)
    return out


@dataclass
class Inventory:
    """Everything a scan read: one DataFrame per table, plus where, when, and how long the scan took (when known)."""

    root: str
    scanned_at: datetime
    repositories: pd.DataFrame = field(default_factory=lambda: frame("repositories"))
    tags: pd.DataFrame = field(default_factory=lambda: frame("tags"))
    tag_history: pd.DataFrame = field(default_factory=lambda: frame("tag_history"))
    revisions: pd.DataFrame = field(default_factory=lambda: frame("revisions"))
    manifests: pd.DataFrame = field(default_factory=lambda: frame("manifests"))
    references: pd.DataFrame = field(default_factory=lambda: frame("references"))
    layer_links: pd.DataFrame = field(default_factory=lambda: frame("layer_links"))
    blobs: pd.DataFrame = field(default_factory=lambda: frame("blobs"))
    uploads: pd.DataFrame = field(default_factory=lambda: frame("uploads"))
    findings: pd.DataFrame = field(default_factory=lambda: frame("findings"))
    scan_seconds: float | None = None
    origin: dict[str, str] = field(default_factory=dict)
    """Where a tree in object storage was read (bucket, prefix, endpoint): never a credential."""

    def tables(self) -> dict[str, pd.DataFrame]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in SCHEMA}

    def counts(self) -> dict[str, int]:
        return {name: len(df) for name, df in self.tables().items()}

    def metadata(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "tool": "storage-audit",
            "version": __version__,
            "root": self.root,
            **({"origin": self.origin} if self.origin else {}),
            "scanned_at": self.scanned_at.isoformat(),
            "scan_seconds": self.scan_seconds,
            "counts": self.counts(),
            "blob_bytes": int(self.blobs["size"].sum()),
            "upload_bytes": int(self.uploads["bytes"].sum()),
        }


def write_snapshot(inv: Inventory, directory: Path, views: Mapping[str, pd.DataFrame] | None = None) -> None:
    """Write every table, and the given report views, as Parquet, then `metadata.json` last.

    The metadata's presence marks a whole snapshot; it lists the tables' files and the views stored.
    """
    from .snapshot_writer import SnapshotWriter

    out = SnapshotWriter(directory)
    for name, df in inv.tables().items():
        for start in range(0, len(df), WRITE_ROWS):
            out.write(name, pa.Table.from_pandas(df.iloc[start : start + WRITE_ROWS], preserve_index=False))
    finish_snapshot(out, inv, views or {})


def finish_snapshot(out: Any, inv: Inventory, views: Mapping[str, pd.DataFrame]) -> None:
    """Write the views of a snapshot whose tables `out` (a SnapshotWriter) wrote, then its metadata, last."""
    for name, df in views.items():
        out.write_view(name, pa.Table.from_pandas(df, preserve_index=False))
    out.close(inv.metadata())


def read_view(directory: Path, name: str) -> pd.DataFrame | None:
    """The report view `name` stored in a snapshot, or None when the snapshot holds none; ValueError when unreadable."""
    views = read_metadata(directory).get("views")
    if not isinstance(views, list) or name not in views:
        return None
    try:
        return pd.read_parquet(directory / VIEW_FILE.format(name), engine="pyarrow")
    except Exception as exc:  # OSError, or pyarrow's own error types for corrupt files
        raise ValueError(f"unreadable snapshot: {exc}") from exc


def read_metadata(directory: Path) -> dict[str, Any]:
    """A snapshot's metadata.json; raises ValueError when it is unreadable or names no snapshot of a known format."""
    try:
        meta = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"unreadable snapshot: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("tool") != "storage-audit" or meta.get("format") not in READABLE_FORMATS:
        raise ValueError("metadata.json is not a storage-audit snapshot of a known format")
    return meta


def table_files(directory: Path, meta: Mapping[str, Any]) -> dict[str, list[Path]]:
    """The files of each table of a snapshot, in order; raises ValueError when the metadata lists others."""
    if meta["format"] == 1:
        return {name: [directory / f"{name}.parquet"] for name in SCHEMA}
    listed = meta.get("tables")
    if not isinstance(listed, dict) or set(listed) != set(SCHEMA):
        raise ValueError("unreadable snapshot: metadata.json does not list the files of every table")
    files = {}
    for name in SCHEMA:
        parts = listed[name]
        # Only `<table>/part-NNNNN.parquet`: a listed path never leads out of the snapshot.
        if (
            not isinstance(parts, list)
            or not parts
            or not all(isinstance(p, str) and re.fullmatch(f"{re.escape(name)}/{PART_PATTERN}", p) for p in parts)
        ):
            raise ValueError(f"unreadable snapshot: metadata.json lists no valid files for {name}")
        files[name] = [directory / p for p in parts]
    return files


READ_ROWS = 1 << 17
"""Rows of a coded column read from a snapshot's files at a time."""


class Columns:
    """Where an inventory's tables come from: Arrow tables in memory, or a snapshot's Parquet files."""

    def __init__(self, tables: Mapping[str, pa.Table] | None = None, files: Mapping[str, list[Path]] | None = None):
        self.tables = tables
        self.files = files

    def rows(self, table: str) -> int:
        if self.tables is not None:
            return self.tables[table].num_rows
        assert self.files is not None
        return sum(pq.ParquetFile(path).metadata.num_rows for path in self.files[table])

    def chunks(self, table: str, column: str) -> Any:
        """The column's values, a batch at a time."""
        if self.tables is not None:
            yield from self.tables[table][column].chunks
            return
        assert self.files is not None
        for path in self.files[table]:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=[column]):
                yield batch.column(0)

    def column(self, table: str, column: str) -> pa.ChunkedArray:
        if self.tables is not None:
            values = self.tables[table][column]
            # pandas' Arrow strings from an empty table have no chunks, which its merges reject.
            return values if values.num_chunks else pa.chunked_array([pa.array([], type=values.type)])
        assert self.files is not None
        parts = [pq.ParquetFile(path).read(columns=[column]).column(0) for path in self.files[table]]
        return pa.chunked_array([chunk for part in parts for chunk in part.chunks], type=parts[0].type)


def coded_frames(source: Columns, tables: Iterable[str] = tuple(SCHEMA)) -> dict[str, pd.DataFrame]:
    """Every table as a frame of the schema's dtypes, its text columns in CODED held as codes.

    Digests are coded against one dictionary, repository names against another, both shared by every
    table, so that the analyses join tables on integers; other columns are read as they are.
    """
    digests, names = DigestCoder(), TextCoder()
    own: dict[tuple[str, str], tuple[Any, Any]] = {}
    wanted = set(tables)
    rows = {name: source.rows(name) for name in wanted}
    for table, kinds in CODED.items():
        if table not in wanted:
            continue
        for column, kind in kinds.items():
            chunks = source.chunks(table, column)
            if kind == DIGESTS:
                digests.add((table, column), rows[table], chunks)
            elif kind == NAMES:
                names.add((table, column), rows[table], chunks)
            else:
                coder = TextCoder()
                coder.add((table, column), rows[table], chunks)
                own[table, column] = coder.finish()
    coded = {}
    for dictionary, codes in (digests.finish(), names.finish(), *own.values()):
        for key, values in codes.items():
            coded[key] = dictionary.column(values)
    frames = {}
    for table, columns in SCHEMA.items():
        if table not in wanted:
            continue
        out = {}
        for column, (dtype, _) in columns.items():
            if (table, column) in coded:
                out[column] = coded.pop((table, column))
            else:
                values = source.column(table, column)
                out[column] = values.to_pandas(types_mapper=_MAPPERS.get(dtype, {}).get)
                del values
        frames[table] = conform(table, pd.DataFrame(out, copy=False))
    return frames


_STRING = pd.StringDtype()
_MAPPERS: dict[str, dict[pa.DataType, Any]] = {
    STR: {pa.string(): _STRING, pa.large_string(): _STRING, pa.null(): _STRING},
    OPT_INT: {pa.int64(): pd.Int64Dtype(), pa.null(): pd.Int64Dtype()},
}


def read_snapshot(directory: Path) -> Inventory:
    """Load a snapshot written by `write_snapshot`; raises ValueError when it is not one."""
    meta = read_metadata(directory)
    try:
        tables = coded_frames(Columns(files=table_files(directory, meta)))
        seconds = meta.get("scan_seconds")  # absent from snapshots of earlier versions
        return Inventory(
            root=meta["root"],
            scanned_at=datetime.fromisoformat(meta["scanned_at"]),
            scan_seconds=float(seconds) if isinstance(seconds, int | float) else None,
            **tables,
        )
    except (OSError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable snapshot: {exc}") from exc
    except ValueError:
        raise
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise ValueError(f"unreadable snapshot: {exc}") from exc

"""Write a snapshot: each table batch by batch into Parquet parts of row groups, then metadata.json last."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage_audit.inventory.schema import (
    BOOL,
    INT,
    METADATA_FILE,
    OPT_INT,
    PART_FILE,
    SCHEMA,
    SNAPSHOT_FORMAT,
    STR,
    TIME,
    VIEW_FILE,
    VIEWS_FORMAT,
)

ROWS_PER_GROUP = 128 * 1024
"""Rows per Parquet row group: a reader holds about one group per column at a time."""
ROWS_PER_PART = 1024 * 1024
"""Rows per part file: other engines read a table's parts in parallel."""

_ARROW = {
    # pandas keeps its Arrow strings as large_string: read back so, they need no cast to become frames.
    STR: pa.large_string(),
    INT: pa.int64(),
    OPT_INT: pa.int64(),
    BOOL: pa.bool_(),
    TIME: pa.timestamp("ns", tz="UTC"),
}


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of `table` as a snapshot stores it."""
    return pa.schema([pa.field(name, _ARROW[dtype]) for name, (dtype, _) in SCHEMA[table].items()])


class TableWriter:
    """Appends batches of one table to its parts, `<table>/part-NNNNN.parquet`, in whole row groups."""

    def __init__(self, directory: Path, table: str) -> None:
        self.table = table
        self.schema = arrow_schema(table)
        self.directory = directory
        self.rows = 0
        self.parts: list[str] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._part_rows = 0

    def write(self, batch: pa.Table) -> None:
        """Append `batch`, whose columns are the table's; cast to the stored types."""
        if batch.num_rows == 0:
            return
        self._pending.append(batch.select(self.schema.names).cast(self.schema))
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= ROWS_PER_GROUP:
            self._flush(final=False)

    def _part(self) -> pq.ParquetWriter:
        if self._writer is not None and self._part_rows >= ROWS_PER_PART:
            self._writer.close()
            self._writer = None
        if self._writer is None:
            name = f"{self.table}/{PART_FILE.format(len(self.parts))}"
            (self.directory / self.table).mkdir(exist_ok=True)
            self._writer = pq.ParquetWriter(self.directory / name, self.schema)
            self.parts.append(name)
            self._part_rows = 0
        return self._writer

    def _flush(self, final: bool) -> None:
        joined = pa.concat_tables(self._pending) if self._pending else self.schema.empty_table()
        whole = joined.num_rows if final else joined.num_rows - joined.num_rows % ROWS_PER_GROUP
        start = 0
        while start < whole:
            writer = self._part()
            rows = min(whole - start, ROWS_PER_PART - self._part_rows)
            writer.write_table(joined.slice(start, rows), row_group_size=ROWS_PER_GROUP)
            self._part_rows += rows
            start += rows
        if final and not self.parts:
            self._part().write_table(self.schema.empty_table())  # an empty table still has its schema on disk
        # A copy of the few rows left over, so that the batch they came from can be freed.
        rest = joined.slice(whole).combine_chunks()
        rest = rest.take(pa.array(range(rest.num_rows))) if rest.num_rows else rest
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        self._flush(final=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def clear(directory: Path) -> None:
    """Remove an earlier snapshot's files from `directory`: metadata.json first, so that it no longer looks whole.

    The caller has made sure the directory holds nothing else (snapshots.foreign_content).
    """
    names = {METADATA_FILE, *(f"{name}.parquet" for name in SCHEMA)}
    for name in sorted(os.listdir(directory), key=lambda name: name != METADATA_FILE):
        path = directory / name
        if name in SCHEMA and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif name in names or (name.startswith("report-") and name.endswith(".parquet")):
            path.unlink()


class SnapshotWriter:
    """Writes one snapshot directory: every table batch by batch, the report views, and metadata.json last."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        clear(directory)
        self.directory = directory
        self.tables = {name: TableWriter(directory, name) for name in SCHEMA}
        self.views: list[str] = []

    def write(self, table: str, batch: pa.Table) -> None:
        self.tables[table].write(batch)

    def write_view(self, name: str, view: pa.Table) -> None:
        """A whole report view, computed once the tables are known, in a file of its own."""
        pq.write_table(view, self.directory / VIEW_FILE.format(name))
        self.views.append(name)

    def close_tables(self) -> dict[str, list[str]]:
        """Finish every table; the files of each, relative to the directory."""
        for writer in self.tables.values():
            writer.close()
        return self.parts()

    def parts(self) -> dict[str, list[str]]:
        return {name: writer.parts for name, writer in self.tables.items()}

    def counts(self) -> dict[str, int]:
        return {name: writer.rows for name, writer in self.tables.items()}

    def close(self, metadata: Mapping[str, Any]) -> None:
        """Finish every table, then write `metadata` with the layout and the views (which marks the snapshot whole)."""
        parts = self.close_tables()
        meta = dict(metadata) | {
            "format": SNAPSHOT_FORMAT,
            "tables": parts,
            "views": sorted(self.views),
            "views_format": VIEWS_FORMAT,
        }
        with open(self.directory / METADATA_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
            fh.write("\n")

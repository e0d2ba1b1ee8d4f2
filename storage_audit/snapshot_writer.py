"""Write a snapshot's tables batch by batch into Parquet row groups, then its metadata.json last."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import BOOL, INT, METADATA_FILE, OPT_INT, SCHEMA, STR, TIME

ROWS_PER_GROUP = 128 * 1024
"""Rows per Parquet row group: a reader holds about one group per column at a time."""

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
    """Appends batches of one table to its Parquet file, in row groups of ROWS_PER_GROUP rows."""

    def __init__(self, directory: Path, table: str) -> None:
        self.table = table
        self.schema = arrow_schema(table)
        self.path = directory / f"{table}.parquet"
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.Table) -> None:
        """Append `batch`, whose columns are the table's, in its order; cast to the stored types."""
        if batch.num_rows == 0:
            return
        self._pending.append(batch.select(self.schema.names).cast(self.schema))
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= ROWS_PER_GROUP:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        joined = pa.concat_tables(self._pending) if self._pending else self.schema.empty_table()
        whole = joined.num_rows if final else joined.num_rows - joined.num_rows % ROWS_PER_GROUP
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema)
        if whole or (final and self.rows == 0):
            self._writer.write_table(joined.slice(0, whole), row_group_size=ROWS_PER_GROUP)
        # A copy of the few rows left over, so that the batch they came from can be freed.
        rest = joined.slice(whole).combine_chunks()
        rest = rest.take(pa.array(range(rest.num_rows))) if rest.num_rows else rest
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        self._flush(final=True)
        if self._writer is not None:
            self._writer.close()


class SnapshotWriter:
    """Writes one snapshot directory: every table batch by batch, and metadata.json once all are whole."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.tables = {name: TableWriter(directory, name) for name in SCHEMA}

    def write(self, table: str, batch: pa.Table) -> None:
        self.tables[table].write(batch)

    def counts(self) -> dict[str, int]:
        return {name: writer.rows for name, writer in self.tables.items()}

    def close(self, metadata: Mapping[str, Any]) -> None:
        """Close every table, then write `metadata` (which marks the snapshot whole)."""
        for writer in self.tables.values():
            writer.close()
        with open(self.directory / METADATA_FILE, "w", encoding="utf-8") as fh:
            json.dump(dict(metadata), fh, indent=2)
            fh.write("\n")

"""The inventory: one pandas DataFrame per kind of stored object, and its Parquet snapshots."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from . import __version__
from .schema import METADATA_FILE, SCHEMA, TIME, VIEW_FILE

# The system allocator gives back to the system what the analyses' many short-lived Arrow arrays free;
# Arrow's default one kept some 90 MB more at the peak of `orphans` on a tree of 600,000 blobs.
pa.set_memory_pool(pa.system_memory_pool())

SNAPSHOT_FORMAT = 1


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

    The metadata's presence marks a whole snapshot; it lists the views stored.
    """
    directory.mkdir(parents=True, exist_ok=True)
    views = views or {}
    for name, df in inv.tables().items():
        df.to_parquet(directory / f"{name}.parquet", engine="pyarrow", index=False)
    for name, df in views.items():
        df.to_parquet(directory / VIEW_FILE.format(name), engine="pyarrow", index=False)
    with open(directory / METADATA_FILE, "w", encoding="utf-8") as fh:
        json.dump(inv.metadata() | {"views": sorted(views)}, fh, indent=2)
        fh.write("\n")


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
    if not isinstance(meta, dict) or meta.get("tool") != "storage-audit" or meta.get("format") != SNAPSHOT_FORMAT:
        raise ValueError("metadata.json is not a storage-audit snapshot of a known format")
    return meta


def read_snapshot(directory: Path) -> Inventory:
    """Load a snapshot written by `write_snapshot`; raises ValueError when it is not one."""
    meta = read_metadata(directory)
    try:
        tables = {
            name: conform(name, pd.read_parquet(directory / f"{name}.parquet", engine="pyarrow")) for name in SCHEMA
        }
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

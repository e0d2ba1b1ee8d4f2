"""The inventory: one pandas DataFrame per kind of stored object, and its Parquet snapshots."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__

STR = "string"
TIME = "datetime64[ns, UTC]"
INT = "int64"
OPT_INT = "Int64"
BOOL = "bool"

# Every table's columns: name -> (dtype, meaning). The README repeats these.
SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "repositories": {
        "repository": (STR, "repository name, `org/team/app`"),
        "has_manifests": (BOOL, "the directory has `_manifests`"),
        "has_layers": (BOOL, "the directory has `_layers`"),
        "has_uploads": (BOOL, "the directory has `_uploads`"),
        "layers_changed_at": (TIME, "mtime of `_layers/<alg>`: when a layer link was last added; null without"),
    },
    "tags": {
        "repository": (STR, "repository name"),
        "tag": (STR, "tag name"),
        "digest": (STR, "target of `current/link`; null when the link is missing or bad"),
        "pushed_at": (TIME, "mtime of `current/link`: when the tag was last pushed"),
    },
    "tag_history": {
        "repository": (STR, "repository name"),
        "tag": (STR, "tag name"),
        "digest": (STR, "a revision the tag has pointed at (`index/<alg>/<hex>`)"),
        "pushed_at": (TIME, "mtime of the history entry's link"),
    },
    "revisions": {
        "repository": (STR, "repository name"),
        "digest": (STR, "manifest digest, from the revision's path"),
        "target": (STR, "digest the `link` names (the manifest blob); null when unlinked"),
        "linked": (BOOL, "a `link` file is present (no link: deleted through the API)"),
        "pushed_at": (TIME, "mtime of the revision `link`; null when unlinked"),
    },
    "manifests": {
        "digest": (STR, "manifest digest; one row per distinct revision (linked or not) whose blob exists"),
        "size": (INT, "bytes of the manifest blob"),
        "kind": (STR, "docker-v2, docker-list, oci-manifest, oci-index, oci-artifact, schema1, invalid"),
        "media_type": (STR, "declared `mediaType`, or the one its structure implies"),
        "schema_version": (OPT_INT, "`schemaVersion`"),
        "artifact_type": (STR, "`artifactType` (OCI 1.1), else null"),
        "subject": (STR, "digest of `subject` (the manifest it refers to), else null"),
        "config_media_type": (STR, "media type of `config`, else null"),
    },
    "references": {
        "manifest": (STR, "digest of the referencing manifest"),
        "ref_type": (STR, "config, layer, child (index entry), subject, fslayer (schema1), signature"),
        "digest": (STR, "digest referenced"),
        "media_type": (STR, "descriptor media type, else null"),
        "size": (OPT_INT, "descriptor size, else null"),
        "platform": (STR, "`os/arch[/variant]` of an index child, else null"),
        "position": (INT, "index of the descriptor in its list"),
    },
    "layer_links": {
        "repository": (STR, "repository name"),
        "digest": (STR, "digest from the link's path"),
        "target": (STR, "digest the link's content names (may differ: an alias); null when unreadable"),
    },
    "blobs": {
        "digest": (STR, "digest, from the path"),
        "size": (INT, "bytes of `data`"),
        "mtime": (TIME, "mtime of `data`"),
    },
    "uploads": {
        "repository": (STR, "repository name"),
        "id": (STR, "upload id (directory name)"),
        "bytes": (INT, "bytes of the partial `data` (0 when absent)"),
        "started_at": (TIME, "time in `startedat`; null when absent or unreadable"),
    },
    "findings": {
        "kind": (STR, "finding kind (see the README's vocabulary)"),
        "severity": (STR, "error, warning or info"),
        "repository": (STR, "repository concerned, else null"),
        "path": (STR, "path relative to the `v2` directory"),
        "digest": (STR, "digest concerned, else null"),
        "detail": (STR, "one sentence for people"),
    },
}

METADATA_FILE = "metadata.json"
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
    """Everything a scan read: one DataFrame per table, plus where and when."""

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
            "scanned_at": self.scanned_at.isoformat(),
            "counts": self.counts(),
            "blob_bytes": int(self.blobs["size"].sum()),
            "upload_bytes": int(self.uploads["bytes"].sum()),
        }


def write_snapshot(inv: Inventory, directory: Path) -> None:
    """Write every table as Parquet, then `metadata.json` last (its presence marks a whole snapshot)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, df in inv.tables().items():
        df.to_parquet(directory / f"{name}.parquet", engine="pyarrow", index=False)
    with open(directory / METADATA_FILE, "w", encoding="utf-8") as fh:
        json.dump(inv.metadata(), fh, indent=2)
        fh.write("\n")


def read_snapshot(directory: Path) -> Inventory:
    """Load a snapshot written by `write_snapshot`; raises ValueError when it is not one."""
    try:
        meta = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
        if meta.get("tool") != "storage-audit" or meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("metadata.json is not a storage-audit snapshot of a known format")
        tables = {
            name: conform(name, pd.read_parquet(directory / f"{name}.parquet", engine="pyarrow")) for name in SCHEMA
        }
        return Inventory(root=meta["root"], scanned_at=datetime.fromisoformat(meta["scanned_at"]), **tables)
    except (OSError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable snapshot: {exc}") from exc
    except ValueError:
        raise
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise ValueError(f"unreadable snapshot: {exc}") from exc

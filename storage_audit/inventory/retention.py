"""Snapshot history: the storage-audit snapshots beside one, and the removal of the oldest beyond a count.

It imports no pandas: `scan -o` checks its target with it before its workers start.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from storage_audit.inventory.schema import METADATA_FILE, PART_PATTERN, SCHEMA, VIEW_FILE, By

# Every file a snapshot directory may hold (format 1 kept a table in one file): anything else makes it
# someone else's directory.
SNAPSHOT_FILES = frozenset(
    {METADATA_FILE, *(f"{name}.parquet" for name in SCHEMA), *(VIEW_FILE.format(by) for by in By)}
)
SNAPSHOT_DIRECTORIES = frozenset(SCHEMA)
"""A table's directory, which holds only its parts."""


@dataclass(frozen=True)
class Snapshot:
    """A snapshot directory and when its scan began."""

    path: Path
    scanned_at: datetime


@dataclass
class Pruned:
    """What pruning removed, and the snapshots it left although they were due, with the reason."""

    removed: list[Path] = field(default_factory=list)
    left: list[tuple[Path, str]] = field(default_factory=list)


def _only_parts(directory: str) -> bool:
    with os.scandir(directory) as entries:
        return all(re.fullmatch(PART_PATTERN, e.name) and e.is_file(follow_symlinks=False) for e in entries)


def foreign_content(directory: Path) -> bool:
    """Whether `directory` holds anything a snapshot does not: a file of another name, a directory other than
    a table's, or a table's directory holding anything but its parts."""
    with os.scandir(directory) as entries:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if e.name not in SNAPSHOT_DIRECTORIES or not _only_parts(e.path):
                    return True
            elif e.name not in SNAPSHOT_FILES:
                return True
    return False


def snapshots(parent: Path) -> list[Snapshot]:
    """The storage-audit snapshots directly inside `parent`, oldest scan first.

    A snapshot is a real directory (not a symbolic link) whose metadata.json is a regular file that names
    storage-audit, a known format and a scan time with its offset; nothing else is one. The metadata is read
    as every snapshot's is (read_metadata): a FIFO or a link to /dev/zero there is no snapshot, not a wait.
    """
    from storage_audit.inventory.tables import is_shard_set, read_metadata
    from storage_audit.inventory.validate import scanned_at

    found = []
    with os.scandir(parent) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if is_shard_set(path):
                continue  # the shares of a scan, read as one snapshot, but never pruned as one
            try:
                when = scanned_at(read_metadata(path))
            except ValueError:
                continue
            if isinstance(when, datetime):
                found.append(Snapshot(path, when))
    return sorted(found, key=lambda s: (s.scanned_at, s.path.name))


def prune(current: Path, keep: int) -> Pruned:
    """Keep `current` and the newest `keep - 1` other snapshots of its parent directory; remove the older ones.

    A snapshot with foreign content is left, never emptied; metadata.json goes first, so that a
    removal cut short leaves no directory that still looks like a whole snapshot.
    """
    if keep < 1:
        raise ValueError("keep at least the current snapshot")
    current = current.resolve()
    others = [s for s in snapshots(current.parent) if s.path.resolve() != current]
    due = others[: max(0, len(others) - (keep - 1))]
    out = Pruned()
    for snapshot in due:
        try:
            if foreign_content(snapshot.path):
                out.left.append((snapshot.path, "it holds files a snapshot does not"))
                continue
            names = sorted(os.listdir(snapshot.path), key=lambda name: name != METADATA_FILE)
            for name in names:
                if name in SNAPSHOT_DIRECTORIES and (snapshot.path / name).is_dir():
                    shutil.rmtree(snapshot.path / name)
                else:
                    os.unlink(snapshot.path / name)
            os.rmdir(snapshot.path)
        except OSError as exc:
            out.left.append((snapshot.path, exc.strerror or str(exc)))
            continue
        out.removed.append(snapshot.path)
    return out

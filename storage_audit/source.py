"""Resolve the ROOT argument to a storage tree or a snapshot, and load its inventory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .schema import METADATA_FILE

if TYPE_CHECKING:
    from .inventory import Inventory
    from .scan import ScanOptions

V2_BELOW_ROOT = Path("docker/registry/v2")


class RootError(Exception):
    """ROOT is neither a registry root, its `v2` directory, nor a snapshot."""


@dataclass(frozen=True)
class Source:
    """Where an inventory comes from: a `v2` tree to scan, or a snapshot directory."""

    path: Path
    snapshot: bool


def resolve(root: Path) -> Source:
    """Find the `v2` directory or snapshot that `root` designates; raises RootError."""
    if not root.exists():
        raise RootError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise RootError(f"{root}: not a directory")
    if (root / METADATA_FILE).is_file():
        return Source(root.resolve(), snapshot=True)
    if (root / V2_BELOW_ROOT).is_dir():
        return Source((root / V2_BELOW_ROOT).resolve(), snapshot=False)
    if root.resolve().name == "v2" or (root / "repositories").is_dir() or (root / "blobs").is_dir():
        return Source(root.resolve(), snapshot=False)
    raise RootError(
        f"{root}: not a registry root (no {V2_BELOW_ROOT}), not a v2 directory, "
        f"and not a snapshot written by `storage-audit scan -o`"
    )


def load(source: Source, options: ScanOptions | None = None) -> Inventory:
    """The inventory of `source`: read from the snapshot, or scanned now."""
    if source.snapshot:
        from .inventory import read_snapshot

        try:
            return read_snapshot(source.path)
        except ValueError as exc:
            raise RootError(f"{source.path}: {exc}") from exc
    from .scan import scan

    return scan(source.path, options)

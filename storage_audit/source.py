"""Resolve the ROOT argument to a storage tree or a snapshot, and load its inventory."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .schema import METADATA_FILE

if TYPE_CHECKING:
    import pandas as pd

    from .inventory import Inventory
    from .scan import ScanOptions

V2_BELOW_ROOT = Path("docker/registry/v2")


class RootError(UsageError):
    """ROOT is neither a registry root, its `v2` directory, nor a snapshot, or cannot be read."""


@dataclass(frozen=True)
class Source:
    """Where an inventory comes from: a `v2` tree to scan, or a snapshot directory."""

    path: Path
    snapshot: bool


def _reason(exc: OSError) -> str:
    """The system's words for `exc`, as a message continues them: `permission denied`."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _is(path: Path, test: Callable[[int], bool]) -> bool:
    try:
        return test(os.stat(path).st_mode)
    except OSError:
        return False


def resolve(root: Path) -> Source:
    """Find the `v2` directory or snapshot that `root` designates; raises RootError."""
    # os.stat and os.scandir, not Path.exists: those call a symbolic link loop
    # "missing" and raise PermissionError where ROOT cannot be read.
    try:
        mode = os.stat(root).st_mode
    except OSError as exc:
        raise RootError(f"{root}: {_reason(exc)}") from exc
    if not stat.S_ISDIR(mode):
        raise RootError(f"{root}: not a directory")
    try:
        with os.scandir(root) as entries:
            names = {entry.name for entry in entries}
    except OSError as exc:
        raise RootError(f"{root}: cannot read: {_reason(exc)}") from exc
    if METADATA_FILE in names and _is(root / METADATA_FILE, stat.S_ISREG):
        return Source(root.resolve(), snapshot=True)
    if V2_BELOW_ROOT.parts[0] in names and _is(root / V2_BELOW_ROOT, stat.S_ISDIR):
        return Source((root / V2_BELOW_ROOT).resolve(), snapshot=False)
    if root.resolve().name == "v2" or any(
        name in names and _is(root / name, stat.S_ISDIR) for name in ("repositories", "blobs")
    ):
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


def snapshot_findings(source: Source) -> pd.DataFrame:
    """The kind and path of each finding a snapshot holds: what a report cut from its stored views rests on.

    None are known of a snapshot stripped down to its views (their figures then stand as they were stored).
    """
    import pandas as pd

    path = source.path / "findings.parquet"
    if not path.exists():
        return pd.DataFrame({"kind": pd.Series(dtype="string"), "path": pd.Series(dtype="string")})
    try:
        return pd.read_parquet(path, engine="pyarrow", columns=["kind", "path"])
    except Exception as exc:  # OSError, or pyarrow's own error types for corrupt files
        raise RootError(f"{source.path}: unreadable snapshot: {exc}") from exc

"""Resolve the ROOT argument to a storage tree (a directory, an S3 bucket, a registry configuration) or a snapshot."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from storage_audit.core.errors import UsageError
from storage_audit.inventory.schema import METADATA_FILE

if TYPE_CHECKING:
    import pandas as pd

    from storage_audit.inventory.tables import Inventory
    from storage_audit.scan.run import ScanOptions
    from storage_audit.storage.base import Storage
    from storage_audit.storage.bucket import S3Location, S3Settings

V2_BELOW_ROOT = Path("docker/registry/v2")


class RootError(UsageError):
    """ROOT is neither a registry root, its `v2` directory, nor a snapshot, or cannot be read."""


@dataclass(frozen=True)
class RemoteOptions:
    """How to read a tree in object storage: the manifest cache (default directory: None) and a request rate limit."""

    cache: bool = True
    cache_dir: Path | None = None
    max_requests_per_second: float | None = None


@dataclass(frozen=True)
class Source:
    """Where an inventory comes from: a `v2` tree to scan (on disk, or `storage`), or a snapshot directory."""

    path: Path
    snapshot: bool
    storage: Storage | None = None

    @property
    def location(self) -> str:
        """The tree or snapshot, for messages: a directory, or an s3:// URL."""
        return self.storage.location if self.storage is not None else str(self.path)

    def tree(self) -> Storage:
        """The storage tree to scan."""
        from storage_audit.storage.base import LocalStorage

        return self.storage if self.storage is not None else LocalStorage(self.path)


def _reason(exc: OSError) -> str:
    """The system's words for `exc`, as a message continues them: `permission denied`."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _is(path: Path, test: Callable[[int], bool]) -> bool:
    try:
        return test(os.stat(path).st_mode)
    except OSError:
        return False


def resolve(root: Path | str, remote: RemoteOptions | None = None) -> Source:
    """Find the tree or snapshot that `root` designates; raises RootError, or UsageError for a bad URL or config.

    `root` is an `s3://BUCKET[/ROOTDIRECTORY]` URL, the registry's configuration
    file, a registry root directory, its `v2` directory, or a snapshot.
    """
    from storage_audit.storage.bucket import is_s3_url

    text = str(root)
    if is_s3_url(text):
        from storage_audit.storage.bucket import S3Settings, parse_s3_url

        return _bucket(parse_s3_url(text), S3Settings(), remote)
    path = Path(root)
    # os.stat and os.scandir, not Path.exists: those call a symbolic link loop
    # "missing" and raise PermissionError where ROOT cannot be read.
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise RootError(f"{root}: {_reason(exc)}") from exc
    if stat.S_ISREG(mode) and _is_yaml_mapping(path):
        return _configured(path, remote)
    if not stat.S_ISDIR(mode):
        raise RootError(f"{root}: not a directory, nor a registry configuration file")
    try:
        with os.scandir(path) as entries:
            names = {entry.name for entry in entries}
    except OSError as exc:
        raise RootError(f"{root}: cannot read: {_reason(exc)}") from exc
    if METADATA_FILE in names and _is(path / METADATA_FILE, stat.S_ISREG):
        return Source(path.resolve(), snapshot=True)
    if V2_BELOW_ROOT.parts[0] in names and _is(path / V2_BELOW_ROOT, stat.S_ISDIR):
        return Source((path / V2_BELOW_ROOT).resolve(), snapshot=False)
    if path.resolve().name == "v2" or any(
        name in names and _is(path / name, stat.S_ISDIR) for name in ("repositories", "blobs")
    ):
        return Source(path.resolve(), snapshot=False)
    raise RootError(
        f"{root}: not a registry root (no {V2_BELOW_ROOT}), not a v2 directory, "
        f"and not a snapshot written by `storage-audit scan -o`"
    )


def _is_yaml_mapping(path: Path) -> bool:
    """Whether the file `path` could be a registry configuration: YAML text whose top is a mapping."""
    import yaml

    try:
        return isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def _configured(path: Path, remote: RemoteOptions | None) -> Source:
    """The storage the registry configuration file `path` names."""
    from storage_audit.roots.config import FilesystemStorage, read_registry_config

    config = read_registry_config(path)
    if isinstance(config, FilesystemStorage):
        if config.root.is_file():
            raise RootError(f"{path}: its filesystem rootdirectory {config.root} is not a directory")
        source = resolve(config.root, remote)
        if source.snapshot:
            raise RootError(f"{path}: its filesystem rootdirectory {config.root} is a snapshot, not a registry root")
        return source
    return _bucket(config.location, config.settings, remote)


def _bucket(location: S3Location, settings: S3Settings, remote: RemoteOptions | None) -> Source:
    from dataclasses import replace

    from storage_audit.storage.bucket import S3Bucket
    from storage_audit.storage.s3 import ManifestCache, S3Storage, default_cache_dir

    remote = remote or RemoteOptions()
    if remote.max_requests_per_second is not None:
        settings = replace(settings, max_requests_per_second=remote.max_requests_per_second)
    cache = ManifestCache(remote.cache_dir or default_cache_dir()) if remote.cache else None
    return Source(Path(), snapshot=False, storage=S3Storage(S3Bucket(location, settings), cache))


def load(source: Source, options: ScanOptions | None = None) -> Inventory:
    """The inventory of `source`: read from the snapshot, or scanned now."""
    if source.snapshot:
        from storage_audit.inventory.tables import read_snapshot

        try:
            return read_snapshot(source.path)
        except ValueError as exc:
            raise RootError(f"{source.path}: {exc}") from exc
    from storage_audit.scan.run import scan

    # The tree was found already: an unreadable v2 is the scan's finding, not a ROOT to resolve again.
    return scan(source.tree(), options)


def snapshot_findings(source: Source) -> pd.DataFrame:
    """The kind and path of each finding a snapshot holds: what a report cut from its stored views rests on.

    None are known of a snapshot stripped down to its views (their figures then stand as they were stored).
    """
    import pandas as pd

    from storage_audit.inventory.tables import read_metadata, table_files

    try:
        paths = table_files(source.path, read_metadata(source.path))["findings"]
        if not all(path.exists() for path in paths):
            return pd.DataFrame({"kind": pd.Series(dtype="string"), "path": pd.Series(dtype="string")})
        return pd.concat(
            [pd.read_parquet(path, engine="pyarrow", columns=["kind", "path"]) for path in paths], ignore_index=True
        )
    except Exception as exc:  # ValueError, OSError, or pyarrow's own error types for corrupt files
        raise RootError(f"{source.path}: unreadable snapshot: {exc}") from exc

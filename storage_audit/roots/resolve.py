"""Resolve ROOT once, into what it designates: a local tree, a bucket or a snapshot (from a path, a URL or a config);
and where to look for a registry when no ROOT is given."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage_audit.core.errors import UsageError
from storage_audit.core.shard import SHARD_DIR_PATTERN
from storage_audit.inventory.schema import METADATA_FILE, PART_PATTERN, SCHEMA
from storage_audit.storage.base import LocalStorage, RemoteOptions

if TYPE_CHECKING:
    from storage_audit.storage.bucket import S3Location
    from storage_audit.storage.s3 import S3Storage

V2_BELOW_ROOT = Path("docker/registry/v2")


class RootError(UsageError):
    """ROOT is neither a registry root, its `v2` directory, nor a snapshot, or cannot be read."""


@dataclass(frozen=True)
class LocalTree:
    """A `v2` directory on disk, to scan: with worker processes where the tree is big enough."""

    storage: LocalStorage

    @property
    def location(self) -> str:
        return self.storage.location


@dataclass(frozen=True)
class Bucket:
    """A `v2` tree under a prefix of a bucket (S3, GCS) or container (Azure), to scan from its listing."""

    storage: S3Storage

    @property
    def location(self) -> str:
        return self.storage.location


@dataclass(frozen=True)
class Snapshot:
    """A whole snapshot directory written by `scan -o`, to read."""

    path: Path

    @property
    def location(self) -> str:
        return str(self.path)


Tree = LocalTree | Bucket
"""A storage tree: what can be scanned, and where a plan applies."""
Root = LocalTree | Bucket | Snapshot
"""What ROOT designates, resolved once: each command matches on it, and never looks at ROOT's text again."""


def _reason(exc: OSError) -> str:
    """The system's words for `exc`, as a message continues them: `permission denied`."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _is(path: Path, test: Callable[[int], bool], follow: bool = True) -> bool:
    try:
        return test(os.stat(path, follow_symlinks=follow).st_mode)
    except OSError:
        return False


def _shown(text: str, limit: int = 200) -> str:
    """A path as a message shows it: cut short when it is longer than any a person types."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


SNAPSHOT_ONLY = (frozenset(SCHEMA) - {"repositories", "blobs"}) | {f"{name}.parquet" for name in SCHEMA}
"""Tables of a snapshot that no `v2` tree has a directory for, and the files of format 1."""


def _snapshot_tables(path: Path, names: set[str]) -> str | None:
    """What in directory `path` (holding `names`) only a snapshot writes, when something does: a snapshot's
    table directory, a table file or a report view, or a part of its blobs or repositories."""
    for name in sorted(names):
        if name in SNAPSHOT_ONLY or (name.startswith("report-") and name.endswith(".parquet")):
            return name
    for name in ("blobs", "repositories"):
        parts = (
            sorted(part for part in _listing(path / name) if re.fullmatch(PART_PATTERN, part)) if name in names else []
        )
        if parts:
            return f"{name}/{parts[0]}"
    return None


def _listing(path: Path) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [entry.name for entry in entries]
    except OSError:
        return []


def resolve(root: Path | str, remote: RemoteOptions | None = None) -> Root:
    """Find the tree or snapshot that `root` designates; raises RootError, or UsageError for a bad URL or config.

    `root` is an `s3://BUCKET[/ROOTDIRECTORY]`, `gs://BUCKET[/ROOTDIRECTORY]` or
    `az://CONTAINER[/ROOTDIRECTORY]` URL, the registry's configuration
    file, a registry root directory, its `v2` directory, or a snapshot.
    """
    from storage_audit.storage.bucket import is_bucket_url

    text = str(root)
    if is_bucket_url(text):
        from storage_audit.storage.bucket import parse_bucket_url
        from storage_audit.storage.clouds import settings_for

        location = parse_bucket_url(text)
        return _bucket(location, settings_for(location), remote)
    path = Path(root)
    # os.stat and os.scandir, not Path.exists: those call a symbolic link loop
    # "missing" and raise PermissionError where ROOT cannot be read.
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise RootError(f"{_shown(text)}: {_reason(exc)}") from exc
    except ValueError as exc:  # a NUL in the path
        raise RootError(f"{_shown(text)}: not a path: {exc}") from exc
    if stat.S_ISREG(mode):
        return _configured(path, remote)
    if not stat.S_ISDIR(mode):
        raise RootError(f"{root}: not a directory, nor a registry configuration file")
    try:
        with os.scandir(path) as entries:
            names = {entry.name for entry in entries}
    except OSError as exc:
        raise RootError(f"{root}: cannot read: {_reason(exc)}") from exc
    if METADATA_FILE in names:
        # The metadata is written last and marks a whole snapshot: it is that file, or this is no whole snapshot.
        if not _is(path / METADATA_FILE, stat.S_ISREG, follow=False):
            raise RootError(f"{root}: an incomplete snapshot: its {METADATA_FILE} is not a regular file")
        return Snapshot(path.resolve())
    if any(SHARD_DIR_PATTERN.fullmatch(name) for name in names):
        return Snapshot(path.resolve())  # the shares of one scan (scan --shard), read as one snapshot
    if V2_BELOW_ROOT.parts[0] in names and _is(path / V2_BELOW_ROOT, stat.S_ISDIR):
        return _local((path / V2_BELOW_ROOT).resolve())
    begun = _snapshot_tables(path, names)
    if begun:
        raise RootError(
            f"{root}: an incomplete snapshot: it holds {begun} but no {METADATA_FILE}, which `scan -o` writes last; "
            "the scan that wrote it did not finish"
        )
    if path.resolve().name == "v2" or any(
        name in names and _is(path / name, stat.S_ISDIR) for name in ("repositories", "blobs")
    ):
        return _local(path.resolve())
    raise RootError(
        f"{root}: not a registry root (no {V2_BELOW_ROOT}), not a v2 directory, "
        f"and not a snapshot written by `storage-audit scan -o`"
    )


# -- ROOT when none is given ---------------------------------------------------------------------

CONFIG = Path("/etc/docker/registry/config.yml")
"""The configuration Debian's `docker-registry` package and the `registry:2` image both keep."""

CANDIDATES: tuple[Path, ...] = (CONFIG, Path("/var/lib/registry"), Path("/var/lib/docker-registry"))
"""Looked at in this order: the configuration (which names the tree, wherever it is), the tree of the
`registry:2` image (`/var/lib/registry`), then the tree of Debian's package (`/var/lib/docker-registry`)."""


@dataclass(frozen=True)
class DefaultRoot:
    """The ROOT chosen for a command given none, and what it is."""

    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path} ({self.what})"


def _why_not(path: Path) -> str | None:
    """Why `path` is no registry to read by default, or None when it is one: a configuration file, or a
    directory holding docker/registry/v2."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not there"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    if stat.S_ISREG(mode):
        return None
    if not stat.S_ISDIR(mode):
        return "neither a file nor a directory"
    try:
        tree = os.stat(path / V2_BELOW_ROOT).st_mode
    except OSError:
        return f"no {V2_BELOW_ROOT} in it"
    return None if stat.S_ISDIR(tree) else f"no {V2_BELOW_ROOT} in it"


def find_default(candidates: Sequence[Path] | None = None) -> DefaultRoot:
    """The first of `candidates` (default: CANDIDATES, in their order) that is a regular file, taken for the
    registry's configuration, or a directory holding docker/registry/v2.

    Raises RootError naming every place looked at, and why each was passed over, when none is.
    """
    tried = []
    for path in CANDIDATES if candidates is None else candidates:
        why = _why_not(path)
        if why is None:
            regular = os.path.isfile(path)
            return DefaultRoot(path, "the registry's configuration" if regular else "a registry's storage tree")
        tried.append(f"{path} ({why})")
    raise RootError(
        f"no ROOT given, and no registry where one is kept by default: {', '.join(tried)}; "
        f"give ROOT: the directory holding {V2_BELOW_ROOT}, the registry's configuration file, "
        "s3://BUCKET[/ROOTDIRECTORY], gs://BUCKET[/ROOTDIRECTORY], az://CONTAINER[/ROOTDIRECTORY] or a snapshot"
    )


def _local(v2: Path) -> LocalTree:
    return LocalTree(LocalStorage(v2))


def _configured(path: Path, remote: RemoteOptions | None) -> Tree:
    """The storage the registry configuration file `path` names."""
    from storage_audit.roots.config import ConfigError, FilesystemStorage, read_document, read_registry_config

    try:
        is_config = isinstance(read_document(path), dict)
    except ConfigError as exc:
        raise RootError(f"{path}: not a directory, nor a registry configuration file: {exc.reason}") from exc
    if not is_config:
        raise RootError(f"{path}: not a directory, nor a registry configuration file")
    config = read_registry_config(path)
    if isinstance(config, FilesystemStorage):
        shown = _shown(str(config.root))
        try:
            mode = os.stat(config.root).st_mode
        except OSError as exc:
            raise RootError(f"{path}: its filesystem rootdirectory {shown}: {_reason(exc)}") from exc
        if not stat.S_ISDIR(mode):
            raise RootError(f"{path}: its filesystem rootdirectory {shown} is not a directory")
        found = resolve(config.root, remote)
        if isinstance(found, Snapshot):
            raise RootError(f"{path}: its filesystem rootdirectory {config.root} is a snapshot, not a registry root")
        return found
    return _bucket(config.location, config.settings, remote)


def _bucket(location: S3Location, settings: Any, remote: RemoteOptions | None) -> Bucket:
    from dataclasses import replace

    from storage_audit.storage.bucket import S3Bucket
    from storage_audit.storage.s3 import ManifestCache, S3Storage, default_cache_dir

    remote = remote or RemoteOptions()
    if remote.max_requests_per_second is not None:
        settings = replace(settings, max_requests_per_second=remote.max_requests_per_second)
    cache = ManifestCache(remote.cache_dir or default_cache_dir()) if remote.cache else None
    return Bucket(S3Storage(S3Bucket(location, settings), cache))

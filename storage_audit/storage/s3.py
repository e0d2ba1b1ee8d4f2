"""A registry tree in a bucket (S3, Google Cloud Storage, Azure Blob Storage) behind the storage interface, served
from one listing of every key."""

from __future__ import annotations

import asyncio
import hashlib
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from storage_audit.core.errors import StorageError
from storage_audit.core.paths import (
    LINK_READ,
    BlobData,
    Blobs,
    Digest,
    LayerLink,
    Repositories,
    RevisionLink,
    TagCurrentLink,
    TagIndexLink,
    UploadData,
    UploadStartedAt,
    blob_data_digest,
    parse_path,
    path_for,
)
from storage_audit.storage.base import (
    AccessError,
    BlobReader,
    Directory,
    Entry,
    EntryKind,
    KeyListing,
    NotRegular,
    ProcessModel,
    Small,
    Stat,
    Storage,
    read_regular,
)
from storage_audit.storage.bucket import Listing, MultipartUpload, ObjectInfo, S3Bucket, S3NotFound, link_etag

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DIR, _FILE = EntryKind.DIR, EntryKind.FILE
_BLOBS = path_for(Blobs()) + "/"


def mtime_ns(when: datetime | None) -> int:
    """A listing's time as nanoseconds since the epoch, exactly (no float on the way)."""
    if when is None:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


def default_cache_dir() -> Path:
    """Where manifests are cached unless told otherwise: the user's cache directory (XDG)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "storage-audit"


class ManifestCache:
    """Manifest blobs on local disk by digest; content is checked against its digest before it is used."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.hits = 0

    def _path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return self.directory / "manifests" / algorithm / hexpart[:2] / hexpart

    def get(self, digest: str, info: ObjectInfo, md5_etags: bool = True) -> bytes | None:
        """The cached content of blob `digest`, when it is exactly the object the listing shows.

        Where the service's ETags are no MD5 (`md5_etags` false: Azure), the size and digest alone vouch for it.
        """
        try:
            data = read_regular(self._path(digest), info.size)
        except AccessError:
            return None
        algorithm, _, hexpart = digest.partition(":")
        if len(data) != info.size or hashlib.new(algorithm, data).hexdigest() != hexpart:
            return None
        # A blob stored under a digest it does not hash to (damaged in the bucket) must be read as it is:
        # the ETag of a single-PUT object is its MD5, which tells whether the bucket holds these bytes.
        etag = info.md5 or info.etag or ""
        if (md5_etags or info.md5) and "-" not in etag and hashlib.md5(data, usedforsecurity=False).hexdigest() != etag:
            return None
        self.hits += 1
        return data

    def put(self, digest: str, data: bytes) -> None:
        """Keep `data` when it hashes to `digest`; a cache that cannot be written is only slower."""
        algorithm, _, hexpart = digest.partition(":")
        if hashlib.new(algorithm, data).hexdigest() != hexpart:
            return
        target = self._path(digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError:
            return


@dataclass(frozen=True)
class RemoteStats:
    """What reading a tree in object storage took."""

    requests: dict[str, int]
    total_requests: int
    bytes_received: int
    links_by_etag: int
    cache_hits: int | None
    """None when there is no cache."""


class _Nanoseconds(dict[datetime, int]):
    """`mtime_ns` of each listed time, worked out once: a bucket's keys share far fewer times than there are keys."""

    def __missing__(self, when: datetime) -> int:
        ns = self[when] = mtime_ns(when)
        return ns


class _DirTimes(dict[str, int]):
    """A directory's time, the newest of the keys below it: worked out when first asked (a walk asks for few)."""

    def __init__(self, files: dict[str, ObjectInfo], keys: list[str], ns: _Nanoseconds) -> None:
        super().__init__()
        self._files = files
        self._keys = keys
        self._ns = ns

    def __missing__(self, rel: str) -> int:
        below = f"{rel}/" if rel else ""
        keys, files, ns = self._keys, self._files, self._ns
        newest = 0
        for i in range(bisect_left(keys, below), len(keys)):
            path = keys[i]
            if not path.startswith(below):
                break
            when = ns[files[path].last_modified]
            if when > newest:
                newest = when
        self[rel] = newest
        return newest


@dataclass
class _Tree:
    """The listing as directories: what each holds, and every key in order for walks below a path."""

    files: dict[str, ObjectInfo]
    children: dict[str, dict[str, EntryKind]]
    dir_mtimes: dict[str, int]
    keys: list[str]
    shadowed: dict[str, list[str]]
    """Per directory, the names that are a key and a prefix of other keys at once: only S3 can hold both.

    An empty key so named is a directory marker, not listed here.
    """
    links: set[str]
    """The keys the layout defines as link files."""
    blobs: dict[str, str]
    """The digest of each blob's `data` key."""
    ns: _Nanoseconds


_ODD_NAMES = frozenset({"", ".", ".."})


def _odd(path: str) -> bool:
    """Whether `path` has an empty, `.` or `..` segment: S3 allows them in a key; a directory tree cannot hold them."""
    parts = path.split("/")
    # Membership tests, not a generator: every key whose directory is new (every blob's) is checked here.
    return "" in parts or "." in parts or ".." in parts


_LINKS = (LayerLink, RevisionLink, TagCurrentLink, TagIndexLink)
_LAYOUT_FILES = (BlobData, *_LINKS, UploadData, UploadStartedAt)


class _Index:
    """The listing read as its pages arrive: each key parsed once, into directories and what the ETags resolve.

    Filled while the rest is still being listed, so that this work overlaps
    the waits for the network rather than following them.
    """

    def __init__(self) -> None:
        self.files: dict[str, ObjectInfo] = {}
        self.children: dict[str, dict[str, EntryKind]] = {"": {}}
        self.named: set[str] = set()
        """Every digest the keys name: blob data, and the digest component of every link."""
        self.links: list[str] = []
        self.blobs: dict[str, str] = {}
        self.odd: set[str] = set()
        """Keys with an empty, `.` or `..` segment (S3 allows them): see `_add_odd`."""

    def add(self, objects: dict[str, ObjectInfo]) -> list[str]:
        """Take in `objects`; the blob data paths of the manifests that their revision links name."""
        files, children, named, links, blobs = self.files, self.children, self.named, self.links, self.blobs
        manifests: list[str] = []
        for path, info in objects.items():
            if path in files:
                files[path] = info
                continue
            files[path] = info
            parent, _, name = path.rpartition("/")
            entries = children.get(parent)
            if entries is None:
                if _odd(path):
                    self._add_odd(path)
                    continue
                entries = children[parent] = {}
                # A new directory: each ancestor holds the next, up to the first one already known.
                below = parent
                while below:
                    above, _, dirname = below.rpartition("/")
                    holder = children.get(above)
                    if holder is not None:
                        holder[dirname] = _DIR
                        break
                    children[above] = {dirname: _DIR}
                    below = above
            elif name in _ODD_NAMES or (not parent and path[:1] == "/"):
                self._add_odd(path)
                continue
            entries.setdefault(name, _FILE)
            digest = blob_data_digest(path)  # most keys: a blob's data, read without building its spec
            if digest is not None:
                named.add(digest)
                blobs[path] = digest
                continue
            try:
                spec = parse_path(path)
            except ValueError:
                continue
            kind = spec.__class__
            if kind is BlobData:
                digest = str(spec.digest)  # type: ignore[union-attr]
                named.add(digest)
                blobs[path] = digest
            elif kind is LayerLink or kind is TagIndexLink:
                named.add(str(spec.digest))  # type: ignore[union-attr]
                links.append(path)
            elif kind is RevisionLink:
                named.add(str(spec.digest))  # type: ignore[union-attr]
                links.append(path)
                manifests.append(path_for(BlobData(spec.digest)))  # type: ignore[union-attr]
            elif kind is TagCurrentLink:
                links.append(path)
        return manifests

    def _add_odd(self, path: str) -> None:
        """A key no directory tree can hold is a file of the top directory, named by its whole path.

        The walk lists the top directory, so it is always found: a stray file
        whose path is the key's own. It is never read, nor taken for a directory.
        """
        self.odd.add(path)
        self.children[""][path] = _FILE

    def markers(self) -> list[str]:
        """Empty keys with nothing below them where the layout has no file: maybe folder markers (`name/`).

        Listings drop a key's trailing `/`, so only the bucket can tell such a
        marker from an empty object `name`.
        """
        children, odd, out = self.children, self.odd, []
        for path, info in self.files.items():
            if info.size == 0 and path not in children and path not in odd:
                try:
                    if isinstance(parse_path(path), _LAYOUT_FILES):
                        continue
                except ValueError:
                    pass
                out.append(path)
        return out

    def tree(self, markers: Sequence[str] = ()) -> _Tree:
        """The directory view; each of `markers` is a folder marker alone, read as the empty directory it names."""
        files, children = self.files, self.children
        keys = sorted(files)
        ns = _Nanoseconds()
        times = _DirTimes(files, keys, ns)
        for path in markers:
            parent, _, name = path.rpartition("/")
            children[parent][name] = _DIR
            children[path] = {}
            times[path] = ns[files[path].last_modified]
        shadowed: dict[str, list[str]] = {}
        for path, info in files.items():
            # An empty object named for a prefix is a "folder" marker (consoles make them; listings drop its `/`).
            if info.size > 0 and path in children:
                parent, _, name = path.rpartition("/")
                shadowed.setdefault(parent, []).append(name)
        return _Tree(files, children, times, keys, shadowed, set(self.links), self.blobs, ns)


def _tree(files: dict[str, ObjectInfo]) -> _Tree:
    index = _Index()
    index.add(files)
    return index.tree()


class _Directory(Directory, AbstractContextManager["_Directory"]):
    """One directory of the listing, for the walk's bulk calls: each name looked up in the tree at once."""

    def __init__(self, storage: S3Storage, rel: str) -> None:
        self.storage = storage
        self.rel = rel
        self.below = f"{rel}/" if rel else ""

    def __enter__(self) -> _Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def list_dir(self) -> list[Entry] | None:
        return self.storage.list_dir(self.rel)

    def subdirs(self) -> tuple[list[str], list[Entry]]:
        return self.storage.subdirs(self.rel)

    def read_small(self, name: str, limit: int, stat: bool = True) -> Small | None:
        return self.storage.read_small(f"{self.below}{name}", limit, stat)

    def stat(self, name: str) -> Stat | None:
        return self.storage.stat(f"{self.below}{name}")

    def stat_each(self, names: Sequence[str]) -> list[Stat | AccessError | None]:
        tree, below = self.storage.tree, self.below
        children, files, ns = tree.children, tree.files, tree.ns
        out: list[Stat | AccessError | None] = []
        for name in names:
            path = f"{below}{name}"
            info = files.get(path)
            if info is None or path in children:
                out.append(self.storage.stat(path))
            else:
                out.append(_new(Stat, (info.size, ns[info.last_modified], _FILE)))
        return out

    def read_each(self, names: Sequence[str], limit: int, stat: bool = True) -> list[Small | AccessError | None]:
        storage, below = self.storage, self.below
        tree, known, cut = storage.tree, storage._known, storage._cut
        children, files, ns = tree.children, tree.files, tree.ns
        out: list[Small | AccessError | None] = []
        for name in names:
            path = f"{below}{name}"
            data = known.get(path)
            if data is None or path in children or (cut and path in cut and len(data) <= limit):
                try:
                    out.append(storage.read_small(path, limit, stat))
                except AccessError as exc:
                    out.append(exc)
            elif stat:
                info = files[path]
                out.append(_new(Small, (data[: limit + 1], info.size, ns[info.last_modified])))
            else:
                out.append(_new(Small, (data[: limit + 1], -1, 0)))
        return out


_new = tuple.__new__


class _Stream(BlobReader):
    """A GET read as a stream into the caller's buffer."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readinto(self, buffer: bytearray) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class S3Storage(Storage):
    """The `v2` tree under a bucket's prefix, read-only: listed once, links resolved by ETag, the rest fetched in bulk.

    The same for every service the bucket's `Provider` reaches (S3, GCS, Azure); what follows is S3's case.

    S3 has no directories: a directory exists while a key lies below it, so
    there are no empty directories and no symbolic links. An upload's data is
    an incomplete multipart upload, invisible to listings: its `data` file is
    answered from ListMultipartUploads, with its parts' bytes summed.
    """

    def __init__(self, bucket: S3Bucket, cache: ManifestCache | None = None) -> None:
        self.bucket = bucket
        self.cache = cache
        self.location = str(bucket.location)
        self._tree_: _Tree | None = None
        self._known: dict[str, bytes] = {}
        self._cut: set[str] = set()
        """Paths whose `_known` bytes are only the first ones: enough to answer a read of fewer."""
        self.etag_resolved = 0
        self._unlisted: dict[str, list[tuple[str, int]]] = {}
        self._repositories: Callable[[str], bool] | None = None

    @property
    def origin(self) -> dict[str, str]:
        """Where the tree is, for a snapshot's metadata: provider (but for S3), bucket or container, prefix, region
        (S3), account (Azure), endpoint; never a credential."""
        return self.bucket.origin()

    @property
    def process_model(self) -> ProcessModel:
        # Listed and read in bulk up front, then walked in memory: nothing to share out, and it cannot be pickled.
        return ProcessModel.THREADS

    def __getstate__(self) -> None:
        raise TypeError("a tree in a bucket is walked in one process, from its listing")

    # -- the listing ----------------------------------------------------------

    def share(self, repositories: Callable[[str], bool]) -> None:
        """List only the top-level repository directories `repositories` accepts (and every blob prefix: the
        manifests their links name may lie in any)."""
        if self._tree_ is None:
            self._repositories = repositories

    def _lists(self, path: str) -> bool:
        """Whether the directory `path` (relative to `v2`) is listed: all but other shares' repositories."""
        top, _, name = path.partition("/")
        wanted = self._repositories
        return wanted is None or top != path_for(Repositories()) or not name or "/" in name or wanted(name)

    @property
    def tree(self) -> _Tree:
        if self._tree_ is None:
            self._tree_ = self._load()
        return self._tree_

    def _load(self) -> _Tree:
        index = _Index()

        async def both() -> tuple[Listing, list[MultipartUpload]]:
            early = _EarlyManifests(self, index)
            try:
                listing, uploads = await asyncio.gather(
                    self.bucket.list_all_async(on_keys=early.on_keys, keep=self._lists),
                    self.bucket.multipart_uploads_async(),
                )
            except BaseException:
                early.cancel()
                raise
            await early.finish()
            return listing, uploads

        listing, uploads = self.bucket.run(both())
        if not listing.objects and not uploads and not listing.marker:
            # A bucket has no directories: a registry that was never written to and a mistyped prefix are the same
            # nothing, and an answer about nothing (no repositories, every one of a snapshot gone) would look sound.
            raise S3NotFound(
                f"no registry under {self.location}: no key under {self.bucket.location.prefix} "
                "(a mistyped prefix or rootdirectory, or a registry nothing was ever pushed to)"
            )
        objects = listing.objects
        # Links whose ETag is the MD5 of a digest the listing names hold exactly that digest: no GET.
        provider = self.bucket.provider
        by_etag = {link_etag(d): d for d in index.named}
        for path in index.links:
            info = objects[path]
            digest = by_etag.get(provider.content_md5(info) or "")
            if digest is not None and info.size == len(digest):
                self._known[path] = digest.encode()
                self.etag_resolved += 1
        for upload in uploads:
            if not self._lists("/".join(upload.path.split("/")[:2])):
                continue  # another share's repository
            self._unlisted.setdefault(upload.path, []).append((upload.upload_id, upload.bytes))
            # Several unfinished uploads to one key are one file of their bytes together.
            known = index.files.get(upload.path)
            initiated = upload.initiated or datetime.fromtimestamp(0, UTC)
            if known is None or known.etag is not None:
                info = ObjectInfo(upload.bytes, initiated, None)
            else:
                info = ObjectInfo(known.size + upload.bytes, max(known.last_modified, initiated), None)
            index.add({upload.path: info})
        candidates = index.markers()
        markers = self.bucket.run(self.bucket.folder_markers_async(candidates)) if candidates else []
        return index.tree(markers)

    def objects(self) -> dict[str, ObjectInfo]:
        """Every key of the listing (relative to `v2`) with its ETag, size and last-modified time."""
        return self.tree.files

    def listed(self) -> list[str]:
        """Every key of the listing (relative to `v2`), in order."""
        return self.tree.keys

    def _kind(self, rel: str) -> EntryKind | None:
        tree = self.tree
        if rel in tree.children:
            return _DIR
        if rel in tree.files:
            return _FILE
        return None

    # -- the storage interface ------------------------------------------------

    def list_dir(self, rel: str) -> list[Entry] | None:
        entries = self.tree.children.get(rel)
        if entries is None:
            return None
        # A key that is also a prefix is listed twice, as the directory and as the file the layout has no place for.
        shadowed = [Entry(name, _FILE) for name in self.tree.shadowed.get(rel, ())]
        return [Entry(name, kind) for name, kind in entries.items()] + shadowed

    def subdirs(self, rel: str) -> tuple[list[str], list[Entry]]:
        entries = self.tree.children.get(rel)
        if not entries:
            return [], []
        names = [name for name, kind in entries.items() if kind is _DIR]
        if len(names) == len(entries) and rel not in self.tree.shadowed:
            return names, []  # the usual directory, which holds only directories
        listed = self.list_dir(rel) or []
        return names, [e for e in listed if e.kind is not _DIR]

    def stat(self, rel: str) -> Stat | None:
        tree = self.tree
        if rel in tree.children:
            return Stat(0, tree.dir_mtimes[rel], _DIR)
        info = tree.files.get(rel)
        if info is None:
            return None
        return Stat(info.size, tree.ns[info.last_modified], _FILE)

    def read_small(self, rel: str, limit: int, stat: bool = True) -> Small | None:
        kind = self._kind(rel)
        if kind is None:
            return None
        if kind is _DIR:
            raise NotRegular(rel)
        info = self.tree.files[rel]
        data = self._known.get(rel)
        if data is None or (rel in self._cut and len(data) <= limit):
            self._fetch([rel], limit)
            data = self._known.get(rel)
            if data is None:
                return None  # gone since the listing
        if stat:
            return Small(data[: limit + 1], info.size, self.tree.ns[info.last_modified])
        return Small(data[: limit + 1], -1, 0)

    def directory(self, rel: str) -> _Directory:
        return _Directory(self, rel)

    def open_blob(self, rel: str) -> BlobReader | None:
        if self._kind(rel) is None:
            return None
        if self._kind(rel) is _DIR:
            raise NotRegular(rel)
        return _Stream(self.bucket.iter_object(rel))

    def files(self, rel: str) -> Iterator[tuple[str, Stat]]:
        tree = self.tree
        if rel in tree.files and rel not in tree.children:
            st = self.stat(rel)
            if st is not None:
                yield rel, st
            return
        files, ns = tree.files, tree.ns
        for path in self._keys_below(rel):
            info = files[path]
            yield path, Stat(info.size, ns[info.last_modified], _FILE)

    def _keys_below(self, rel: str) -> Iterator[str]:
        """Every key below the directory `rel`, in order."""
        below = f"{rel}/" if rel else ""
        keys = self.tree.keys
        for i in range(bisect_left(keys, below), len(keys)):
            path = keys[i]
            if not path.startswith(below):
                break
            yield path

    def listing(self) -> KeyListing:
        tree = self.tree
        return KeyListing(self.origin, tree.files, tree.keys, self._unlisted)

    # -- bulk reads -----------------------------------------------------------

    def prefetch(self, prefixes: Sequence[str]) -> None:
        """GET at once, concurrently, what the walk of `prefixes` will read that the listing does not tell.

        That is every link whose ETag did not resolve it, every upload's
        `startedat`, and every blob named exactly (a manifest), from the cache
        when it holds it.
        """
        tree = self.tree
        wanted: list[str] = []
        for prefix in prefixes:
            if prefix in tree.files and prefix not in tree.children:
                if prefix not in self._known:
                    wanted.append(prefix)
                continue
            if prefix.startswith(_BLOBS):
                continue  # a blob prefix is only listed and stat'ed: nothing below it is read
            for path in self._keys_below(prefix):
                if path not in self._known and (path in tree.links or _is_started_at(path)):
                    wanted.append(path)
        if wanted:
            self._fetch(list(dict.fromkeys(wanted)), None)

    def _fetch(self, paths: list[str], limit: int | None) -> None:
        """Read `paths` into `_known`: from the cache for manifest blobs, else by GETs run concurrently.

        Every GET is one safe read: a range of `limit + 1` bytes, which says
        whether the object is bigger than `limit`, as a local file's read does.
        Without a caller's `limit` (reading ahead of the walk), a manifest blob
        is read up to MAX_MANIFEST_BYTES, anything else up to LINK_READ, and
        an object bigger than that is left for the walk to read with its own limit.
        """
        files, blobs = self.tree.files, self.tree.blobs
        todo: list[tuple[str, str | None]] = []
        for path in paths:
            digest = blobs.get(path)
            if digest is not None and self.cache is not None:
                cached = self.cache.get(digest, files[path], self.bucket.provider.etag_is_md5)
                if cached is not None:
                    self._known[path] = cached
                    self._cut.discard(path)
                    continue
            todo.append((path, digest))
        if not todo:
            return
        from storage_audit.core.manifest import MAX_MANIFEST_BYTES

        async def one(path: str, digest: str | None) -> None:
            cap = limit if limit is not None else MAX_MANIFEST_BYTES if digest is not None else LINK_READ
            if limit is None and files[path].size > cap:
                return
            data = await self.bucket.get_async(path, cap + 1)
            if data is None:
                return
            whole = len(data) <= cap
            if not whole:
                if limit is None:
                    return  # grown since the listing
                self._cut.add(path)
            else:
                self._cut.discard(path)
            self._known[path] = data
            if digest is not None and whole and self.cache is not None:
                self.cache.put(digest, data)

        self.bucket.run(self.bucket.gather_limited([partial(one, p, d) for p, d in todo]))

    # -- what the summary states ----------------------------------------------

    def stats(self) -> RemoteStats:
        """Requests by kind, bytes received, links read from their ETag and cache hits, so far."""
        counters = self.bucket.counters
        return RemoteStats(
            dict(counters.requests),
            counters.total,
            counters.bytes_received,
            self.etag_resolved,
            None if self.cache is None else self.cache.hits,
        )


class _EarlyManifests:
    """The index filled as each page is listed, and GETs of manifest blobs started as soon as both their keys are.

    A revision link's path names the manifest it holds; once that blob's key
    is listed too, its GET starts, so the listing and the manifests' GETs
    overlap. Whatever the walk reads later is then already
    known, byte for byte what a GET then would give; a link that turns out to
    hold another digest costs only this one GET. A failed GET is left for the
    walk to make again, and to report.
    """

    def __init__(self, storage: S3Storage, index: _Index) -> None:
        self.storage = storage
        self.index = index
        self.wanted: set[str] = set()
        """Manifest blobs named by a revision link, not listed yet."""
        self.started: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.semaphore = asyncio.Semaphore(storage.bucket.settings.concurrency)

    def on_keys(self, objects: dict[str, ObjectInfo]) -> None:
        manifests = self.index.add(objects)
        wanted = self.wanted
        if wanted:
            for path in wanted.intersection(objects):
                self._start(path)
        files = self.index.files
        for blob in manifests:
            if blob in files:
                self._start(blob)
            else:
                wanted.add(blob)

    def _start(self, path: str) -> None:
        from storage_audit.core.manifest import MAX_MANIFEST_BYTES

        info = self.index.files.get(path)
        # Only whole objects no bigger than any manifest: a caller asking for more then still gets a full read.
        if path in self.started or info is None or info.size > MAX_MANIFEST_BYTES:
            return
        self.started.add(path)
        self.tasks.append(asyncio.create_task(self._get(path, info)))

    async def _get(self, path: str, info: ObjectInfo) -> None:
        storage = self.storage
        digest = self.index.blobs.get(path)
        if digest is None:
            return
        if storage.cache is not None:
            cached = storage.cache.get(digest, info, storage.bucket.provider.etag_is_md5)
            if cached is not None:
                storage._known[path] = cached
                self._children(cached)
                return
        async with self.semaphore:
            try:
                # A range one byte past the listed size reads the whole object in one call, and tells if it grew.
                data = await storage.bucket.get_async(path, info.size + 1)
            except StorageError:
                return
        if data is None or len(data) > info.size:
            return  # gone, or rewritten since the listing: the walk reads it again
        storage._known[path] = data
        if storage.cache is not None:
            storage.cache.put(digest, data)
        self._children(data)

    def _children(self, data: bytes) -> None:
        """Start the GETs of the manifests that the list or index `data` names: a child whose revision link
        was deleted is read by the scan too, and no revision link asks for it here."""
        if b'"manifests"' not in data:
            return  # no list or index: spares parsing every image manifest
        from storage_audit.core.manifest import parse_manifest

        for ref in parse_manifest(data).references:
            if ref.ref_type == "child":
                blob = path_for(BlobData(Digest.parse(ref.digest)))
                if blob in self.index.files:
                    self._start(blob)
                else:
                    self.wanted.add(blob)

    async def finish(self) -> None:
        """Wait for every GET started, those that a list's GET starts while this waits included."""
        waited = 0
        while waited < len(self.tasks):
            started, waited = self.tasks[waited:], len(self.tasks)
            await asyncio.gather(*started, return_exceptions=True)

    def cancel(self) -> None:
        """Drop the GETs still running: the listing failed, so nothing will be read."""
        for task in self.tasks:
            task.cancel()


def _is_started_at(path: str) -> bool:
    return path.endswith("/startedat") and "/_uploads/" in path and not _odd(path)


__all__ = ["ManifestCache", "RemoteStats", "S3Storage", "default_cache_dir", "mtime_ns"]

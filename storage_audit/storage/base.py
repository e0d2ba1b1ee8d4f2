"""One storage tree behind a small path-based interface: list, read small files safely, stat, stream.

Paths are relative to the `v2` directory, with `/` separators, as paths.py
builds them ("" is `v2` itself). `LocalStorage` serves a directory on disk; an
object-store backend answers the same calls from a listing of keys.

`read_regular` and `open_regular` are the one way the rest of the tool reads a
file on disk (a configuration, a snapshot's files), with the same care.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat as stat_mod
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from storage_audit.core.errors import StorageError

if TYPE_CHECKING:
    from storage_audit.storage.bucket import ObjectInfo

# Non-blocking, so that a FIFO where a file belongs can never stall a read.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
BLOB_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class RemoteOptions:
    """How to read a tree in object storage: the manifest cache (default directory: None) and a request rate limit."""

    cache: bool = True
    cache_dir: Path | None = None
    max_requests_per_second: float | None = None


class EntryKind(StrEnum):
    """What a name in a listing is; an object store has only directories (prefixes) and files."""

    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    OTHER = "other"


class ProcessModel(StrEnum):
    """How a scan may read a backend: shared out among worker processes, or in the command's own process."""

    WORKERS = "workers"
    """Reads that cost CPU: worth sharing out among worker processes, forked over the storage."""
    THREADS = "threads"
    """Reads that wait on the network: made in the command's own process, where other work runs in threads."""


class Entry(NamedTuple):
    name: str
    kind: EntryKind


class Stat(NamedTuple):
    size: int
    mtime_ns: int
    kind: EntryKind


class Small(NamedTuple):
    """A small file's bytes (at most `limit + 1`: one more tells it is too big), its size and mtime from stat.

    `size` and `mtime_ns` are -1 and 0 when the read was asked not to stat.
    """

    data: bytes
    size: int
    mtime_ns: int


class AccessError(StorageError):
    """A path that exists but cannot be read or removed as asked; a scan turns it into a finding."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or '.'}: {reason}")
        self.path = path
        self.reason = reason


class SymlinkRefused(AccessError):
    """A symbolic link where the layout has a file or a directory: never followed."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "symbolic link, not followed")


class NotRegular(AccessError):
    """A directory, FIFO, socket or device where the layout has a regular file."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "not a regular file")


def _access_error(path: str, exc: OSError) -> AccessError:
    if exc.errno == errno.ELOOP:
        return SymlinkRefused(path)
    if exc.errno in (errno.EISDIR, errno.ENXIO):
        return NotRegular(path)
    return AccessError(path, f"cannot read: {exc.strerror or exc}")


def _kind(mode: int) -> EntryKind:
    return _KIND_OF_FORMAT.get(stat_mod.S_IFMT(mode), EntryKind.OTHER)


def join(*parts: str) -> str:
    """Storage paths joined with `/`, "" standing for the `v2` directory itself."""
    return "/".join(p for p in parts if p)


class BlobReader(AbstractContextManager["BlobReader"]):
    """A blob opened for one sequential read into a caller's buffer."""

    @abstractmethod
    def readinto(self, buffer: bytearray) -> int: ...

    @abstractmethod
    def close(self) -> None: ...

    def __exit__(self, *exc: object) -> None:
        self.close()


class Directory(ABC):
    """One directory of a tree, for many calls below it: a backend can make them cheaper than full paths."""

    @abstractmethod
    def list_dir(self) -> list[Entry] | None: ...

    def subdirs(self) -> tuple[list[str], list[Entry]]:
        """The names of the sub-directories, and every other entry; both empty when the directory is absent."""
        return _split(self.list_dir())

    @abstractmethod
    def read_small(self, name: str, limit: int, stat: bool = True) -> Small | None: ...

    @abstractmethod
    def stat(self, name: str) -> Stat | None: ...

    def stat_each(self, names: Sequence[str]) -> list[Stat | AccessError | None]:
        """stat of each of `names`, in order, an error given as its value: the bulk form a scan uses."""
        out: list[Stat | AccessError | None] = []
        for name in names:
            try:
                out.append(self.stat(name))
            except AccessError as exc:
                out.append(exc)
        return out

    def read_each(self, names: Sequence[str], limit: int, stat: bool = True) -> list[Small | AccessError | None]:
        """read_small of each of `names`, in order, an error given as its value: the bulk form a scan uses."""
        out: list[Small | AccessError | None] = []
        for name in names:
            try:
                out.append(self.read_small(name, limit, stat))
            except AccessError as exc:
                out.append(exc)
        return out


class Storage(ABC):
    """One registry storage tree, addressed by paths relative to its `v2` directory.

    Absence is None (or an empty answer), never an error. A path that exists but
    cannot be used raises AccessError (SymlinkRefused, NotRegular); a backend that
    cannot be reached at all raises StorageError.
    """

    location: str
    """Where the tree is, for messages and plans: a directory, or a URL."""

    @property
    @abstractmethod
    def origin(self) -> dict[str, str]:
        """Where the tree is, as a snapshot's metadata records it (a directory's path; a bucket, prefix, region,
        endpoint); never a credential."""

    @property
    @abstractmethod
    def process_model(self) -> ProcessModel:
        """Whether a scan may fork worker processes over this tree, or reads it in the command's own process."""

    @abstractmethod
    def list_dir(self, rel: str) -> list[Entry] | None:
        """The names in directory `rel` with their kind, unsorted; None when it does not exist."""

    def subdirs(self, rel: str) -> tuple[list[str], list[Entry]]:
        """The names of the sub-directories of `rel`, and every other entry; both empty when `rel` is absent."""
        return _split(self.list_dir(rel))

    @abstractmethod
    def read_small(self, rel: str, limit: int, stat: bool = True) -> Small | None:
        """The first `limit + 1` bytes of the regular file `rel`; None when absent.

        Never follows a symbolic link (SymlinkRefused) and never blocks on a FIFO
        (NotRegular). With `stat`, also its size and mtime.
        """

    @abstractmethod
    def stat(self, rel: str) -> Stat | None:
        """Size, mtime and kind of `rel`, not following a symbolic link; None when absent."""

    @abstractmethod
    def open_blob(self, rel: str) -> BlobReader | None:
        """The regular file `rel` opened for a streaming read; None when absent."""

    @abstractmethod
    def files(self, rel: str) -> Iterator[tuple[str, Stat]]:
        """Every file below `rel` (or `rel` itself when it is one), as (path, stat)."""

    def directory(self, rel: str) -> AbstractContextManager[Directory]:
        """A view of directory `rel` for many calls below it."""
        return _Prefixed(self, rel)

    def prefetch(self, prefixes: Sequence[str]) -> None:  # noqa: B027 - an optional hook
        """Say which parts of the tree are about to be read: a remote backend may list them in bulk first."""

    def share(self, repositories: Callable[[str], bool]) -> None:  # noqa: B027 - an optional hook
        """Say, before anything is read, that only the top-level repository directories whose names `repositories`
        accepts will be walked (a scan's share): a backend that lists the whole tree up front may list only those."""

    def bytes_below(self, rel: str) -> int:
        return sum(st.size for _, st in self.files(rel))

    def listing(self) -> KeyListing | None:
        """The listing of keys the tree was read from, where it is one (object storage); None for a file system."""
        return None


@dataclass(frozen=True)
class KeyListing:
    """Every key of a tree in object storage as listed (ETag, size, last-modified), and what listings do not show."""

    origin: dict[str, str]
    """Where the tree is: bucket, prefix, region, endpoint; never a credential."""
    objects: Mapping[str, ObjectInfo]
    keys: Sequence[str]
    """The paths of `objects`, sorted."""
    unlisted: Mapping[str, Sequence[tuple[str, int]]]
    """Incomplete multipart uploads (the s3 driver's upload data), as (upload id, bytes), by the path of their key."""

    def between(self, first: str, last: str) -> Iterator[tuple[str, ObjectInfo]]:
        """The keys from `first` to `last`, in order, with what the listing says of each."""
        for rel in self.keys[bisect_left(self.keys, first) : bisect_right(self.keys, last)]:
            yield rel, self.objects[rel]


def _split(entries: list[Entry] | None) -> tuple[list[str], list[Entry]]:
    if not entries:
        return [], []
    return [e.name for e in entries if e.kind == EntryKind.DIR], [e for e in entries if e.kind != EntryKind.DIR]


class _Prefixed(Directory, AbstractContextManager["_Prefixed"]):
    """The plain view of a directory: every call made on the whole path."""

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage = storage
        self.rel = rel

    def __enter__(self) -> _Prefixed:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def list_dir(self) -> list[Entry] | None:
        return self.storage.list_dir(self.rel)

    def read_small(self, name: str, limit: int, stat: bool = True) -> Small | None:
        return self.storage.read_small(join(self.rel, name), limit, stat)

    def stat(self, name: str) -> Stat | None:
        return self.storage.stat(join(self.rel, name))


# -- the local file system ------------------------------------------------------


def _scandir(target: int | str, rel: str) -> list[os.DirEntry[str]] | None:
    try:
        with os.scandir(target) as it:
            return list(it)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _access_error(rel, exc) from exc


def _subdirs_fd(target: int | str, rel: str) -> tuple[list[str], list[Entry]]:
    entries = _scandir(target, rel)
    if not entries:
        return [], []
    # d_type from the listing: no system call per entry. The usual directory holds only directories.
    names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    if len(names) == len(entries):
        return names, []
    return names, [e for e in _entries(entries) if e.kind != EntryKind.DIR]


def _list_fd(target: int | str, rel: str) -> list[Entry] | None:
    entries = _scandir(target, rel)
    return None if entries is None else _entries(entries)


def _entries(entries: list[os.DirEntry[str]]) -> list[Entry]:
    out = []
    for e in entries:
        # d_type from the listing: no system call per entry, but for the rare symlink.
        if e.is_dir(follow_symlinks=False):
            kind = EntryKind.DIR
        elif e.is_file(follow_symlinks=False):
            kind = EntryKind.FILE
        elif e.is_symlink():
            kind = EntryKind.SYMLINK
        else:
            kind = EntryKind.OTHER
        out.append(Entry(e.name, kind))
    return out


def _rel(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _read_fd(path: str, dir_fd: int | None, base: str, limit: int, stat: bool) -> Small | None:
    """Read `path` (relative to `dir_fd` if given); `base` names the directory in errors, only when one occurs."""
    try:
        fd = os.open(path, FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _access_error(_rel(base, path) if dir_fd is not None else base, exc) from exc
    try:
        if stat:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise NotRegular(_rel(base, path) if dir_fd is not None else base)
            size, mtime = st.st_size, st.st_mtime_ns
            # Ask for the size seen (+1 to notice growth): a fixed large buffer
            # would cost an allocation of that size for every read.
            want = min(size, limit) + 1
            data = os.read(fd, want)
            if len(data) < want and len(data) < size:
                data = _read_rest(fd, data, want)  # a short read, which local files rarely give
        else:
            size, mtime = -1, 0
            data = os.read(fd, limit + 1)
            # A FIFO without a writer reads as empty: tell it from an empty file.
            if not data and not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise NotRegular(_rel(base, path) if dir_fd is not None else base)
    except BlockingIOError as exc:
        raise NotRegular(_rel(base, path) if dir_fd is not None else base) from exc
    except OSError as exc:
        raise _access_error(_rel(base, path) if dir_fd is not None else base, exc) from exc
    finally:
        os.close(fd)
    # Made from the tuple directly: this is the hot path of every link a scan reads.
    return _new(Small, (data, size, mtime))


def _chunks(fd: int, data: bytes, want: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """`data`, then what follows it in `fd`, a chunk at a time, up to `want` bytes in all."""
    yield data
    want -= len(data)
    while want > 0:
        piece = os.read(fd, min(want, chunk))
        if not piece:
            return
        yield piece
        want -= len(piece)


def _read_rest(fd: int, data: bytes, want: int) -> bytes:
    chunks = [data]
    want -= len(data)
    while want > 0:
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        want -= len(chunk)
    return b"".join(chunks)


_new = tuple.__new__
_IFMT = 0o170000  # stat.S_IFMT's mask, applied inline in the hottest loop
_IFREG = stat_mod.S_IFREG
_OTHER = EntryKind.OTHER
_KIND_OF_FORMAT = {
    stat_mod.S_IFDIR: EntryKind.DIR,
    stat_mod.S_IFREG: EntryKind.FILE,
    stat_mod.S_IFLNK: EntryKind.SYMLINK,
}


def _stat_at(path: str, dir_fd: int | None, base: str) -> Stat | None:
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _access_error(_rel(base, path) if dir_fd is not None else base, exc) from exc
    kind = _KIND_OF_FORMAT.get(st.st_mode & _IFMT, _OTHER)
    return _new(Stat, (st.st_size, st.st_mtime_ns, kind))


class _FdReader(BlobReader):
    def __init__(self, fd: int) -> None:
        self.fd = fd
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def __enter__(self) -> _FdReader:
        return self

    def readinto(self, buffer: bytearray) -> int:
        return os.readv(self.fd, [buffer])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _LocalDirectory(Directory, AbstractContextManager["_LocalDirectory"]):
    """A directory held open: names below it are looked up from its descriptor (`*at` calls), not from `/`."""

    def __init__(self, storage: LocalStorage, rel: str) -> None:
        self.rel = rel
        self.fd: int | None = None
        try:
            self.fd = os.open(storage.full(rel), DIR_FLAGS)
        except FileNotFoundError:
            self.fd = None
        except OSError as exc:
            raise _access_error(rel, exc) from exc

    def __enter__(self) -> _LocalDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def list_dir(self) -> list[Entry] | None:
        if self.fd is None:
            return None
        return _list_fd(self.fd, self.rel)

    def subdirs(self) -> tuple[list[str], list[Entry]]:
        if self.fd is None:
            return [], []
        return _subdirs_fd(self.fd, self.rel)

    def read_small(self, name: str, limit: int, stat: bool = True) -> Small | None:
        if self.fd is None:
            return None
        return _read_fd(name, self.fd, self.rel, limit, stat)

    def read_each(self, names: Sequence[str], limit: int, stat: bool = True) -> list[Small | AccessError | None]:
        # The hot path of a scan (every link is read here), written out: no call per file but the system's.
        dir_fd = self.fd
        if dir_fd is None:
            return [None] * len(names)
        out: list[Small | AccessError | None] = []
        append, read, open_, close, fstat = out.append, os.read, os.open, os.close, os.fstat
        want = limit + 1
        for name in names:
            try:
                fd = open_(name, FILE_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                append(None)
                continue
            except OSError:
                append(self._careful(name, limit, stat))
                continue
            try:
                if stat:
                    st = fstat(fd)
                    data = read(fd, want)
                    if st.st_mode & _IFMT != _IFREG or len(data) < min(st.st_size, want):
                        append(self._careful(name, limit, stat))  # odd, or a short read: the careful path
                        continue
                    append(_new(Small, (data, st.st_size, st.st_mtime_ns)))
                else:
                    data = read(fd, want)
                    if not data:
                        append(self._careful(name, limit, stat))  # empty, or a FIFO: the careful path
                        continue
                    append(_new(Small, (data, -1, 0)))
            except OSError:
                append(self._careful(name, limit, stat))
            finally:
                close(fd)
        return out

    def stat_each(self, names: Sequence[str]) -> list[Stat | AccessError | None]:
        # The hot path of a scan's blob walk, written out: no call per blob but the system's.
        dir_fd = self.fd
        if dir_fd is None:
            return [None] * len(names)
        out: list[Stat | AccessError | None] = []
        append, stat_, kinds = out.append, os.stat, _KIND_OF_FORMAT
        for name in names:
            try:
                st = stat_(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                append(None)
                continue
            except OSError as exc:
                append(_access_error(_rel(self.rel, name), exc))
                continue
            append(_new(Stat, (st.st_size, st.st_mtime_ns, kinds.get(st.st_mode & _IFMT, _OTHER))))
        return out

    def _careful(self, name: str, limit: int, stat: bool) -> Small | AccessError | None:
        try:
            return self.read_small(name, limit, stat)
        except AccessError as exc:
            return exc

    def stat(self, name: str) -> Stat | None:
        dir_fd = self.fd
        if dir_fd is None:
            return None
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _access_error(_rel(self.rel, name), exc) from exc
        return _new(Stat, (st.st_size, st.st_mtime_ns, _KIND_OF_FORMAT.get(st.st_mode & _IFMT, _OTHER)))


class LocalStorage(Storage):
    """A `v2` directory on the local file system; files and trees in it can be removed (or moved to a quarantine)."""

    def __init__(self, v2: str | Path) -> None:
        self.v2 = str(v2)
        self.location = self.v2

    @property
    def origin(self) -> dict[str, str]:
        return {"path": self.v2}

    @property
    def process_model(self) -> ProcessModel:
        return ProcessModel.WORKERS

    def full(self, rel: str) -> str:
        return f"{self.v2}/{rel}" if rel else self.v2

    def list_dir(self, rel: str) -> list[Entry] | None:
        return _list_fd(self.full(rel), rel)

    def subdirs(self, rel: str) -> tuple[list[str], list[Entry]]:
        return _subdirs_fd(self.full(rel), rel)

    def read_small(self, rel: str, limit: int, stat: bool = True) -> Small | None:
        return _read_fd(self.full(rel), None, rel, limit, stat)

    def stat(self, rel: str) -> Stat | None:
        return _stat_at(self.full(rel), None, rel)

    def directory(self, rel: str) -> _LocalDirectory:
        return _LocalDirectory(self, rel)

    def open_blob(self, rel: str) -> BlobReader | None:
        try:
            fd = os.open(self.full(rel), BLOB_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _access_error(rel, exc) from exc
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise NotRegular(rel)
            os.set_blocking(fd, True)  # a regular file: the sequential reads may block as they please
        except BaseException:
            os.close(fd)
            raise
        return _FdReader(fd)

    def files(self, rel: str) -> Iterator[tuple[str, Stat]]:
        top = self.stat(rel)
        if top is None:
            return
        if top.kind != EntryKind.DIR:
            yield rel, top
            return
        try:
            yield from _files_below(self.full(rel), rel)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _access_error(rel, exc) from exc

    def remove(self, rel: str, quarantine: Path | None = None) -> None:
        """Delete the file or the whole tree `rel` (or move it to the same path under `quarantine`)."""
        target = self.full(rel)
        try:
            if quarantine is not None:
                _merge_move(Path(target), quarantine / rel)
                return
            st = os.lstat(target)
            if stat_mod.S_ISDIR(st.st_mode):
                shutil.rmtree(target)
            else:
                os.unlink(target)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AccessError(rel, f"cannot remove: {exc.strerror or exc}") from exc

    def remove_dir(self, rel: str, names: Collection[str]) -> None:
        """Delete the directory `rel`, which held the files `names` (each directly in it) when looked at: each
        unlinked through a descriptor of the directory (opened without following a link), then the directory. What
        holds more now, or is no directory, is removed as `remove` does it: fewer calls for the usual case only."""
        target = self.full(rel)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError:
            self.remove(rel)  # a symbolic link, a file: `remove` says what it does with those
            return
        try:
            for name in names:
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except IsADirectoryError:
                    break  # no longer the file it was: the directory goes as `remove` takes it
        except OSError as exc:
            raise AccessError(rel, f"cannot remove: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        try:
            os.rmdir(target)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise AccessError(rel, f"cannot remove: {exc.strerror or exc}") from exc
            self.remove(rel)

    def prune_empty(self, rel: str, levels: int) -> None:
        """Remove up to `levels` parents of `rel` that are empty now, nearest first."""
        parent = rel
        for _ in range(levels):
            parent = parent.rpartition("/")[0]
            if not parent:
                return
            try:
                os.rmdir(self.full(parent))
            except FileNotFoundError:
                continue  # pruned already (say, by a run that was interrupted): its parent may still be empty
            except OSError:
                return


# -- files the tool reads for itself ----------------------------------------------


class TooLarge(AccessError):
    """A file bigger than what it stands for can be (a registry configuration, a snapshot's metadata)."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(path, f"larger than {limit:,} bytes, more than such a file holds")


def _open_regular(path: str) -> int:
    """A descriptor of the regular file `path`: a symbolic link (as the last component) is refused, not followed, and
    a FIFO or device is refused before anything is read from it."""
    try:
        fd = os.open(path, FILE_FLAGS)
    except OSError as exc:
        raise _access_error(path, exc) from exc
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, which may hold at most `limit` of them.

    The one way the tool reads a file it was pointed at (a configuration, a snapshot's metadata):
    never through a symbolic link, never blocking on a FIFO, never more than `limit + 1` bytes.
    Raises AccessError: SymlinkRefused, NotRegular, TooLarge, or another reason (absent, denied).
    """
    name = str(path)
    fd = _open_regular(name)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise TooLarge(name, limit)
        # One more byte than its size tells a file that grew since its stat; then the rest, to the limit.
        data = _read_rest(fd, b"", size + 1)
        if len(data) > size:
            data = b"".join(_chunks(fd, data, limit + 1))
    except OSError as exc:
        raise _access_error(name, exc) from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise TooLarge(name, limit)
    return data


def open_regular(path: str | Path) -> BinaryIO:
    """The regular file `path` opened for reading as read_regular opens it, as a file object (pyarrow reads one).

    Raises AccessError: SymlinkRefused, NotRegular, or another reason (absent, denied).
    """
    name = str(path)
    fd = _open_regular(name)
    try:
        os.set_blocking(fd, True)  # a regular file: reads may block as they please
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _files_below(full: str, rel: str) -> Iterator[tuple[str, Stat]]:
    """Every file and symbolic link in the directory `full` (`rel` relative to `v2`) and below, with its lstat,
    never descending through a link."""
    with os.scandir(full) as listing:
        entries = list(listing)
    for entry in entries:
        sub = f"{rel}/{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            yield from _files_below(entry.path, sub)
        else:
            st = entry.stat(follow_symlinks=False)
            yield sub, _new(Stat, (st.st_size, st.st_mtime_ns, _KIND_OF_FORMAT.get(st.st_mode & _IFMT, _OTHER)))


def _merge_move(source: Path, dest: Path) -> None:
    """Move `source` to `dest`, merging into what an earlier quarantine left there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.move(str(source), str(dest))
    elif source.is_dir() and not source.is_symlink() and dest.is_dir():
        for child in list(source.iterdir()):
            _merge_move(child, dest / child.name)
        source.rmdir()
    else:
        dest.unlink() if not dest.is_dir() else shutil.rmtree(dest)
        shutil.move(str(source), str(dest))


def is_inside(path: Path, root: Path) -> bool:
    """True when `path` is `root` or lies below it, after resolving both (symbolic links included)."""
    resolved, top = path.resolve(), root.resolve()
    return resolved == top or top in resolved.parents


__all__ = [
    "AccessError",
    "BlobReader",
    "Directory",
    "Entry",
    "EntryKind",
    "KeyListing",
    "LocalStorage",
    "NotRegular",
    "ProcessModel",
    "Small",
    "Stat",
    "Storage",
    "SymlinkRefused",
    "TooLarge",
    "is_inside",
    "join",
    "open_regular",
    "read_regular",
]

"""Walk a registry's storage tree: the file-system reading behind a scan, run by workers that send plain columns.

Nothing here imports pyarrow or pandas: a worker starts in milliseconds.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, cast

from .findings import Finding, Kind
from .manifest import MAX_MANIFEST_BYTES, parse_manifest
from .paths import (
    ALGORITHMS,
    BlobData,
    Digest,
    InvalidDigest,
    all_hex_of,
    is_digest,
    is_hex_of,
    path_for,
    valid_component,
    valid_tag,
)
from .schema import SCHEMA

LINK_READ = 512  # a link holds ~71-135 bytes; reading more only exposes garbage
# Non-blocking, so that a FIFO where a file belongs cannot stall the scan.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Unreadable(Exception):
    """Raised inside the scanner after a finding was recorded for a path."""


def _printable(name: str) -> str:
    """A name safe to show, even when the filesystem name is not UTF-8."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Part:
    """Rows read from part of the tree, in the inventory's column order, and the findings met there."""

    findings: list[Finding] = field(default_factory=list)
    repositories: list[tuple[str, bool, bool, bool, int | None]] = field(default_factory=list)
    tags: list[tuple[str, str, str | None, int | None]] = field(default_factory=list)
    history: list[tuple[str, str, str, int]] = field(default_factory=list)
    revisions: list[tuple[str, str, str | None, bool, int | None]] = field(default_factory=list)
    layer_links: list[tuple[str, str, str | None]] = field(default_factory=list)
    blobs: list[tuple[str, int, int]] = field(default_factory=list)
    uploads: list[tuple[str, str, int, str | None]] = field(default_factory=list)
    manifests: list[tuple[object, ...]] = field(default_factory=list)
    references: list[tuple[object, ...]] = field(default_factory=list)

    def columns(self, rows: bool = True) -> Columns:
        """The rows as one sequence per column, in the inventory's column order: quick to send from a worker.

        Without `rows`, only their totals go, and the revisions (the manifests to read come from them).
        """
        tables: dict[str, list[Sequence[object]]] = {}
        totals = None if rows else Totals()
        for f in fields(self):
            if f.name == "findings":
                continue
            table = TABLE_OF_PART.get(f.name, f.name)
            part_rows = getattr(self, f.name)
            columns: list[Sequence[object]] = (
                list(zip(*part_rows, strict=True)) if part_rows else [() for _ in SCHEMA[table]]
            )
            part_rows.clear()
            if totals is not None:
                totals.add(table, columns)
                if table != "revisions":
                    continue
            tables[table] = columns
        return Columns(self.findings, tables, totals)


TABLE_OF_PART = {"history": "tag_history"}
"""Inventory table of each Part field whose name differs."""
TABLES = tuple(TABLE_OF_PART.get(f.name, f.name) for f in fields(Part) if f.name != "findings")
"""The inventory's tables that a scan reads, in the order it reads them."""


def _column(table: str, name: str) -> int:
    return list(SCHEMA[table]).index(name)


@dataclass
class Totals:
    """What `scan` prints: rows per table and the sums it shows, counted without keeping any table."""

    rows: Counter[str] = field(default_factory=Counter)
    unlinked_revisions: int = 0
    blob_bytes: int = 0
    upload_bytes: int = 0

    def add(self, table: str, columns: Sequence[Sequence[object]]) -> None:
        """Count one part of `table`, as columns."""
        self.rows[table] += len(columns[0])
        if table == "revisions":
            linked = columns[_column(table, "linked")]
            self.unlinked_revisions += len(linked) - sum(map(bool, linked))
        elif table == "blobs":
            self.blob_bytes += sum(cast("Sequence[int]", columns[_column(table, "size")]))
        elif table == "uploads":
            self.upload_bytes += sum(cast("Sequence[int]", columns[_column(table, "bytes")]))

    def merge(self, other: Totals) -> None:
        self.rows.update(other.rows)
        self.unlinked_revisions += other.unlinked_revisions
        self.blob_bytes += other.blob_bytes
        self.upload_bytes += other.upload_bytes

    @classmethod
    def of(cls, tables: Mapping[str, Any]) -> Totals:
        """The totals of an inventory's tables, as DataFrames or Arrow tables."""
        import numpy as np

        def total(table: str, column: str) -> int:
            return int(np.asarray(tables[table][column]).sum())

        return cls(
            rows=Counter({name: len(tables[name]) for name in TABLES}),
            unlinked_revisions=len(tables["revisions"]) - total("revisions", "linked"),
            blob_bytes=total("blobs", "size"),
            upload_bytes=total("uploads", "bytes"),
        )


@dataclass
class Columns:
    """What part of a scan found, as columns per inventory table, plus its findings.

    Columns hold mtimes as integer nanoseconds and `startedat` as the text read.
    `totals` are there when only they were asked for.
    """

    findings: list[Finding] = field(default_factory=list)
    tables: dict[str, list[Sequence[object]]] = field(default_factory=dict)
    totals: Totals | None = None

    def rows(self) -> int:
        if self.totals is not None:
            return len(self.findings) + self.totals.rows.total()
        return len(self.findings) + sum(len(columns[0]) for columns in self.tables.values() if columns)


At = tuple[int, str]
"""A file named relative to an open directory: (directory descriptor, name)."""


class Walker:
    """Reads parts of one `v2` tree into a Part; every anomaly becomes a finding, never an exception."""

    def __init__(self, v2: str) -> None:
        self.v2 = v2
        self.part = Part()

    def _find(self, kind: Kind, rel: str, detail: str, repo: str | None = None, digest: str | None = None) -> None:
        self.part.findings.append(Finding(kind, _printable(rel), detail, repo, digest))

    def _os_error(self, rel: str, exc: OSError, repo: str | None = None) -> None:
        if exc.errno == errno.ELOOP:
            self._find(Kind.STRAY_FILE, rel, "symbolic link, not followed", repo)
        else:
            self._find(Kind.UNREADABLE, rel, f"cannot read: {exc.strerror or exc}", repo)

    def _open_dir(self, rel: str, repo: str | None = None) -> int | None:
        """A descriptor of the directory `rel` for `*at` calls (shorter path lookups), or None."""
        try:
            return os.open(f"{self.v2}/{rel}", DIR_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._os_error(rel, exc, repo)
            return None

    def _entries(self, rel: str, repo: str | None = None, fd: int | None = None) -> list[str]:
        """The names of the sub-directories of `rel` (open as `fd` if given); anything else there is a finding."""
        try:
            with os.scandir(fd if fd is not None else f"{self.v2}/{rel}" if rel else self.v2) as it:
                entries = list(it)
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._os_error(rel, exc, repo)
            return []
        # d_type from the directory listing: no extra system call per entry.
        names = [e.name for e in entries if e.is_dir(follow_symlinks=False) and e.name.isascii()]
        if len(names) < len(entries):
            names += self._odd_entries(rel, repo, entries)
        # Sorted, so that every table comes out in path order without sorting frames.
        names.sort()
        return names

    def _odd_entries(self, rel: str, repo: str | None, entries: list[os.DirEntry[str]]) -> list[str]:
        """The non-ASCII UTF-8 directory names among `entries`; what is neither kind of directory is a finding."""
        names = []
        for entry in entries:
            name = entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir and name.isascii():
                continue
            if is_dir and _utf8(name):
                names.append(name)
                continue
            child = f"{rel}/{name}" if rel else name
            if not _utf8(name):
                self._find(Kind.STRAY_FILE, child, "name is not valid UTF-8", repo)
            elif entry.is_symlink():
                self._find(Kind.STRAY_FILE, child, "symbolic link, not followed", repo)
            else:
                self._find(Kind.STRAY_FILE, child, "file where the layout has only directories", repo)
        return names

    def _digest_dirs(self, rel: str, repo: str | None) -> Iterator[tuple[str, str, At]]:
        """(digest, path, where its link is) of the `<alg>/<hex>` directories below `rel`.

        Invalid names become findings. The link's place is given relative to
        the open `<alg>` directory, which spares the kernel the long path.
        """
        for alg in self._entries(rel, repo):
            if alg not in ALGORITHMS:
                self._find(Kind.STRAY_FILE, f"{rel}/{alg}", "unknown digest algorithm directory", repo)
                continue
            algrel = f"{rel}/{alg}"
            fd = self._open_dir(algrel, repo)
            if fd is None:
                continue
            try:
                names = self._entries(algrel, repo, fd)
                valid = all_hex_of(alg, names)  # the usual case, checked in one pass
                for hexname in names:
                    if valid or is_hex_of(alg, hexname):
                        yield f"{alg}:{hexname}", f"{algrel}/{hexname}", (fd, f"{hexname}/link")
                    else:
                        self._find(Kind.STRAY_FILE, f"{algrel}/{hexname}", f"not a {alg} digest directory", repo)
            finally:
                os.close(fd)

    def _read_link(
        self, rel: str, repo: str | None, mtime: bool = True, at: At | None = None, own: str | None = None
    ) -> tuple[str | None, int] | None:
        """(digest or None, mtime_ns) of the link at `rel` (or `at`); None when there is no link file.

        `own` is the digest the link's directory is named for: a link naming
        exactly that, the usual case, needs no further checks.

        A link whose content is bad yields a finding; a trailing newline is
        tolerated for the digest (keeping what it names alive is the safe side),
        but reported, because it makes the reference registry abort.
        """
        dir_fd, path = at if at is not None else (None, f"{self.v2}/{rel}")
        try:
            fd = os.open(path, FILE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._os_error(rel, exc, repo)
            raise _Unreadable from exc
        mtime_ns = 0
        try:
            if mtime:
                mtime_ns = os.fstat(fd).st_mtime_ns
            raw = os.read(fd, LINK_READ)
        except IsADirectoryError:
            self._find(Kind.BAD_LINK, rel, "link is not a regular file", repo)
            return None, mtime_ns
        except OSError as exc:
            self._os_error(rel, exc, repo)
            raise _Unreadable from exc
        finally:
            os.close(fd)
        if own is not None and raw == own.encode():
            return own, mtime_ns
        return self._link_digest(rel, raw, repo), mtime_ns

    def _link_digest(self, rel: str, raw: bytes, repo: str | None) -> str | None:
        if not raw:
            self._find(Kind.BAD_LINK, rel, "link file is empty", repo)
            return None
        text = raw.decode("ascii", "replace")
        if is_digest(text):
            return text
        digest = text.strip()
        if not is_digest(digest):
            try:
                Digest.parse(digest)
                detail = "link content is not a digest"
            except InvalidDigest as exc:
                detail = f"link content is not a digest: {exc}"
            self._find(Kind.BAD_LINK, rel, detail, repo)
            return None
        self._find(Kind.BAD_LINK, rel, "link content has surrounding whitespace or a newline", repo, digest)
        return digest

    # -- the tree -----------------------------------------------------------

    def units(self) -> tuple[list[str], list[tuple[str, str]]]:
        """The work to share out: top-level repository directories and blob prefix directories."""
        repos: list[str] = []
        prefixes: list[tuple[str, str]] = []
        for name in self._entries(""):
            if name == "repositories":
                for child in self._entries("repositories"):
                    if child.startswith("_") or not valid_component(child):
                        self._find(Kind.STRAY_FILE, f"repositories/{child}", "not a valid repository name component")
                    else:
                        repos.append(child)
            elif name == "blobs":
                for alg in self._entries("blobs"):
                    if alg not in ALGORITHMS:
                        self._find(Kind.STRAY_FILE, f"blobs/{alg}", "unknown digest algorithm directory")
                        continue
                    prefixes.extend((alg, prefix) for prefix in self._entries(f"blobs/{alg}"))
            else:
                self._find(Kind.STRAY_FILE, name, "not part of the registry's layout")
        return repos, prefixes

    def walk_repository(self, name: str) -> None:
        """Everything below `repositories/<name>`: that repository and those nested in it."""
        self._walk_repositories(f"repositories/{name}", [name])

    def walk_blobs(self, alg: str, prefix: str) -> None:
        prel = f"blobs/{alg}/{prefix}"
        fd = self._open_dir(prel)
        if fd is None:
            return
        try:
            names = self._entries(prel, None, fd)
            valid = all_hex_of(alg, names)  # the usual case, checked in one pass
            for hexname in names:
                self._stat_blob(alg, prefix, hexname, f"{prel}/{hexname}", fd, valid)
        finally:
            os.close(fd)

    def _walk_repositories(self, rel: str, parts: list[str]) -> None:
        subdirs = self._entries(rel)
        names = set(subdirs)
        repo = "/".join(parts)
        is_repo = bool(parts) and ("_manifests" in names or "_layers" in names)
        if is_repo:
            layers = "_layers" in names
            changed = self._layers_changed(f"{rel}/_layers") if layers else None
            self.part.repositories.append((repo, "_manifests" in names, layers, "_uploads" in names, changed))
        for name in subdirs:
            child = f"{rel}/{name}"
            if name == "_manifests" and is_repo:
                self._scan_manifests(child, repo)
            elif name == "_layers" and is_repo:
                self._scan_layers(child, repo)
            elif name == "_uploads" and parts:
                self._scan_uploads(child, repo)
            elif name.startswith("_"):
                self._find(Kind.STRAY_FILE, child, "unknown directory in a repository", repo or None)
            elif valid_component(name):
                self._walk_repositories(child, [*parts, name])
            else:
                self._find(Kind.STRAY_FILE, child, "not a valid repository name component", repo or None)

    def _layers_changed(self, rel: str) -> int | None:
        """When a layer link was last added: adding one creates a directory in `_layers/<alg>`."""
        latest = None
        for alg in ALGORITHMS:
            try:
                mtime = os.stat(f"{self.v2}/{rel}/{alg}", follow_symlinks=False).st_mtime_ns
            except OSError:
                continue
            latest = mtime if latest is None else max(latest, mtime)
        return latest

    def _scan_manifests(self, rel: str, repo: str) -> None:
        for name in self._entries(rel, repo):
            if name == "revisions":
                self._scan_revisions(f"{rel}/revisions", repo)
            elif name == "tags":
                self._scan_tags(f"{rel}/tags", repo)
            else:
                self._find(Kind.STRAY_FILE, f"{rel}/{name}", "unknown directory under _manifests", repo)

    def _scan_revisions(self, rel: str, repo: str) -> None:
        for name, hexrel, at in self._digest_dirs(rel, repo):
            try:
                link = self._read_link(f"{hexrel}/link", repo, at=at, own=name)
            except _Unreadable:
                # Unreadable, so unknown: count it as linked to stay on the safe side.
                self.part.revisions.append((repo, name, name, True, None))
                continue
            if link is None:
                self.part.revisions.append((repo, name, None, False, None))
                self._find(Kind.DELETED_REVISION, hexrel, "revision directory without a link (deleted)", repo, name)
                continue
            target, mtime = link
            if target is not None and target != name:
                self._find(
                    Kind.LINK_CONTENT_MISMATCH, f"{hexrel}/link", f"link names {target}, not its own digest", repo, name
                )
            same = target is None or target == name  # share one string object when they agree
            self.part.revisions.append((repo, name, name if same else target, True, mtime))

    def _scan_tags(self, rel: str, repo: str) -> None:
        for tag in self._entries(rel, repo):
            tagrel = f"{rel}/{tag}"
            if not valid_tag(tag):
                self._find(Kind.STRAY_FILE, tagrel, "not a valid tag name", repo)
                continue
            try:
                link = self._read_link(f"{tagrel}/current/link", repo)
            except _Unreadable:
                link = (None, 0)
            if link is None:
                self.part.tags.append((repo, tag, None, None))
            else:
                self.part.tags.append((repo, tag, link[0], link[1] or None))
            for digest, hexrel, at in self._digest_dirs(f"{tagrel}/index", repo):
                try:
                    entry_link = self._read_link(f"{hexrel}/link", repo, at=at, own=digest)
                except _Unreadable:
                    continue
                if entry_link is not None:
                    self.part.history.append((repo, tag, digest, entry_link[1]))

    def _scan_layers(self, rel: str, repo: str) -> None:
        for digest, hexrel, at in self._digest_dirs(rel, repo):
            try:
                # Layer links need no mtime: skipping fstat saves a system call per link.
                link = self._read_link(f"{hexrel}/link", repo, mtime=False, at=at, own=digest)
            except _Unreadable:
                continue
            if link is None:
                continue  # an emptied link directory, left by the filesystem driver
            target = link[0]
            alias = not digest.startswith("sha256:") and target is not None and target.startswith("sha256:")
            if target is not None and target != digest and not alias:
                self._find(
                    Kind.LINK_CONTENT_MISMATCH, f"{hexrel}/link", f"link names {target}, not its own digest", repo
                )
            # The same string object for both columns when they agree: half the memory.
            self.part.layer_links.append((repo, digest, digest if target == digest else target))

    def _scan_uploads(self, rel: str, repo: str) -> None:
        for upload_id in self._entries(rel, repo):
            uprel = f"{rel}/{upload_id}"
            size = 0
            try:
                st = os.lstat(f"{self.v2}/{uprel}/data")
                size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._os_error(f"{uprel}/data", exc, repo)
            started: str | None = None
            try:
                fd = os.open(f"{self.v2}/{uprel}/startedat", FILE_FLAGS)
                try:
                    started = os.read(fd, 128).decode("ascii", "replace").strip() or None
                finally:
                    os.close(fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._os_error(f"{uprel}/startedat", exc, repo)
            self.part.uploads.append((repo, upload_id, size, started))

    def _stat_blob(self, alg: str, prefix: str, hexname: str, rel: str, dir_fd: int, valid: bool) -> None:
        if not valid and not is_hex_of(alg, hexname):
            self._find(Kind.STRAY_FILE, rel, f"not a {alg} blob directory")
            return
        digest = f"{alg}:{hexname}"
        if hexname[:2] != prefix:
            self._find(Kind.STRAY_FILE, rel, "blob directory under the wrong two-character prefix")
            return
        try:
            # The blob directory itself is never listed: its only member is `data`.
            st = os.stat(f"{hexname}/data", dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            self._find(Kind.STRAY_FILE, rel, "blob directory without data", digest=digest)
            return
        except OSError as exc:
            self._os_error(f"{rel}/data", exc)
            return
        if stat.S_ISLNK(st.st_mode):
            self._find(Kind.STRAY_FILE, f"{rel}/data", "symbolic link, not followed", digest=digest)
            return
        if not stat.S_ISREG(st.st_mode):
            self._find(Kind.STRAY_FILE, f"{rel}/data", "blob data is not a regular file", digest=digest)
            return
        self.part.blobs.append((digest, st.st_size, st.st_mtime_ns))

    # -- manifests ----------------------------------------------------------

    def read_manifests(self, items: list[tuple[str, str]]) -> None:
        """Parse the manifest blob of each (repository, digest) given, when it is a regular file."""
        for repo, target in items:
            rel = path_for(BlobData(Digest.parse(target)))
            read = self._read_blob(rel, repo)
            if read is None:
                continue
            size, data = read
            parsed = parse_manifest(data)
            if parsed.problems:
                detail = "; ".join(parsed.problems)
                self._find(Kind.CORRUPT_MANIFEST, rel, f"manifest is unusable: {detail}", repo, target)
            self.part.manifests.append(
                (
                    target,
                    size,
                    parsed.kind,
                    parsed.media_type,
                    parsed.schema_version,
                    parsed.artifact_type,
                    parsed.subject,
                    parsed.config_media_type,
                )
            )
            self.part.references.extend((target, *ref) for ref in parsed.references)

    def _read_blob(self, rel: str, repo: str) -> tuple[int, bytes] | None:
        """(size, bytes) of a blob, read up to one byte past the manifest limit (enough to tell it is too big).

        None when the blob is missing or not a regular file: the blob walk
        reports those, and the checks report a manifest without its blob.
        """
        try:
            fd = os.open(f"{self.v2}/{rel}", FILE_FLAGS)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                self._os_error(rel, exc, repo)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            # Ask for the size seen (+1 to notice growth): a fixed large buffer
            # would cost an allocation of that size for every manifest.
            want = min(st.st_size, MAX_MANIFEST_BYTES) + 1
            chunks = []
            while want > 0:
                chunk = os.read(fd, want)
                if not chunk:
                    break
                chunks.append(chunk)
                want -= len(chunk)
        except OSError as exc:
            self._os_error(rel, exc, repo)
            return None
        finally:
            os.close(fd)
        return st.st_size, b"".join(chunks)


def walk_units(v2: str, repositories: list[str], prefixes: list[tuple[str, str]], rows: bool = True) -> Columns:
    """Read the given top-level repositories and blob prefixes (a worker's share of a scan); see Part.columns."""
    walker = Walker(v2)
    for name in repositories:
        walker.walk_repository(name)
    for alg, prefix in prefixes:
        walker.walk_blobs(alg, prefix)
    return walker.part.columns(rows)


def read_manifest_units(v2: str, items: list[tuple[str, str]], rows: bool = True) -> Columns:
    """Parse the given manifests (a worker's share of a scan); see Part.columns."""
    walker = Walker(v2)
    walker.read_manifests(items)
    return walker.part.columns(rows)

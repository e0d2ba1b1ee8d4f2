"""The scan's view of directory listings: the sub-directories the layout allows, and a finding for anything else."""

from __future__ import annotations

import os
from collections.abc import Iterator

from storage_audit.core.findings import Finding, Kind
from storage_audit.core.paths import ALGORITHMS, LINK, LINK_READ, all_hex_of, is_hex_of
from storage_audit.scan.rows import Part
from storage_audit.storage.base import AccessError, Directory, Entry, EntryKind, Small, Storage, SymlinkRefused


class Unreadable(Exception):
    """Raised inside the scanner after a finding was recorded for a path."""


def printable(name: str) -> str:
    """A name safe to show, even when the filesystem name is not UTF-8."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


ROOT_PATH = "."
"""How a finding names the `v2` directory itself."""


class Recorder:
    """The storage a scan reads and the Part it fills: rows, and a finding for every anomaly."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.part = Part()

    def find(self, kind: Kind, rel: str, detail: str, repo: str | None = None, digest: str | None = None) -> None:
        self.part.findings.append(Finding(kind, printable(rel) if rel else ROOT_PATH, detail, repo, digest))

    def access(self, exc: AccessError, repo: str | None = None) -> None:
        """The finding for a path the storage could not read as asked."""
        if isinstance(exc, SymlinkRefused):
            self.find(Kind.STRAY_FILE, exc.path, exc.reason, repo)
        else:
            self.find(Kind.UNREADABLE, exc.path, exc.reason, repo)


class Lister:
    """Lists directories for the walk: directory names, sorted; every other entry becomes a finding."""

    def __init__(self, recorder: Recorder) -> None:
        self.rec = recorder
        self.storage = recorder.storage

    def entries(self, rel: str, repo: str | None = None, directory: Directory | None = None) -> list[str]:
        """The names of the sub-directories of `rel` (or of `directory`, open on it), sorted."""
        try:
            listing = directory.subdirs() if directory is not None else self.storage.subdirs(rel)
        except AccessError as exc:
            self.rec.access(exc, repo)
            return []
        names, others = listing
        if others or not all(map(str.isascii, names)):
            names = self._odd_entries(rel, repo, names, others)
        # Sorted, so that every table comes out in path order without sorting frames.
        names.sort()
        return names

    def _odd_entries(self, rel: str, repo: str | None, dirs: list[str], others: list[Entry]) -> list[str]:
        """The UTF-8 directory names among `dirs`; everything else (and every one of `others`) is a finding."""
        names = []
        for name in dirs:
            if name.isascii() or _utf8(name):
                names.append(name)
            else:
                self.rec.find(Kind.STRAY_FILE, f"{rel}/{name}" if rel else name, "name is not valid UTF-8", repo)
        for name, kind in others:
            child = f"{rel}/{name}" if rel else name
            if not _utf8(name):
                self.rec.find(Kind.STRAY_FILE, child, "name is not valid UTF-8", repo)
            elif kind == EntryKind.SYMLINK:
                self.rec.find(Kind.STRAY_FILE, child, "symbolic link, not followed", repo)
            else:
                self.rec.find(Kind.STRAY_FILE, child, "file where the layout has only directories", repo)
        return names

    def links_below(
        self, rel: str, repo: str | None, mtime: bool
    ) -> Iterator[tuple[str, str, Small | AccessError | None]]:
        """(digest, path, what reading its link gave) of the `<alg>/<hex>` directories below `rel`.

        Invalid names become findings. The links of one `<alg>` directory are read
        in one bulk call (mtimes too, with `mtime`): a local tree reads them
        through the open directory, a remote one may answer from its listing.
        """
        for digest, hexrel, directory, names in self._digest_dirs(rel, repo):
            results = directory.read_each([f"{name}/{LINK}" for name in names], LINK_READ, mtime)
            yield from zip(digest, hexrel, results, strict=True)

    def _digest_dirs(self, rel: str, repo: str | None) -> Iterator[tuple[list[str], list[str], Directory, list[str]]]:
        """Per `<alg>` directory below `rel`, open: the digests, paths and names of its valid digest directories."""
        for alg in self.entries(rel, repo):
            if alg not in ALGORITHMS:
                self.rec.find(Kind.STRAY_FILE, f"{rel}/{alg}", "unknown digest algorithm directory", repo)
                continue
            algrel = f"{rel}/{alg}"
            try:
                opened = self.storage.directory(algrel)
            except AccessError as exc:
                self.rec.access(exc, repo)
                continue
            with opened as directory:
                names = self.entries(algrel, repo, directory)
                if not all_hex_of(alg, names):  # the usual case, checked in one pass
                    names = self._valid_hex(alg, algrel, repo, names)
                yield [f"{alg}:{name}" for name in names], [f"{algrel}/{name}" for name in names], directory, names

    def _valid_hex(self, alg: str, algrel: str, repo: str | None, names: list[str]) -> list[str]:
        valid = []
        for name in names:
            if is_hex_of(alg, name):
                valid.append(name)
            else:
                self.rec.find(Kind.STRAY_FILE, f"{algrel}/{name}", f"not a {alg} digest directory", repo)
        return valid

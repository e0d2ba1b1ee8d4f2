"""Read a registry's storage tree in one pass into an Inventory, turning every anomaly into a finding."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import pandas as pd

from . import inventory as inv_mod
from .findings import Finding, Kind
from .inventory import Inventory
from .manifest import INVALID_KIND, MAX_MANIFEST_BYTES, parse_manifest
from .paths import ALGORITHMS, BlobData, Digest, InvalidDigest, path_for, valid_component, valid_tag

LINK_READ = 512  # a link holds ~71-135 bytes; reading more only exposes garbage


class Progress(Protocol):
    """Receives progress from a scan; the library never prints by itself."""

    def update(self, phase: str, advance: int) -> None: ...


@dataclass(frozen=True)
class ScanOptions:
    """How to scan; `progress` is told about work done, in batches."""

    progress: Progress | None = None


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


class _Scanner:
    def __init__(self, v2: Path, options: ScanOptions) -> None:
        self.v2 = str(v2)
        self.progress = options.progress
        self.findings: list[Finding] = []
        self.repositories: list[tuple[str, bool, bool, bool]] = []
        self.tags: list[tuple[str, str, str | None, int | None]] = []
        self.history: list[tuple[str, str, str, int]] = []
        self.revisions: list[tuple[str, str, str | None, bool, int | None]] = []
        self.layer_links: list[tuple[str, str, str | None, int]] = []
        self.blobs: list[tuple[str, int, int]] = []
        self.uploads: list[tuple[str, str, int, str | None]] = []
        self._pending = 0

    # -- primitives -------------------------------------------------------

    def _tick(self, phase: str) -> None:
        if self.progress is None:
            return
        self._pending += 1
        if self._pending >= 512:
            self.progress.update(phase, self._pending)
            self._pending = 0

    def _flush(self, phase: str) -> None:
        if self.progress is not None and self._pending:
            self.progress.update(phase, self._pending)
        self._pending = 0

    def _find(self, kind: Kind, rel: str, detail: str, repo: str | None = None, digest: str | None = None) -> None:
        self.findings.append(Finding(kind, _printable(rel), detail, repo, digest))

    def _os_error(self, rel: str, exc: OSError, repo: str | None = None) -> None:
        if exc.errno == errno.ELOOP:
            self._find(Kind.STRAY_FILE, rel, "symbolic link, not followed", repo)
        else:
            self._find(Kind.UNREADABLE, rel, f"cannot read: {exc.strerror or exc}", repo)

    def _entries(self, rel: str, repo: str | None = None) -> Iterator[os.DirEntry[str]]:
        """The sub-directories of `rel`; anything else there, or a bad name, is a finding."""
        try:
            with os.scandir(os.path.join(self.v2, rel)) as it:
                entries = list(it)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._os_error(rel, exc, repo)
            return
        for entry in entries:
            child = f"{rel}/{entry.name}"
            if not _utf8(entry.name):
                self._find(Kind.STRAY_FILE, child, "name is not valid UTF-8", repo)
            elif entry.is_symlink():
                self._find(Kind.STRAY_FILE, child, "symbolic link, not followed", repo)
            elif not entry.is_dir(follow_symlinks=False):
                self._find(Kind.STRAY_FILE, child, "file where the layout has only directories", repo)
            else:
                yield entry

    def _digest_dirs(self, rel: str, repo: str | None) -> Iterator[tuple[Digest, str]]:
        """`<alg>/<hex>` directories below `rel`, validated; invalid names become findings."""
        for alg in self._entries(rel, repo):
            if alg.name not in ALGORITHMS:
                self._find(Kind.STRAY_FILE, f"{rel}/{alg.name}", "unknown digest algorithm directory", repo)
                continue
            for hexdir in self._entries(f"{rel}/{alg.name}", repo):
                child = f"{rel}/{alg.name}/{hexdir.name}"
                try:
                    yield Digest(alg.name, hexdir.name), child
                except InvalidDigest as exc:
                    self._find(Kind.STRAY_FILE, child, f"not a digest directory: {exc}", repo)

    def _read_link(self, rel: str, repo: str | None) -> tuple[str | None, int] | None:
        """(digest or None, mtime_ns) of the link at `rel`; None when there is no link file.

        A link whose content is bad yields a finding; a trailing newline is
        tolerated for the digest (keeping what it names alive is the safe side),
        but reported, because it makes the reference registry abort.
        """
        try:
            fd = os.open(os.path.join(self.v2, rel), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._os_error(rel, exc, repo)
            raise _Unreadable from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._find(Kind.BAD_LINK, rel, "link is not a regular file", repo)
                return None, st.st_mtime_ns
            raw = os.read(fd, LINK_READ)
        except OSError as exc:
            self._os_error(rel, exc, repo)
            raise _Unreadable from exc
        finally:
            os.close(fd)
        return self._link_digest(rel, raw, repo), st.st_mtime_ns

    def _link_digest(self, rel: str, raw: bytes, repo: str | None) -> str | None:
        if not raw:
            self._find(Kind.BAD_LINK, rel, "link file is empty", repo)
            return None
        text = raw.decode("ascii", "replace")
        stripped = text.strip()
        try:
            digest = str(Digest.parse(stripped))
        except InvalidDigest as exc:
            self._find(Kind.BAD_LINK, rel, f"link content is not a digest: {exc}", repo)
            return None
        if stripped != text:
            self._find(Kind.BAD_LINK, rel, "link content has surrounding whitespace or a newline", repo, digest)
        return digest

    # -- the tree -----------------------------------------------------------

    def run(self) -> None:
        for top in self._top_entries():
            if top == "repositories":
                self._walk_repositories("repositories", [])
                self._flush("repositories")
            elif top == "blobs":
                self._scan_blobs()
                self._flush("blobs")

    def _top_entries(self) -> list[str]:
        names = []
        for entry in self._entries(""):
            if entry.name in ("repositories", "blobs"):
                names.append(entry.name)
            else:
                self._find(Kind.STRAY_FILE, entry.name, "not part of the registry's layout")
        # Repositories first so progress phases come in a stable order.
        return sorted(names, reverse=True)

    def _walk_repositories(self, rel: str, parts: list[str]) -> None:
        subdirs = list(self._entries(rel))
        names = {e.name for e in subdirs}
        repo = "/".join(parts)
        is_repo = bool(parts) and ("_manifests" in names or "_layers" in names)
        if is_repo:
            self.repositories.append((repo, "_manifests" in names, "_layers" in names, "_uploads" in names))
            self._tick("repositories")
        for entry in subdirs:
            name = entry.name
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

    def _scan_manifests(self, rel: str, repo: str) -> None:
        for entry in self._entries(rel, repo):
            if entry.name == "revisions":
                self._scan_revisions(f"{rel}/revisions", repo)
            elif entry.name == "tags":
                self._scan_tags(f"{rel}/tags", repo)
            else:
                self._find(Kind.STRAY_FILE, f"{rel}/{entry.name}", "unknown directory under _manifests", repo)

    def _scan_revisions(self, rel: str, repo: str) -> None:
        for digest, hexrel in self._digest_dirs(rel, repo):
            name = str(digest)
            try:
                link = self._read_link(f"{hexrel}/link", repo)
            except _Unreadable:
                # Unreadable, so unknown: count it as linked to stay on the safe side.
                self.revisions.append((repo, name, name, True, None))
                continue
            if link is None:
                self.revisions.append((repo, name, None, False, None))
                self._find(Kind.DELETED_REVISION, hexrel, "revision directory without a link (deleted)", repo, name)
                continue
            target, mtime = link
            if target is not None and target != name:
                self._find(
                    Kind.LINK_CONTENT_MISMATCH, f"{hexrel}/link", f"link names {target}, not its own digest", repo, name
                )
            self.revisions.append((repo, name, target if target is not None else name, True, mtime))
            self._tick("repositories")

    def _scan_tags(self, rel: str, repo: str) -> None:
        for entry in self._entries(rel, repo):
            tag = entry.name
            tagrel = f"{rel}/{tag}"
            if not valid_tag(tag):
                self._find(Kind.STRAY_FILE, tagrel, "not a valid tag name", repo)
                continue
            try:
                link = self._read_link(f"{tagrel}/current/link", repo)
            except _Unreadable:
                link = (None, 0)
            if link is None:
                self.tags.append((repo, tag, None, None))
            else:
                self.tags.append((repo, tag, link[0], link[1] or None))
            for digest, hexrel in self._digest_dirs(f"{tagrel}/index", repo):
                try:
                    entry_link = self._read_link(f"{hexrel}/link", repo)
                except _Unreadable:
                    continue
                if entry_link is not None:
                    self.history.append((repo, tag, str(digest), entry_link[1]))
            self._tick("repositories")

    def _scan_layers(self, rel: str, repo: str) -> None:
        for digest, hexrel in self._digest_dirs(rel, repo):
            try:
                link = self._read_link(f"{hexrel}/link", repo)
            except _Unreadable:
                continue
            if link is None:
                continue  # an emptied link directory, left by the filesystem driver
            target, mtime = link
            if (
                target is not None
                and target != str(digest)
                and not (digest.algorithm != "sha256" and target.startswith("sha256:"))
            ):
                self._find(
                    Kind.LINK_CONTENT_MISMATCH, f"{hexrel}/link", f"link names {target}, not its own digest", repo
                )
            self.layer_links.append((repo, str(digest), target, mtime))
            self._tick("repositories")

    def _scan_uploads(self, rel: str, repo: str) -> None:
        for entry in self._entries(rel, repo):
            uprel = f"{rel}/{entry.name}"
            size = 0
            try:
                st = os.lstat(os.path.join(self.v2, uprel, "data"))
                size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._os_error(f"{uprel}/data", exc, repo)
            started: str | None = None
            try:
                fd = os.open(os.path.join(self.v2, uprel, "startedat"), os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    started = os.read(fd, 128).decode("ascii", "replace").strip() or None
                finally:
                    os.close(fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._os_error(f"{uprel}/startedat", exc, repo)
            self.uploads.append((repo, entry.name, size, started))

    def _scan_blobs(self) -> None:
        v2 = self.v2
        for alg in self._entries("blobs"):
            if alg.name not in ALGORITHMS:
                self._find(Kind.STRAY_FILE, f"blobs/{alg.name}", "unknown digest algorithm directory")
                continue
            for prefix in self._entries(f"blobs/{alg.name}"):
                prel = f"blobs/{alg.name}/{prefix.name}"
                for hexdir in self._entries(prel):
                    self._stat_blob(v2, alg.name, prefix.name, hexdir.name, f"{prel}/{hexdir.name}")

    def _stat_blob(self, v2: str, alg: str, prefix: str, hexname: str, rel: str) -> None:
        try:
            digest = Digest(alg, hexname)
        except InvalidDigest as exc:
            self._find(Kind.STRAY_FILE, rel, f"not a blob directory: {exc}")
            return
        if hexname[:2] != prefix:
            self._find(Kind.STRAY_FILE, rel, "blob directory under the wrong two-character prefix")
            return
        try:
            st = os.lstat(os.path.join(v2, rel, "data"))
        except FileNotFoundError:
            self._find(Kind.STRAY_FILE, rel, "blob directory without data", digest=str(digest))
            return
        except OSError as exc:
            self._os_error(f"{rel}/data", exc)
            return
        if stat.S_ISLNK(st.st_mode):
            self._find(Kind.STRAY_FILE, f"{rel}/data", "symbolic link, not followed", digest=str(digest))
            return
        if not stat.S_ISREG(st.st_mode):
            self._find(Kind.STRAY_FILE, f"{rel}/data", "blob data is not a regular file", digest=str(digest))
            return
        self.blobs.append((str(digest), st.st_size, st.st_mtime_ns))
        self._tick("blobs")

    # -- manifests ----------------------------------------------------------

    def read_manifests(self, blob_sizes: dict[str, int]) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        """Parse the manifest blob of every distinct revision once."""
        manifests: list[tuple[object, ...]] = []
        references: list[tuple[object, ...]] = []
        seen: set[str] = set()
        # Unlinked (deleted) revisions are read too: their blobs are still manifests.
        for repo, digest, target, _linked, _mtime in self.revisions:
            target = target or digest
            if target in seen or target not in blob_sizes:
                continue
            seen.add(target)
            rel = path_for(BlobData(Digest.parse(target)))
            data = self._read_blob(rel, repo, target)
            if data is None:
                continue
            parsed = parse_manifest(data)
            if parsed.problems:
                detail = "; ".join(parsed.problems)
                self._find(Kind.CORRUPT_MANIFEST, rel, f"manifest is unusable: {detail}", repo, target)
            manifests.append(
                (
                    target,
                    blob_sizes[target],
                    parsed.kind,
                    parsed.media_type,
                    parsed.schema_version,
                    parsed.artifact_type,
                    parsed.subject,
                    parsed.config_media_type,
                )
            )
            for ref in parsed.references:
                references.append(
                    (target, ref.ref_type, ref.digest, ref.media_type, ref.size, ref.platform, ref.position)
                )
            self._tick("manifests")
        self._flush("manifests")
        return manifests, references

    def _read_blob(self, rel: str, repo: str, digest: str) -> bytes | None:
        try:
            fd = os.open(os.path.join(self.v2, rel), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                chunks = []
                remaining = MAX_MANIFEST_BYTES + 1
                while remaining > 0:
                    chunk = os.read(fd, min(remaining, 1 << 20))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    remaining -= len(chunk)
            finally:
                os.close(fd)
        except OSError as exc:
            self._os_error(rel, exc, repo)
            return None
        return b"".join(chunks)


def _times(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, unit="ns", utc=True)


def scan(v2: Path, options: ScanOptions | None = None) -> Inventory:
    """Scan the `v2` directory of a registry's storage into an Inventory."""
    scanner = _Scanner(v2, options or ScanOptions())
    scanned_at = datetime.now(timezone.utc)
    scanner.run()

    blobs = pd.DataFrame(scanner.blobs, columns=["digest", "size", "mtime"])
    blobs["mtime"] = _times(blobs["mtime"])
    manifests, references = scanner.read_manifests(dict(zip(blobs["digest"], blobs["size"].tolist(), strict=True)))

    def table(name: str, rows: list, time_cols: tuple[str, ...] = (), sort: list[str] | None = None) -> pd.DataFrame:
        df = pd.DataFrame(rows, columns=list(inv_mod.SCHEMA[name]))
        for col in time_cols:
            df[col] = _times(df[col])
        df = inv_mod.conform(name, df)
        return df.sort_values(sort or list(df.columns[:2]), kind="stable", ignore_index=True)

    uploads = pd.DataFrame(scanner.uploads, columns=list(inv_mod.SCHEMA["uploads"]))
    uploads["started_at"] = pd.to_datetime(uploads["started_at"], utc=True, errors="coerce", format="ISO8601")
    inventory = Inventory(
        root=str(v2),
        scanned_at=scanned_at,
        repositories=table("repositories", scanner.repositories, sort=["repository"]),
        tags=table("tags", scanner.tags, ("pushed_at",)),
        tag_history=table("tag_history", scanner.history, ("pushed_at",), ["repository", "tag", "digest"]),
        revisions=table("revisions", [(r, d, t, lk, m) for r, d, t, lk, m in scanner.revisions], ("pushed_at",)),
        manifests=table("manifests", manifests, sort=["digest"]),
        references=table("references", references, sort=["manifest", "ref_type", "position"]),
        layer_links=table("layer_links", scanner.layer_links, ("linked_at",)),
        blobs=table("blobs", blobs, sort=["digest"]),
        uploads=table("uploads", uploads),
        findings=inv_mod.frame("findings", [f.row() for f in scanner.findings]).sort_values(
            ["path", "kind"], kind="stable", ignore_index=True
        ),
    )
    return inventory


__all__ = ["INVALID_KIND", "Progress", "ScanOptions", "scan"]

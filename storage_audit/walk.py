"""Walk a registry's storage tree into rows: the tree walk behind a scan, run by workers that send plain columns.

Listing (listing.py), link reading (links.py) and manifest reading
(manifest_files.py) go through the storage layer (storage.py). Nothing here
imports pyarrow or pandas: a worker starts in milliseconds.
"""

from __future__ import annotations

from .findings import Kind
from .links import LinkReader
from .listing import Lister, Recorder, Unreadable
from .manifest_files import read_manifests
from .paths import (
    ALGORITHMS,
    LINK,
    BlobPrefix,
    Blobs,
    Repositories,
    all_hex_of,
    blob_data_below,
    current_link_below,
    is_blob_prefix,
    is_hex_of,
    layers_algorithm_below,
    path_for,
    upload_data_below,
    upload_started_below,
    valid_component,
    valid_tag,
)
from .rows import (
    TABLES,
    BlobRow,
    Columns,
    HistoryRow,
    LayerLinkRow,
    Part,
    RepositoryRow,
    RevisionRow,
    TagRow,
    Totals,
    UploadRow,
)
from .storage import AccessError, EntryKind, LocalStorage, NotRegular, Stat, Storage

STARTEDAT_READ = 127  # an RFC 3339 time with nanoseconds is 35 bytes
# Rows of the hottest loops are made from a tuple directly, sparing the NamedTuple's Python-level __new__.
_new = tuple.__new__
_FILE, _SYMLINK = EntryKind.FILE, EntryKind.SYMLINK


class Walker:
    """Reads parts of one `v2` tree into a Part; every anomaly becomes a finding, never an exception."""

    def __init__(self, storage: Storage | str) -> None:
        self.storage = storage if isinstance(storage, Storage) else LocalStorage(storage)
        self.rec = Recorder(self.storage)
        self.lister = Lister(self.rec)
        self.links = LinkReader(self.rec)

    @property
    def part(self) -> Part:
        return self.rec.part

    def _find(self, kind: Kind, rel: str, detail: str, repo: str | None = None, digest: str | None = None) -> None:
        self.rec.find(kind, rel, detail, repo, digest)

    def _entries(self, rel: str, repo: str | None = None) -> list[str]:
        return self.lister.entries(rel, repo)

    # -- the tree -----------------------------------------------------------

    def units(self) -> tuple[list[str], list[tuple[str, str]]]:
        """The work to share out: top-level repository directories and blob prefix directories."""
        repos: list[str] = []
        prefixes: list[tuple[str, str]] = []
        top = path_for(Repositories())
        for name in self._entries(""):
            if name == top:
                for child in self._entries(top):
                    if child.startswith("_") or not valid_component(child):
                        self._find(Kind.STRAY_FILE, f"{top}/{child}", "not a valid repository name component")
                    else:
                        repos.append(child)
            elif name == path_for(Blobs()):
                for alg in self._entries(name):
                    if alg not in ALGORITHMS:
                        self._find(Kind.STRAY_FILE, f"{name}/{alg}", "unknown digest algorithm directory")
                        continue
                    for prefix in self._entries(f"{name}/{alg}"):
                        if is_blob_prefix(prefix):
                            prefixes.append((alg, prefix))
                        else:
                            self._find(Kind.STRAY_FILE, f"{name}/{alg}/{prefix}", "not a blob prefix directory")
            else:
                self._find(Kind.STRAY_FILE, name, "not part of the registry's layout")
        return repos, prefixes

    def walk_repository(self, name: str) -> None:
        """Everything below `repositories/<name>`: that repository and those nested in it."""
        self._walk_repositories(f"{path_for(Repositories())}/{name}", [name])

    def walk_blobs(self, alg: str, prefix: str) -> None:
        prel = path_for(BlobPrefix(alg, prefix))
        try:
            opened = self.storage.directory(prel)
        except AccessError as exc:
            self.rec.access(exc)
            return
        with opened as directory:
            names = self.lister.entries(prel, None, directory)
            valid = all_hex_of(alg, names)  # the usual case, checked in one pass
            stat, blobs = directory.stat, self.part.blobs
            for hexname in names:
                if not valid or hexname[:2] != prefix:
                    self._odd_blob(alg, prefix, hexname, prel)
                    continue
                try:
                    # The blob directory itself is never listed: its only member is `data`.
                    st = stat(blob_data_below(hexname))
                except AccessError as exc:
                    self.rec.access(exc)
                    continue
                if st is not None and st[2] is _FILE:
                    blobs.append(_new(BlobRow, (f"{alg}:{hexname}", st[0], st[1])))
                else:
                    self._not_a_blob(f"{alg}:{hexname}", f"{prel}/{hexname}", st)

    def _walk_repositories(self, rel: str, parts: list[str]) -> None:
        subdirs = self._entries(rel)
        names = set(subdirs)
        repo = "/".join(parts)
        is_repo = bool(parts) and ("_manifests" in names or "_layers" in names)
        if is_repo:
            layers = "_layers" in names
            changed = self._layers_changed(repo, f"{rel}/_layers") if layers else None
            self.part.repositories.append(
                RepositoryRow(repo, "_manifests" in names, layers, "_uploads" in names, changed)
            )
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

    def _layers_changed(self, repo: str, rel: str) -> int | None:
        """When a layer link was last added: adding one creates a directory in `_layers/<alg>`."""
        latest = None
        for alg in ALGORITHMS:
            try:
                st = self.storage.stat(layers_algorithm_below(rel, alg))
            except AccessError:
                continue
            if st is None or st.kind != EntryKind.DIR:
                continue
            latest = st.mtime_ns if latest is None else max(latest, st.mtime_ns)
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
        revisions = self.part.revisions
        read = self.links.read
        for name, hexrel, directory, link_name in self.lister.digest_dirs(rel, repo):
            try:
                link = read(f"{hexrel}/{LINK}", repo, True, directory, link_name, name)
            except Unreadable:
                # Unreadable, so unknown: count it as linked to stay on the safe side.
                revisions.append(RevisionRow(repo, name, name, True, None))
                continue
            if link is None:
                revisions.append(RevisionRow(repo, name, None, False, None))
                self._find(Kind.DELETED_REVISION, hexrel, "revision directory without a link (deleted)", repo, name)
                continue
            target, mtime = link
            if target is not None and target != name:
                self._find(
                    Kind.LINK_CONTENT_MISMATCH, f"{hexrel}/link", f"link names {target}, not its own digest", repo, name
                )
            same = target is None or target == name  # share one string object when they agree
            revisions.append(_new(RevisionRow, (repo, name, name if same else target, True, mtime or None)))

    def _scan_tags(self, rel: str, repo: str) -> None:
        read = self.links.read
        for tag in self._entries(rel, repo):
            tagrel = f"{rel}/{tag}"
            if not valid_tag(tag):
                self._find(Kind.STRAY_FILE, tagrel, "not a valid tag name", repo)
                continue
            try:
                link = read(current_link_below(tagrel), repo)
            except Unreadable:
                link = (None, 0)
            if link is None:
                self.part.tags.append(TagRow(repo, tag, None, None))
            else:
                self.part.tags.append(TagRow(repo, tag, link[0], link[1] or None))
            for digest, hexrel, directory, link_name in self.lister.digest_dirs(f"{tagrel}/index", repo):
                try:
                    entry_link = read(f"{hexrel}/{LINK}", repo, True, directory, link_name, digest)
                except Unreadable:
                    continue
                if entry_link is not None:
                    self.part.history.append(_new(HistoryRow, (repo, tag, digest, entry_link[1])))

    def _scan_layers(self, rel: str, repo: str) -> None:
        layer_links = self.part.layer_links
        read = self.links.read
        for digest, hexrel, directory, link_name in self.lister.digest_dirs(rel, repo):
            try:
                # Layer links need no mtime: skipping fstat saves a system call per link.
                link = read(f"{hexrel}/{LINK}", repo, False, directory, link_name, digest)
            except Unreadable:
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
            layer_links.append(_new(LayerLinkRow, (repo, digest, digest if target == digest else target)))

    def _scan_uploads(self, rel: str, repo: str) -> None:
        for upload_id in self._entries(rel, repo):
            uprel = f"{rel}/{upload_id}"
            size = 0
            data = upload_data_below(uprel)
            started_rel = upload_started_below(uprel)
            try:
                st = self.storage.stat(data)
                size = st.size if st is not None and st.kind == EntryKind.FILE else 0
            except AccessError as exc:
                self.rec.access(exc, repo)
            started: str | None = None
            try:
                small = self.storage.read_small(started_rel, STARTEDAT_READ, stat=False)
                if small is not None:
                    started = small.data.decode("ascii", "replace").strip() or None
            except NotRegular:
                pass
            except AccessError as exc:
                self.rec.access(exc, repo)
            self.part.uploads.append(UploadRow(repo, upload_id, size, started))

    def _odd_blob(self, alg: str, prefix: str, hexname: str, prel: str) -> None:
        """A blob directory whose name is no digest, or under the wrong prefix: a finding, or read after all."""
        rel = f"{prel}/{hexname}"
        if not is_hex_of(alg, hexname):
            self._find(Kind.STRAY_FILE, rel, f"not a {alg} blob directory")
            return
        if hexname[:2] != prefix:
            self._find(Kind.STRAY_FILE, rel, "blob directory under the wrong two-character prefix")
            return
        try:
            st = self.storage.stat(f"{prel}/{blob_data_below(hexname)}")
        except AccessError as exc:
            self.rec.access(exc)
            return
        if st is not None and st.kind is _FILE:
            self.part.blobs.append(BlobRow(f"{alg}:{hexname}", st.size, st.mtime_ns))
        else:
            self._not_a_blob(f"{alg}:{hexname}", rel, st)

    def _not_a_blob(self, digest: str, rel: str, st: Stat | None) -> None:
        if st is None:
            self._find(Kind.STRAY_FILE, rel, "blob directory without data", digest=digest)
        elif st.kind is _SYMLINK:
            self._find(Kind.STRAY_FILE, f"{rel}/data", "symbolic link, not followed", digest=digest)
        else:
            self._find(Kind.STRAY_FILE, f"{rel}/data", "blob data is not a regular file", digest=digest)

    # -- manifests ----------------------------------------------------------

    def read_manifests(self, items: list[tuple[str, str]]) -> None:
        """Parse the manifest blob of each (repository, digest) given, when it is a regular file."""
        read_manifests(self.rec, items)


def walk_units(
    v2: Storage | str, repositories: list[str], prefixes: list[tuple[str, str]], rows: bool = True
) -> Columns:
    """Read the given top-level repositories and blob prefixes (a worker's share of a scan); see Part.columns."""
    walker = Walker(v2)
    # A remote backend may list these parts of the tree in bulk (and in parallel) before the walk asks.
    top = path_for(Repositories())
    walker.storage.prefetch(
        [f"{top}/{name}" for name in repositories] + [path_for(BlobPrefix(alg, p)) for alg, p in prefixes]
    )
    for name in repositories:
        walker.walk_repository(name)
    for alg, prefix in prefixes:
        walker.walk_blobs(alg, prefix)
    return walker.part.columns(rows)


def read_manifest_units(v2: Storage | str, items: list[tuple[str, str]], rows: bool = True) -> Columns:
    """Parse the given manifests (a worker's share of a scan); see Part.columns."""
    walker = Walker(v2)
    walker.read_manifests(items)
    return walker.part.columns(rows)


__all__ = ["TABLES", "Columns", "Part", "Totals", "Walker", "read_manifest_units", "walk_units"]

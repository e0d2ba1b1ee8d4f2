"""Walk a registry's storage tree into rows: the tree walk behind a scan, run by workers that send plain columns.

Listing (listing.py), link reading (links.py) and manifest reading
(manifest_files.py) go through the storage layer (storage.py). Nothing here
imports pyarrow or pandas: a worker starts in milliseconds.
"""

from __future__ import annotations

from storage_audit.core.findings import Kind
from storage_audit.core.paths import (
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
from storage_audit.scan.links import LinkReader
from storage_audit.scan.listing import Lister, Recorder, Unreadable
from storage_audit.scan.manifest_files import read_manifests
from storage_audit.scan.rows import (
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
from storage_audit.storage.base import AccessError, EntryKind, LocalStorage, NotRegular, Small, Stat, Storage

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

    def split_namespaces(self, names: list[str]) -> list[str]:
        """`names` of top-level units, each mere namespace (a directory of repository directories only) replaced by
        its children, `<namespace>/<child>`: the same rows in the same order, in smaller units.

        One organization can hold a third of a tree, and a worker holds all the rows of a unit at once.
        Anything else in the directory (a repository's own `_manifests`, a file, a bad name) keeps it whole.
        """
        top = path_for(Repositories())
        units: list[str] = []
        for name in names:
            try:
                dirs, others = self.storage.subdirs(f"{top}/{name}")
            except AccessError:
                dirs, others = [], []
            if others or not dirs or not all(map(valid_component, dirs)):
                units.append(name)
            else:
                units += [f"{name}/{child}" for child in sorted(dirs)]
        return units

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
            # Sorted names share the prefix when the first and the last do.
            if names and (not all_hex_of(alg, names) or names[0][:2] != prefix or names[-1][:2] != prefix):
                names = self._valid_blob_names(alg, prefix, prel, names)
            blobs = self.part.blobs
            # The blob directories themselves are never listed: their only member is `data`.
            for hexname, st in zip(names, directory.stat_each([blob_data_below(n) for n in names]), strict=True):
                if st.__class__ is Stat and st[2] is _FILE:  # type: ignore[index]
                    blobs.append(_new(BlobRow, (f"{alg}:{hexname}", st[0], st[1])))  # type: ignore[index]
                elif isinstance(st, AccessError):
                    self.rec.access(st)
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
        take = self.links.take
        for name, hexrel, got in self.lister.links_below(rel, repo, mtime=True):
            if got.__class__ is Small and got[0] == name.encode():  # type: ignore[index]
                # The usual case, written out: a readable link naming its own digest.
                revisions.append(_new(RevisionRow, (repo, name, name, True, got[2] or None)))  # type: ignore[index]
                continue
            try:
                link = take(f"{hexrel}/{LINK}", repo, got, name)
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
            revisions.append(RevisionRow(repo, name, name if same else target, True, mtime or None))

    def _scan_tags(self, rel: str, repo: str) -> None:
        take = self.links.take
        for tag in self._entries(rel, repo):
            tagrel = f"{rel}/{tag}"
            if not valid_tag(tag):
                self._find(Kind.STRAY_FILE, tagrel, "not a valid tag name", repo)
                continue
            try:
                link = self.links.read(current_link_below(tagrel), repo)
            except Unreadable:
                link = (None, 0)
            if link is None:
                self.part.tags.append(TagRow(repo, tag, None, None))
            else:
                self.part.tags.append(TagRow(repo, tag, link[0], link[1] or None))
            for digest, hexrel, got in self.lister.links_below(f"{tagrel}/index", repo, mtime=True):
                try:
                    entry_link = take(f"{hexrel}/{LINK}", repo, got, digest)
                except Unreadable:
                    continue
                if entry_link is not None:
                    self.part.history.append(_new(HistoryRow, (repo, tag, digest, entry_link[1])))

    def _scan_layers(self, rel: str, repo: str) -> None:
        layer_links = self.part.layer_links
        take = self.links.take
        # Layer links need no mtime: skipping fstat saves a system call per link.
        for digest, hexrel, got in self.lister.links_below(rel, repo, mtime=False):
            if got.__class__ is Small and got[0] == digest.encode():  # type: ignore[index]
                # The usual case, written out: a readable link naming its own digest.
                layer_links.append(_new(LayerLinkRow, (repo, digest, digest)))
                continue
            try:
                link = take(f"{hexrel}/{LINK}", repo, got, digest)
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
            layer_links.append(LayerLinkRow(repo, digest, digest if target == digest else target))

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

    def _valid_blob_names(self, alg: str, prefix: str, prel: str, names: list[str]) -> list[str]:
        """The names of blob directories in `names`; a finding for each other."""
        valid = []
        for name in names:
            if not is_hex_of(alg, name):
                self._find(Kind.STRAY_FILE, f"{prel}/{name}", f"not a {alg} blob directory")
            elif name[:2] != prefix:
                self._find(Kind.STRAY_FILE, f"{prel}/{name}", "blob directory under the wrong two-character prefix")
            else:
                valid.append(name)
        return valid

    def _not_a_blob(self, digest: str, rel: str, st: Stat | None) -> None:
        if st is None:
            self._find(Kind.STRAY_FILE, rel, "blob directory without data", digest=digest)
        elif st.kind is _SYMLINK:
            self._find(Kind.STRAY_FILE, f"{rel}/data", "symbolic link, not followed", digest=digest)
        else:
            self._find(Kind.STRAY_FILE, f"{rel}/data", "blob data is not a regular file", digest=digest)

    # -- manifests ----------------------------------------------------------

    def read_manifests(self, items: list[tuple[str, str]], listed: bool = False) -> None:
        """Parse the manifest blob of each (repository, digest) given, when it is a regular file (see
        manifest_files.read_manifests)."""
        read_manifests(self.rec, items, listed)


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


def read_manifest_units(
    v2: Storage | str, items: list[tuple[str, str]], rows: bool = True, listed: bool = False
) -> Columns:
    """Parse the given manifests (a worker's share of a scan; `listed`: known only from lists); see Part.columns."""
    walker = Walker(v2)
    walker.read_manifests(items, listed)
    return walker.part.columns(rows)


__all__ = ["TABLES", "Columns", "Part", "Totals", "Walker", "read_manifest_units", "walk_units"]

"""A model of registry 3's `garbage-collect --dry-run`, written from distribution's source, that tests hold
storage-audit's `--gc-compatible=3` to.

No registry 3 binary runs here, so this follows, step by step, `MarkAndSweep`, `markManifestReferences` and
`unmarkReferencedManifest` of distribution/distribution `registry/storage/garbagecollect.go` at commit
011b49ce4402b5cbcb72628f2d34d87300328951 (main, the v3 module), and `linkedBlobStore.Enumerate` of
`registry/storage/linkedblobstore.go`. It reads the tree from disk as the filesystem driver does (a walk
lists each directory's entries sorted) and shares no code with storage_audit.

One departure, where the source's own answer depends on an empty directory: `Tags.All` fails with
ErrRepositoryUnknown when `_manifests/tags` is missing, so that repository's untagged revisions are neither
candidates nor marked; the filesystem driver leaves an empty `tags/` behind when the last tag is deleted,
object storage does not. Here a `tags/` directory with no tag in it counts as missing, as in a bucket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DryRun:
    """What the dry run prints: manifests, blobs and layer links eligible for deletion, and the mark set."""

    manifests: set[tuple[str, str]]
    blobs: set[str]
    layer_links: set[tuple[str, str]]
    marked: set[str]


def _data(v2: Path, digest: str) -> Path:
    alg, hex_ = digest.split(":", 1)
    return v2 / "blobs" / alg / hex_[:2] / hex_ / "data"


def _readlink(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _link_path(base: Path, digest: str) -> Path:
    alg, hex_ = digest.split(":", 1)
    return base / alg / hex_ / "link"


def repositories(v2: Path) -> Iterator[str]:
    """`registry.Enumerate`: a depth-first walk, entries sorted; a repository is met at its `_manifests`."""

    def walk(directory: Path, name: str) -> Iterator[str]:
        for entry in sorted(p.name for p in directory.iterdir() if p.is_dir()):
            if entry == "_manifests":
                yield name
            elif not entry.startswith("_"):
                yield from walk(directory / entry, f"{name}/{entry}" if name else entry)

    yield from walk(v2 / "repositories", "")


def _enumerate(v2: Path, links: Path) -> Iterator[str]:
    """`linkedBlobStore.Enumerate`: every `link` file below `links`, its content, when the link for that content
    (at its own path) names a blob that exists (else ErrBlobUnknown: skipped)."""
    if not links.is_dir():
        return
    for path in sorted(links.rglob("link")):
        digest = _readlink(path)
        if digest is None:
            continue
        target = _readlink(_link_path(links, digest))
        if target is not None and _data(v2, target).is_file():
            yield digest


def _exists(v2: Path, repo: Path, digest: str) -> bool:
    """`manifestService.Exists`: the repository's revision link for `digest` names a stored blob."""
    target = _readlink(_link_path(repo / "_manifests" / "revisions", digest))
    return target is not None and _data(v2, target).is_file()


def references(v2: Path, digest: str) -> list[str]:
    """`manifest.References()`: a list's or an index's manifests, else an image's config and layers (not its
    `subject`). Registry 3 reads no schema1 manifest; meeting one is an error, as its Get would be."""
    doc = json.loads(_data(v2, digest).read_bytes())
    if doc.get("schemaVersion") == 1:
        raise ValueError(f"registry 3 cannot read the schema1 manifest {digest}")
    if "manifests" in doc:
        return [d["digest"] for d in doc["manifests"]]
    return [doc["config"]["digest"], *(d["digest"] for d in doc.get("layers", []))]


def _tags(repo: Path) -> list[tuple[str, str | None]] | None:
    """`Tags.All` with each tag's current target (`Tags.Lookup` reads them); None: no tags path (see above)."""
    tags = repo / "_manifests" / "tags"
    names = sorted(p.name for p in tags.iterdir()) if tags.is_dir() else []
    if not names:
        return None
    return [(name, _readlink(tags / name / "current" / "link")) for name in names]


def mark_and_sweep(v2: Path, remove_untagged: bool) -> DryRun:
    """`MarkAndSweep` with DryRun set: what it would delete."""
    mark_set: set[str] = set()
    delete_layers: set[tuple[str, str]] = set()
    candidates: list[tuple[str, str]] = []

    def mark_references(repo: Path, digest: str) -> None:
        for ref in references(v2, digest):
            # Do not visit references already marked; descend into those the repository has as revisions.
            if ref in mark_set:
                continue
            mark_set.add(ref)
            if _exists(v2, repo, ref):
                mark_references(repo, ref)

    for name in repositories(v2):
        repo = v2 / "repositories" / name
        for digest in _enumerate(v2, repo / "_manifests" / "revisions"):
            if remove_untagged:
                tags = _tags(repo)
                if not any(target == digest for _, target in tags or []):
                    if tags is not None:
                        candidates.append((name, digest))
                    continue
            mark_set.add(digest)
            mark_references(repo, digest)
        for digest in _enumerate(v2, repo / "_layers"):
            if digest not in mark_set:
                delete_layers.add((name, digest))

    manifests = {(name, digest) for name, digest in candidates if digest not in mark_set}
    blobs = {
        f"{alg.name}:{data.parent.name}"
        for alg in (v2 / "blobs").iterdir()
        for data in alg.glob("*/*/data")
        if f"{alg.name}:{data.parent.name}" not in mark_set
    }
    return DryRun(manifests, blobs, delete_layers, mark_set)

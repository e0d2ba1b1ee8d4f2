"""Read the manifest blobs a scan found through the storage layer into manifest and reference rows."""

from __future__ import annotations

from storage_audit.core.findings import Kind
from storage_audit.core.manifest import INVALID_KIND, LIST_KINDS, MAX_MANIFEST_BYTES, parse_manifest
from storage_audit.core.paths import BlobData, Digest, path_for
from storage_audit.scan.listing import Recorder
from storage_audit.scan.rows import ManifestRow, ReferenceRow
from storage_audit.storage.base import AccessError, NotRegular, SymlinkRefused

_new = tuple.__new__


def read_manifests(rec: Recorder, items: list[tuple[str, str]], listed: bool = False) -> None:
    """Parse the manifest blob of each (repository, digest) given, when it is a regular file.

    The children that the lists and indexes among them name go to `rec.part.listed`, those
    not given here: they are to be read too. With `listed`, the items are such children, known
    only from a list: a blob that is no manifest at all is then left out, without a finding
    (the list's own findings tell).
    """
    part = rec.part
    manifests, references = part.manifests, part.references
    paths = [path_for(BlobData(Digest.parse(target))) for _, target in items]
    given: set[str] | None = None
    # A remote backend may fetch them all at once before they are read one by one.
    rec.storage.prefetch(paths)
    for (repo, target), rel in zip(items, paths, strict=True):
        try:
            # One byte past the limit is enough to tell a manifest is too big; its size comes from stat.
            small = rec.storage.read_small(rel, MAX_MANIFEST_BYTES, stat=True)
        except (NotRegular, SymlinkRefused):
            continue  # the blob walk reports those
        except AccessError as exc:
            rec.access(exc, repo)
            continue
        if small is None:
            continue  # the checks report a manifest without its blob
        parsed = parse_manifest(small.data, small.size)
        if listed and parsed.kind == INVALID_KIND:
            continue
        if parsed.problems:
            detail = "; ".join(parsed.problems)
            rec.find(Kind.CORRUPT_MANIFEST, rel, f"manifest is unusable: {detail}", repo, target)
        row = (
            target,
            small.size,
            parsed.kind,
            parsed.media_type,
            parsed.schema_version,
            parsed.artifact_type,
            parsed.subject,
            parsed.config_media_type,
        )
        # Rows made from tuples directly: a scan makes hundreds of thousands of references.
        manifests.append(_new(ManifestRow, row))
        references.extend([_new(ReferenceRow, (target, *ref)) for ref in parsed.references])
        if parsed.kind in LIST_KINDS:
            if given is None:
                given = {digest for _, digest in items}
            # A child whose revision link was deleted is read nowhere else, yet what its manifest
            # holds is what a missing child keeps (an index may list an index: this goes on).
            part.listed += [(repo, ref[1]) for ref in parsed.references if ref[0] == "child" and ref[1] not in given]

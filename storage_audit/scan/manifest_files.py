"""Read the manifest blobs a scan found through the storage layer into manifest and reference rows."""

from __future__ import annotations

from storage_audit.core.findings import Kind
from storage_audit.core.manifest import MAX_MANIFEST_BYTES, parse_manifest
from storage_audit.core.paths import BlobData, Digest, path_for
from storage_audit.scan.listing import Recorder
from storage_audit.scan.rows import ManifestRow, ReferenceRow
from storage_audit.storage.base import AccessError, NotRegular, SymlinkRefused

_new = tuple.__new__


def read_manifests(rec: Recorder, items: list[tuple[str, str]]) -> None:
    """Parse the manifest blob of each (repository, digest) given, when it is a regular file."""
    manifests, references = rec.part.manifests, rec.part.references
    paths = [path_for(BlobData(Digest.parse(target))) for _, target in items]
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

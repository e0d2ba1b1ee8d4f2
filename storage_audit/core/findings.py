"""Findings: anomalies met while reading the storage, kept as data with a fixed vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Kind(StrEnum):
    """Every kind of finding the tool reports, with its severity in SEVERITY."""

    MISSING_BLOB = "missing-blob"
    DANGLING_TAG = "dangling-tag"
    CORRUPT_MANIFEST = "corrupt-manifest"
    INDEX_CHILD_MISSING = "index-child-missing"
    DIGEST_MISMATCH = "digest-mismatch"
    SIZE_MISMATCH = "size-mismatch"
    BAD_LINK = "bad-link"
    UNREADABLE = "unreadable"
    INDEX_LISTS_LAYER = "index-lists-layer"
    STALE_UPLOAD = "stale-upload"
    LINK_CONTENT_MISMATCH = "link-content-mismatch"
    STRAY_FILE = "stray-file"
    EMPTY_REPOSITORY = "empty-repository"
    ORPHAN_LAYER_LINK = "orphan-layer-link"
    DELETED_REVISION = "deleted-revision"


SEVERITY: dict[Kind, Severity] = {
    Kind.MISSING_BLOB: Severity.ERROR,
    Kind.DANGLING_TAG: Severity.ERROR,
    Kind.CORRUPT_MANIFEST: Severity.ERROR,
    Kind.INDEX_CHILD_MISSING: Severity.ERROR,
    Kind.DIGEST_MISMATCH: Severity.ERROR,
    Kind.SIZE_MISMATCH: Severity.ERROR,
    Kind.BAD_LINK: Severity.ERROR,
    Kind.UNREADABLE: Severity.ERROR,
    Kind.INDEX_LISTS_LAYER: Severity.WARNING,
    Kind.STALE_UPLOAD: Severity.WARNING,
    Kind.LINK_CONTENT_MISMATCH: Severity.WARNING,
    Kind.STRAY_FILE: Severity.WARNING,
    Kind.EMPTY_REPOSITORY: Severity.INFO,
    Kind.ORPHAN_LAYER_LINK: Severity.INFO,
    Kind.DELETED_REVISION: Severity.INFO,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One anomaly: what kind, where (path relative to `v2`), and a sentence for people."""

    kind: Kind
    path: str
    detail: str
    repository: str | None = None
    digest: str | None = None

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.kind]

    def row(self) -> dict[str, str | None]:
        return {
            "kind": self.kind.value,
            "severity": self.severity.value,
            "repository": self.repository,
            "path": self.path,
            "digest": self.digest,
            "detail": self.detail,
        }

"""The inventory's tables and the report views a snapshot stores: every column, free of pandas so scan workers can use
it."""

from __future__ import annotations

from enum import StrEnum

METADATA_FILE = "metadata.json"
"""Marks a whole snapshot directory written by `scan -o`; written last, it lists every table's files."""
SNAPSHOT_FORMAT = 2
"""The layout written: each table a directory of Parquet parts. Format 1 (one file per table) is still read."""
READABLE_FORMATS = (1, 2)
PART_FILE = "part-{:05d}.parquet"
"""A part of a table, in its directory `<table>/`: parts hold the table's rows in order, end to end."""
PART_PATTERN = r"part-[0-9]{5}\.parquet"
VIEW_FILE = "report-{}.parquet"
"""A whole report view computed when the snapshot was written, so that reports need not analyze again."""
VIEWS_FORMAT = 2
"""What the stored views mean, written as `views_format` (absent: 1). In 2 the summary's findings_* columns
count every finding of `check`; in 1 only those of the scan and of the reachability engine."""
VIEWS_SINCE = {"summary": 2}
"""The views format from which a stored view is read as it is; one stored before is computed again."""

STR = "string"
TIME = "datetime64[ns, UTC]"
INT = "int64"
OPT_INT = "Int64"
BOOL = "bool"

# Every table's columns: name -> (dtype, meaning). docs/inventory.md repeats these.
SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "repositories": {
        "repository": (STR, "repository name, `org/team/app`"),
        "has_manifests": (BOOL, "the directory has `_manifests`"),
        "has_layers": (BOOL, "the directory has `_layers`"),
        "has_uploads": (BOOL, "the directory has `_uploads`"),
        "layers_changed_at": (TIME, "mtime of `_layers/<alg>`: when a layer link was last added; null without"),
    },
    "tags": {
        "repository": (STR, "repository name"),
        "tag": (STR, "tag name"),
        "digest": (STR, "target of `current/link`; null when the link is missing or bad"),
        "pushed_at": (TIME, "mtime of `current/link`: when the tag was last pushed"),
    },
    "tag_history": {
        "repository": (STR, "repository name"),
        "tag": (STR, "tag name"),
        "digest": (STR, "a revision the tag has pointed at (`index/<alg>/<hex>`)"),
        "pushed_at": (TIME, "mtime of the history entry's link"),
    },
    "revisions": {
        "repository": (STR, "repository name"),
        "digest": (STR, "manifest digest, from the revision's path"),
        "target": (STR, "digest the `link` names (the manifest blob); null when unlinked"),
        "linked": (BOOL, "a `link` file is present (no link: deleted through the API)"),
        "pushed_at": (TIME, "mtime of the revision `link`; null when unlinked"),
    },
    "manifests": {
        "digest": (
            STR,
            "manifest digest; one row per distinct manifest whose blob exists that a revision link or tag"
            " (current or history) names, or that such a list or index lists (recursively)",
        ),
        "size": (INT, "bytes of the manifest blob"),
        "kind": (STR, "docker-v2, docker-list, oci-manifest, oci-index, oci-artifact, schema1, invalid"),
        "media_type": (STR, "declared `mediaType`, or the one its structure implies"),
        "schema_version": (OPT_INT, "`schemaVersion`"),
        "artifact_type": (STR, "`artifactType` (OCI 1.1), else null"),
        "subject": (STR, "digest of `subject` (the manifest it refers to), else null"),
        "config_media_type": (STR, "media type of `config`, else null"),
    },
    "references": {
        "manifest": (STR, "digest of the referencing manifest"),
        "ref_type": (STR, "config, layer, child (index entry), subject, fslayer (schema1), signature"),
        "digest": (STR, "digest referenced"),
        "media_type": (STR, "descriptor media type, else null"),
        "size": (OPT_INT, "descriptor size, else null"),
        "platform": (STR, "`os/arch[/variant]` of an index child, else null"),
        "position": (INT, "index of the descriptor in its list"),
    },
    "layer_links": {
        "repository": (STR, "repository name"),
        "digest": (STR, "digest from the link's path"),
        "target": (STR, "digest the link's content names (may differ: an alias); null when unreadable"),
    },
    "blobs": {
        "digest": (STR, "digest, from the path"),
        "size": (INT, "bytes of `data`"),
        "mtime": (TIME, "mtime of `data`"),
    },
    "uploads": {
        "repository": (STR, "repository name"),
        "id": (STR, "upload id (directory name)"),
        "bytes": (INT, "bytes of the partial `data` (0 when absent)"),
        "started_at": (TIME, "time in `startedat`; null when absent or unreadable"),
    },
    "findings": {
        "kind": (STR, "finding kind (see docs/findings.md, its vocabulary)"),
        "severity": (STR, "error, warning or info"),
        "repository": (STR, "repository concerned, else null"),
        "path": (STR, "path relative to the `v2` directory"),
        "digest": (STR, "digest concerned, else null"),
        "detail": (STR, "one sentence for people"),
    },
}

DIGESTS = "digests"
NAMES = "names"
OWN = "own"
CODED: dict[str, dict[str, str]] = {
    # Tables as read, digests first, with the blobs before the rest: most digests name a blob.
    "blobs": {"digest": DIGESTS},
    "references": {"manifest": DIGESTS, "digest": DIGESTS, "ref_type": OWN, "media_type": OWN, "platform": OWN},
    "layer_links": {"repository": NAMES, "digest": DIGESTS, "target": DIGESTS},
    "revisions": {"repository": NAMES, "digest": DIGESTS, "target": DIGESTS},
    "manifests": {
        "digest": DIGESTS,
        "subject": DIGESTS,
        "kind": OWN,
        "media_type": OWN,
        "artifact_type": OWN,
        "config_media_type": OWN,
    },
    "tags": {"repository": NAMES, "digest": DIGESTS},
    "tag_history": {"repository": NAMES, "digest": DIGESTS},
    "repositories": {"repository": NAMES},
    "uploads": {"repository": NAMES},
}
"""The text columns held in memory as codes: every digest against one dictionary, every repository name
against another, and a few columns of few distinct values (OWN) against a dictionary each."""
ALIASES: dict[tuple[str, str], str] = {
    ("layer_links", "target"): "digest",
    ("revisions", "target"): "digest",
}
"""Digest columns that almost always hold, row for row, the digest of another column of their table (a
link names its own path): only the rows where they differ are read."""


class By(StrEnum):
    """What one row of a report is."""

    SUMMARY = "summary"
    REPOSITORY = "repository"
    TAG = "tag"
    MANIFEST = "manifest"
    BLOB = "blob"
    UPLOAD = "upload"


# The columns of every view, in output order; docs/reports.md repeats them.
COLUMNS: dict[By, tuple[str, ...]] = {
    By.SUMMARY: (
        "repositories",
        "tags",
        "manifests",
        "untagged_manifests",
        "blobs",
        "orphan_blobs",
        "physical_bytes",
        "logical_bytes",
        "dedup_ratio",
        "orphan_bytes",
        "untagged_reclaimable_bytes",
        "upload_bytes",
        "findings_error",
        "findings_warning",
        "findings_info",
    ),
    By.REPOSITORY: (
        "repository",
        "tags",
        "manifests",
        "untagged_manifests",
        "total_bytes",
        "exclusive_bytes",
        "shared_bytes",
        "reclaimable_bytes",
        "upload_bytes",
        "last_push",
    ),
    By.TAG: (
        "repository",
        "tag",
        "digest",
        "media_type",
        "platforms",
        "pushed_at",
        "image_bytes",
        "exclusive_bytes",
        "history",
    ),
    By.MANIFEST: ("repository", "digest", "media_type", "artifact_type", "tags", "reachable", "bytes"),
    By.BLOB: ("digest", "size", "repositories", "manifests", "orphan", "kind"),
    By.UPLOAD: ("repository", "id", "bytes", "started_at", "age"),
}

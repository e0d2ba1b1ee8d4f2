"""Parse a manifest's bytes into its kind and the descriptors it references."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from storage_audit.core.paths import match_digest

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""The registry refuses manifests above 4 MiB; a bigger one on disk is corrupt."""

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_CONFIGS = frozenset(
    {"application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json"}
)
MANIFEST_TYPES = frozenset({DOCKER_V2, DOCKER_LIST, DOCKER_V1, DOCKER_V1_SIGNED, OCI_MANIFEST, OCI_INDEX})

# Kinds of manifest, as stored in the inventory's `kind` column.
DOCKER_V2_KIND = "docker-v2"
DOCKER_LIST_KIND = "docker-list"
OCI_MANIFEST_KIND = "oci-manifest"
OCI_INDEX_KIND = "oci-index"
OCI_ARTIFACT_KIND = "oci-artifact"
SCHEMA1_KIND = "schema1"
INVALID_KIND = "invalid"
LIST_KINDS = frozenset({DOCKER_LIST_KIND, OCI_INDEX_KIND})


class Reference(NamedTuple):
    """One descriptor a manifest points at (a tuple: hundreds of thousands are made per scan)."""

    ref_type: str  # config | layer | child | subject | fslayer
    digest: str
    media_type: str | None
    size: int | None
    platform: str | None
    position: int


@dataclass(slots=True)
class Parsed:
    """What one manifest is and references; `problems` lists what is wrong with it."""

    kind: str
    media_type: str | None = None
    schema_version: int | None = None
    artifact_type: str | None = None
    subject: str | None = None
    config_media_type: str | None = None
    references: list[Reference] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _platform(desc: dict[str, object]) -> str | None:
    plat = desc.get("platform")
    if not isinstance(plat, dict):
        return None
    parts = [plat.get("os"), plat.get("architecture"), plat.get("variant")]
    return "/".join(str(p) for p in parts if p) or None


def _size(value: object) -> int | None:
    return value if type(value) is int else None


def _descriptor(parsed: Parsed, ref_type: str, desc: object, position: int, digest_key: str = "digest") -> None:
    if type(desc) is dict:
        digest = desc.get(digest_key)
        if type(digest) is str and match_digest(digest) is not None:
            media_type = desc.get("mediaType")
            size = desc.get("size")
            if (type(size) is not int or not INT64_MIN <= size <= INT64_MAX) and size is not None:
                # The registry decodes sizes into int64 and refuses anything else (orjson reads a
                # too-big integer as a float). The reference is kept: what it names stays alive.
                parsed.problems.append(f"{ref_type} #{position} has a size that is no 64-bit integer: {size!r:.40}")
                size = None
            reference = (
                ref_type,
                digest,
                media_type if type(media_type) is str else None,
                size,
                _platform(desc) if ref_type == "child" else None,
                position,
            )
            # Made from the tuple directly: a manifest has many descriptors, and this is their hot path.
            parsed.references.append(tuple.__new__(Reference, reference))
            return
        parsed.problems.append(f"{ref_type} #{position} has an invalid digest {str(digest)[:80]!r}")
    else:
        parsed.problems.append(f"{ref_type} #{position} is not an object")


def _list(parsed: Parsed, doc: dict[str, object], key: str) -> list[object]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        parsed.problems.append(f"`{key}` is not a list")
        return []
    return value


def parse_manifest(data: bytes, size: int | None = None) -> Parsed:
    """Classify `data` and list its references; never raises on bad content.

    `size` is the blob's size when `data` may be only its beginning (enough to tell it is over the limit).
    """
    if not data:
        return Parsed(INVALID_KIND, problems=["zero bytes"])
    if len(data) > MAX_MANIFEST_BYTES:
        total = max(size or 0, len(data))
        return Parsed(INVALID_KIND, problems=[f"{total} bytes, over the registry's 4 MiB limit"])
    try:
        # orjson: three times as fast as json on manifests, and as strict as the registry's
        # decoder (no NaN, no integers beyond 64 bits, only valid UTF-8).
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Parsed(INVALID_KIND, problems=[f"not JSON ({exc.__class__.__name__})"])
    if not isinstance(doc, dict):
        return Parsed(INVALID_KIND, problems=["JSON is not an object"])

    declared = doc.get("mediaType")
    media_type = declared if isinstance(declared, str) else None
    version = _size(doc.get("schemaVersion"))
    parsed = Parsed(INVALID_KIND, media_type=media_type, schema_version=version)

    if version == 1:
        parsed.kind = SCHEMA1_KIND
        parsed.media_type = media_type or (DOCKER_V1_SIGNED if "signatures" in doc else DOCKER_V1)
        for i, layer in enumerate(_list(parsed, doc, "fsLayers")):
            _descriptor(parsed, "fslayer", layer, i, digest_key="blobSum")
        return parsed
    if version != 2:
        parsed.problems.append(f"unknown schemaVersion {doc.get('schemaVersion')!r}")

    artifact_type = doc.get("artifactType")
    parsed.artifact_type = artifact_type if isinstance(artifact_type, str) else None
    if "subject" in doc:
        before = len(parsed.references)
        _descriptor(parsed, "subject", doc["subject"], 0)
        if len(parsed.references) > before:
            parsed.subject = parsed.references[-1].digest

    is_list = "manifests" in doc or media_type in (DOCKER_LIST, OCI_INDEX)
    if is_list:
        parsed.kind = DOCKER_LIST_KIND if media_type == DOCKER_LIST else OCI_INDEX_KIND
        parsed.media_type = media_type or OCI_INDEX
        for i, child in enumerate(_list(parsed, doc, "manifests")):
            _descriptor(parsed, "child", child, i)
        # An index carrying config or layers is odd but not unreadable: keep
        # those references so that nothing it names is ever taken for garbage.
        _image_references(parsed, doc)
    elif "config" in doc or "layers" in doc or media_type in (DOCKER_V2, OCI_MANIFEST):
        _image_references(parsed, doc)
        if media_type == DOCKER_V2:
            parsed.kind = DOCKER_V2_KIND
        else:
            parsed.media_type = media_type or OCI_MANIFEST
            is_artifact = parsed.artifact_type is not None or parsed.subject is not None
            parsed.kind = OCI_ARTIFACT_KIND if is_artifact else OCI_MANIFEST_KIND
    else:
        parsed.problems.append("neither an image manifest nor an index")
    if parsed.media_type is not None and parsed.media_type not in MANIFEST_TYPES:
        parsed.problems.append(f"unknown media type {parsed.media_type!r}")
    return parsed


def _image_references(parsed: Parsed, doc: dict[str, object]) -> None:
    if "config" in doc:
        _descriptor(parsed, "config", doc["config"], 0)
        config = doc["config"]
        if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
            parsed.config_media_type = config["mediaType"]
    for i, layer in enumerate(_list(parsed, doc, "layers")):
        _descriptor(parsed, "layer", layer, i)

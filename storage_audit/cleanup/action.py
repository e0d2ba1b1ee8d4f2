"""A plan's actions: the ops, the paths each may touch, and what must still hold when it runs (a dataclass per op)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from storage_audit.core.errors import UsageError
from storage_audit.core.paths import (
    REPOSITORY_PARTS,
    BlobDir,
    InvalidPath,
    LayerLink,
    PathSpec,
    Repository,
    RepositoryPart,
    RevisionLink,
    TagDir,
    TagIndexLink,
    UploadDir,
    parent,
    parse_path,
    path_for,
)


class PlanError(UsageError, ValueError):
    """A plan file that is malformed, tampered with, or not applicable."""


class Op(StrEnum):
    """A plan's operations, in the order they are applied.

    An interruption anywhere leaves only garbage (untagged manifests,
    unreferenced blobs), never a tag without its manifest or a manifest
    without its blobs. Members are strings: the plan file holds their values.
    """

    REMOVE_TAG = "remove-tag"
    REMOVE_TAG_HISTORY = "remove-tag-history"
    REMOVE_REVISION = "remove-revision"
    REMOVE_LAYER_LINK = "remove-layer-link"
    REMOVE_BLOB = "remove-blob"
    REMOVE_UPLOAD = "remove-upload"
    REMOVE_REPOSITORY = "remove-repository"


OPS: tuple[Op, ...] = tuple(Op)
OP_SPEC: dict[Op, type] = {
    Op.REMOVE_TAG: TagDir,
    Op.REMOVE_TAG_HISTORY: TagIndexLink,
    Op.REMOVE_REVISION: RevisionLink,
    Op.REMOVE_LAYER_LINK: LayerLink,
    Op.REMOVE_BLOB: BlobDir,
    Op.REMOVE_UPLOAD: UploadDir,
    Op.REMOVE_REPOSITORY: Repository,
}


# -- the keys of an action in object storage --------------------------------------------

_LAST = "\U0010ffff"
# How many path components above a file action's path its container lies: `<container>/sha256/<hex>/link`.
_FILE_DEPTH = {Op.REMOVE_TAG_HISTORY: 3, Op.REMOVE_REVISION: 3, Op.REMOVE_LAYER_LINK: 3}


def _up(path: str, levels: int) -> str:
    for _ in range(levels):
        path = parent(path)
    return path


def spans(op: Op, path: str, repository: str | None) -> list[tuple[str, str, str]]:
    """(container, first, last): the ranges of paths (relative to `v2`) that hold everything an action removes.

    A file action owns its path; a directory's range ends with its `/`, so a tag is never a prefix of another
    (`v1/` is not `v1.0/`); a repository owns its three parts, never a repository nested in it.
    """
    if op in _FILE_DEPTH:
        return [(_up(path, _FILE_DEPTH[op]), path, path)]
    if op is Op.REMOVE_BLOB:
        return [(_up(path, 2), path + "/", path + "/" + _LAST)]
    if op is not Op.REMOVE_REPOSITORY:
        return [(parent(path), path + "/", path + "/" + _LAST)]
    parts = [path_for(RepositoryPart(repository or "", part)) for part in REPOSITORY_PARTS]
    return [(part, part + "/", part + "/" + _LAST) for part in parts]


def owns(op: Op, path: str, repository: str | None, rel: str) -> bool:
    """Whether the action removes the path `rel`."""
    return any(first <= rel <= last for _, first, last in spans(op, path, repository))


# -- what a bucket listed ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyState:
    """A key as the listing showed it when the plan was made: its ETag, size and last-modified time."""

    etag: str
    size: int
    last_modified: datetime

    def to_json(self) -> dict[str, Any]:
        return {"etag": self.etag, "size": self.size, "last_modified": self.last_modified.isoformat()}

    @classmethod
    def from_json(cls, doc: Any, where: str) -> KeyState:
        if not isinstance(doc, dict) or set(doc) != {"etag", "size", "last_modified"}:
            raise PlanError(f"{where} needs exactly etag, size and last_modified")
        if not isinstance(doc["etag"], str) or not _count(doc["size"]):
            raise PlanError(f"{where} has a bad etag or size")
        try:
            when = datetime.fromisoformat(doc["last_modified"])
        except (TypeError, ValueError) as exc:
            raise PlanError(f"{where} has a bad last_modified") from exc
        return cls(doc["etag"], doc["size"], when)


@dataclass(frozen=True)
class PendingUpload:
    """An incomplete multipart upload (the s3 driver's upload data, which listings do not show) and its bytes."""

    upload_id: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"upload_id": self.upload_id, "bytes": self.bytes}


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _int(value: Any) -> bool:
    return type(value) is int


def _optional_int(value: Any) -> bool:
    return value is None or type(value) is int


def _optional_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


# -- one precondition per op --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Precondition:
    """What the plan saw of an action's target; `objects` are its keys as a bucket listed them (None on disk)."""

    FIELDS: ClassVar[dict[str, Any]] = {}
    """The op's own fields in the plan's JSON, in order, with the test each value must pass."""

    objects: dict[str, KeyState] | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {name: getattr(self, name) for name in self.FIELDS}
        if self.objects is not None:
            doc["objects"] = {rel: state.to_json() for rel, state in self.objects.items()}
        return doc


@dataclass(frozen=True, kw_only=True)
class TagPrecondition(Precondition):
    """remove-tag: the digest its `current/link` names."""

    FIELDS: ClassVar[dict[str, Any]] = {"current": _text}
    current: str


@dataclass(frozen=True, kw_only=True)
class LinkPrecondition(Precondition):
    """A link file's content: the digest it names."""

    FIELDS: ClassVar[dict[str, Any]] = {"link": _text}
    link: str


@dataclass(frozen=True, kw_only=True)
class HistoryPrecondition(LinkPrecondition):
    """remove-tag-history: the digest its link names."""


@dataclass(frozen=True, kw_only=True)
class RevisionPrecondition(LinkPrecondition):
    """remove-revision: the digest its link names (the manifest it keeps)."""


@dataclass(frozen=True, kw_only=True)
class LayerLinkPrecondition(LinkPrecondition):
    """remove-layer-link: the digest its link names (the blob it lets the repository serve)."""


@dataclass(frozen=True, kw_only=True)
class BlobPrecondition(Precondition):
    """remove-blob: its data's size and mtime."""

    FIELDS: ClassVar[dict[str, Any]] = {"size": _count, "mtime_ns": _int}
    size: int
    mtime_ns: int


@dataclass(frozen=True, kw_only=True)
class UploadPrecondition(Precondition):
    """remove-upload: its bytes and `startedat` (None: it had none); in a bucket, its multipart uploads too."""

    FIELDS: ClassVar[dict[str, Any]] = {"bytes": _count, "started_at": _optional_text}
    bytes: int
    started_at: str | None
    multipart: tuple[PendingUpload, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        doc = super().to_json()
        if self.multipart is not None:
            doc["multipart"] = [u.to_json() for u in self.multipart]
        return doc


@dataclass(frozen=True, kw_only=True)
class RepositoryPrecondition(Precondition):
    """remove-repository: the newest mtime of its layer links in nanoseconds (None: it had none)."""

    FIELDS: ClassVar[dict[str, Any]] = {"layers_changed_at": _optional_int}
    layers_changed_at: int | None


PRECONDITIONS: dict[Op, type[Precondition]] = {
    Op.REMOVE_TAG: TagPrecondition,
    Op.REMOVE_TAG_HISTORY: HistoryPrecondition,
    Op.REMOVE_REVISION: RevisionPrecondition,
    Op.REMOVE_LAYER_LINK: LayerLinkPrecondition,
    Op.REMOVE_BLOB: BlobPrecondition,
    Op.REMOVE_UPLOAD: UploadPrecondition,
    Op.REMOVE_REPOSITORY: RepositoryPrecondition,
}


def read_precondition(op: Op, path: str, repository: str | None, doc: Any, where: str) -> Precondition:
    """The precondition of an action from its JSON, its keys checked to be the action's own; raises PlanError."""
    kind = PRECONDITIONS[op]
    if not isinstance(doc, dict):
        raise PlanError(f"{where}: precondition must be an object")
    extra = {"objects", "multipart"} if kind is UploadPrecondition else {"objects"}
    if not set(kind.FIELDS) <= set(doc) <= set(kind.FIELDS) | extra:
        raise PlanError(f"{where}: a {op} precondition holds {', '.join(kind.FIELDS)} and nothing else")
    for name, valid in kind.FIELDS.items():
        if not valid(doc[name]):
            raise PlanError(f"{where}: the precondition's {name} is not valid")
    values: dict[str, Any] = {name: doc[name] for name in kind.FIELDS}
    if "objects" in doc:
        values["objects"] = _read_objects(op, path, repository, doc["objects"], where)
    if "multipart" in doc:
        values["multipart"] = _read_multipart(doc["multipart"], where)
    return kind(**values)


def _read_objects(op: Op, path: str, repository: str | None, doc: Any, where: str) -> dict[str, KeyState]:
    if not isinstance(doc, dict):
        raise PlanError(f"{where}: the keys of its precondition must be an object")
    objects = {}
    ranges = [(first, last) for _, first, last in spans(op, path, repository)]
    for rel, state in doc.items():
        parts = rel.split("/")
        if "" in parts or "." in parts or ".." in parts or not any(first <= rel <= last for first, last in ranges):
            raise PlanError(f"{where} ({op} {path}) may not touch the key {rel!r}")
        objects[rel] = KeyState.from_json(state, f"{where}: the precondition of {rel!r}")
    return objects


def _read_multipart(doc: Any, where: str) -> tuple[PendingUpload, ...]:
    if not isinstance(doc, list) or not all(
        isinstance(u, dict) and set(u) == {"upload_id", "bytes"} and _text(u["upload_id"]) and _count(u["bytes"])
        for u in doc
    ):
        raise PlanError(f"{where}: malformed multipart uploads in its precondition")
    return tuple(PendingUpload(u["upload_id"], u["bytes"]) for u in doc)


OPTIONAL_FIELDS = {"refused"}
"""Fields of an action that a plan may leave out (written only when set)."""


# -- the action -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One removal: what, where (relative to `v2`), why, and what must still hold when it runs."""

    op: Op
    path: str
    reason: str
    precondition: Precondition
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None
    bytes: int = 0
    refused: str | None = None
    """In a plan made `--gc-compatible`: why storage-audit's own rules keep what that collector deletes, which
    apply's vetoes then refuse (None: an action they allow)."""

    def __post_init__(self) -> None:
        # An Op whatever the caller passed (they compare equal to their strings).
        if not isinstance(self.op, Op):
            object.__setattr__(self, "op", Op(self.op))

    def spec(self) -> PathSpec:
        """The parsed path, checked against what the op may touch and the fields it names."""
        return _spec(self.op, self.path, self.repository, self.tag, self.digest)

    def spans(self) -> list[tuple[str, str, str]]:
        """(container, first, last): the ranges of paths that hold everything this action removes."""
        return spans(self.op, self.path, self.repository)

    def owns(self, rel: str) -> bool:
        """Whether this action removes the path `rel`."""
        return owns(self.op, self.path, self.repository, rel)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op.value,
            "path": self.path,
            "reason": self.reason,
            "precondition": self.precondition.to_json(),
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "bytes": self.bytes,
            **({"refused": self.refused} if self.refused is not None else {}),
        }

    @classmethod
    def from_json(cls, item: Any, i: int) -> Action:
        """The action #i of a plan document, validated; raises PlanError naming the first problem."""
        fields = _ACTION_FIELDS
        if not isinstance(item, dict) or not fields - OPTIONAL_FIELDS <= item.keys() <= fields:
            raise PlanError(f"action #{i} is malformed: it needs exactly the fields {sorted(fields)}")
        if not isinstance(item["op"], str) or item["op"] not in OP_SPEC:
            raise PlanError(f"action #{i} has an unknown op")
        if not isinstance(item["path"], str) or not isinstance(item["reason"], str):
            raise PlanError(f"action #{i}: path and reason must be strings")
        if not _count(item["bytes"]):
            raise PlanError(f"action #{i}: bytes must be a non-negative integer")
        for name in ("repository", "tag", "digest", "refused"):
            if not _optional_text(item.get(name)):
                raise PlanError(f"action #{i}: {name} must be a string")
        op = Op(item["op"])
        _spec(op, item["path"], item["repository"], item["tag"], item["digest"])
        path, repository = item["path"], item["repository"]
        pre = read_precondition(op, path, repository, item["precondition"], f"action #{i}")
        return cls(
            op, path, item["reason"], pre, repository, item["tag"], item["digest"], item["bytes"], item.get("refused")
        )


_ACTION_FIELDS = frozenset(Action.__dataclass_fields__)


def _spec(op: Op, path: str, repository: str | None, tag: str | None, digest: str | None) -> PathSpec:
    try:
        spec = parse_path(path)
    except InvalidPath as exc:
        raise PlanError(f"{op} {path!r}: {exc}") from exc
    if not isinstance(spec, OP_SPEC[op]):
        raise PlanError(f"{op} may not touch {path!r}")
    named = {"repository": repository, "tag": tag, "digest": digest}
    for name, value in named.items():
        found = getattr(spec, name, None)
        if found is not None and str(found) != value:
            raise PlanError(f"{op} {path!r}: its {name} field does not match its path")
    return spec


__all__ = [
    "OPS",
    "OP_SPEC",
    "PRECONDITIONS",
    "Action",
    "BlobPrecondition",
    "HistoryPrecondition",
    "KeyState",
    "LayerLinkPrecondition",
    "LinkPrecondition",
    "Op",
    "PendingUpload",
    "PlanError",
    "Precondition",
    "RepositoryPrecondition",
    "RevisionPrecondition",
    "TagPrecondition",
    "UploadPrecondition",
    "owns",
    "read_precondition",
    "spans",
]

"""The one module that builds and parses every path of the registry's storage layout."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

ALGORITHMS: dict[str, int] = {"sha256": 64, "sha384": 96, "sha512": 128}
"""Digest algorithms the registry stores, with the length of their lowercase hex."""

_HEX = re.compile(r"[0-9a-f]+")
_HEX_OF = {alg: re.compile(f"[0-9a-f]{{{n}}}") for alg, n in ALGORITHMS.items()}
_HEX_LINES = {alg: re.compile(f"(?:[0-9a-f]{{{n}}}\n)*") for alg, n in ALGORITHMS.items()}
_DIGEST = re.compile("|".join(f"{alg}:[0-9a-f]{{{n}}}" for alg, n in ALGORITHMS.items()))
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_UPLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}")
MAX_REPOSITORY_LENGTH = 255
LINK = "link"
LINK_READ = 511
"""The most of a link file read (a link holds 71-135 bytes; reading more only exposes garbage), and of a `startedat`."""
"""The name of every link file."""


class InvalidDigest(ValueError):
    """A string that is not `<algorithm>:<hex>` with a known algorithm."""


class InvalidPath(ValueError):
    """A path that the storage layout does not define."""


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A validated content digest such as `sha256:<64 hex>`."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        length = ALGORITHMS.get(self.algorithm)
        if length is None:
            raise InvalidDigest(f"unknown digest algorithm {self.algorithm!r}")
        if len(self.hex) != length or not _HEX.fullmatch(self.hex):
            raise InvalidDigest(f"{self.algorithm} digest must be {length} lowercase hex characters")

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise InvalidDigest(f"{text[:80]!r} is not of the form <algorithm>:<hex>")
        return cls(algorithm, hexpart)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest(text: str) -> bool:
    """True when `text` is a valid digest string."""
    return _DIGEST.fullmatch(text) is not None


match_digest = _DIGEST.fullmatch
"""A match (true) when the string is a valid digest, else None: `is_digest` for the hottest loops."""


def is_hex_of(algorithm: str, hexpart: str) -> bool:
    """True when `hexpart` is a valid hex digest for `algorithm` (a known one)."""
    pattern = _HEX_OF.get(algorithm)
    return pattern is not None and pattern.fullmatch(hexpart) is not None


def all_hex_of(algorithm: str, names: list[str]) -> bool:
    """True when every one of `names` is a valid hex digest for `algorithm`: one pass over a whole listing."""
    pattern = _HEX_LINES.get(algorithm)
    if pattern is None:
        return False
    text = "\n".join(names) + "\n"
    # The length rules out a name with a newline inside standing for two lines.
    return len(text) == len(names) * (ALGORITHMS[algorithm] + 1) and pattern.fullmatch(text) is not None


def is_blob_prefix(name: str) -> bool:
    """True for the name of a `blobs/<alg>/<two hex>` directory."""
    return len(name) == 2 and _HEX.fullmatch(name) is not None


@lru_cache(maxsize=8192)
def valid_repository(name: str) -> bool:
    """True for a repository name the registry accepts (`org/team/app`).

    Remembered: parsing a listing checks each repository's name once per key below it.
    """
    if not name or len(name) > MAX_REPOSITORY_LENGTH:
        return False
    return all(_COMPONENT.fullmatch(part) for part in name.split("/"))


def valid_component(name: str) -> bool:
    """True for one path component of a repository name."""
    return bool(_COMPONENT.fullmatch(name))


def valid_tag(tag: str) -> bool:
    return bool(_TAG.fullmatch(tag))


def _check_repository(name: str) -> str:
    if not valid_repository(name):
        raise InvalidPath(f"invalid repository name {name!r}")
    return name


def _check_tag(tag: str) -> str:
    if not valid_tag(tag):
        raise InvalidPath(f"invalid tag {tag!r}")
    return tag


# One small frozen spec per kind of path. Building a spec validates its parts,
# so a path is only ever made from validated names and digests.


@dataclass(frozen=True, slots=True)
class BlobData:
    digest: Digest


@dataclass(frozen=True, slots=True)
class BlobDir:
    digest: Digest


@dataclass(frozen=True, slots=True)
class Repository:
    repository: str

    def __post_init__(self) -> None:
        _check_repository(self.repository)


@dataclass(frozen=True, slots=True)
class LayerLink:
    repository: str
    digest: Digest

    def __post_init__(self) -> None:
        _check_repository(self.repository)


@dataclass(frozen=True, slots=True)
class RevisionLink:
    repository: str
    digest: Digest

    def __post_init__(self) -> None:
        _check_repository(self.repository)


@dataclass(frozen=True, slots=True)
class TagDir:
    repository: str
    tag: str

    def __post_init__(self) -> None:
        _check_repository(self.repository)
        _check_tag(self.tag)


@dataclass(frozen=True, slots=True)
class TagCurrentLink:
    repository: str
    tag: str

    def __post_init__(self) -> None:
        _check_repository(self.repository)
        _check_tag(self.tag)


@dataclass(frozen=True, slots=True)
class TagIndexLink:
    repository: str
    tag: str
    digest: Digest

    def __post_init__(self) -> None:
        _check_repository(self.repository)
        _check_tag(self.tag)


@dataclass(frozen=True, slots=True)
class UploadDir:
    repository: str
    upload_id: str

    def __post_init__(self) -> None:
        _check_repository(self.repository)
        _check_upload(self.upload_id)


@dataclass(frozen=True, slots=True)
class Blobs:
    """The `blobs` directory."""


@dataclass(frozen=True, slots=True)
class BlobPrefix:
    """A `blobs/<alg>/<two hex>` directory, which a scan shares out among its workers."""

    algorithm: str
    prefix: str

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise InvalidPath(f"unknown digest algorithm {self.algorithm!r}")
        if not is_blob_prefix(self.prefix):
            raise InvalidPath(f"invalid blob prefix {self.prefix!r}")


@dataclass(frozen=True, slots=True)
class Repositories:
    """The `repositories` directory."""


REPOSITORY_PARTS = ("_manifests", "_layers", "_uploads")
"""What a repository directory holds besides the repositories nested in it."""


@dataclass(frozen=True, slots=True)
class RepositoryPart:
    """A repository's `_manifests`, `_layers` or `_uploads` directory."""

    repository: str
    part: str

    def __post_init__(self) -> None:
        _check_repository(self.repository)
        if self.part not in REPOSITORY_PARTS:
            raise InvalidPath(f"a repository holds no {self.part!r}")


@dataclass(frozen=True, slots=True)
class LayersAlgorithm:
    """A repository's `_layers/<alg>` directory, whose mtime says when a layer link was last added."""

    repository: str
    algorithm: str

    def __post_init__(self) -> None:
        _check_repository(self.repository)
        if self.algorithm not in ALGORITHMS:
            raise InvalidPath(f"unknown digest algorithm {self.algorithm!r}")


@dataclass(frozen=True, slots=True)
class TagCurrentDir:
    """A tag's `current` directory, which holds its `link`."""

    repository: str
    tag: str

    def __post_init__(self) -> None:
        _check_repository(self.repository)
        _check_tag(self.tag)


def _check_upload(upload_id: str) -> None:
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise InvalidPath(f"invalid upload id {upload_id!r}")


@dataclass(frozen=True, slots=True)
class UploadData:
    """The partial bytes of an upload in progress."""

    repository: str
    upload_id: str

    def __post_init__(self) -> None:
        _check_repository(self.repository)
        _check_upload(self.upload_id)


@dataclass(frozen=True, slots=True)
class UploadStartedAt:
    """The RFC 3339 start time of an upload in progress."""

    repository: str
    upload_id: str

    def __post_init__(self) -> None:
        _check_repository(self.repository)
        _check_upload(self.upload_id)


PathSpec = (
    BlobData
    | BlobDir
    | Repository
    | LayerLink
    | RevisionLink
    | TagDir
    | TagCurrentLink
    | TagIndexLink
    | UploadDir
    | Blobs
    | BlobPrefix
    | Repositories
    | RepositoryPart
    | LayersAlgorithm
    | TagCurrentDir
    | UploadData
    | UploadStartedAt
)


def _digest_dirs(digest: Digest) -> str:
    return f"{digest.algorithm}/{digest.hex}"


def path_for(spec: PathSpec) -> str:
    """The path of `spec`, relative to the `v2` directory, with `/` separators."""
    match spec:
        case BlobData(digest):
            return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{blob_data_below(digest.hex)}"
        case BlobDir(digest):
            return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"
        case Repository(repo):
            return f"repositories/{repo}"
        case LayerLink(repo, digest):
            return f"repositories/{repo}/_layers/{_digest_dirs(digest)}/link"
        case RevisionLink(repo, digest):
            return f"repositories/{repo}/_manifests/revisions/{_digest_dirs(digest)}/link"
        case TagDir(repo, tag):
            return f"repositories/{repo}/_manifests/tags/{tag}"
        case TagCurrentLink(repo, tag):
            return current_link_below(f"repositories/{repo}/_manifests/tags/{tag}")
        case TagIndexLink(repo, tag, digest):
            return f"repositories/{repo}/_manifests/tags/{tag}/index/{_digest_dirs(digest)}/link"
        case UploadDir(repo, upload_id):
            return f"repositories/{repo}/_uploads/{upload_id}"
        case Blobs():
            return "blobs"
        case BlobPrefix(alg, prefix):
            return f"blobs/{alg}/{prefix}"
        case Repositories():
            return "repositories"
        case RepositoryPart(repo, part):
            return f"repositories/{repo}/{part}"
        case LayersAlgorithm(repo, alg):
            return f"repositories/{repo}/_layers/{alg}"
        case TagCurrentDir(repo, tag):
            return f"repositories/{repo}/_manifests/tags/{tag}/current"
        case UploadData(repo, upload_id):
            return upload_data_below(f"repositories/{repo}/_uploads/{upload_id}")
        case UploadStartedAt(repo, upload_id):
            return upload_started_below(f"repositories/{repo}/_uploads/{upload_id}")
    raise TypeError(f"not a path spec: {spec!r}")  # pragma: no cover


# Paths below a directory that a walk has listed: its names were checked as the
# walk met them, and a spec would check them again for every file read.


def current_link_below(tag_dir: str) -> str:
    """The `current/link` of a tag directory found by a walk."""
    return f"{tag_dir}/current/{LINK}"


def layers_algorithm_below(layers_dir: str, algorithm: str) -> str:
    """The `<alg>` directory of a repository's `_layers` directory found by a walk."""
    return f"{layers_dir}/{algorithm}"


def upload_data_below(upload_dir: str) -> str:
    """The partial `data` of an upload directory found by a walk."""
    return f"{upload_dir}/data"


def upload_started_below(upload_dir: str) -> str:
    """The `startedat` file of an upload directory found by a walk."""
    return f"{upload_dir}/startedat"


def blob_data_below(blob_dir_name: str) -> str:
    """The `data` of a blob directory, relative to its prefix directory."""
    return f"{blob_dir_name}/data"


def parent(path: str) -> str:
    """The directory holding the storage path `path`: what a removal may leave empty."""
    return path.rpartition("/")[0]


def _digest_from(algorithm: str, hexpart: str) -> Digest:
    try:
        return Digest(algorithm, hexpart)
    except InvalidDigest as exc:
        raise InvalidPath(str(exc)) from exc


_BLOB_DATA = re.compile("blobs/(" + "|".join(ALGORITHMS) + ")/([0-9a-f]{2})/([0-9a-f]+)/data")


def blob_data_digest(path: str) -> str | None:
    """The digest (`<algorithm>:<hex>`) of the blob whose canonical `data` path is `path`, or None for any other
    path: `parse_path`'s answer for most keys of a bucket's listing, without building a spec."""
    found = _BLOB_DATA.fullmatch(path)
    if found is None:
        return None
    algorithm, prefix, hexpart = found.groups()
    if len(hexpart) != ALGORITHMS[algorithm] or not hexpart.startswith(prefix):
        return None
    return f"{algorithm}:{hexpart}"


def parse_path(path: str) -> PathSpec:
    """The spec whose `path_for` is exactly `path`; raises InvalidPath otherwise."""
    parts = path.split("/")
    # Membership tests, not a generator: every key of a bucket's listing is parsed here.
    if not path or "" in parts or "." in parts or ".." in parts:
        raise InvalidPath(f"{path!r} is not a relative path inside the storage tree")
    spec = _parse_parts(parts)
    if path_for(spec) != path:
        raise InvalidPath(f"{path!r} is not a canonical storage path")
    return spec


def _parse_parts(parts: list[str]) -> PathSpec:
    if parts == ["blobs"]:
        return Blobs()
    if parts == ["repositories"]:
        return Repositories()
    if parts[0] == "blobs" and len(parts) == 3:
        return BlobPrefix(parts[1], parts[2])
    if parts[0] == "blobs" and len(parts) in (4, 5):
        digest = _digest_from(parts[1], parts[3])
        if parts[2] != digest.hex[:2]:
            raise InvalidPath(f"blob directory {parts[2]!r} does not match its digest")
        if len(parts) == 5:
            if parts[4] != "data":
                raise InvalidPath("a blob directory holds only `data`")
            return BlobData(digest)
        return BlobDir(digest)
    if parts[0] != "repositories" or len(parts) < 2:
        raise InvalidPath(f"{'/'.join(parts)!r} is neither under blobs/ nor repositories/")
    rest = parts[1:]
    cut = next((i for i, p in enumerate(rest) if p.startswith("_")), len(rest))
    repository, tail = "/".join(rest[:cut]), rest[cut:]
    try:
        return _parse_repository_tail(repository, tail)
    except InvalidDigest as exc:  # pragma: no cover - digests are checked above
        raise InvalidPath(str(exc)) from exc


def _parse_repository_tail(repo: str, tail: list[str]) -> PathSpec:
    _check_repository(repo)
    n = len(tail)
    if n == 0:
        return Repository(repo)
    if n == 1 and tail[0] in REPOSITORY_PARTS:
        return RepositoryPart(repo, tail[0])
    if tail[0] == "_layers" and n == 2:
        return LayersAlgorithm(repo, tail[1])
    if tail[0] == "_layers" and n == 4 and tail[3] == "link":
        return LayerLink(repo, _digest_from(tail[1], tail[2]))
    if tail[0] == "_uploads" and n == 2:
        return UploadDir(repo, tail[1])
    if tail[0] == "_uploads" and n == 3 and tail[2] == "data":
        return UploadData(repo, tail[1])
    if tail[0] == "_uploads" and n == 3 and tail[2] == "startedat":
        return UploadStartedAt(repo, tail[1])
    if tail[0] == "_manifests" and n >= 3:
        if tail[1] == "revisions" and n == 5 and tail[4] == "link":
            return RevisionLink(repo, _digest_from(tail[2], tail[3]))
        if tail[1] == "tags":
            tag = tail[2]
            if n == 3:
                return TagDir(repo, tag)
            if n == 4 and tail[3] == "current":
                return TagCurrentDir(repo, tag)
            if n == 5 and tail[3:] == ["current", "link"]:
                return TagCurrentLink(repo, tag)
            if n == 7 and tail[3] == "index" and tail[6] == "link":
                return TagIndexLink(repo, tag, _digest_from(tail[4], tail[5]))
    raise InvalidPath(f"{'/'.join(['repositories', repo, *tail])!r} is not a defined path")

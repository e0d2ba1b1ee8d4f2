"""Read and delete a registry's keys in a bucket (S3, Google Cloud Storage, Azure Blob Storage): sharded concurrent
listings, GETs, multipart uploads; what differs between the services is a `Provider`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from storage_audit.core import clock
from storage_audit.core.errors import StorageError, UsageError

if TYPE_CHECKING:
    from obstore.store import ObjectStore, S3Credential

V2 = "docker/registry/v2"
"""Where the registry keeps its tree under `rootdirectory`, in the filesystem and the s3 driver alike."""

DELETE_BATCH = 1000
"""S3's limit of keys per DeleteObjects request."""

DEFAULT_CONCURRENCY = 32
DEFAULT_REGION = "us-east-1"
LIST_CHUNK = 1000
"""Keys a flat listing yields at a time. obstore pages internally and shows no page, so the counters count
these chunks as LIST requests: exact where pages hold 1,000 keys (S3's maximum, AWS's default)."""

# A hung endpoint must fail in about a minute, with obstore and botocore alike: a request that gets no byte for
# READ_TIMEOUT seconds fails, and is tried again while the time since its first attempt is under RETRY_WINDOW
# (obstore: 15 s, 30 s, then 45 s: it stops), or up to ATTEMPTS times in all (botocore: 45 s and its backoff).
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15
RETRY_WINDOW = 40
ATTEMPTS = 3
REQUEST_TIMEOUT = 3600
"""Seconds for the whole of one obstore request, body included: a blob streamed for its digest may take long while
bytes keep coming (a hung request fails by READ_TIMEOUT)."""

LIST_ATTEMPTS = 4
"""Times a listing is sent when its response body is cut short each time."""

ShardPlan = Callable[[str], int]
"""How deep to split a top-level directory of `v2/` (by name) with delimiter listings before listing flat."""


def shard_plan(top: str) -> int:
    """The shard plan: blobs/ -> blobs/<alg>/ -> the 256 `blobs/<alg>/<xx>/`; repositories/ -> each top-level name.

    Every other top-level directory (none, in a registry's own tree) is listed flat.
    """
    return {"blobs": 2, "repositories": 1}.get(top, 0)


T = TypeVar("T")


class S3Error(StorageError):
    """The bucket could not be reached or read (exit 2: nothing about the registry can be said)."""


class S3AccessDenied(S3Error):
    """The credentials were refused, or do not allow the request."""


class S3NotFound(S3Error):
    """The bucket, or an object that must exist, is not there."""


# --------------------------------------------------------------------------
# Where the registry lives


SCHEMES = {"s3": "s3", "gs": "gcs", "az": "azure"}
"""URL scheme -> provider: `s3://BUCKET`, `gs://BUCKET`, `az://CONTAINER`."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket (an Azure container) and the registry's `rootdirectory` in it (no leading or trailing `/`; empty for
    the bucket's top); `scheme` names the service: `s3`, `gs` or `az`."""

    bucket: str
    rootdirectory: str = ""
    scheme: str = "s3"

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise UsageError(f"invalid bucket name {self.bucket!r}")
        if self.rootdirectory != self.rootdirectory.strip("/") or "//" in self.rootdirectory:
            raise UsageError(f"invalid rootdirectory {self.rootdirectory!r}")

    @property
    def prefix(self) -> str:
        """The key prefix of the `v2` tree, ending in `/`."""
        return f"{self.rootdirectory}/{V2}/" if self.rootdirectory else f"{V2}/"

    def key(self, path: str) -> str:
        """The object key of `path` (relative to `v2`, `/`-separated, as storage_audit.core.paths builds it)."""
        parts = path.split("/")
        if not path or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{path!r} is not a relative path inside the storage tree")
        return self.prefix + path

    def relative(self, key: str) -> str:
        """The path relative to `v2` of a key under the prefix."""
        if not key.startswith(self.prefix):
            raise ValueError(f"key {key!r} is not under {self.prefix!r}")
        return key[len(self.prefix) :]

    @property
    def provider(self) -> str:
        """`s3`, `gcs` or `azure`."""
        return SCHEMES[self.scheme]

    def __str__(self) -> str:
        top = f"{self.scheme}://{self.bucket}"
        return f"{top}/{self.rootdirectory}" if self.rootdirectory else top


BucketLocation = S3Location
"""The same location, whatever the service."""


def is_s3_url(text: str) -> bool:
    return text.startswith("s3://")


def is_bucket_url(text: str) -> bool:
    """Whether `text` is an `s3://`, `gs://` or `az://` URL."""
    return text.partition("://")[0] in SCHEMES and "://" in text


def parse_s3_url(text: str) -> S3Location:
    """`s3://BUCKET[/ROOTDIRECTORY][/docker/registry/v2]` -> the location; UsageError for anything else."""
    if not is_s3_url(text):
        raise UsageError(f"{text!r} is not an s3://BUCKET[/ROOTDIRECTORY] URL")
    return parse_bucket_url(text)


def parse_bucket_url(text: str) -> S3Location:
    """`s3://BUCKET`, `gs://BUCKET` or `az://CONTAINER`, then `[/ROOTDIRECTORY][/docker/registry/v2]` -> the
    location; UsageError for anything else."""
    scheme = text.partition("://")[0]
    if not is_bucket_url(text):
        raise UsageError(f"{text!r} is not an s3://BUCKET, gs://BUCKET or az://CONTAINER URL")
    what = "CONTAINER" if scheme == "az" else "BUCKET"
    bucket, _, root = text.removeprefix(f"{scheme}://").partition("/")
    if not bucket:
        raise UsageError(f"{text!r} names no {what.lower()} (expected {scheme}://{what}[/ROOTDIRECTORY])")
    if "?" in text or "#" in text:
        raise UsageError(f"{text!r}: a {scheme}:// URL takes no query or fragment")
    parts = [p for p in root.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"{text!r}: `.` and `..` are not allowed in the rootdirectory")
    if parts[-3:] == V2.split("/"):
        parts = parts[:-3]
    return S3Location(bucket, "/".join(parts), scheme)


# --------------------------------------------------------------------------
# How to reach it


def redacted(endpoint: str) -> str:
    """`endpoint` without the user name and password a URL may carry: `http://user:secret@host` -> `http://host`.

    The form every endpoint is shown and stored in (messages, snapshots, plans).
    """
    url = urllib.parse.urlsplit(endpoint)
    if "@" not in url.netloc:
        return endpoint
    return urllib.parse.urlunsplit(url._replace(netloc=url.netloc.rpartition("@")[2]))


def endpoint_secrets(endpoint: str | None) -> list[str]:
    """What an endpoint URL carries before its host (`user:secret`, `secret`), to scrub from any message.

    Taken up to the last `@` of the whole URL, so that a password holding a
    raw `/` (which ends the URL's host part) is scrubbed whole all the same.
    """
    if endpoint is None or "@" not in endpoint:
        return []
    userinfo = endpoint.partition("://")[2].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    found = [userinfo, password, urllib.parse.unquote(userinfo), urllib.parse.unquote(password)]
    return [s for s in found if s]


@dataclass(frozen=True)
class S3Settings:
    """Endpoint, region and credentials; whatever is None comes from the standard AWS chain."""

    region: str | None = None
    endpoint: str | None = field(default=None, repr=False)  # it may carry a user and password
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    max_requests_per_second: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        if (self.access_key is None) != (self.secret_key is None):
            raise UsageError("an S3 access key needs its secret key, and a secret key its access key")
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise UsageError(f"S3 endpoint {redacted(self.endpoint)!r} must start with http:// or https://")
        if self.max_requests_per_second is not None and self.max_requests_per_second <= 0:
            raise UsageError("--max-requests-per-second must be positive")
        if self.concurrency < 1:
            raise UsageError("the number of S3 requests in flight must be at least 1")

    def secrets(self) -> list[str]:
        """Every secret these settings hold, to scrub from any message."""
        keys = [s for s in (self.secret_key, self.session_token, self.access_key) if s]
        return keys + endpoint_secrets(self.endpoint)

    def provider(self, env: Mapping[str, str]) -> Provider:
        return S3Provider(_resolve(self, env), self)


@dataclass(frozen=True)
class _Resolved:
    region: str
    endpoint: str | None
    provider: _CredentialProvider | None


class _CredentialProvider:
    """Credentials for obstore, from explicit keys or botocore's chain; refreshed when they expire."""

    def __init__(self, fixed: tuple[str, str, str | None] | None, chain: Any = None) -> None:
        self._fixed = fixed
        self._chain = chain

    def __repr__(self) -> str:
        return "<S3 credentials>"

    def frozen(self) -> tuple[str, str, str | None]:
        if self._fixed is not None:
            return self._fixed
        creds = self._chain.get_frozen_credentials()
        return creds.access_key, creds.secret_key, creds.token

    def expiry(self) -> datetime | None:
        # botocore refreshes a temporary credential some minutes before it expires; ask again well before.
        if self._chain is not None and getattr(self._chain, "refresh_needed", None) is not None:
            return clock.machine_now() + timedelta(minutes=5)
        return None

    def __call__(self) -> S3Credential:
        access_key, secret_key, token = self.frozen()
        return {
            "access_key_id": access_key,
            "secret_access_key": secret_key,
            "token": token,
            "expires_at": self.expiry(),
        }

    def secrets(self) -> list[str]:
        try:
            return [s for s in self.frozen() if s]
        except Exception:
            return []


def _resolve(settings: S3Settings, env: Mapping[str, str]) -> _Resolved:
    """Region, endpoint and credentials: the settings, else the environment, else the profile's shared files."""
    profile = settings.profile or env.get("AWS_PROFILE") or None
    session = None

    def botocore_session() -> Any:
        nonlocal session
        if session is None:
            import botocore.exceptions
            import botocore.session

            try:
                session = botocore.session.Session(profile=profile)
                session.get_scoped_config()
            except botocore.exceptions.ProfileNotFound as exc:
                raise UsageError(f"AWS profile {profile!r} is not in the shared config or credentials file") from exc
        return session

    region = settings.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region and profile:
        region = botocore_session().get_scoped_config().get("region")
    endpoint = settings.endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not endpoint and profile:
        endpoint = botocore_session().get_scoped_config().get("endpoint_url")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"S3 endpoint {redacted(endpoint)!r} must start with http:// or https://")

    provider: _CredentialProvider | None
    if settings.access_key is not None and settings.secret_key is not None:
        provider = _CredentialProvider((settings.access_key, settings.secret_key, settings.session_token))
    elif env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY") and not settings.profile:
        provider = _CredentialProvider(
            (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN") or None)
        )
    else:
        chain = botocore_session().get_credentials()
        if chain is None:
            raise UsageError(
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
                "or give the registry's configuration file"
            )
        provider = _CredentialProvider(None, chain)
    return _Resolved(region or DEFAULT_REGION, endpoint or None, provider)


# --------------------------------------------------------------------------
# What differs between the services


class Provider:
    """One service's part of a bucket: its obstore store, its credentials (to scrub), what its listing's ETag
    says, and where the tree is (`origin`). The bucket's listing, reads, retries, counters and limits are common.

    `s3_api` says whether the S3 API's own calls are there (botocore): multipart uploads, exact listings of keys
    obstore cannot name, folder markers, server-side copies into another bucket.
    """

    name = ""
    s3_api = False
    etag_is_md5 = False
    """Whether a listed ETag of 32 hex digits is the MD5 of the object's content (a link is then read by it)."""
    region: str | None = None
    raw_endpoint: str | None = None
    """The endpoint as given, credentials and all; None for the service's own."""

    @property
    def endpoint(self) -> str | None:
        """The endpoint, as shown and stored: without the user and password its URL may carry (see `redacted`)."""
        return None if self.raw_endpoint is None else redacted(self.raw_endpoint)

    def store(self, bucket: str, client_options: dict[str, Any], retry_config: dict[str, Any]) -> ObjectStore:
        raise NotImplementedError

    def secrets(self) -> list[str]:
        return endpoint_secrets(self.raw_endpoint)

    def etag(self, listed: str | None) -> str | None:
        """A listed ETag as kept and compared: without quotes, lowercase."""
        return clean_etag(listed)

    def origin(self, location: S3Location) -> dict[str, str]:
        """Where the tree is, for a snapshot's metadata and a plan: never a credential."""
        out = {"provider": self.name, "bucket": location.bucket, "prefix": location.prefix}
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint
        return out

    def delete_requests(self, keys: int) -> int:
        """Requests a delete of `keys` keys takes: one each, unless the service has a batch call."""
        return keys

    def delete_unchanged(self, keys: Sequence[tuple[str, str]]) -> list[str] | None:
        """Delete each key only if its ETag is still the one given, in as few requests as the service allows
        (blocking: run in a thread); returns the keys left because their ETag differs (a key already gone is
        deleted), or None where the service's conditional delete is not reached (then the caller deletes plainly).
        Raises for a request that failed."""
        return None

    delete_batch = 1
    """Keys one conditional delete request takes (`delete_unchanged`)."""

    def deletes_conditionally(self) -> bool:
        """Whether `delete_unchanged` reaches the service's conditional delete (else deletes are plain)."""
        return False

    def configure(self, bucket: str, concurrency: int) -> None:
        """The bucket this provider serves, and the requests in flight: for what it makes beyond obstore's store."""
        return None

    def pages(
        self, prefix: str, *, delimiter: bool, offset: str | None
    ) -> Iterator[tuple[list[tuple[str, ObjectInfo]], list[str]]] | None:
        """The service's own listing of `prefix`, page by page (keys after `offset`; with `delimiter`, the prefixes
        a level down too), where it gives more than obstore's; None to list with obstore. Blocking: run in a thread."""
        return None

    def content_md5(self, info: ObjectInfo) -> str | None:
        """The MD5 in hex that the listing proves of the object's content, or None."""
        if info.md5 is not None:
            return info.md5
        return info.etag if self.etag_is_md5 else None


class S3Provider(Provider):
    """S3 and S3-compatible servers: obstore's S3Store, botocore for the calls obstore lacks."""

    name = "s3"
    s3_api = True
    etag_is_md5 = True

    def __init__(self, resolved: _Resolved, settings: S3Settings) -> None:
        self.resolved = resolved
        self.settings = settings
        self.region = resolved.region
        self.raw_endpoint = resolved.endpoint

    def store(self, bucket: str, client_options: dict[str, Any], retry_config: dict[str, Any]) -> ObjectStore:
        from obstore.store import S3Store

        endpoint = self.raw_endpoint
        if endpoint is not None and endpoint.startswith("http://"):
            # The user named a plain-HTTP endpoint (an S3-compatible server); obstore refuses it otherwise.
            client_options["allow_http"] = True
        config: dict[str, Any] = {"region": self.resolved.region}
        if endpoint is not None:
            config["endpoint"] = endpoint
        return S3Store(
            bucket,
            config=config,  # type: ignore[arg-type]
            client_options=client_options,  # type: ignore[arg-type]
            retry_config=retry_config,  # type: ignore[arg-type]
            credential_provider=self.resolved.provider,
        )

    def secrets(self) -> list[str]:
        found = self.settings.secrets() + endpoint_secrets(self.raw_endpoint)
        if self.resolved.provider is not None:
            found += self.resolved.provider.secrets()
        return found

    def origin(self, location: S3Location) -> dict[str, str]:
        # S3 plans and snapshots name no provider: they were the only ones before the other services.
        out = {"bucket": location.bucket, "prefix": location.prefix, "region": self.resolved.region}
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint
        return out

    def delete_requests(self, keys: int) -> int:
        return -(-keys // DELETE_BATCH)


# --------------------------------------------------------------------------
# Counting and pacing requests


@dataclass
class RequestCounters:
    """Requests sent by kind, and bytes received in object bodies; safe to update from several threads."""

    requests: Counter[str] = field(default_factory=Counter)
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, count: int = 1, received: int = 0) -> None:
        with self._lock:
            self.requests[kind] += count
            self.bytes_received += received

    @property
    def total(self) -> int:
        return sum(self.requests.values())


class RateLimiter:
    """At most `rate` request starts per second, smoothly (no bursts); None means no limit."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next = 0.0
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        """Claim the next slot and return how long to wait for it."""
        if self.rate is None:
            return 0.0
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + 1.0 / self.rate
            return slot - now

    async def wait(self) -> None:
        delay = self._reserve()
        if delay > 0:
            await asyncio.sleep(delay)

    def wait_blocking(self) -> None:
        delay = self._reserve()
        if delay > 0:
            time.sleep(delay)


# --------------------------------------------------------------------------
# What a listing holds


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: size, last-modified time and ETag (without quotes), as the server lists them."""

    size: int
    last_modified: datetime
    etag: str | None
    md5: str | None = None
    """The content's MD5 in hex, where the listing gives it apart from the ETag (Azure's Content-MD5)."""


@dataclass
class Listing:
    """Every key under the `v2` prefix, keyed by its path relative to `v2`; a set, in no particular order."""

    objects: dict[str, ObjectInfo]
    shards: int
    """Listings the keys were gathered from (delimiter listings that planned the shards included)."""
    marker: bool = False
    """Whether the prefix itself is a key, `…/docker/registry/v2/`: a console's folder (left out of `objects`)."""


@dataclass(frozen=True, slots=True)
class MultipartUpload:
    """An incomplete multipart upload under the prefix: the s3 driver keeps an upload's data as one."""

    path: str
    """The key relative to `v2`: `repositories/<name>/_uploads/<id>/data` for the registry's uploads."""
    upload_id: str
    initiated: datetime | None
    parts: int
    bytes: int


def clean_etag(etag: str | None) -> str | None:
    """An ETag without its quotes and weak marker, lowercase: how it compares with an MD5 in hex."""
    if etag is None:
        return None
    return etag.removeprefix("W/").strip('"').lower() or None


def link_etag(digest: str) -> str:
    """The ETag of a link object holding exactly `digest`, as written by one PUT (the MD5 of its content)."""
    return hashlib.md5(digest.encode("ascii"), usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------
# The bucket


_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "AuthenticationFailed",  # Azure
        "AuthorizationFailure",
    }
)
_MISSING_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "NoSuchUpload", "ContainerNotFound", "BlobNotFound"})
_STATUS = re.compile(r"status code: (\d{3})")
_XML_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]{1,300})</Message>")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain_key(key: str) -> bool:
    """Whether obstore names `key` exactly: no empty, `.` or `..` segment (nor so a `/` at either end), no ASCII
    control character. S3 allows all of these; obstore's paths refuse them, or drop a `/` at either end."""
    return not _CONTROL.search(key) and all(part not in ("", ".", "..") for part in key.split("/"))


def _plain_prefix(prefix: str) -> bool:
    return prefix.endswith("/") and plain_key(prefix[:-1])


def _as_listed(key: str) -> str:
    """A key as obstore lists it: without a trailing `/` (a console's folder marker `name/` lists as `name`)."""
    return key[:-1] if key.endswith("/") else key


class _NotPlain(Exception):
    """obstore met a key it cannot name as it is, or lists it wrong: the listing is made again with botocore."""


def _unplain(exc: BaseException) -> bool:
    """Whether obstore's listing failed on the keys themselves: a key its paths refuse, or XML it cannot read."""
    from obstore.exceptions import InvalidPathError

    return isinstance(exc, InvalidPathError) or "invalid list response" in str(exc)


def _cut_short(exc: BaseException) -> bool:
    """Whether obstore's listing failed while reading a response's body: the request was answered, but not whole."""
    return "list response body" in str(exc)


def _describe(exc: BaseException) -> tuple[int | None, str | None, str]:
    """(HTTP status, S3 error code, a short explanation) of an obstore or botocore error."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return status, error.get("Code") or None, str(error.get("Message") or "")
    text = str(exc)
    status_match, code, message = _STATUS.search(text), _XML_CODE.search(text), _XML_MESSAGE.search(text)
    if message is not None:
        detail = message.group(1)
    else:
        # obstore's text continues with a multi-line debug dump; its first line says what happened.
        detail = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return (
        int(status_match.group(1)) if status_match else None,
        code.group(1) if code else None,
        detail,
    )


class S3Bucket:
    """The registry's keys in one bucket of any service: concurrent listings and GETs on obstore, counted and paced.

    `settings` says the service (`S3Settings`, `storage.clouds.GCSSettings`, `storage.clouds.AzureSettings`) and
    how to reach it; `provider` is what it resolved to, with the environment's credentials.
    """

    def __init__(self, location: S3Location, settings: Any = None, env: Mapping[str, str] | None = None):
        self.location = location
        self.settings = settings or S3Settings()
        self._env = dict(os.environ if env is None else env)
        self.provider: Provider = self.settings.provider(self._env)
        self.provider.configure(location.bucket, self.settings.concurrency)
        self.counters = RequestCounters()
        self.limiter = RateLimiter(self.settings.max_requests_per_second)
        self._store: ObjectStore | None = None
        self._uploads_client: Any = None

    def __repr__(self) -> str:
        return f"S3Bucket({str(self.location)!r}, endpoint={self.endpoint!r}, region={self.region!r})"

    @property
    def _resolved(self) -> _Resolved:
        assert isinstance(self.provider, S3Provider), "the S3 API's own calls are for S3"
        return self.provider.resolved

    @property
    def region(self) -> str | None:
        return self.provider.region

    @property
    def endpoint(self) -> str | None:
        """The endpoint, as shown and stored: without the user and password its URL may carry (see `redacted`)."""
        return self.provider.endpoint

    def origin(self) -> dict[str, str]:
        return self.provider.origin(self.location)

    # Errors

    def _scrub(self, text: str) -> str:
        endpoint = self.provider.raw_endpoint
        if endpoint is not None:
            text = text.replace(endpoint.rstrip("/"), redacted(endpoint).rstrip("/"))
        secrets = self.provider.secrets()
        for secret in sorted(set(secrets), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _error(self, what: str, exc: BaseException) -> S3Error:
        """One line, without secrets, typed by what went wrong."""
        from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

        status, code, detail = _describe(exc)
        reason = " ".join(str(x) for x in (f"HTTP {status}" if status else None, code) if x)
        message = self._scrub(f"{what} in {self.location}: {reason}{': ' if reason else ''}{detail}")[:400]
        denied = code in _DENIED_CODES or status in (401, 403)
        if denied or isinstance(exc, PermissionDeniedError | UnauthenticatedError | PermissionError):
            return S3AccessDenied(message)
        if code in _MISSING_CODES or isinstance(exc, NotFoundError | FileNotFoundError):
            return S3NotFound(message)
        return S3Error(message)

    # The obstore store

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            client_options: dict[str, Any] = {
                "connect_timeout": f"{CONNECT_TIMEOUT}s",
                "read_timeout": f"{READ_TIMEOUT}s",
                "timeout": f"{REQUEST_TIMEOUT}s",
            }
            retry_config = {"max_retries": 8, "retry_timeout": timedelta(seconds=RETRY_WINDOW)}
            self._store = self.provider.store(self.location.bucket, client_options, retry_config)
        return self._store

    # Running coroutines from plain code

    @staticmethod
    def run(coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` to completion on a fresh event loop (the library's callers are synchronous)."""
        return asyncio.run(coro)

    async def gather_limited(self, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
        semaphore = asyncio.Semaphore(self.settings.concurrency)

        async def one(job: Callable[[], Awaitable[T]]) -> T:
            async with semaphore:
                return await job()

        return list(await asyncio.gather(*(one(job) for job in jobs)))

    # Listing

    async def _listed_again(self, prefix: str, listing: Callable[[], Awaitable[T]]) -> T:
        """`listing()`, sent again when its response body was cut short, up to LIST_ATTEMPTS times in all.

        obstore retries a request that fails, but not the reading of a listing's
        body once the response has begun: a connection lost then would fail the
        whole run. Keys a page gave before the cut are given again; a listing is a set.
        Raises _NotPlain where obstore cannot list the keys as they are.
        """
        attempt = 1
        while True:
            try:
                return await listing()
            except _NotPlain:
                raise
            except Exception as exc:
                if _unplain(exc):
                    raise _NotPlain(prefix) from exc
                if not _cut_short(exc) or attempt == LIST_ATTEMPTS:
                    raise self._error(f"listing {prefix!r} failed", exc) from exc
            # Full jitter, as for deletes: many shards cut at once must not come back at once.
            await asyncio.sleep(random.uniform(0, 0.25 * 2**attempt))
            attempt += 1

    async def _list_flat(
        self,
        prefix: str,
        on_page: Callable[[list[tuple[str, ObjectInfo]]], bool | None] | None = None,
        offset: str | None = None,
    ) -> list[tuple[str, ObjectInfo]]:
        """Every key under `prefix` (after the key `offset`), page after page; `on_page` takes each page's keys as it
        arrives, and ends the listing by returning True.

        obstore lists it, unless the prefix or a key under it is one obstore
        cannot name (see `plain_key`): one such key would fail every listing
        of the bucket. botocore then lists that prefix again, each key exact.
        """
        if _plain_prefix(prefix):
            try:
                return await self._listed_again(prefix, partial(self._list_pages, prefix, on_page, offset))
            except _NotPlain:
                pass
        objects, _ = await self._list_exact(prefix, on_page, offset=offset)
        return objects

    async def _list_pages(
        self,
        prefix: str,
        on_page: Callable[[list[tuple[str, ObjectInfo]]], bool | None] | None,
        offset: str | None = None,
    ) -> list[tuple[str, ObjectInfo]]:
        import obstore

        native = self.provider.pages(prefix, delimiter=False, offset=offset)
        if native is not None:
            return (await self._list_native(prefix, native, on_page))[0]
        out: list[tuple[str, ObjectInfo]] = []
        stream = obstore.list(self.store, prefix.rstrip("/") or None, offset=offset, chunk_size=LIST_CHUNK)
        while True:
            await self.limiter.wait()
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                break
            self.counters.add("list")
            page = [
                (m["path"], ObjectInfo(m["size"], m["last_modified"], self.provider.etag(m["e_tag"]))) for m in chunk
            ]
            if any("\ufffd" in key for key, _ in page):
                # A character XML 1.0 cannot carry (most control characters) comes as U+FFFD from servers that
                # do not escape it (Go's XML encoder, SeaweedFS's, MinIO's): the key would be another's.
                raise _NotPlain(prefix)
            out += page
            if on_page is not None and on_page(page):
                break
        if not out:
            self.counters.add("list")  # an empty listing is still one request
        return out

    async def _list_delimited(self, prefix: str) -> tuple[list[tuple[str, ObjectInfo]], list[str]]:
        """The keys right under `prefix`, and the prefixes one level down (each ending in `/`)."""
        if _plain_prefix(prefix):
            try:
                return await self._listed_again(prefix, partial(self._list_level, prefix))
            except _NotPlain:
                pass
        return await self._list_exact(prefix, delimiter=True)

    async def _list_native(
        self,
        prefix: str,
        pages: Iterator[tuple[list[tuple[str, ObjectInfo]], list[str]]],
        on_page: Callable[[list[tuple[str, ObjectInfo]]], bool | None] | None = None,
    ) -> tuple[list[tuple[str, ObjectInfo]], list[str]]:
        """A provider's own listing (`Provider.pages`), its pages fetched in a thread, counted and paced."""
        out: list[tuple[str, ObjectInfo]] = []
        prefixes: list[str] = []
        while True:
            await self.limiter.wait()
            try:
                page = await asyncio.to_thread(next, pages, None)
            except Exception as exc:
                raise self._error(f"listing {prefix!r} failed", exc) from exc
            if page is None:
                return out, prefixes
            self.counters.add("list")
            found, below = page
            out += found
            prefixes += below
            if on_page is not None and found and on_page(found):
                return out, prefixes

    async def _list_level(self, prefix: str) -> tuple[list[tuple[str, ObjectInfo]], list[str]]:
        import obstore

        native = self.provider.pages(prefix, delimiter=True, offset=None)
        if native is not None:
            return await self._list_native(prefix, native)

        await self.limiter.wait()
        self.counters.add("list")
        result = await obstore.list_with_delimiter_async(self.store, prefix.rstrip("/") or None)
        objects = [
            (m["path"], ObjectInfo(m["size"], m["last_modified"], self.provider.etag(m["e_tag"])))
            for m in result["objects"]
        ]
        if any("\ufffd" in key for key, _ in objects) or any("\ufffd" in p for p in result["common_prefixes"]):
            raise _NotPlain(prefix)
        prefixes = [p.rstrip("/") + "/" for p in result["common_prefixes"]]
        return objects, prefixes

    async def _list_exact(
        self,
        prefix: str,
        on_page: Callable[[list[tuple[str, ObjectInfo]]], bool | None] | None = None,
        *,
        delimiter: bool = False,
        offset: str | None = None,
    ) -> tuple[list[tuple[str, ObjectInfo]], list[str]]:
        """The keys under `prefix` as botocore's ListObjectsV2 gives them, exact, and the prefixes a level down.

        botocore asks for URL-encoded keys and decodes them, so that no
        character is lost to XML; a key's trailing `/` is dropped, as obstore
        drops it, so that both listings name a key alike.
        """
        if not self.provider.s3_api:
            raise S3Error(
                f"listing {prefix!r} in {self.location}: a key under it has a name obstore cannot read "
                "(an empty, `.` or `..` segment, or a control character)"
            )
        out: list[tuple[str, ObjectInfo]] = []
        prefixes: list[str] = []
        params: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix}
        if delimiter:
            params["Delimiter"] = "/"
        if offset is not None:
            params["StartAfter"] = offset
        while True:
            page = await asyncio.to_thread(self._call, "list", "list_objects_v2", **params)
            found = [
                (
                    _as_listed(entry["Key"]),
                    ObjectInfo(int(entry["Size"]), entry["LastModified"], clean_etag(entry.get("ETag"))),
                )
                for entry in page.get("Contents", [])
            ]
            prefixes += [entry["Prefix"] for entry in page.get("CommonPrefixes", [])]
            out += found
            if on_page is not None and found and on_page(found):
                return out, prefixes
            if not page.get("IsTruncated"):
                return out, prefixes
            if not page.get("NextContinuationToken"):
                raise S3Error(f"listing {prefix!r} in {self.location}: a page said more follow, but not where")
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def list_all_async(
        self,
        plan: ShardPlan = shard_plan,
        on_keys: Callable[[dict[str, ObjectInfo]], None] | None = None,
        keep: Callable[[str], bool] | None = None,
    ) -> Listing:
        """Every key under the `v2` prefix, from sharded flat listings run concurrently.

        The shards are found with delimiter listings (`v2/`, `blobs/`,
        `blobs/<alg>/`, `repositories/`), so a key anywhere under the prefix,
        even one the layout does not define, lands in exactly one shard.
        `on_keys(objects)` takes every key, keyed by its path relative to
        `v2`, a page at a time as the pages arrive, so that work on them can
        start while the rest is still listed (a shard listed again after a
        cut gives its keys again). `keep(path)` says whether to list each
        directory the delimiter listings find (its path relative to `v2`, no
        trailing `/`): the keys below one it refuses are left out.
        """
        objects: dict[str, ObjectInfo] = {}
        shards = 0
        marker = False
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        relative = self.location.relative
        top = self.location.prefix.removesuffix("/")

        def take(found: list[tuple[str, ObjectInfo]]) -> None:
            batch = {relative(key): info for key, info in found}
            objects.update(batch)
            if on_keys is not None:
                on_keys(batch)

        async def expand(prefix: str, depth: int) -> None:
            """List `prefix` flat, or split it `depth` more delimiter levels into concurrent listings."""
            nonlocal shards, marker
            async with semaphore:
                shards += 1
                if depth == 0:
                    await self._list_flat(prefix, take)
                    return
                found, prefixes = await self._list_delimited(prefix)
            if prefix == self.location.prefix:
                # A console's folder `v2/` lists as the prefix itself, which holds no tree of its own.
                marker = any(key == top for key, _ in found)
                found = [(key, info) for key, info in found if key != top]
            take(found)
            if keep is not None:
                prefixes = [p for p in prefixes if keep(relative(p).strip("/"))]
            if prefix == self.location.prefix:
                depths = [plan(relative(p).strip("/")) for p in prefixes]
            else:
                depths = [depth - 1] * len(prefixes)
            await asyncio.gather(*(expand(p, d) for p, d in zip(prefixes, depths, strict=True)))

        await expand(self.location.prefix, 1)
        return Listing(objects, shards, marker)

    async def list_range_async(
        self, container: str, first: str, last: str, *, uniform: bool = False
    ) -> dict[str, ObjectInfo]:
        """Every key from `first` to `last` (paths relative to `v2`) below the directory `container`, listed now.

        Servers do not agree on the order of a flat listing (SeaweedFS lists
        `x/a/b` before `x/a-b`), so the whole container is listed, unless it
        is `uniform`: every name below it has the same length and alphabet
        (digests), whatever sorts them orders them alike, and the listing
        starts just before `first` and stops after `last`.
        """
        relative = self.location.relative
        found: dict[str, ObjectInfo] = {}

        def keep(page: list[tuple[str, ObjectInfo]]) -> bool:
            for key, info in page:
                rel = relative(key)
                if rel > last and uniform:
                    return True
                if first <= rel <= last:
                    found[rel] = info
            return False

        # After `first` less its last character: a server may skip a whole "directory" named by the offset.
        start = first.rstrip("/")[:-1]
        offset = self.location.prefix + start if uniform and start.startswith(container + "/") else None
        # obstore lists a prefix as a directory, `container/`; S3's own listing takes it as it is.
        below = self.location.prefix + container + ("" if self.provider.s3_api or not container else "/")
        await self._list_flat(below, keep, offset)
        return found

    # Reading

    async def get_async(self, path: str, length: int | None = None) -> bytes | None:
        """The content of `path` (relative to `v2`), or its first `length` bytes; None when there is no such key.

        With `length`, one ranged GET: however big the object, no more than
        `length` bytes are read (an empty object, which no range fits, reads as b"").
        """
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            key = self.location.key(path)
        except ValueError as exc:
            raise self._error(f"reading {path!r} failed", exc) from exc
        if not plain_key(key):
            if not self.provider.s3_api:
                raise S3Error(f"reading {path!r} in {self.location}: obstore cannot name its key")
            return await asyncio.to_thread(self._get_exact, path, key, length)
        await self.limiter.wait()
        try:
            if length is None:
                result = await obstore.get_async(self.store, key)
                data = bytes(await result.bytes_async())
            else:
                # One call, where a whole GET takes two (the response, then its body): far less work per request.
                data = bytes(await obstore.get_range_async(self.store, key, start=0, end=length))
        except (NotFoundError, FileNotFoundError):
            # obstore raises Python's FileNotFoundError for a missing key.
            self.counters.add("get")
            return None
        except Exception as exc:
            if length is not None and _describe(exc)[0] == 416:
                self.counters.add("get")
                return b""
            raise self._error(f"reading {path!r} failed", exc) from exc
        self.counters.add("get", received=len(data))
        return data

    def _get_exact(self, path: str, key: str, length: int | None) -> bytes | None:
        """`get_async` with botocore, for a key obstore cannot name (see `plain_key`)."""
        params: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key}
        if length is not None:
            params["Range"] = f"bytes=0-{length - 1}"
        self.limiter.wait_blocking()
        self.counters.add("get")
        try:
            data = bytes(self._uploads().get_object(**params)["Body"].read())
        except Exception as exc:
            status, code, _ = _describe(exc)
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return None
            if length is not None and (status == 416 or code == "InvalidRange"):
                return b""
            raise self._error(f"reading {path!r} failed", exc) from exc
        self.counters.add("get", 0, received=len(data))
        return data

    async def get_many_async(self, paths: Sequence[str]) -> dict[str, bytes]:
        """The contents of `paths`, fetched concurrently; a path with no key is left out."""
        bodies = await self.gather_limited([partial(self.get_async, p) for p in paths])
        return {p: b for p, b in zip(paths, bodies, strict=True) if b is not None}

    def iter_object(self, path: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        """Stream the content of `path` in chunks of about `chunk_size` bytes (for digest checks)."""
        import obstore

        self.limiter.wait_blocking()
        try:
            result = obstore.get(self.store, self.location.key(path))
            self.counters.add("get")
            for chunk in result.stream(min_chunk_size=chunk_size):
                data = bytes(chunk)
                self.counters.add("get", 0, received=len(data))
                yield data
        except Exception as exc:
            raise self._error(f"reading {path!r} failed", exc) from exc

    # Deleting

    async def delete_async(self, paths: Sequence[str], *, attempts: int = 5, backoff: float = 0.5) -> int:
        """Delete the keys of `paths`, retrying a failed request; returns how many keys were asked to go.

        On S3, in DeleteObjects batches of at most 1,000: deleting a key that
        is already gone succeeds there, so a batch can be sent again whole.
        Elsewhere one DELETE per key, run concurrently: a key already gone
        (404) is deleted, as a key a previous attempt or run removed is.
        """
        import obstore
        from obstore.exceptions import NotFoundError

        keys = [self.location.key(p) for p in paths]
        per = DELETE_BATCH if self.provider.s3_api else 1
        batches = [keys[i : i + per] for i in range(0, len(keys), per)]

        async def one(batch: list[str]) -> None:
            for attempt in range(attempts):
                await self.limiter.wait()
                self.counters.add("delete", self.provider.delete_requests(len(batch)))
                try:
                    await obstore.delete_async(self.store, batch if per > 1 else batch[0])
                    return
                except Exception as exc:
                    if per == 1 and isinstance(exc, FileNotFoundError | NotFoundError):
                        return
                    if attempt + 1 == attempts:
                        raise self._error(f"deleting {len(batch)} keys failed after {attempts} attempts", exc) from exc
                # Full jitter: many failed batches must not come back all at once (503 SlowDown).
                await asyncio.sleep(random.uniform(0, backoff * 2**attempt))

        await self.gather_limited([partial(one, b) for b in batches])
        return len(keys)

    def delete(self, paths: Sequence[str]) -> int:
        return self.run(self.delete_async(paths))

    async def delete_unchanged_async(
        self, etags: Mapping[str, str | None], *, attempts: int = 5, backoff: float = 0.5
    ) -> set[str]:
        """Delete each of the paths `etags` names only while its ETag is the one given (a path without one is
        deleted plainly); returns the paths left in place because their object changed meanwhile.

        Where the service has a conditional delete (Azure's `If-Match`, in
        blob batches), each key goes only if unchanged, in batches of
        `Provider.delete_batch`; elsewhere the deletes are plain (`delete_async`),
        and the fresh listing right before is the only check.
        """
        if not self.provider.deletes_conditionally():
            await self.delete_async(list(etags), attempts=attempts, backoff=backoff)
            return set()
        conditional = sorted((p, e) for p, e in etags.items() if e)
        plain = [p for p, e in etags.items() if not e]
        size = self.provider.delete_batch
        batches = [conditional[i : i + size] for i in range(0, len(conditional), size)]
        left: set[str] = set()

        async def one(batch: list[tuple[str, str]]) -> bool:
            keys = [(self.location.key(p), e) for p, e in batch]
            for attempt in range(attempts):
                await self.limiter.wait()
                try:
                    changed = await asyncio.to_thread(self.provider.delete_unchanged, keys)
                except Exception as exc:
                    self.counters.add("delete")
                    if attempt + 1 == attempts:
                        raise self._error(f"deleting {len(batch)} keys failed after {attempts} attempts", exc) from exc
                    await asyncio.sleep(random.uniform(0, backoff * 2**attempt))
                    continue
                if changed is None:
                    return False
                self.counters.add("delete")
                left.update(self.location.relative(k) for k in changed)
                return True
            return True  # not reached

        done = await self.gather_limited([partial(one, b) for b in batches]) if batches else []
        if not all(done):
            plain += [p for p, _ in conditional]  # the service's conditional delete is not reached: plain deletes
        if plain:
            await self.delete_async(plain, attempts=attempts, backoff=backoff)
        return left

    def delete_unchanged(self, etags: Mapping[str, str | None]) -> set[str]:
        return self.run(self.delete_unchanged_async(etags))

    # Folder markers (obstore drops a key's trailing `/`; see `_uploads`)

    def _exists(self, key: str) -> bool | None:
        """Whether the exact key `key` is an object (HEAD), trailing `/` and all; None when the bucket will not say."""
        self.limiter.wait_blocking()
        self.counters.add("head")
        try:
            self._uploads().head_object(Bucket=self.location.bucket, Key=key)
        except Exception as exc:
            status, code, _ = _describe(exc)
            return False if status == 404 or code in ("404", "NoSuchKey", "NotFound") else None
        return True

    async def folder_markers_async(self, paths: Sequence[str]) -> list[str]:
        """Those of `paths`, listed as empty objects, that are only a folder marker `path/` (as consoles write).

        A listing shows the marker `path/` as `path`; an empty object named
        exactly `path` beside it is a file all the same, so it is no marker.
        Where the bucket does not answer (HEAD denied), `path` stays an object.
        """

        if not self.provider.s3_api:
            return []  # an empty object stays one: obstore cannot name a key ending in `/` to ask

        def marker(path: str) -> bool:
            key = self.location.key(path)
            return self._exists(key + "/") is True and self._exists(key) is False

        found = await self.gather_limited([partial(asyncio.to_thread, marker, p) for p in paths])
        return [p for p, is_marker in zip(paths, found, strict=True) if is_marker]

    # Multipart uploads (obstore has no call for them; see `_uploads`)

    def _uploads(self) -> Any:
        """A botocore S3 client for ListMultipartUploads and ListParts, which obstore does not offer, and for the
        keys obstore cannot name (see `plain_key`).

        botocore is the AWS SDK's own request layer: it signs these calls,
        parses their XML and pages them, with the same endpoint, region and
        credentials as the obstore store.
        """
        if self._uploads_client is None:
            import botocore.config
            import botocore.session

            access_key, secret_key, token = self._resolved.provider.frozen() if self._resolved.provider else (None,) * 3
            session = botocore.session.Session()
            self._uploads_client = session.create_client(
                "s3",
                region_name=self._resolved.region,
                endpoint_url=self._resolved.endpoint,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                aws_session_token=token,
                config=botocore.config.Config(
                    s3={"addressing_style": "path"} if self._resolved.endpoint else {},
                    retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                    max_pool_connections=self.settings.concurrency,
                ),
            )
        return self._uploads_client

    def _call(self, kind: str, operation: str, **params: Any) -> dict[str, Any]:
        self.limiter.wait_blocking()
        self.counters.add(kind)
        try:
            return dict(getattr(self._uploads(), operation)(**params))
        except Exception as exc:
            raise self._error(f"{operation} failed", exc) from exc

    def _upload_bytes(self, key: str, upload_id: str) -> tuple[int, int]:
        parts = total = 0
        marker: int | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key, "UploadId": upload_id}
            if marker is not None:
                params["PartNumberMarker"] = marker
            page = self._call("list_parts", "list_parts", **params)
            for part in page.get("Parts", []):
                parts += 1
                total += int(part.get("Size", 0))
            if not page.get("IsTruncated"):
                return parts, total
            marker = int(page["NextPartNumberMarker"])

    async def multipart_uploads_async(self) -> list[MultipartUpload]:
        """Every incomplete multipart upload under the prefix, with its parts counted and their bytes summed.

        S3 only: the gcs and azure drivers keep an upload's data as an object (a resumable upload's finished
        chunks, an append blob), which listings show.
        """
        if not self.provider.s3_api:
            return []
        found: list[tuple[str, str, datetime | None]] = []
        key_marker: str | None = None
        id_marker: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": self.location.prefix}
            if key_marker:
                params["KeyMarker"] = key_marker
            if id_marker:
                params["UploadIdMarker"] = id_marker
            page = await asyncio.to_thread(self._call, "list_uploads", "list_multipart_uploads", **params)
            for upload in page.get("Uploads", []):
                found.append((upload["Key"], upload["UploadId"], upload.get("Initiated")))
            if not page.get("IsTruncated"):
                break
            key_marker, id_marker = page.get("NextKeyMarker"), page.get("NextUploadIdMarker")
            if not key_marker and not id_marker:
                break
        # A server may list an upload twice across pages; the pair (key, id) names it.
        unique = list(dict.fromkeys((k, i) for k, i, _ in found))
        initiated = {(k, i): t for k, i, t in found}
        sizes = await self.gather_limited([partial(asyncio.to_thread, self._upload_bytes, k, i) for k, i in unique])
        return [
            MultipartUpload(self.location.relative(k), i, initiated[(k, i)], parts, size)
            for (k, i), (parts, size) in zip(unique, sizes, strict=True)
            if k.startswith(self.location.prefix)
        ]

    def multipart_uploads(self) -> list[MultipartUpload]:
        return self.run(self.multipart_uploads_async())

    def abort_upload(self, path: str, upload_id: str) -> None:
        """Abort the incomplete multipart upload `upload_id` to `path`; one aborted already is no error."""
        try:
            self._call(
                "abort_upload",
                "abort_multipart_upload",
                Bucket=self.location.bucket,
                Key=self.location.key(path),
                UploadId=upload_id,
            )
        except S3NotFound:
            return

    def copy_out(self, path: str, bucket: str, key: str) -> None:
        """Copy the object of `path` to `key` in `bucket`, server-side; a key gone meanwhile has nothing to copy."""
        try:
            source = {"Bucket": self.location.bucket, "Key": self.location.key(path)}
            self._call("copy", "copy_object", Bucket=bucket, Key=key, CopySource=source)
        except S3NotFound:
            return

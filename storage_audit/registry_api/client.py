"""A client of the registry's HTTP API (distribution's /v2/): basic and bearer-token authentication, TLS, retries with
backoff on 429 and 5xx, and a rate limit.

urllib3 carries the HTTP: its `Retry` gives backoff that honours Retry-After and retries only what is safe to send
again (GET, HEAD and DELETE, which the API defines as idempotent), its pools keep connections open, and it is
already installed with botocore; what it lacks is the registry's token flow, written here once.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import urllib3
from urllib3.util.retry import Retry

from storage_audit.core.errors import StorageError, UsageError
from storage_audit.registry_api.credentials import Credentials
from storage_audit.storage.bucket import RateLimiter

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
"""Every kind a manifest is stored as: asked for all at once, the registry serves the stored bytes, never a
conversion (2.8 turns a schema2 manifest into schema1, another digest, for a client that does not accept it)."""
RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})
TOKEN_LIFETIME = 60
"""Seconds a token lives when the endpoint does not say (the token specification's default)."""
TOKEN_MARGIN = 0.1
"""The share of a token's life before its end at which it is fetched again."""
DELETE_DISABLED = (
    "the registry refuses deletion (HTTP 405): set storage.delete.enabled to true in its configuration and "
    "restart it, or apply the plan on storage with the registry read-only"
)
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class RegistryAPIError(StorageError):
    """A request that failed after its retries (unreachable, a 5xx that lasted, an answer the API does not give)."""


class AuthenticationFailed(UsageError):
    """The registry or its token endpoint refused the credentials, or asked for credentials none were given for."""


class DeleteDisabled(UsageError):
    """The registry answers DELETE with 405: its storage.delete.enabled is off."""

    def __init__(self) -> None:
        super().__init__(DELETE_DISABLED)


@dataclass(frozen=True)
class ClientOptions:
    """TLS (a CA bundle; `insecure` skips verification, for a loopback address only), how often a failed request is
    tried again, a rate limit (requests per second, None: none) and the timeout of one request in seconds."""

    ca_file: Path | None = None
    insecure: bool = False
    retries: int = 5
    max_requests_per_second: float | None = None
    timeout: float = 30.0


@dataclass
class _Token:
    value: str
    renew_at: float


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def base_url(url: str) -> str:
    """The registry's URL without a trailing `/` (and without `/v2`); raises UsageError for one it must not use.

    A URL with a user name or password in it is refused: it would put a secret on the command line.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--registry-url {url!r}: expected http(s)://HOST[:PORT]")
    if parts.username is not None or parts.password is not None:
        raise UsageError("--registry-url must not hold credentials: use --username or Docker's config.json")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/').removesuffix('/v2')}"


class RegistryClient:
    """Requests to one registry, authenticated as it challenges: basic credentials, or a bearer token per
    repository scope (`repository:NAME:pull,delete`) fetched from the challenge's realm and fetched again when it
    expires or is refused. Secrets go into request headers only: no message, repr or exception holds one."""

    def __init__(self, url: str, credentials: Credentials | None, options: ClientOptions | None = None) -> None:
        """Raises UsageError for a URL it must not use, --insecure off loopback, or credentials over plain http."""
        options = options or ClientOptions()
        self.url = base_url(url)
        host = urlsplit(self.url).hostname or ""
        self._credentials = credentials
        self._check_transport(self.url, options)
        retry = Retry(
            total=options.retries,
            backoff_factor=0.5,
            backoff_max=30,
            status_forcelist=RETRIED_STATUS,
            allowed_methods=frozenset({"GET", "HEAD", "DELETE"}),
            respect_retry_after_header=True,
            raise_on_status=False,
            redirect=3,
        )
        if options.insecure and not is_loopback(host):
            raise UsageError(f"--insecure is for a registry on this machine (loopback) only, not {host}")
        self._options = options
        self._pool = urllib3.PoolManager(
            retries=retry,
            timeout=urllib3.Timeout(total=options.timeout),
            cert_reqs="CERT_NONE" if options.insecure else "CERT_REQUIRED",
            ca_certs=None if options.ca_file is None else str(options.ca_file),
            assert_hostname=False if options.insecure else None,
        )
        self._limiter = RateLimiter(options.max_requests_per_second)
        self._scheme: str | None = None  # "basic" or "bearer", as the registry challenged
        self._realm: str | None = None
        self._service: str | None = None
        self._tokens: dict[str, _Token] = {}

    def _check_transport(self, url: str, options: ClientOptions) -> None:
        parts = urlsplit(url)
        if options.ca_file is not None and not options.ca_file.is_file():
            raise UsageError(f"--ca-file {options.ca_file}: not a file")
        if self._credentials is not None and parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            raise UsageError(f"refusing to send credentials over plain http to {parts.hostname}: use https")

    # -- requests --------------------------------------------------------------------------

    def _send(self, method: str, url: str, headers: Mapping[str, str]) -> urllib3.BaseHTTPResponse:
        self._limiter.wait_blocking()
        try:
            with warnings.catch_warnings():
                # --insecure was asked for, on loopback only: urllib3's warning on each request says nothing new.
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                return self._pool.request(method, url, headers=dict(headers), preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            hint = (
                " (give the CA that signed its certificate with --ca-file)"
                if "CERTIFICATE_VERIFY" in str(reason)
                else ""
            )
            raise RegistryAPIError(f"{method} {url}: {reason.__class__.__name__}: {reason}{hint}") from exc

    def request(
        self, method: str, path: str, repository: str | None = None, headers: Mapping[str, str] | None = None
    ) -> urllib3.BaseHTTPResponse:
        """`method` on `path` (below the registry's URL), authenticated for `repository`; a 401 is answered once
        with fresh credentials. Raises AuthenticationFailed, RegistryAPIError."""
        url = self.url + path
        sent = dict(headers or {})
        authorization = self._authorization(repository, renew=False)
        if authorization is not None:
            sent["Authorization"] = authorization
        resp = self._send(method, url, sent)
        if resp.status != 401:
            return self._refused(resp, method, path)
        self._learn(resp.headers.get("WWW-Authenticate", ""))
        authorization = self._authorization(repository, renew=True)
        if authorization is None:
            raise AuthenticationFailed(f"{self.url} asks for credentials: give --username, or `docker login` to it")
        sent["Authorization"] = authorization
        resp = self._send(method, url, sent)
        if resp.status == 401:
            raise AuthenticationFailed(f"{self.url} refused the credentials (HTTP 401 on {method} {path})")
        return self._refused(resp, method, path)

    def _refused(self, resp: urllib3.BaseHTTPResponse, method: str, path: str) -> urllib3.BaseHTTPResponse:
        if resp.status == 403:
            raise AuthenticationFailed(f"{self.url}: {method} {path} is not allowed for these credentials (HTTP 403)")
        return resp

    # -- authentication --------------------------------------------------------------------

    def _learn(self, challenge: str) -> None:
        """Note the scheme the registry asks for: `Basic realm=...` or `Bearer realm=...,service=...,scope=...`."""
        scheme, _, params = challenge.strip().partition(" ")
        fields = dict(_CHALLENGE.findall(params))
        if scheme.lower() == "bearer" and fields.get("realm"):
            self._scheme, self._realm, self._service = "bearer", fields["realm"], fields.get("service")
        elif scheme.lower() == "basic":
            self._scheme = "basic"
        else:
            raise RegistryAPIError(f"{self.url}: an authentication challenge this client does not know: {scheme!r}")

    def _authorization(self, repository: str | None, renew: bool) -> str | None:
        if self._scheme is None or (self._scheme == "basic" and self._credentials is None):
            return None
        if self._scheme == "basic":
            assert self._credentials is not None
            return urllib3.make_headers(basic_auth=f"{self._credentials.username}:{self._credentials.password}")[
                "authorization"
            ]
        scope = "" if repository is None else f"repository:{repository}:pull,delete"
        token = self._tokens.get(scope)
        if renew or token is None or time.monotonic() >= token.renew_at:
            token = self._fetch_token(scope)
            self._tokens[scope] = token
        return f"Bearer {token.value}"

    def _fetch_token(self, scope: str) -> _Token:
        """A token for `scope` from the realm, asked with the basic credentials (anonymously without any)."""
        assert self._realm is not None
        query = {"service": self._service or ""} if self._service else {}
        if scope:
            query["scope"] = scope
        url = self._realm + ("&" if "?" in self._realm else "?") + urlencode(query) if query else self._realm
        self._check_transport(url, self._options)
        headers: dict[str, str] = {}
        if self._credentials is not None:
            headers = urllib3.make_headers(basic_auth=f"{self._credentials.username}:{self._credentials.password}")
        resp = self._send("GET", url, headers)
        if resp.status in (401, 403):
            raise AuthenticationFailed(f"the token endpoint {urlsplit(url).netloc} refused the credentials")
        if resp.status != 200:
            raise RegistryAPIError(f"the token endpoint {urlsplit(url).netloc} answered HTTP {resp.status}")
        try:
            doc = json.loads(resp.data)
            value = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError) as exc:
            raise RegistryAPIError(f"the token endpoint {urlsplit(url).netloc} answered no token") from exc
        if not isinstance(value, str) or not value:
            raise RegistryAPIError(f"the token endpoint {urlsplit(url).netloc} answered no token")
        return _Token(value, time.monotonic() + lifetime * (1 - TOKEN_MARGIN))

    # -- the calls -------------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/, authenticated: raises when the registry cannot be reached or refuses the credentials."""
        resp = self.request("GET", "/v2/")
        if resp.status != 200:
            raise RegistryAPIError(f"{self.url}/v2/ answered HTTP {resp.status}: is this a registry?")

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest `reference` (a tag or a digest) names in `repository` now; None when it names nothing."""
        path = f"/v2/{repository}/manifests/{quote(reference, safe=':')}"
        resp = self.request("HEAD", path, repository, {"Accept": ", ".join(MANIFEST_TYPES)})
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RegistryAPIError(f"HEAD {path}: HTTP {resp.status}")
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryAPIError(f"HEAD {path}: the registry named no Docker-Content-Digest")
        return digest

    def delete_manifest(self, repository: str, reference: str) -> bool:
        """DELETE a manifest by digest (or a tag, where the registry supports it); False when it was gone already.
        Raises DeleteDisabled on 405."""
        path = f"/v2/{repository}/manifests/{quote(reference, safe=':')}"
        resp = self.request("DELETE", path, repository)
        if resp.status in (200, 202):
            return True
        if resp.status == 404:
            return False
        if resp.status == 405:
            raise DeleteDisabled()
        raise RegistryAPIError(f"DELETE {path}: HTTP {resp.status}: {resp.data[:200]!r}")

    def tags(self, repository: str) -> list[str]:
        """Every tag of `repository` now, following the pagination; [] for a repository with none."""
        names: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list?n=1000"
        while path is not None:
            resp = self.request("GET", path, repository)
            if resp.status == 404 and not names:
                return names  # no such repository (a 404 after a first page is an error: the list would be cut)
            if resp.status != 200:
                raise RegistryAPIError(f"GET {path}: HTTP {resp.status}")
            names += json.loads(resp.data).get("tags") or []
            link = re.match(r"<([^>]+)>", resp.headers.get("Link", ""))
            path = link.group(1) if link else None
        return names

    def close(self) -> None:
        self._pool.clear()


__all__ = [
    "DELETE_DISABLED",
    "MANIFEST_TYPES",
    "AuthenticationFailed",
    "ClientOptions",
    "DeleteDisabled",
    "RegistryAPIError",
    "RegistryClient",
    "base_url",
    "is_loopback",
]

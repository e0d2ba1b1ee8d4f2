"""Google Cloud Storage and Azure Blob Storage: how to reach each (endpoint, credentials from the service's own
chain), as a `Provider` of the one bucket in `storage/bucket.py`."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage_audit.core.errors import StorageError, UsageError
from storage_audit.storage.bucket import (
    DEFAULT_CONCURRENCY,
    ObjectInfo,
    Provider,
    S3Location,
    clean_etag,
    endpoint_secrets,
    redacted,
)

if TYPE_CHECKING:
    from obstore.store import ObjectStore

AZURITE_ACCOUNT = "devstoreaccount1"
"""Azurite's well-known development account."""
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Its key, published with Azurite and the Azure SDKs: no secret."""
AZURITE_URL = "http://127.0.0.1:10000"
AZURE_BATCH = 256
"""Sub-requests one Blob Batch request takes at most."""
DEFAULT_REALM = "core.windows.net"


def _check_common(settings: Any) -> None:
    if settings.max_requests_per_second is not None and settings.max_requests_per_second <= 0:
        raise UsageError("--max-requests-per-second must be positive")
    if settings.concurrency < 1:
        raise UsageError("the number of requests in flight must be at least 1")
    endpoint = settings.endpoint
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"endpoint {redacted(endpoint)!r} must start with http:// or https://")


def _client_options(options: dict[str, Any], endpoint: str | None) -> dict[str, Any]:
    if endpoint is not None and endpoint.startswith("http://"):
        options["allow_http"] = True  # an emulator, named by the user
    return options


# -- Google Cloud Storage ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GCSSettings:
    """Endpoint and credentials; whatever is None comes from Google's chain (`GOOGLE_APPLICATION_CREDENTIALS`, the
    application-default credentials, the metadata server) or `STORAGE_EMULATOR_HOST`."""

    endpoint: str | None = field(default=None, repr=False)
    keyfile: str | None = None
    """A service account's JSON key file (the gcs driver's `keyfile`)."""
    credentials: str | None = field(default=None, repr=False)
    """A service account's JSON key itself (the gcs driver's `credentials` mapping, as JSON)."""
    max_requests_per_second: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        _check_common(self)

    def provider(self, env: Mapping[str, str]) -> Provider:
        return GCSProvider(self, env)


def _emulator_url(host: str) -> str:
    """`STORAGE_EMULATOR_HOST` as the SDKs read it: `host:port` or a URL."""
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


class GCSProvider(Provider):
    """obstore's GCSStore (the XML API). The listing's ETag is the object's MD5 for objects written whole (not
    for composed ones): in hex from the service, in base64 from fake-gcs-server, kept as hex."""

    name = "gcs"
    etag_is_md5 = True

    def __init__(self, settings: GCSSettings, env: Mapping[str, str]) -> None:
        self.settings = settings
        emulator = env.get("STORAGE_EMULATOR_HOST")
        emulator_url = _emulator_url(emulator).rstrip("/") if emulator else None
        # The emulator's endpoint, from the variable or as a plan recorded it: no credentials to look for.
        self.emulated = emulator_url is not None and settings.endpoint in (None, emulator_url, emulator_url + "/")
        self.raw_endpoint = settings.endpoint or emulator_url
        self.application_credentials = settings.keyfile or env.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        if settings.credentials is not None:
            try:
                self._private = str(json.loads(settings.credentials).get("private_key") or "")
            except (ValueError, AttributeError) as exc:
                raise UsageError("storage.gcs.credentials is not a service account key") from exc
        else:
            self._private = ""

    def store(self, bucket: str, client_options: dict[str, Any], retry_config: dict[str, Any]) -> ObjectStore:
        from obstore.store import GCSStore

        config: dict[str, Any] = {}
        if self.raw_endpoint is not None:
            config["base_url"] = self.raw_endpoint.rstrip("/")
        provider = None
        if self.settings.credentials is not None:
            config["service_account_key"] = self.settings.credentials
        elif self.application_credentials is not None and not self.emulated:
            config["application_credentials"] = self.application_credentials
        if self.emulated:
            # An emulator takes any token, as the SDKs' anonymous credentials; no metadata server is asked.
            provider = _EmulatorToken()
        return GCSStore(
            bucket,
            config=config,  # type: ignore[arg-type]
            client_options=_client_options(client_options, self.raw_endpoint),  # type: ignore[arg-type]
            retry_config=retry_config,  # type: ignore[arg-type]
            credential_provider=provider,  # type: ignore[arg-type]
        )

    def secrets(self) -> list[str]:
        found = endpoint_secrets(self.raw_endpoint)
        if self.settings.credentials:
            found.append(self.settings.credentials)
        if self._private:
            found += [self._private, *self._private.splitlines()[1:-1]]
        return [s for s in found if len(s) > 3]

    def etag(self, listed: str | None) -> str | None:
        etag = clean_etag(listed)
        if etag is None or len(etag) != 24:
            return etag
        try:
            digest = base64.b64decode(listed.strip('"'), validate=True)  # type: ignore[union-attr]
        except (binascii.Error, ValueError):
            return etag
        return digest.hex() if len(digest) == 16 else etag


class _EmulatorToken:
    def __call__(self) -> dict[str, Any]:
        return {"token": "emulator", "expires_at": None}

    def __repr__(self) -> str:
        return "<emulator token>"


# -- Azure Blob Storage ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AzureSettings:
    """Account, key and endpoint; whatever is None comes from the environment (`AZURE_STORAGE_ACCOUNT_NAME`,
    `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_CONNECTION_STRING`, `AZURE_STORAGE_SAS_TOKEN`,
    `AZURE_STORAGE_ENDPOINT`), else Azure's identity chain (obstore's: service principal variables, managed
    identity, workload identity)."""

    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)
    endpoint: str | None = field(default=None, repr=False)
    realm: str | None = None
    """The service's domain (the azure driver's `realm`): `core.windows.net` unless told."""
    max_requests_per_second: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        _check_common(self)

    def provider(self, env: Mapping[str, str]) -> Provider:
        return AzureProvider(self, env)


def parse_connection_string(text: str) -> dict[str, str]:
    """`Key=Value;...` as Azure writes it (a value may hold `=`, a SAS does)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key:
            out[key.strip()] = value.strip()
    return out


class AzureProvider(Provider):
    """obstore's AzureStore; the listing through Azure's SDK (`azure-storage-blob`) where it is installed and the
    credentials are a key or a SAS: it gives each blob's Content-MD5 (which the service stores for a blob written
    in one Put Blob, as the azure driver writes links and manifests), so links resolve without a GET. The listed
    ETag is opaque (`0x8D…`), and obstore's listing has no Content-MD5: without the SDK, links are read by GET."""

    name = "azure"

    def __init__(self, settings: AzureSettings, env: Mapping[str, str]) -> None:
        self.settings = settings
        conn_text = env.get("AZURE_STORAGE_CONNECTION_STRING") or ""
        conn = parse_connection_string(conn_text) if conn_text else {}
        development = conn.get("UseDevelopmentStorage", "").lower() == "true"
        account = (
            settings.account_name
            or env.get("AZURE_STORAGE_ACCOUNT_NAME")
            or env.get("AZURE_STORAGE_ACCOUNT")
            or conn.get("AccountName")
            or (AZURITE_ACCOUNT if development else None)
        )
        if not account:
            raise UsageError(
                "no Azure storage account: set AZURE_STORAGE_ACCOUNT_NAME (and AZURE_STORAGE_ACCOUNT_KEY or "
                "AZURE_STORAGE_SAS_TOKEN), or AZURE_STORAGE_CONNECTION_STRING, or give the registry's configuration"
            )
        self.account = account
        self.key = (
            settings.account_key
            or env.get("AZURE_STORAGE_ACCOUNT_KEY")
            or env.get("AZURE_STORAGE_KEY")
            or conn.get("AccountKey")
            or None
        )
        self.sas = None if self.key else (env.get("AZURE_STORAGE_SAS_TOKEN") or conn.get("SharedAccessSignature"))
        endpoint = settings.endpoint or env.get("AZURE_STORAGE_ENDPOINT") or conn.get("BlobEndpoint")
        if account == AZURITE_ACCOUNT:
            # Azurite: its well-known account and key, at its usual address unless told (the variable object_store
            # reads).
            self.key = self.key or (None if self.sas else AZURITE_KEY)
        if endpoint is None and account == AZURITE_ACCOUNT:
            endpoint = f"{(env.get('AZURITE_BLOB_STORAGE_URL') or AZURITE_URL).rstrip('/')}/{AZURITE_ACCOUNT}"
        elif endpoint is None and (settings.realm or conn.get("EndpointSuffix")):
            scheme = conn.get("DefaultEndpointsProtocol") or "https"
            endpoint = f"{scheme}://{account}.blob.{settings.realm or conn['EndpointSuffix']}"
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise UsageError(f"Azure endpoint {redacted(endpoint)!r} must start with http:// or https://")
        self.raw_endpoint = endpoint.rstrip("/") if endpoint else None
        self._conn = conn_text
        self._container_name = ""
        self._concurrency = DEFAULT_CONCURRENCY
        self._client: Any = None
        self._no_client = False

    def store(self, bucket: str, client_options: dict[str, Any], retry_config: dict[str, Any]) -> ObjectStore:
        from obstore.store import AzureStore

        config: dict[str, Any] = {"account_name": self.account}
        if self.raw_endpoint is not None:
            config["endpoint"] = self.raw_endpoint
        if self.key:
            config["account_key"] = self.key
        elif self.sas:
            config["sas_key"] = self.sas.lstrip("?")
        return AzureStore(
            bucket,
            config=config,  # type: ignore[arg-type]
            client_options=_client_options(client_options, self.raw_endpoint),  # type: ignore[arg-type]
            retry_config=retry_config,  # type: ignore[arg-type]
        )

    def secrets(self) -> list[str]:
        found = endpoint_secrets(self.raw_endpoint)
        for secret in (self.key, self.sas, self._conn, self.settings.account_key):
            if secret and secret != AZURITE_KEY:
                found.append(secret)
        if self.sas:
            found += [part for part in self.sas.lstrip("?").split("&") if part.startswith("sig=")]
        return found

    def origin(self, location: S3Location) -> dict[str, str]:
        out = super().origin(location)
        out["account"] = self.account
        return out

    def configure(self, bucket: str, concurrency: int) -> None:
        """Where the SDK's listing goes: the container, and as many pooled connections as requests in flight."""
        self._container_name = bucket
        self._concurrency = concurrency

    def _container(self) -> Any:
        """The SDK's client for the container, or None where the SDK or a key or SAS is missing."""
        if self._client is not None or self._no_client:
            return self._client
        try:
            import requests
            from azure.core.pipeline.transport import RequestsTransport
            from azure.storage.blob import ContainerClient
        except ImportError:
            self._no_client = True
            return None
        credential: Any
        if self.key:
            credential = {"account_name": self.account, "account_key": self.key}
        elif self.sas:
            credential = self.sas.lstrip("?")
        else:
            self._no_client = True  # the identity chain: obstore's
            return None
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=self._concurrency)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        transport = RequestsTransport(session=session, session_owner=False)
        self._client = ContainerClient(
            self.raw_endpoint or f"https://{self.account}.blob.{DEFAULT_REALM}",
            self._container_name,
            credential=credential,
            transport=transport,
            retry_total=3,
            connection_timeout=5,
            read_timeout=15,
        )
        return self._client

    delete_batch = AZURE_BATCH

    def deletes_conditionally(self) -> bool:
        return self._container() is not None

    def delete_requests(self, keys: int) -> int:
        return -(-keys // AZURE_BATCH) if self._container() is not None else keys

    def delete_unchanged(self, keys: Sequence[tuple[str, str]]) -> list[str] | None:
        """A blob batch (Blob Batch, up to 256 sub-requests) of deletes each with `If-Match` on the listed ETag: a
        blob written since answers 412 and stays. None without the SDK (obstore's deletes are plain)."""
        client = self._container()
        if client is None:
            return None
        from azure.core import MatchConditions

        blobs = [
            {"name": name, "etag": azure_etag(etag), "match_condition": MatchConditions.IfNotModified}
            for name, etag in keys
        ]
        answers = client.delete_blobs(*blobs, raise_on_any_failure=False)
        refused: list[str] = []
        for (name, _), answer in zip(keys, answers, strict=True):
            status = answer.status_code
            if status == 412:
                refused.append(name)
            elif status not in (200, 202, 404):  # 404: gone already, as a retried or earlier delete leaves it
                raise StorageError(f"deleting {name!r}: HTTP {status} {answer.reason or ''}".strip())
        # A blob gone already fails `If-Match` too (Azurite answers 412, not 404): only one still there was changed.
        return [name for name in refused if client.get_blob_client(name).exists()]

    def pages(
        self, prefix: str, *, delimiter: bool, offset: str | None
    ) -> Iterator[tuple[list[tuple[str, ObjectInfo]], list[str]]] | None:
        client = self._container()
        if client is None:
            return None
        if delimiter:
            paged = client.walk_blobs(name_starts_with=prefix or None, delimiter="/")
        else:
            paged = client.list_blobs(name_starts_with=prefix or None)

        def each() -> Iterator[tuple[list[tuple[str, ObjectInfo]], list[str]]]:
            for page in paged.by_page():
                found: list[tuple[str, ObjectInfo]] = []
                below: list[str] = []
                for item in page:
                    name = item.name
                    if getattr(item, "size", None) is None:  # a BlobPrefix
                        below.append(name)
                        continue
                    if offset is not None and name <= offset:
                        continue
                    md5 = item.content_settings.content_md5 if item.content_settings else None
                    info = ObjectInfo(
                        int(item.size), item.last_modified, clean_etag(item.etag), bytes(md5).hex() if md5 else None
                    )
                    found.append((name[:-1] if name.endswith("/") else name, info))
                yield found, below

        return each()


def azure_etag(kept: str) -> str:
    """An ETag as kept (`clean_etag`: unquoted, lowercase) as Azure writes it, for `If-Match`: `"0x8D…"`."""
    if kept.startswith("0x"):
        return f'"0x{kept[2:].upper()}"'
    return f'"{kept}"'


def settings_for(location: S3Location, max_requests_per_second: float | None = None) -> Any:
    """Default settings of the service `location` is in: everything from the environment."""
    if location.provider == "gcs":
        return GCSSettings(max_requests_per_second=max_requests_per_second)
    if location.provider == "azure":
        return AzureSettings(max_requests_per_second=max_requests_per_second)
    from storage_audit.storage.bucket import S3Settings

    return S3Settings(max_requests_per_second=max_requests_per_second)


__all__ = [
    "AZURE_BATCH",
    "AZURITE_ACCOUNT",
    "AzureProvider",
    "AzureSettings",
    "GCSProvider",
    "GCSSettings",
    "azure_etag",
    "parse_connection_string",
    "settings_for",
]

"""Reading the registry's own configuration file: the filesystem and s3 drivers, environment overrides, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_audit.core.errors import UsageError
from storage_audit.roots.config import FilesystemStorage, S3Storage, read_registry_config
from storage_audit.storage.bucket import S3Bucket, parse_bucket_url
from storage_audit.storage.clouds import AzureSettings
from tests.s3_harness import SeaweedS3, bucket_for, s3_registry

S3_CONFIG = """\
version: 0.1
storage:
  s3:
    accesskey: AKIAFILEKEY
    secretkey: file-secret-value
    region: eu-central-1
    regionendpoint: http://127.0.0.1:9000
    bucket: images
    secure: false
    v4auth: true
    rootdirectory: /regroot/
  delete:
    enabled: true
  redirect:
    disable: true
http:
  addr: :5000
"""


def read(tmp_path: Path, text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yml"
    path.write_text(text, encoding="utf-8")
    return read_registry_config(path, env or {})


def test_filesystem_driver(tmp_path: Path) -> None:
    got = read(tmp_path, "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/registry\n  cache: {}\n")
    assert got == FilesystemStorage(Path("/srv/registry"))


def test_filesystem_driver_default_root(tmp_path: Path) -> None:
    assert read(tmp_path, "storage:\n  filesystem: {}\n") == FilesystemStorage(Path("/var/lib/registry"))
    assert read(tmp_path, "storage:\n  filesystem:\n") == FilesystemStorage(Path("/var/lib/registry"))


def test_s3_driver(tmp_path: Path) -> None:
    got = read(tmp_path, S3_CONFIG)
    assert isinstance(got, S3Storage)
    assert (got.location.bucket, got.location.rootdirectory) == ("images", "regroot")
    assert got.location.prefix == "regroot/docker/registry/v2/"
    s = got.settings
    assert (s.region, s.endpoint, s.access_key, s.secret_key) == (
        "eu-central-1",
        "http://127.0.0.1:9000",
        "AKIAFILEKEY",
        "file-secret-value",
    )
    assert "file-secret-value" not in repr(got)


def test_s3_endpoint_without_scheme_follows_secure(tmp_path: Path) -> None:
    text = S3_CONFIG.replace("http://127.0.0.1:9000", "minio.internal:9000")
    assert read(tmp_path, text).settings.endpoint == "http://minio.internal:9000"
    text = text.replace("secure: false", "secure: true")
    assert read(tmp_path, text).settings.endpoint == "https://minio.internal:9000"


def test_s3_without_keys_uses_the_aws_chain(tmp_path: Path) -> None:
    text = "storage:\n  s3:\n    bucket: images\n    region: us-west-2\n"
    got = read(tmp_path, text)
    assert isinstance(got, S3Storage)
    assert (got.settings.access_key, got.settings.secret_key, got.settings.endpoint) == (None, None, None)
    assert got.location.rootdirectory == ""


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "REGISTRY_STORAGE_S3_BUCKET": "other-bucket",
        "REGISTRY_STORAGE_S3_SECRETKEY": "env-secret",
        "REGISTRY_STORAGE_S3_ROOTDIRECTORY": "/envroot",
        "REGISTRY_STORAGE_DELETE_ENABLED": "false",
        "REGISTRY_HTTP_ADDR": ":6000",
    }
    got = read(tmp_path, S3_CONFIG, env)
    assert isinstance(got, S3Storage)
    assert (got.location.bucket, got.location.rootdirectory) == ("other-bucket", "envroot")
    assert (got.settings.access_key, got.settings.secret_key) == ("AKIAFILEKEY", "env-secret")


def test_environment_switches_the_driver(tmp_path: Path) -> None:
    text = "storage:\n  filesystem:\n    rootdirectory: /srv/registry\n"
    env = {"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_BUCKET": "b", "REGISTRY_STORAGE_S3_REGION": "us-east-1"}
    got = read(tmp_path, text, env)
    assert isinstance(got, S3Storage) and got.location.bucket == "b"
    env = {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/elsewhere"}
    assert read(tmp_path, text, env) == FilesystemStorage(Path("/elsewhere"))


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("storage:\n  oss:\n    bucket: b\n", {}, "storage driver 'oss' is not supported"),
        ("storage:\n  azure: {}\n", {}, "azure storage names no container"),
        ("storage:\n  gcs: {}\n", {}, "gcs storage names no bucket"),
        ("storage:\n  gcs:\n    bucket: b\n    credentials: [1]\n", {}, "storage.gcs.credentials is not a mapping"),
        ("storage:\n  filesystem: {}\n", {"REGISTRY_STORAGE_S3_BUCKET": "b"}, "several storage drivers"),
        ("storage:\n  delete:\n    enabled: true\n", {}, "names no storage driver"),
        ("version: 0.1\n", {}, "names no storage driver"),
        ("- a list\n", {}, "not a YAML mapping"),
        ("storage:\n  s3:\n    region: us-east-1\n", {}, "names no bucket"),
        ("storage:\n  s3:\n    bucket: b\n    secure: maybe\n", {}, "secure must be true or false"),
    ],
)
def test_refusals(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        read(tmp_path, text, env)
    assert "\n" not in str(caught.value)


def test_invalid_yaml_never_quotes_the_file(tmp_path: Path) -> None:
    text = S3_CONFIG.replace("secretkey: file-secret-value", "secretkey: file-secret-value: [unclosed")
    with pytest.raises(UsageError, match="not valid YAML at line 5") as caught:
        read(tmp_path, text)
    assert "file-secret-value" not in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"registry configuration .*absent\.yml: cannot read"):
        read_registry_config(tmp_path / "absent.yml", {})


def test_the_registrys_s3_config_resolves_to_the_bucket_it_writes(s3_server: SeaweedS3, s3_root: str) -> None:
    """The configuration the s3 fixture's registry runs with, read back, lists what that registry pushed."""
    with s3_registry(s3_server, s3_root) as reg:
        digest = reg.push_blob("team/app", b"layer bytes")
        config = read_registry_config(reg.config_path, {})
    assert isinstance(config, S3Storage)
    assert config.location == bucket_for(s3_server, s3_root).location
    bucket = S3Bucket(config.location, config.settings, env={})
    listing = bucket.run(bucket.list_all_async())
    hexpart = digest.removeprefix("sha256:")
    assert set(listing.objects) >= {
        f"blobs/sha256/{hexpart[:2]}/{hexpart}/data",
        f"repositories/team/app/_layers/sha256/{hexpart}/link",
    }


def test_gcs_driver(tmp_path: Path) -> None:
    text = (
        "storage:\n  gcs:\n    bucket: reg\n    keyfile: /etc/gcs.json\n    rootdirectory: /a/b\n"
        "    credentials:\n      type: service_account\n      private_key: pk-secret\n"
    )
    config = read(tmp_path, text, {"REGISTRY_STORAGE_GCS_BUCKET": "other"})
    assert isinstance(config, S3Storage)
    assert str(config.location) == "gs://other/a/b"
    assert config.settings.keyfile == "/etc/gcs.json"  # type: ignore[union-attr]
    bucket = S3Bucket(config.location, config.settings, env={"STORAGE_EMULATOR_HOST": "127.0.0.1:4443"})
    assert bucket.origin() == {
        "provider": "gcs",
        "bucket": "other",
        "prefix": "a/b/docker/registry/v2/",
        "endpoint": "http://127.0.0.1:4443",
    }
    assert "pk-secret" in bucket.provider.secrets()
    assert "pk-secret" not in repr(config) and "pk-secret" not in repr(bucket)


def test_azure_driver_and_its_chain(tmp_path: Path) -> None:
    text = (
        "storage:\n  azure:\n    accountname: acct\n    accountkey: a2V5\n    container: reg\n    realm: example.net\n"
    )
    config = read(tmp_path, text, {"REGISTRY_STORAGE_AZURE_ROOTDIRECTORY": "/r"})
    assert str(config.location) == "az://reg/r"  # type: ignore[union-attr]
    bucket = S3Bucket(config.location, config.settings, env={})  # type: ignore[union-attr]
    assert bucket.origin() == {
        "provider": "azure",
        "bucket": "reg",
        "prefix": "r/docker/registry/v2/",
        "endpoint": "https://acct.blob.example.net",
        "account": "acct",
    }
    assert "a2V5" in bucket.provider.secrets() and "a2V5" not in repr(bucket)
    location = parse_bucket_url("az://reg")
    # A connection string: account, key and endpoint, none of the key shown.
    conn = "DefaultEndpointsProtocol=https;AccountName=cs;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"
    bucket = S3Bucket(location, AzureSettings(), env={"AZURE_STORAGE_CONNECTION_STRING": conn})
    assert bucket.origin()["endpoint"] == "https://cs.blob.core.windows.net" and bucket.origin()["account"] == "cs"
    assert "c2VjcmV0" in bucket.provider.secrets()
    # A SAS token: its signature scrubbed from any message.
    sas = "sv=2024&sig=c2lnbmF0dXJl"
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_SAS_TOKEN": sas}
    bucket = S3Bucket(location, AzureSettings(), env=env)
    assert bucket._scrub(f"failed: GET https://x/?{sas}") == "failed: GET https://x/?***"
    # Azurite's development account: its well-known endpoint.
    bucket = S3Bucket(location, AzureSettings(), env={"AZURE_STORAGE_ACCOUNT_NAME": "devstoreaccount1"})
    assert bucket.origin()["endpoint"] == "http://127.0.0.1:10000/devstoreaccount1"
    with pytest.raises(UsageError, match="no Azure storage account"):
        S3Bucket(location, AzureSettings(), env={})


@pytest.mark.parametrize(
    ("url", "shown"),
    [("gs://b/root/docker/registry/v2", "gs://b/root"), ("az://c", "az://c"), ("s3://b/x/", "s3://b/x")],
)
def test_bucket_urls(url: str, shown: str) -> None:
    assert str(parse_bucket_url(url)) == shown

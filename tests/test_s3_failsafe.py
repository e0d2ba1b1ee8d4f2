"""A bucket that misleads or misbehaves fails in one line, or reads as findings: against real servers on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage_audit.scan.run import scan
from storage_audit.storage.base import EntryKind
from storage_audit.storage.bucket import ObjectInfo, S3Bucket, S3Location, S3Settings
from storage_audit.storage.s3 import S3Storage, _Index
from tests.conftest import FIXTURES, Ran, cli, peak_run, unpack
from tests.registry_harness import Registry
from tests.s3_harness import (
    CuttingProxy,
    SeaweedS3,
    SilentEndpoint,
    is_list_request,
    raw_client,
    raw_keys,
    s3_storage_block,
    v2_prefix,
)
from tests.test_s3_commands import upload_tree

REPO = Path(__file__).resolve().parents[1]
Done = subprocess.CompletedProcess[str]


def _child_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    return base | env


def command(args: list[str], env: dict[str, str], timeout: float = 300) -> tuple[Done, float]:
    """`storage-audit ARGS` in a child process with `env` laid over this one's (AWS settings left out); its time."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "storage_audit", *args],
        env=_child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return done, time.monotonic() - started


def peak_memory(args: list[str], env: dict[str, str], scratch: Path) -> tuple[int, str, int]:
    """(exit code, stdout, peak resident memory in bytes) of `storage-audit ARGS` in a child process of its own."""
    done, peak = peak_run(args, _child_env(env), scratch, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, peak


def findings(result: Ran) -> set[tuple[str, str]]:
    assert result.exit_code in (0, 3), result.output
    return {(f["kind"], f["path"]) for f in json.loads(result.stdout)}


@dataclass(frozen=True)
class Basic:
    """The basic fixture's keys written into the bucket under `rootdirectory`, and the fixture unpacked on disk."""

    url: str
    rootdirectory: str
    local: Path


@pytest.fixture(scope="module")
def basic(s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Basic]:
    """The basic fixture in the bucket, once for this module; tests that change keys use their own rootdirectory."""
    local = unpack(FIXTURES / "basic.tar.gz", tmp_path_factory.mktemp("basic"))
    rootdirectory = "/failsafe/basic"
    assert upload_tree(s3_server, rootdirectory, local) > 0
    yield Basic(f"s3://{s3_server.bucket}{rootdirectory}", rootdirectory, local)


def one_line_exit_2(done: Done) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("storage-audit: error: "), done.stderr
    return lines[0]


# --------------------------------------------------------------------------
# A hung endpoint


@pytest.mark.slow
def test_a_hung_endpoint_fails_within_a_minute() -> None:
    """An endpoint that accepts connections and never answers: every request times out, retried a bounded number
    of times, by obstore (the listing) and by botocore (the multipart uploads) alike."""
    with SilentEndpoint() as hung:
        env = {
            "AWS_ACCESS_KEY_ID": "hung-test-key",
            "AWS_SECRET_ACCESS_KEY": "hung-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": hung.endpoint,
        }
        try:
            done, elapsed = command(["report", "s3://registry/regroot", "--no-cache"], env, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("a hung endpoint kept the command waiting for over two minutes")
        assert hung.accepted > 0
    line = one_line_exit_2(done)
    assert "s3://registry/regroot" in line
    assert elapsed < 60, f"{elapsed:.0f}s"


# --------------------------------------------------------------------------
# A LIST response cut short


def _flat_list(method: str, target: str) -> bool:
    """A LIST of every key under a prefix (no delimiter): one shard's page."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    return is_list_request(method, target) and "delimiter" not in query


def _uploads_list(method: str, target: str) -> bool:
    """A ListMultipartUploads request (botocore's)."""
    return method == "GET" and "uploads" in urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, True)


@pytest.mark.parametrize(
    ("which", "cuts"),
    [(is_list_request, 1), (_flat_list, 1), (is_list_request, 3), (_uploads_list, 1)],
    ids=["first-list", "first-shard-page", "three-lists", "multipart-uploads"],
)
def test_a_listing_cut_short_is_listed_again(
    which: Callable[[str, str], bool], cuts: int, basic: Basic, s3_server: SeaweedS3
) -> None:
    """A LIST response whose connection closes in mid-body is sent again: the answer is the whole tree's."""
    expected = cli("check", basic.url, "-f", "json", "-q", "--no-cache", env=s3_server.environment())
    with CuttingProxy(s3_server.endpoint, cuts=cuts, which=which) as proxy:
        result = cli(
            "check",
            basic.url,
            "-f",
            "json",
            "-q",
            "--no-cache",
            env=s3_server.environment() | {"AWS_ENDPOINT_URL": proxy.endpoint},
        )
        assert proxy.cut == cuts
    assert result.exit_code == expected.exit_code, result.output
    assert findings(result) == findings(expected) != set()


# --------------------------------------------------------------------------
# Keys that obstore cannot name

ODD_NAMES = {
    "x\ty": b"top",
    "blobs/e\x7f": b"a file among the algorithms",
    "blobs/sha256/ab\n/x": b"not a blob prefix",
    "repositories/a\nb/_layers/x": b"x",
    "repositories/t\tab/x": b"x",
    "repositories/c\x01/x": b"x",  # SeaweedFS lists it as `c\ufffd` unless asked to URL-encode keys
    "repositories/d\x7f/x": b"x",
    "repositories/team/app/_manifests/tags/ta\x01g/current/link": b"sha256:" + b"0" * 64,
    "repositories/team/app/_uploads/up\rload/startedat": b"2026-11-28T16:16:37Z",
}


def test_keys_with_control_characters_are_findings_as_on_disk(
    basic: Basic, s3_server: SeaweedS3, s3_root: str, tmp_path: Path
) -> None:
    """S3 allows any character in a key; obstore refuses ASCII control characters. Such keys, anywhere under the
    prefix, are what the same names are on disk: stray files, or an upload whose `startedat` is read."""
    local = unpack(FIXTURES / "basic.tar.gz", tmp_path / "local")
    v2 = local / "docker" / "registry" / "v2"
    upload_tree(s3_server, s3_root, local)
    client = raw_client(s3_server)
    for name, content in ODD_NAMES.items():
        client.put_object(Bucket=s3_server.bucket, Key=v2_prefix(s3_root) + name, Body=content)
        path = v2.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    url = f"s3://{s3_server.bucket}{s3_root}"
    on_bucket = findings(cli("check", url, "-f", "json", "-q", "--no-cache", env=s3_server.environment()))
    on_disk = findings(cli("check", str(local), "-f", "json", "-q", env=s3_server.environment()))
    before_bucket = findings(cli("check", basic.url, "-f", "json", "-q", "--no-cache", env=s3_server.environment()))
    before_disk = findings(cli("check", str(basic.local), "-f", "json", "-q", env=s3_server.environment()))
    added = on_disk - before_disk
    assert on_bucket - before_bucket == added
    assert {path for kind, path in added if kind == "stray-file"} == {
        "x\ty",
        "blobs/e\x7f",
        "blobs/sha256/ab\n",
        "repositories/a\nb",
        "repositories/t\tab",
        "repositories/c\x01",
        "repositories/d\x7f",
        "repositories/team/app/_manifests/tags/ta\x01g",
    }
    # The upload's `startedat` is read from its key, control character and all.
    uploads = json.loads(
        cli("report", url, "--by", "upload", "-f", "json", "-q", "--no-cache", env=s3_server.environment()).stdout
    )
    started = {row["id"]: row["started_at"] for row in uploads}
    assert started["up\rload"] == "2026-11-28T16:16:37.000000Z"


def test_keys_no_directory_tree_can_hold_are_stray_files() -> None:
    """`a//b`, and `.` or `..` segments: S3 allows them in keys, obstore refuses them, and no directory tree has a
    place for them. SeaweedFS (a filer) does not store such keys, so the listing is given here as AWS would list it:
    each is a stray file named by its whole path, found by the walk, never read, and no directory."""
    when = datetime(2026, 11, 30, tzinfo=UTC)
    odd = ["repositories/a//b", "repositories/./x", "repositories/y/..", "/lead", "blobs/sha256/ab//data", ".", "z/"]
    files = {path: ObjectInfo(1, when, None) for path in odd}
    files["repositories/team/_layers/sha256/ab/link"] = ObjectInfo(3, when, None)
    index = _Index()
    assert index.add(files) == []
    assert index.odd == set(odd) and index.markers() == []
    tree = index.tree()
    assert tree.children[""] == {path: EntryKind.FILE for path in odd} | {"repositories": EntryKind.DIR}
    assert tree.children["repositories"] == {"team": EntryKind.DIR}
    assert not tree.links
    storage = S3Storage(S3Bucket(S3Location("registry"), S3Settings(access_key="k", secret_key="s"), env={}))
    storage._tree_ = tree  # the listing above; nothing is read from the bucket
    inventory = scan(storage)
    stray = inventory.findings[inventory.findings["kind"] == "stray-file"]
    assert set(stray["path"]) >= set(odd)


# --------------------------------------------------------------------------
# Objects too large for what they should be


def test_an_oversized_link_is_read_no_further_than_on_disk(
    basic: Basic, s3_server: SeaweedS3, s3_root: str, tmp_path: Path
) -> None:
    """A link or `startedat` key holding hundreds of MB: only `limit + 1` bytes are read, as from a local file, and
    the findings are those of the same files on disk."""
    local = unpack(FIXTURES / "basic.tar.gz", tmp_path / "local")
    v2 = local / "docker" / "registry" / "v2"
    layers = v2 / "repositories" / "team" / "app" / "_layers" / "sha256"
    link = sorted(layers.iterdir())[0] / "link"
    (started,) = v2.glob("repositories/*/*/*/_uploads/*/startedat")
    big = {link: 300 << 20, started: 100 << 20}
    upload_tree(s3_server, s3_root, local)
    client = raw_client(s3_server)
    for path, size in big.items():
        name = path.relative_to(v2).as_posix()
        client.put_object(Bucket=s3_server.bucket, Key=v2_prefix(s3_root) + name, Body=bytes(size))
        with path.open("r+b") as f:
            f.truncate(size)  # the same zeros on disk
    url = f"s3://{s3_server.bucket}{s3_root}"
    env = s3_server.environment()
    code, stdout, peak = peak_memory(["check", url, "-f", "json", "-q", "--no-cache"], env, tmp_path)
    assert code in (0, 3), stdout
    on_bucket = {(f["kind"], f["path"]) for f in json.loads(stdout)}
    on_disk = findings(cli("check", str(local), "-f", "json", "-q", env=s3_server.environment()))
    before_bucket = findings(cli("check", basic.url, "-f", "json", "-q", "--no-cache", env=s3_server.environment()))
    before_disk = findings(cli("check", str(basic.local), "-f", "json", "-q", env=s3_server.environment()))
    assert on_bucket - before_bucket == on_disk - before_disk
    assert link.relative_to(v2).as_posix() in {path for _, path in on_bucket - before_bucket}
    # What was read of the 400 MB: a few hundred bytes. The command itself takes about 220 MB, as on the same
    # tree without them; reading either object whole would take at least 100 MB more.
    _, _, usual = peak_memory(["check", basic.url, "-f", "json", "-q", "--no-cache"], env, tmp_path)
    assert peak < usual + (50 << 20), f"peak resident memory {peak >> 20} MiB, {usual >> 20} MiB without the big keys"


# --------------------------------------------------------------------------
# A prefix with no registry under it


def _result_one_line_exit_2(result: Ran) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("storage-audit: error: "), result.stderr
    return lines[0]


def test_a_prefix_with_no_key_is_no_registry(basic: Basic, s3_server: SeaweedS3, tmp_path: Path) -> None:
    """`s3://registry/typo` holds no key: refused, where it used to be an empty registry (0 repositories, a clean
    check, and every repository of a snapshot "gone"), all with exit 0."""
    typo = f"s3://{s3_server.bucket}/failsafe/typo"
    snapshot = tmp_path / "snapshot"
    assert cli("scan", basic.url, "-o", str(snapshot), "--no-cache", env=s3_server.environment()).exit_code == 0
    for args in (["report", typo], ["check", typo], ["scan", typo], ["diff", str(snapshot), typo]):
        line = _result_one_line_exit_2(cli(*args, "--no-cache", env=s3_server.environment()))
        assert line.startswith(f"storage-audit: error: no registry under {typo}"), line
    # The registry's configuration file, with its rootdirectory mistyped, names the same nothing.
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\nstorage:\n" + "\n".join(s3_storage_block(s3_server, "/failsafe/typo")) + "\n")
    line = _result_one_line_exit_2(cli("report", str(config), "--no-cache", env={}))
    assert line.startswith(f"storage-audit: error: no registry under {typo}"), line


def test_a_registry_nothing_was_pushed_to_leaves_no_key(
    s3_server: SeaweedS3, s3_root: str, s3_registry_factory: Callable[[str], AbstractContextManager[Registry]]
) -> None:
    """The registry writes nothing into the bucket until the first push: started, asked for its catalog, and
    stopped, it leaves no key under its prefix, so nothing tells it from a mistyped prefix. It is refused too."""
    with s3_registry_factory(s3_root) as registry:
        assert registry.request("GET", "/v2/").status == 200
        assert registry.catalog() == []
    assert raw_keys(s3_server, v2_prefix(s3_root)) == {}
    url = f"s3://{s3_server.bucket}{s3_root}"
    line = _result_one_line_exit_2(cli("report", url, "--no-cache", env=s3_server.environment()))
    assert line.startswith(f"storage-audit: error: no registry under {url}"), line


def test_an_empty_v2_folder_is_an_empty_registry(s3_server: SeaweedS3, s3_root: str, tmp_path: Path) -> None:
    """A console's folder `…/docker/registry/v2/` alone is what an empty `v2` directory is on disk: a registry with
    nothing in it, not a mistyped prefix."""
    raw_client(s3_server).put_object(Bucket=s3_server.bucket, Key=v2_prefix(s3_root), Body=b"")
    url = f"s3://{s3_server.bucket}{s3_root}"
    empty = tmp_path / "empty"
    (empty / "docker" / "registry" / "v2").mkdir(parents=True)
    result = cli("report", url, "-f", "json", "-q", "--no-cache", env=s3_server.environment())
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads(cli("report", str(empty), "-f", "json", "-q", env=s3_server.environment()).stdout)
    assert summary["repositories"] == 0
    assert findings(cli("check", url, "-f", "json", "-q", "--no-cache", env=s3_server.environment())) == set()


# --------------------------------------------------------------------------
# Credentials written into the endpoint URL

USER, PASSWORD = "alice", "hunter2-in-the-url"


def test_credentials_in_the_endpoint_are_never_shown_nor_stored(
    basic: Basic, s3_server: SeaweedS3, tmp_path: Path
) -> None:
    """`AWS_ENDPOINT_URL=http://user:secret@host`: the requests still go there, but the endpoint every output shows
    or stores (snapshot metadata, plans, errors, summaries) is `http://host`."""
    with_userinfo = s3_server.endpoint.replace("http://", f"http://{USER}:{PASSWORD}@")
    scan = cli(
        "scan",
        basic.url,
        "-o",
        str(tmp_path / "snapshot"),
        "--no-cache",
        env=s3_server.environment() | {"AWS_ENDPOINT_URL": with_userinfo},
    )
    assert scan.exit_code == 0, scan.output
    meta = json.loads((tmp_path / "snapshot" / "metadata.json").read_text())
    assert meta["origin"]["endpoint"] == s3_server.endpoint
    plan = cli(
        "plan",
        basic.url,
        "-o",
        str(tmp_path / "plan.json"),
        "--no-cache",
        env=s3_server.environment() | {"AWS_ENDPOINT_URL": with_userinfo},
    )
    assert plan.exit_code == 0, plan.output
    assert json.loads((tmp_path / "plan.json").read_text())["location"]["endpoint"] == s3_server.endpoint
    missing = cli(
        "report",
        f"s3://no-such-bucket{basic.rootdirectory}",
        "--no-cache",
        env=s3_server.environment() | {"AWS_ENDPOINT_URL": with_userinfo},
    )
    _result_one_line_exit_2(missing)
    not_http = cli(
        "report",
        basic.url,
        "--no-cache",
        env=s3_server.environment() | {"AWS_ENDPOINT_URL": f"ftp://{USER}:{PASSWORD}@127.0.0.1:9"},
    )
    assert "ftp://127.0.0.1:9" in _result_one_line_exit_2(not_http)
    config = tmp_path / "config.yml"
    block = "\n".join(s3_storage_block(s3_server, basic.rootdirectory)).replace("http://", f"http://{USER}:{PASSWORD}@")
    config.write_text("version: 0.1\nstorage:\n" + block + "\n")
    from_config = cli("scan", str(config), "-o", str(tmp_path / "from-config"), "--no-cache")
    assert from_config.exit_code == 0, from_config.output
    for result in (scan, plan, missing, not_http, from_config):
        assert PASSWORD not in result.output and f"{USER}:" not in result.output, result.output
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "config.yml":
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_errors_never_show_the_endpoint_s_credentials() -> None:
    """obstore's and botocore's messages name the URL they requested, as they were given it."""
    endpoint = f"http://{USER}:{PASSWORD}@127.0.0.1:9"
    bucket = S3Bucket(
        S3Location("registry"),
        S3Settings(endpoint=endpoint, access_key="AKIDTEST", secret_key="test-secret-key"),
        env={},
    )
    assert bucket.endpoint == "http://127.0.0.1:9"
    error = bucket._error("listing failed", RuntimeError(f"Error performing GET {endpoint}/registry?list-type=2"))
    assert PASSWORD not in str(error) and "http://127.0.0.1:9/registry?list-type=2" in str(error)
    for text in (repr(bucket), repr(bucket.settings)):
        assert PASSWORD not in text

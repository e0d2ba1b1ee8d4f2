"""Every read-only command on a bucket answers as on a local copy of its keys, and as the collector on that bucket."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from storage_audit.analysis.options import By
from storage_audit.inventory.tables import read_snapshot
from storage_audit.operations.inventory import load
from storage_audit.roots.resolve import RemoteOptions, resolve
from tests.conftest import BROKEN, FIXTURES, Ran, cli, fixture_builder
from tests.registry_harness import Client, parse_gc_output, require_registry
from tests.s3_harness import (
    REGION,
    SeaweedS3,
    mirror_as_listed,
    raw_client,
    s3_garbage_collect,
    s3_registry,
    s3_storage_block,
    v2_prefix,
)
from tests.workloads import random_workload

SCENARIOS = sorted(fixture_builder().SCENARIOS)
SEEDS = [f"seed-{n}" for n in range(10)]
BROKEN_FIXTURES = sorted(p.name.removesuffix(".tar.gz") for p in BROKEN.glob("*.tar.gz"))
CASES = SCENARIOS + SEEDS

# The answers compared, each as its machine-readable output.
COMMANDS: list[list[str]] = [
    ["untagged", "-f", "json"],
    ["untagged", "--gc-compatible", "-f", "json"],
    ["orphans", "-f", "json"],
    ["orphans", "-m", "-f", "json"],
    ["orphans", "-m", "--gc-compatible", "-f", "json"],
    *[["report", "--by", by.value, "-f", "json"] for by in By],
    ["check", "-f", "json"],
]


def _push(name: str) -> Callable[[Client], None]:
    if name.startswith("seed-"):
        return lambda client: random_workload(client, int(name.removeprefix("seed-")))
    build = fixture_builder()
    return lambda client: build.SCENARIOS[name](client, random.Random(f"{build.SEED}:{name}"))


@dataclass(frozen=True)
class InBucket:
    """A case pushed into the bucket under its own rootdirectory, and its local copy."""

    rootdirectory: str
    url: str
    mirror: Path


@pytest.fixture(scope="module")
def pushed(s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], InBucket]]:
    """`get(case)`: the case pushed through the registry's s3 driver (once per module) and mirrored."""
    require_registry()
    done: dict[str, InBucket] = {}

    def get(name: str) -> InBucket:
        if name not in done:
            rootdirectory = f"/cmd/{name}"
            with s3_registry(s3_server, rootdirectory) as reg:
                _push(name)(reg)
            copy = mirror_as_listed(s3_server, rootdirectory, tmp_path_factory.mktemp(f"mirror-{name}"))
            done[name] = InBucket(rootdirectory, f"s3://{s3_server.bucket}{rootdirectory}", copy)
        return done[name]

    yield get


def answer(server: Any, args: list[str]) -> str:
    result = cli(*args, env=server.environment())
    assert result.exit_code in (0, 3), (args, result.output)
    return result.stdout


def same_answer(on_bucket: str, on_disk: str) -> None:
    """Equal JSON, but for an upload's age, which counts from each scan's own time (a second or so apart)."""
    a, b = json.loads(on_bucket), json.loads(on_disk)
    for x, y in zip(a, b, strict=False):
        if isinstance(x, dict) and isinstance(y, dict) and "age" in x and "age" in y:
            age_a, age_b = x.pop("age"), y.pop("age")
            assert (age_a is None) == (age_b is None) and abs((age_a or 0) - (age_b or 0)) <= 120
    assert a == b


def direct_command(name: str) -> list[str]:
    """The command a case also runs straight on the bucket: each in turn, so that every one runs so on several."""
    return COMMANDS[(CASES + BROKEN_FIXTURES).index(name) % len(COMMANDS)]


def assert_same_answers(
    server: Any,
    url: str,
    rootdirectory: str,
    copy: Path,
    scratch: Path,
    direct: list[str],
    origin: dict[str, str] | None = None,
    secrets: tuple[str, ...] | None = None,
) -> None:
    """`scan -o` tables, the scan summary, the inventory each command answers from and every command's output are
    the same on `url` and on `copy`.

    A command reads a bucket as it reads a tree (`operations.inventory.load`),
    then answers from the inventory alone. So each command answers on the
    bucket's snapshot as on the copy itself, and `direct` straight on the
    bucket too: one full read of the bucket per answer is only needed once.
    `server` is any with `environment()` (SeaweedFS, or an emulator of GCS or
    Azure: `origin` then says what the snapshot must record, `secrets` what it must not).
    """
    # Snapshots: every table the same, row for row; only the metadata says where each came from.
    run_bucket = cli("scan", url, "-o", str(scratch / "bucket"), "--no-cache", env=server.environment())
    assert run_bucket.exit_code == 0, run_bucket.output
    run_local = cli("scan", str(copy), "-o", str(scratch / "local"), env=server.environment())
    assert run_local.exit_code == 0, run_local.output
    on_bucket, on_disk = read_snapshot(scratch / "bucket"), read_snapshot(scratch / "local")
    assert sum(on_bucket.counts().values()) > 0
    for table, frame in on_disk.tables().items():
        pd.testing.assert_frame_equal(on_bucket.tables()[table], frame, obj=table)
    meta = json.loads((scratch / "bucket" / "metadata.json").read_text())
    assert meta["root"] == url
    if origin is None:
        origin = {
            "bucket": server.bucket,
            "prefix": f"{rootdirectory.strip('/')}/docker/registry/v2/",
            "region": REGION,
            "endpoint": server.endpoint,
        }
        secrets = (server.secret_key, server.access_key)
    assert meta["origin"] == origin
    for secret in secrets or ():
        assert secret not in json.dumps(meta)
    # The summaries agree too, but for where the tree is and what reading the bucket took.
    summary = [line for line in run_local.stderr.splitlines() if not line.startswith("root:")]
    assert run_bucket.stderr.splitlines()[1 : 1 + len(summary)] == summary
    # The inventory the commands answer from, read as they read it (without a snapshot between): the same too.
    with pytest.MonkeyPatch.context() as env:
        for variable, value in server.environment().items():
            env.setenv(variable, value)
        from_bucket = load(resolve(url, RemoteOptions(cache=False)))
    from_disk = load(resolve(copy))
    for table, frame in from_disk.tables().items():
        pd.testing.assert_frame_equal(from_bucket.tables()[table], frame, obj=table)
    # Every command: on the bucket's snapshot as on the copy; and one of them straight on the bucket.
    for args in COMMANDS:
        same_answer(
            answer(server, [args[0], str(scratch / "bucket"), *args[1:], "-q"]),
            answer(server, [args[0], str(copy), *args[1:], "-q"]),
        )
    same_answer(
        answer(server, [direct[0], url, *direct[1:], "-q", "--no-cache"]),
        answer(server, [direct[0], str(copy), *direct[1:], "-q"]),
    )


@pytest.mark.parametrize("name", CASES)
def test_every_command_answers_as_on_the_local_copy(
    name: str, pushed: Callable[[str], InBucket], s3_server: SeaweedS3, tmp_path: Path
) -> None:
    case = pushed(name)
    assert_same_answers(s3_server, case.url, case.rootdirectory, case.mirror, tmp_path, direct_command(name))


def upload_tree(server: SeaweedS3, rootdirectory: str, root: Path) -> int:
    """Put every regular file of the local ROOT `root` into the bucket under `rootdirectory`, as written directly."""
    v2 = root / "docker" / "registry" / "v2"
    client = raw_client(server)
    prefix = v2_prefix(rootdirectory)
    files = [p for p in v2.rglob("*") if p.is_file() and not p.is_symlink()]
    # S3 keys are UTF-8: a name that is not cannot be a key.
    files = [p for p in files if p.relative_to(v2).as_posix().isprintable() and _utf8(p.relative_to(v2).as_posix())]

    def put(path: Path) -> None:
        client.put_object(Bucket=server.bucket, Key=prefix + path.relative_to(v2).as_posix(), Body=path.read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))
    return len(files)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize("name", BROKEN_FIXTURES)
def test_damaged_trees_answer_as_on_the_local_copy(
    name: str, s3_server: SeaweedS3, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    """The damaged fixture trees, keys written directly: the bucket answers as a local copy of what it holds."""
    rootdirectory = f"/broken/{name}"
    original = shared_root(BROKEN / f"{name}.tar.gz")
    assert upload_tree(s3_server, rootdirectory, original) > 0
    copy = mirror_as_listed(s3_server, rootdirectory, tmp_path / "copy")
    url = f"s3://{s3_server.bucket}{rootdirectory}"
    assert_same_answers(s3_server, url, rootdirectory, copy, tmp_path, direct_command(name))


def test_a_key_that_is_also_a_prefix_is_a_stray_file(
    s3_server: SeaweedS3, s3_root: str, shared_root: Callable[[Path], Path]
) -> None:
    """Only S3 holds `x` and `x/y` at once: the walk goes into `x/`, and the object `x` is a finding."""
    original = shared_root(FIXTURES / "basic.tar.gz")
    upload_tree(s3_server, s3_root, original)
    client = raw_client(s3_server)
    prefix = v2_prefix(s3_root)
    for key in ("repositories/team/app", "blobs/sha256"):
        client.put_object(Bucket=s3_server.bucket, Key=prefix + key, Body=b"shadowed")
    # Empty "folder" markers, as consoles write them, are no finding.
    some_prefix = sorted((original / "docker/registry/v2/blobs/sha256").iterdir())[0].name
    for key in ("repositories/", f"blobs/sha256/{some_prefix}/"):
        client.put_object(Bucket=s3_server.bucket, Key=prefix + key, Body=b"")
    result = cli(
        "check", f"s3://{s3_server.bucket}{s3_root}", "-f", "json", "-q", "--no-cache", env=s3_server.environment()
    )
    stray = {f["path"] for f in json.loads(result.stdout) if f["kind"] == "stray-file"}
    assert stray == {"repositories/team/app", "blobs/sha256"}
    # Everything else reads as before.
    local = json.loads(answer(s3_server, ["orphans", str(original), "-m", "-f", "json", "-q"]))
    remote = json.loads(answer(s3_server, ["orphans", f"s3://{s3_server.bucket}{s3_root}", "-m", "-f", "json", "-q"]))
    assert [r["digest"] for r in remote] == [r["digest"] for r in local]


def test_a_folder_marker_alone_is_an_empty_directory(
    s3_server: SeaweedS3, s3_root: str, shared_root: Callable[[Path], Path]
) -> None:
    """A key `name/` of no bytes with nothing below it is a console's folder, as an empty directory is on disk.

    Listings show it as `name`, like an empty object `name`, which stays a stray file.
    """
    original = shared_root(FIXTURES / "basic.tar.gz")
    upload_tree(s3_server, s3_root, original)
    url = f"s3://{s3_server.bucket}{s3_root}"

    def findings() -> set[tuple[str, str]]:
        found = json.loads(answer(s3_server, ["check", url, "-f", "json", "-q", "--no-cache"]))
        return {(f["kind"], f["path"]) for f in found}

    before = findings()
    client = raw_client(s3_server)
    prefix = v2_prefix(s3_root)
    used = {p.name for p in (original / "docker/registry/v2/blobs/sha256").iterdir()}
    unused = next(f"{n:02x}" for n in range(256) if f"{n:02x}" not in used)
    tag = "repositories/team/app/_manifests/tags/gone"
    for key in ("repositories/lonely/", f"blobs/sha256/{unused}/", f"{tag}/", "repositories/empty-object"):
        client.put_object(Bucket=s3_server.bucket, Key=prefix + key, Body=b"")
    # The tag folder reads as the empty tag directory it would be on disk: a tag without its current link.
    assert findings() - before == {("stray-file", "repositories/empty-object"), ("dangling-tag", f"{tag}/current/link")}
    tags = answer(s3_server, ["report", url, "--by", "tag", "-f", "csv", "-q", "--no-cache"])
    assert "team/app,gone," in tags


@pytest.mark.parametrize("name", CASES)
def test_gc_compatible_answers_equal_the_collector_on_the_bucket(
    name: str, pushed: Callable[[str], InBucket], s3_server: SeaweedS3
) -> None:
    case = pushed(name)
    _, plain_blobs, _ = parse_gc_output(s3_garbage_collect(s3_server, case.rootdirectory))
    stock_manifests, stock_blobs, _ = parse_gc_output(
        s3_garbage_collect(s3_server, case.rootdirectory, delete_untagged=True)
    )
    orphans = json.loads(answer(s3_server, ["orphans", case.url, "--gc-compatible", "-f", "json", "-q"]))
    assert {row["digest"] for row in orphans} == plain_blobs
    orphans = json.loads(answer(s3_server, ["orphans", case.url, "-m", "--gc-compatible", "-f", "json", "-q"]))
    assert {row["digest"] for row in orphans} == stock_blobs
    rows = csv.DictReader(io.StringIO(answer(s3_server, ["untagged", case.url, "--gc-compatible", "-f", "csv", "-q"])))
    assert {(row["repository"], row["digest"]) for row in rows} == stock_manifests


def test_uploads_are_the_multipart_uploads(pushed: Callable[[str], InBucket], s3_server: SeaweedS3) -> None:
    """The basic scenario leaves one unfinished upload: its bytes come from its parts, and it shows as an upload."""
    case = pushed("basic")
    rows = json.loads(answer(s3_server, ["report", case.url, "--by", "upload", "-f", "json", "-q", "--no-cache"]))
    local = json.loads(answer(s3_server, ["report", str(case.mirror), "--by", "upload", "-f", "json", "-q"]))
    same_answer(json.dumps(rows), json.dumps(local))
    assert len(rows) == 1
    assert rows[0]["bytes"] > 0
    # An upload started long enough ago is stale.
    stale = json.loads(answer(s3_server, ["check", case.url, "--upload-age", "0s", "-f", "json", "-q", "--no-cache"]))
    assert [f["kind"] for f in stale].count("stale-upload") == 1


def test_verify_digests_streams_from_the_bucket(
    pushed: Callable[[str], InBucket], s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = pushed("basic")
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    result = cli("check", case.url, "--verify-digests", "-f", "json", "-q", "--no-cache", env=s3_server.environment())
    assert result.exit_code == 0, result.output
    assert not [f for f in json.loads(result.stdout) if f["kind"] == "digest-mismatch"]
    # A blob overwritten with other bytes of the same size is found.
    inv = load(resolve(case.url))  # the Python API resolves the same ROOT
    blob = inv.blobs.sort_values("size").iloc[-1]
    key = f"{v2_prefix(case.rootdirectory)}blobs/sha256/{blob['digest'][7:9]}/{blob['digest'][7:]}/data"
    client = raw_client(s3_server)
    original = client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=bytes(len(original)))
    try:
        result = cli(
            "check", case.url, "--verify-digests", "-f", "json", "-q", "--no-cache", env=s3_server.environment()
        )
        assert result.exit_code == 3, result.output
        found = [f for f in json.loads(result.stdout) if f["kind"] == "digest-mismatch"]
        assert [f["digest"] for f in found] == [blob["digest"]]
    finally:
        client.put_object(Bucket=s3_server.bucket, Key=key, Body=original)


def test_cache_serves_manifests_on_the_second_scan(
    pushed: Callable[[str], InBucket], s3_server: SeaweedS3, tmp_path: Path
) -> None:
    case = pushed("multiarch")
    cache = tmp_path / "cache"
    first = cli("scan", case.url, "--cache-dir", str(cache), env=s3_server.environment())
    second = cli("scan", case.url, "--cache-dir", str(cache), env=s3_server.environment())
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output

    def summary(result: Ran) -> dict[str, str]:
        return dict(line.split(": ", 1) for line in result.stderr.splitlines())

    manifests = int(summary(first)["manifests"])
    assert summary(first)["cache-hits"] == "0" and summary(second)["cache-hits"] == str(manifests)
    assert summary(first)["repositories"] == summary(second)["repositories"]
    gets = [
        int(m[1]) if (m := re.search(r"(\d+) get\b", s["requests"])) else 0 for s in (summary(first), summary(second))
    ]
    assert gets[0] - gets[1] == manifests
    # A cached file that does not hash to its digest is never used: the scan reads the bucket again.
    for path in cache.rglob("*"):
        if path.is_file():
            path.write_bytes(b"{}")
    third = cli("scan", case.url, "--cache-dir", str(cache), env=s3_server.environment())
    assert summary(third)["cache-hits"] == "0" and summary(third)["manifests"] == str(manifests)
    no_cache = cli("scan", case.url, "--no-cache", env=s3_server.environment())
    assert summary(no_cache)["cache-hits"] == "off"


def test_a_registry_configuration_file_is_a_root(
    pushed: Callable[[str], InBucket], s3_server: SeaweedS3, tmp_path: Path
) -> None:
    case = pushed("basic")
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\nstorage:\n" + "\n".join(s3_storage_block(s3_server, case.rootdirectory)) + "\n")
    # The file alone says where and how: no AWS variables at all.
    result = cli("orphans", str(config), "-m", "-f", "json", "-q", "--no-cache", env={})
    assert result.exit_code == 0, result.output
    assert result.stdout == answer(s3_server, ["orphans", str(case.mirror), "-m", "-f", "json", "-q"])
    # The filesystem driver's rootdirectory is a local ROOT.
    local = tmp_path / "local.yml"
    local.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {json.dumps(str(case.mirror))}\n")
    result = cli("orphans", str(local), "-m", "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == answer(s3_server, ["orphans", str(case.mirror), "-m", "-f", "json", "-q"])


def _one_line_exit_2(result: Ran, *secrets: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("storage-audit: error: "), result.stderr
    for secret in secrets:
        assert secret not in result.output
    return lines[0]


def test_bad_roots_are_one_line_and_exit_2(
    pushed: Callable[[str], InBucket], s3_server: SeaweedS3, tmp_path: Path
) -> None:
    case = pushed("basic")
    for url in ("s3://", "s3:///regroot", "s3://b/a/../c"):
        _one_line_exit_2(cli("scan", url, env=s3_server.environment()))
    other = tmp_path / "azure.yml"
    other.write_text("version: 0.1\nstorage:\n  azure:\n    accountname: a\n    accountkey: hush-hush-key\n")
    line = _one_line_exit_2(cli("orphans", str(other)), "hush-hush-key")
    assert "azure" in line
    wrong = "wrong-secret-never-shown-0123"
    env = s3_server.environment() | {"AWS_SECRET_ACCESS_KEY": wrong}
    for command in (["scan", case.url], ["orphans", case.url, "-f", "json"], ["check", case.url]):
        result = cli(*command, "--no-cache", env=env)
        _one_line_exit_2(result, wrong)
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "version: 0.1\nstorage:\n"
        + "\n".join(s3_storage_block(s3_server, case.rootdirectory, access_key="nobody", secret_key=wrong))
        + "\n"
    )
    _one_line_exit_2(cli("report", str(bad), "--no-cache", env={}), wrong)
    # No shell script for a bucket.
    _one_line_exit_2(cli("plan", case.url, "-f", "sh", "--no-cache", env=s3_server.environment()))


def test_rate_limit_spaces_the_requests(pushed: Callable[[str], InBucket], s3_server: SeaweedS3) -> None:
    case = pushed("basic")
    started = time.monotonic()
    result = cli("scan", case.url, "--no-cache", "--max-requests-per-second", "25", env=s3_server.environment())
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    requests = int(re.search(r"^requests: (\d+)", result.stderr, re.M)[1])  # type: ignore[index]
    # Evenly spaced: the last request starts (requests - 1) / 25 seconds after the first.
    assert requests > 25 and elapsed >= (requests - 1) / 25

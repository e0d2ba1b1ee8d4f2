"""`scan -o DIR --shard I/N`: N shares of a tree, read together, are the unsplit scan, on disk and in a bucket;
a set that is incomplete or mixed is refused."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pandas as pd
import pytest

from storage_audit.analysis.options import By
from storage_audit.core.shard import Shard
from storage_audit.inventory.tables import read_snapshot
from tests.conftest import BROKEN, FIXTURES, cli, fixture_builder, unpacked
from tests.registry_harness import require_registry
from tests.s3_harness import SeaweedS3, mirror_as_listed, s3_registry

NOW = "2026-12-01T00:00:00Z"
COMMANDS: list[list[str]] = [
    ["untagged", "-f", "json"],
    ["untagged", "--gc-compatible=3", "-f", "json"],
    ["orphans", "-f", "json"],
    ["orphans", "-m", "-f", "json"],
    ["orphans", "-m", "--gc-compatible", "-f", "json"],
    *[["report", "--by", by.value, "-f", "json"] for by in By],
    ["check", "-f", "json"],
]


def _scan(root: str | Path, out: Path, *more: str, env: Mapping[str, str] | None = None) -> None:
    ran = cli("scan", str(root), "-o", str(out), "-q", *more, env={"STORAGE_AUDIT_NOW": NOW, **(env or {})})
    assert ran.exit_code == 0, ran.output


def split(root: str | Path, out: Path, count: int, env: Mapping[str, str] | None = None) -> Path:
    for index in range(count):
        _scan(root, out, "--shard", f"{index}/{count}", env=env)
    return out


def assert_same_answers(whole: Path, shares: Path, env: Mapping[str, str] | None = None) -> None:
    """Every table, row for row, and every command's output are the same from the shares as from the whole."""
    one, other = read_snapshot(whole), read_snapshot(shares)
    assert one.root == other.root and one.scanned_at == other.scanned_at
    for table, frame in one.tables().items():
        pd.testing.assert_frame_equal(other.tables()[table], frame, obj=table)
    for args in COMMANDS:
        answers = [
            cli(args[0], str(where), *args[1:], "-q", env={"STORAGE_AUDIT_NOW": NOW, **(env or {})})
            for where in (whole, shares)
        ]
        assert answers[0].exit_code in (0, 3) and answers[0].exit_code == answers[1].exit_code, args
        assert json.loads(answers[1].stdout) == json.loads(answers[0].stdout), args


def test_every_key_falls_in_exactly_one_share() -> None:
    names = [f"org{n}" for n in range(200)] + ["a", "a-b", "ü", "x" * 200]
    prefixes = [f"{n:02x}" for n in range(256)]
    for count in (1, 2, 3, 7, 256, 1000):
        shares = [Shard(index, count) for index in range(count)]
        assert all(sum(s.has_repository(name) for s in shares) == 1 for name in names)
        assert all(sum(s.has_prefix(prefix) for s in shares) == 1 for prefix in prefixes)
    # Deterministic: the same name in the same share on every machine and run.
    assert [Shard(i, 4).has_repository("team") for i in range(4)].index(True) == 1


@pytest.mark.parametrize("text", ["", "1", "3/3", "-1/3", "1/0", "a/b", "1/100000"])
def test_a_bad_share_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Shard.parse(text)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("archive", "count"),
    [
        *[(FIXTURES / f"{name}.tar.gz", 3) for name in ("basic", "churn", "multiarch", "referrers")],
        (FIXTURES / "multiarch.tar.gz", 2),
        (FIXTURES / "basic.tar.gz", 7),  # shares without a repository
        *[(path, 2) for path in sorted(BROKEN.glob("*.tar.gz"))[:4]],
    ],
    ids=lambda value: value.name.removesuffix(".tar.gz") if isinstance(value, Path) else str(value),
)
def test_the_shares_of_a_tree_answer_as_the_whole(
    archive: Path, count: int, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    root = shared_root(archive)
    _scan(root, tmp_path / "whole")
    shares = split(root, tmp_path / "set", count)
    assert sorted(p.name for p in shares.iterdir()) == [Shard(i, count).directory for i in range(count)]
    assert_same_answers(tmp_path / "whole", shares)
    # The set written as one snapshot (a merge) is the whole too, its report views stored.
    _scan(shares, tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / "metadata.json").read_text())["views"]
    assert_same_answers(tmp_path / "whole", tmp_path / "merged")


@pytest.fixture(scope="module")
def shares_of_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The basic fixture as three shares, and as two from another tree (churn)."""
    scratch = tmp_path_factory.mktemp("shares")
    basic = split(unpacked(FIXTURES / "basic.tar.gz"), scratch / "basic", 3)
    churn = split(unpacked(FIXTURES / "churn.tar.gz"), scratch / "churn", 2)
    yield basic, churn


def _refused(where: Path, words: str) -> None:
    ran = cli("report", str(where), "-q")
    assert ran.exit_code == 2, ran.output
    assert words in ran.stderr and len(ran.stderr.strip().splitlines()) == 1, ran.stderr


@pytest.mark.slow
def test_an_incomplete_or_mixed_set_is_refused(shares_of_basic: tuple[Path, Path], tmp_path: Path) -> None:
    basic, churn = shares_of_basic
    # One share alone.
    _refused(basic / Shard(1, 3).directory, "one share (1/3) of a scan")
    # A share missing.
    missing = shutil.copytree(basic, tmp_path / "missing")
    shutil.rmtree(missing / Shard(1, 3).directory)
    _refused(missing, "an incomplete set of shards: 1/3 missing")
    merge = cli("scan", str(missing), "-o", str(tmp_path / "merged"), "-q")  # the merge step refuses it too
    assert merge.exit_code == 2 and "1/3 missing" in merge.stderr and not (tmp_path / "merged").exists()
    # Shares of another N.
    mixed = shutil.copytree(basic, tmp_path / "mixed-n")
    shutil.copytree(churn / Shard(0, 2).directory, mixed / Shard(0, 2).directory)
    _refused(mixed, "a mixed set of shards: of 2 and of 3 shares")
    # Shares of another tree.
    other = tmp_path / "mixed-root"
    shutil.copytree(churn / Shard(1, 2).directory, other / Shard(1, 2).directory)
    _scan(unpacked_root("basic"), other, "--shard", "0/2")
    _refused(other, "a mixed set of shards: of ")
    # Shares taken far apart: of another scan.
    late = tmp_path / "mixed-time"
    _scan(unpacked_root("basic"), late, "--shard", "0/2")
    _scan(unpacked_root("basic"), late, "--shard", "1/2", env={"STORAGE_AUDIT_NOW": "2026-12-01T07:00:00Z"})
    _refused(late, "more than 6:00:00 apart")
    # Anything else in the directory.
    stray = shutil.copytree(basic, tmp_path / "stray")
    (stray / "notes.txt").write_text("x")
    _refused(stray, "holds 'notes.txt' too")


def unpacked_root(name: str) -> Path:
    return unpacked(FIXTURES / f"{name}.tar.gz")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--shard", "1/3"], "--shard needs -o DIR"),
        (["--shard", "3/3", "-o", "{out}"], "--shard '3/3': I/N needs 0 <= I < N"),
        (["--shard", "x", "-o", "{out}"], "is not I/N"),
        (["--shard", "0/2", "-o", "{out}", "--keep", "2"], "--keep does not go with --shard"),
    ],
)
def test_bad_shard_options_are_usage_errors(args: list[str], words: str, tmp_path: Path) -> None:
    root = unpacked_root("basic")
    ran = cli("scan", str(root), *[a.format(out=tmp_path / "set") for a in args])
    assert ran.exit_code == 2 and words in ran.stderr, ran.output


def test_shards_go_into_a_directory_of_shards(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "other").write_text("x")
    ran = cli("scan", str(unpacked_root("basic")), "-o", str(tmp_path / "set"), "--shard", "0/2", "-q")
    assert ran.exit_code == 2 and "which is no shard of a scan" in ran.stderr, ran.output
    snapshot = tmp_path / "snap"
    _scan(unpacked_root("basic"), snapshot)
    ran = cli("scan", str(snapshot), "-o", str(tmp_path / "set2"), "--shard", "0/2", "-q")
    assert ran.exit_code == 2 and "--shard reads a share of a storage tree" in ran.stderr, ran.output


# --------------------------------------------------------------------------
# A bucket the registry wrote


@pytest.fixture(scope="module")
def in_bucket(s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A registry world pushed through the registry's s3 driver into the bucket, and its keys mirrored on disk."""
    require_registry()
    build = fixture_builder()
    rootdirectory = "/shards/world"
    with s3_registry(s3_server, rootdirectory) as reg:
        for name in ("basic", "multiarch", "referrers", "churn"):
            build.SCENARIOS[name](reg, random.Random(f"{build.SEED}:{name}"))
    mirror = mirror_as_listed(s3_server, rootdirectory, tmp_path_factory.mktemp("shards-mirror"))
    return f"s3://{s3_server.bucket}{rootdirectory}", mirror


@pytest.mark.slow
def test_the_shares_of_a_bucket_answer_as_the_whole(
    in_bucket: tuple[str, Path], s3_server: SeaweedS3, tmp_path: Path
) -> None:
    url, mirror = in_bucket
    env = s3_server.environment()
    _scan(url, tmp_path / "whole", "--no-cache", env=env)
    shares = tmp_path / "set"
    for index in range(3):
        _scan(url, shares, "--no-cache", "--shard", f"{index}/3", env=env)
    assert read_snapshot(tmp_path / "whole").counts()["blobs"] > 20
    assert_same_answers(tmp_path / "whole", shares, env)
    # Shares of the bucket's local copy: each share holds what the bucket's holds.
    local = split(mirror, tmp_path / "local", 3)
    for index in range(3):
        name = Shard(index, 3).directory
        on_bucket, on_disk = read_snapshot_share(shares / name), read_snapshot_share(local / name)
        for table, frame in on_disk.items():
            pd.testing.assert_frame_equal(on_bucket[table], frame, obj=f"{name} {table}")


def read_snapshot_share(directory: Path) -> dict[str, pd.DataFrame]:
    """A share's tables as stored (a share alone is refused by the reader), text as text."""
    import pyarrow.parquet as pq

    meta = json.loads((directory / "metadata.json").read_text())
    return {
        table: pd.concat([pq.read_table(directory / part).to_pandas() for part in parts], ignore_index=True)
        for table, parts in meta["tables"].items()
    }


def test_a_share_of_a_bucket_lists_only_its_repositories(
    in_bucket: tuple[str, Path], s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage_audit.roots.resolve import Bucket, RemoteOptions, resolve

    url, mirror = in_bucket
    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    everything = sorted(p.name for p in (mirror / "docker/registry/v2/repositories").iterdir())
    prefixes = sorted(p.name for p in (mirror / "docker/registry/v2/blobs/sha256").iterdir())
    assert len(everything) >= 3
    seen: list[str] = []
    for index in range(3):
        shard = Shard(index, 3)
        root = resolve(url, RemoteOptions(cache=False))
        assert isinstance(root, Bucket)
        root.storage.share(shard.has_repository)
        listed = sorted(root.storage.subdirs("repositories")[0])
        assert listed == [name for name in everything if shard.has_repository(name)]
        assert sorted(root.storage.subdirs("blobs/sha256")[0]) == prefixes  # manifests may lie in any
        seen += listed
    assert sorted(seen) == everything


def test_keep_leaves_a_directory_of_shares_alone(shares_of_basic: tuple[Path, Path], tmp_path: Path) -> None:
    basic, _ = shares_of_basic
    parent = tmp_path / "snapshots"
    shutil.copytree(basic, parent / "0-shares")
    _scan(unpacked_root("basic"), parent / "1-old")
    _scan(unpacked_root("basic"), parent / "2-new", "--keep", "1", env={"STORAGE_AUDIT_NOW": "2026-12-02T00:00:00Z"})
    assert sorted(p.name for p in parent.iterdir()) == ["0-shares", "2-new"]
    # Not a snapshot to prune (nor one left for what it holds): the shares are no snapshot of that directory.
    from storage_audit.inventory.retention import snapshots

    assert [s.path.name for s in snapshots(parent)] == ["2-new"]

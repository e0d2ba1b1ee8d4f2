"""What is not a registry, or not a whole snapshot, is refused: one line on stderr, exit 2, at once.

Each case was once read as something it is not (an empty registry, a registry with every repository
gone), hung on a FIFO, grew without bound on /dev/zero, or ended in an internal error.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage_audit.inventory.schema import METADATA_FILE
from tests.conftest import FIXTURES, cli, peak_run
from tests.s3_harness import SeaweedS3, s3_storage_block

DEMO = FIXTURES / "demo"
TOP = Path(__file__).resolve().parents[1]
SECONDS = 60
"""Long enough for a command on a busy machine; a command that hangs on a FIFO never ends within it."""
MEMORY = 2 << 30
"""Address space a command may take: a read of /dev/zero ends here, not in the machine's swap."""


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_process(*args: str) -> tuple[int, str, float]:
    """The command line run in a process of its own (its exit code, stderr, seconds), killed if it hangs."""
    started = time.monotonic()
    env = os.environ | {"PYTHONPATH": str(TOP)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "storage_audit", *args],
            capture_output=True,
            text=True,
            timeout=SECONDS,
            env=env,
            preexec_fn=_limited,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"storage-audit {' '.join(args)} still ran after {SECONDS} s")
    return done.returncode, done.stderr, time.monotonic() - started


def refused(code: int, err: str, *words: str) -> None:
    """Exit 2 and one line on stderr, which says `words`."""
    assert code == 2, err[-2000:]
    assert err.startswith("storage-audit: error: ") and err.count("\n") == 1, err[-2000:]
    for word in words:
        assert word in err, err


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole snapshot of the demo registry, to copy and break."""
    path = tmp_path_factory.mktemp("whole") / "snap"
    code, _, err = cli("scan", str(DEMO), "-o", str(path), "-q")
    assert code == 0, err
    return path


@pytest.fixture
def copy(snapshot: Path, tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        return Path(shutil.copytree(snapshot, tmp_path / name, symlinks=True))

    return make


# --------------------------------------------------------------------------
# A snapshot that is not whole is no registry


def test_a_snapshot_without_its_metadata_is_an_incomplete_snapshot(snapshot: Path, copy: Callable[[str], Path]) -> None:
    half = copy("half")
    (half / METADATA_FILE).unlink()
    for args in (["report", str(half)], ["diff", str(snapshot), str(half)], ["plan", str(half)], ["check", str(half)]):
        code, out, err = cli(*args)
        assert out == ""
        refused(code, err, f"{half}: an incomplete snapshot", "metadata.json")


def test_a_scan_killed_early_left_an_incomplete_snapshot(copy: Callable[[str], Path]) -> None:
    # `scan -o` writes the tables it has rows for first, metadata.json last: here only two tables were begun.
    early = copy("early")
    for entry in early.iterdir():
        if entry.name not in ("blobs", "repositories"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    code, out, err = cli("report", str(early))
    assert out == ""
    refused(code, err, "an incomplete snapshot")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_a_metadata_file_that_is_not_a_regular_file_is_refused(kind: str, copy: Callable[[str], Path]) -> None:
    snap = copy(kind)
    meta = snap / METADATA_FILE
    meta.unlink()
    if kind == "fifo":
        os.mkfifo(meta)
    elif kind == "dev-zero":
        meta.symlink_to("/dev/zero")
    else:
        meta.mkdir()
    for command in ("report", "untagged"):
        code, err, _ = run_process(command, str(snap))
        refused(code, err, "an incomplete snapshot", "metadata.json is not a regular file")


# --------------------------------------------------------------------------
# Snapshot retention reads its neighbours' metadata safely


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_keep_passes_over_a_neighbour_whose_metadata_is_not_a_file(kind: str, tmp_path: Path) -> None:
    parent = tmp_path / "snapshots"
    odd = parent / "odd"
    odd.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(odd / METADATA_FILE)
    else:
        (odd / METADATA_FILE).symlink_to("/dev/zero")
    code, err, _ = run_process("scan", str(DEMO), "-o", str(parent / "new"), "--keep", "1", "-q")
    assert (code, err) == (0, "")
    # Not a snapshot, so never counted nor removed.
    assert (odd / METADATA_FILE).is_symlink() or (odd / METADATA_FILE).is_fifo()


# --------------------------------------------------------------------------
# A part of a table that is not a regular file


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ("untagged",),
        ("check",),
        ("report", "-f", "prometheus"),
        ("report", "-f", "html", "-o", "{out}/page.html"),
        ("report",),
    ],
    ids=["untagged", "check", "prometheus", "html", "report"],
)
def test_a_fifo_as_a_part_of_a_table_is_refused_at_once(args: tuple[str, ...], copy: Callable[[str], Path]) -> None:
    snap = copy("fifo-part")
    for table in ("blobs", "findings"):
        part = snap / table / "part-00000.parquet"
        part.unlink()
        os.mkfifo(part)
    command, *rest = (a.format(out=snap.parent) for a in args)
    code, err, _ = run_process(command, str(snap), *rest)
    refused(code, err, f"{snap}: unreadable snapshot", "part-00000.parquet: not a regular file")


def test_a_part_behind_a_symbolic_link_is_refused(copy: Callable[[str], Path]) -> None:
    snap = copy("linked-part")
    part = snap / "blobs" / "part-00000.parquet"
    part.rename(snap.parent / "elsewhere.parquet")
    part.symlink_to(snap.parent / "elsewhere.parquet")
    code, _, err = cli("untagged", str(snap))
    refused(code, err, "blobs/part-00000.parquet: symbolic link, not followed")


# --------------------------------------------------------------------------
# The registry's configuration file


def config(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_nested_yaml_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    # 566 bytes that expand to 9**9 strings: once 880 MB of memory and a 122 MB line on stderr.
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    previous = "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [{','.join('*' + previous for _ in range(9))}]\n"
        previous = name
    text += f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: *{previous}\n"
    assert len(text) < 600
    code, err, _ = run_process("report", str(config(tmp_path, "lol.yml", text)))
    refused(code, err, "aliases")
    assert len(err) < 500


def test_a_recursive_yaml_alias_is_refused(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    text = f"version: 0.1\nloop: &l [*l]\nstorage:\n  filesystem:\n    rootdirectory: {fixture_root('basic')}\n"
    code, _, err = cli("report", str(config(tmp_path, "loop.yml", text)))
    refused(code, err, "aliases")


@pytest.mark.parametrize(
    ("driver", "value", "words"),
    [
        ("filesystem", "/" + "a" * 5000, ("file name too long",)),
        ("filesystem", '"/tmp/a\\0b"', ("NUL",)),
        ("s3", '"a\\0b"', ("NUL",)),
        ("filesystem", "[/var/lib/registry, /srv]", ("storage.filesystem.rootdirectory", "not a string")),
        ("s3", "[a, b]", ("storage.s3.rootdirectory", "not a string")),
        ("s3", "{x: 1}", ("storage.s3.rootdirectory", "not a string")),
        ("s3", "/" + "a" * 1100, ("storage.s3.rootdirectory", "longer")),
    ],
    ids=["long", "nul", "s3-nul", "list", "s3-list", "s3-mapping", "s3-long"],
)
def test_a_rootdirectory_that_cannot_be_one_is_refused(
    driver: str, value: str, words: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, fake in {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}.items():
        monkeypatch.setenv(name, fake)  # credentials are not what is wrong here
    extra = "    bucket: reg\n    region: us-east-1\n    regionendpoint: http://127.0.0.1:1\n" if driver == "s3" else ""
    path = config(tmp_path, "c.yml", f"version: 0.1\nstorage:\n  {driver}:\n{extra}    rootdirectory: {value}\n")
    code, out, err = cli("report", str(path), "--no-cache")
    assert out == ""
    refused(code, err, *words)
    assert len(err) < 500


@pytest.mark.parametrize("value", ["[reg]", "{name: reg}", "true"])
def test_a_bucket_that_is_not_a_string_is_refused(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, fake in {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}.items():
        monkeypatch.setenv(name, fake)
    path = config(
        tmp_path,
        "c.yml",
        f"version: 0.1\nstorage:\n  s3:\n    bucket: {value}\n    region: us-east-1\n    regionendpoint: http://127.0.0.1:1\n",
    )
    code, _, err = cli("report", str(path), "--no-cache")
    refused(code, err, "storage.s3.bucket", "not a string")


def test_a_list_rootdirectory_is_refused_not_read_as_an_empty_bucket(s3_server: SeaweedS3, tmp_path: Path) -> None:
    # Once the text of the list, "['a', 'b']", became the prefix: no keys below it, so an empty registry, exit 0.
    lines = ["    rootdirectory: [a, b]" if "rootdirectory" in line else line for line in s3_storage_block(s3_server)]
    path = config(tmp_path, "s3.yml", "\n".join(["version: 0.1", "storage:", *lines, ""]))
    result = cli("report", str(path), "--no-cache", env=s3_server.environment())
    assert result.stdout == ""
    refused(result.exit_code, result.stderr, "storage.s3.rootdirectory is a list, not a string")


def test_a_root_file_bigger_than_a_configuration_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "image.bin"
    with open(big, "wb") as fh:
        fh.truncate(300 << 20)  # sparse: 300 MB of zeros, once read whole and YAML-parsed (616 MB)
    done, peak = peak_run(
        ["report", big],
        os.environ | {"PYTHONPATH": str(TOP)},
        tmp_path,
        timeout=SECONDS,
        preexec_fn=_limited,
    )
    refused(done.returncode, done.stderr, "larger than")
    assert peak < 200 << 20, f"{peak >> 20} MiB at the peak"


def test_a_configuration_through_a_symbolic_link_is_still_read(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # ROOT may name the file through a link (a mounted ConfigMap is one): ROOT is followed, as any path given.
    real = config(
        tmp_path, "real.yml", f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {fixture_root('basic')}\n"
    )
    link = tmp_path / "config.yml"
    link.symlink_to(real)
    code, out, err = cli("report", str(link), "-f", "json", "-q")
    assert code == 0, err
    assert json.loads(out)["repositories"] == 3


# --------------------------------------------------------------------------
# Tables and views that no scan writes


def rewrite(snap: Path, table: str, column: str, change: Callable[[list[object]], list[object]]) -> None:
    """Change one column of the first part of a snapshot's table, keeping its type."""
    path = snap / table / "part-00000.parquet"
    data = pq.read_table(path)
    at = data.schema.get_field_index(column)
    values = change(data.column(column).to_pylist())
    pq.write_table(data.set_column(at, data.schema.field(at), pa.array(values, type=data.schema.field(at).type)), path)


def first(value: object) -> Callable[[list[object]], list[object]]:
    return lambda values: [value, *values[1:]]


@pytest.mark.parametrize(
    ("table", "column", "value", "words"),
    [
        ("repositories", "repository", "Bad Name", ("repositories/part-00000.parquet", "invalid repository name")),
        ("tags", "repository", "../../etc", ("tags/part-00000.parquet", "invalid repository name")),
        ("tags", "digest", "md5:" + "a" * 32, ("tags/part-00000.parquet", "invalid digest")),
        ("references", "digest", "junk", ("references/part-00000.parquet", "invalid digest")),
        ("tags", "tag", "-no", ("tags/part-00000.parquet", "invalid tag")),
        ("findings", "kind", "made-up", ("findings/part-00000.parquet", "unknown kind")),
        ("blobs", "size", -(1 << 50), ("blobs/part-00000.parquet", "negative")),
        ("uploads", "bytes", -1, ("uploads/part-00000.parquet", "negative")),
        ("blobs", "digest", None, ("blobs/part-00000.parquet", "empty")),
    ],
    ids=["repository", "tag-repository", "tag-digest", "reference-digest", "tag", "finding", "size", "upload", "null"],
)
@pytest.mark.parametrize(
    "args",
    [("check",), ("report", "-f", "prometheus"), ("report", "-f", "html", "-o", "{out}/page.html"), ("untagged",)],
    ids=["check", "prometheus", "html", "untagged"],
)
def test_a_table_holding_what_no_scan_writes_is_refused(
    table: str,
    column: str,
    value: object,
    words: tuple[str, ...],
    args: tuple[str, ...],
    copy: Callable[[str], Path],
) -> None:
    snap = copy("crafted")
    if table == "findings":
        # The demo's scan found nothing: give its findings table one row to change.
        path = snap / "findings" / "part-00000.parquet"
        data = pq.read_table(path)
        row = {"kind": "stray-file", "severity": "warning", "repository": None, "path": "x", "digest": None}
        pq.write_table(pa.Table.from_pylist([row | {"detail": "d"}], schema=data.schema), path)
    rewrite(snap, table, column, first(value))
    command, *rest = (a.format(out=snap.parent) for a in args)
    code, out, err = cli(command, str(snap), *rest)
    assert out == ""
    refused(code, err, f"{snap}: unreadable snapshot", *words)


def test_a_part_with_a_column_of_another_type_is_refused(copy: Callable[[str], Path]) -> None:
    snap = copy("typed")
    path = snap / "blobs" / "part-00000.parquet"
    data = pq.read_table(path)
    at = data.schema.get_field_index("size")
    pq.write_table(data.set_column(at, "size", data.column("size").cast(pa.string())), path)
    code, _, err = cli("untagged", str(snap))
    refused(code, err, "blobs/part-00000.parquet: column size holds string, not integers")


def test_naive_times_in_a_part_are_refused(copy: Callable[[str], Path]) -> None:
    snap = copy("naive-part")
    path = snap / "blobs" / "part-00000.parquet"
    data = pq.read_table(path)
    at = data.schema.get_field_index("mtime")
    pq.write_table(data.set_column(at, "mtime", data.column("mtime").cast(pa.timestamp("ns"))), path)
    code, _, err = cli("untagged", str(snap))
    refused(code, err, "blobs/part-00000.parquet: column mtime holds timestamp[ns], not times with a time zone")


def test_a_view_of_another_schema_is_refused(copy: Callable[[str], Path]) -> None:
    snap = copy("view")
    pq.write_table(pa.table({"repository": ["a"], "bytes": [1]}), snap / "report-repository.parquet")
    code, out, err = cli("report", str(snap), "--by", "repository")
    assert out == ""
    refused(code, err, "report-repository.parquet: not the repository view this version reads: no column tags")


def test_a_view_with_negative_sizes_is_refused(copy: Callable[[str], Path]) -> None:
    # Once shown as "-909.5 TiB".
    snap = copy("negative-view")
    path = snap / "report-summary.parquet"
    data = pq.read_table(path)
    at = data.schema.get_field_index("physical_bytes")
    pq.write_table(data.set_column(at, "physical_bytes", pa.array([-(1 << 50)], type=pa.int64())), path)
    code, out, err = cli("report", str(snap))
    assert out == ""
    refused(code, err, "report-summary.parquet: column physical_bytes holds negative values")


@pytest.mark.parametrize("value", ["2026-01-01T00:00:00", "yesterday", 5])
def test_a_scan_time_without_its_offset_is_refused(value: object, snapshot: Path, copy: Callable[[str], Path]) -> None:
    snap = copy("naive")
    meta = json.loads((snap / METADATA_FILE).read_text())
    (snap / METADATA_FILE).write_text(json.dumps(meta | {"scanned_at": value}))
    for args in (["diff", str(snap), str(snapshot)], ["report", str(snap)], ["untagged", str(snap)]):
        code, out, err = cli(*args)
        assert out == ""
        refused(code, err, "metadata.json: scanned_at", "not a time with its UTC offset")


def test_metadata_bigger_than_any_snapshot_writes_is_refused(copy: Callable[[str], Path]) -> None:
    snap = copy("big-meta")
    meta = json.loads((snap / METADATA_FILE).read_text())
    (snap / METADATA_FILE).write_text(json.dumps(meta | {"padding": "x" * (5 << 20)}))
    code, _, err = cli("report", str(snap))
    refused(code, err, "metadata.json: larger than")


def test_a_whole_snapshot_still_reads_as_it_was_written(snapshot: Path) -> None:
    # Everything refused above is refused for what it is: the snapshot they were made from reads as ever.
    for args in (["untagged", "-f", "json"], ["report", "--by", "repository", "-f", "json"], ["check", "-f", "json"]):
        code, out, err = cli(args[0], str(snapshot), *args[1:])
        assert code == 0, err
        assert json.loads(out)


def test_a_part_that_is_no_parquet_file_is_named(copy: Callable[[str], Path]) -> None:
    snap = copy("garbage")
    (snap / "blobs" / "part-00000.parquet").write_bytes(b"not parquet")
    code, _, err = cli("untagged", str(snap))
    refused(code, err, f"{snap}: unreadable snapshot: blobs/part-00000.parquet: not a Parquet file")

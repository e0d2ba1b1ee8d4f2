"""Scans of the real-registry fixtures equal their expected facts; snapshots give identical inventories."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from storage_audit.inventory.codes import CodedDtype
from storage_audit.inventory.schema import CODED
from storage_audit.inventory.tables import SCHEMA, read_snapshot, write_snapshot
from storage_audit.roots.resolve import LocalTree, RootError, Snapshot, resolve
from storage_audit.scan.run import ScanOptions, scan
from storage_audit.storage.base import LocalStorage

from .conftest import FIXTURES, REAL_FIXTURES
from .facts import inventory_facts, load_expected

V2 = Path("docker/registry/v2")


def test_there_are_fixtures() -> None:
    assert {"basic", "multiarch", "referrers", "churn"} <= set(REAL_FIXTURES)


@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_scan_equals_expected_facts(name: str, fixture_root) -> None:  # type: ignore[no-untyped-def]
    inv = scan(LocalStorage(fixture_root(name) / V2))
    assert inventory_facts(inv) == load_expected(FIXTURES / f"{name}.expected.json")


@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_clean_fixtures_have_no_error_or_warning(name: str, fixture_root) -> None:  # type: ignore[no-untyped-def]
    inv = scan(LocalStorage(fixture_root(name) / V2))
    assert set(inv.findings["severity"]) <= {"info"}, inv.findings.to_string()


@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_dtypes_follow_the_schema(name: str, fixture_root) -> None:  # type: ignore[no-untyped-def]
    inv = scan(LocalStorage(fixture_root(name) / V2))
    for table, df in inv.tables().items():
        assert list(df.columns) == list(SCHEMA[table]), table
        for column, (dtype, _) in SCHEMA[table].items():
            if column in CODED.get(table, {}):
                # Text held as codes into the inventory's dictionaries; the strings themselves come out.
                assert isinstance(df[column].dtype, CodedDtype), (table, column)
                assert all(isinstance(v, str) for v in df[column].dropna()), (table, column)
            else:
                assert str(df[column].dtype) == str(pd.Series([], dtype=dtype).dtype), (table, column)
    assert inv.blobs["digest"].str.fullmatch(r"sha256:[0-9a-f]{64}").all()
    assert str(inv.blobs["mtime"].dt.tz) == "UTC"


@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_snapshot_round_trip_is_identical(name: str, fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inv = scan(LocalStorage(fixture_root(name) / V2))
    write_snapshot(inv, tmp_path / "snap")
    again = read_snapshot(tmp_path / "snap")
    assert again.root == inv.root
    for table, df in inv.tables().items():
        pd.testing.assert_frame_equal(getattr(again, table), df, check_exact=True)


def test_root_forms(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = fixture_root("basic")
    v2 = (root / V2).resolve()
    for given in (root, root / V2):
        found = resolve(given)
        assert isinstance(found, LocalTree) and found.storage.v2 == found.location == str(v2)
    snap = tmp_path / "snap"
    write_snapshot(scan(LocalStorage(v2)), snap)
    assert resolve(snap) == Snapshot(snap.resolve())
    for bad in (tmp_path / "missing", FIXTURES / "basic.tar.gz", tmp_path):
        with pytest.raises(RootError):
            resolve(bad)


def test_permission_denied_is_a_finding(fixture_root, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # Tests run as root, where chmod cannot deny a read: simulate the kernel's answer.
    root = fixture_root("basic") / V2
    real_open, real_scandir = os.open, os.scandir

    def deny_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith("tags/latest/current/link") or "/_uploads/" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def deny_scandir(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("tools"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "open", deny_open)
    monkeypatch.setattr(os, "scandir", deny_scandir)
    inv = scan(LocalStorage(root))
    unreadable = inv.findings[inv.findings["kind"] == "unreadable"]
    assert "repositories/team/app/_manifests/tags/latest/current/link" in set(unreadable["path"])
    assert "repositories/tools" in set(unreadable["path"])
    assert (unreadable["severity"] == "error").all()
    # The rest of the tree was still read.
    assert "team/app/server" in set(inv.repositories["repository"])


@pytest.mark.parametrize("name", ["basic", "multiarch"])
def test_worker_processes_give_the_same_inventory(name: str, fixture_root) -> None:  # type: ignore[no-untyped-def]
    v2 = fixture_root(name) / V2
    alone = scan(LocalStorage(v2), ScanOptions(workers=1))
    shared = scan(LocalStorage(v2), ScanOptions(workers=2))
    for table, df in alone.tables().items():
        pd.testing.assert_frame_equal(getattr(shared, table), df, check_exact=True, obj=table)
    assert len(alone.blobs) > 0 and len(alone.revisions) > 0


@pytest.mark.parametrize("name", ["multiarch", "churn"])
def test_parts_coded_as_they_come_or_together_give_the_same_inventory(
    name: str,
    fixture_root,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A small tree is coded in one go once read; a big one each time CODE_ROWS rows are held.
    from storage_audit.scan import run

    v2 = fixture_root(name) / V2
    together = scan(LocalStorage(v2), ScanOptions(workers=2))
    monkeypatch.setattr(run, "CODE_ROWS", 1)
    apart = scan(LocalStorage(v2), ScanOptions(workers=2))
    for table, df in together.tables().items():
        pd.testing.assert_frame_equal(getattr(apart, table), df, check_exact=True, obj=table)
    assert len(together.blobs) > 0 and len(together.references) > 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
@pytest.mark.parametrize("name", ["multiarch", "churn"])
def test_forked_workers_give_the_same_inventory_and_totals(name: str, fixture_root) -> None:  # type: ignore[no-untyped-def]
    # The command line forks its workers while it has one thread, and spawns them once pandas runs threads.
    v2 = fixture_root(name) / V2
    start = (
        "import storage_audit.cli.app\n"
        "from storage_audit.scan import run as s\n"
        "from storage_audit.storage.base import LocalStorage\n"
        f"v2 = LocalStorage({str(v2)!r})\n"
        "assert s._start_method().get_start_method() == 'fork'\n"
        "def show(t, found):\n"
        "    print(sorted((k, n) for k, n in t.rows.items() if n), t.unlinked_revisions, t.blob_bytes, found)\n"
    )
    scan_program = start + (
        "forked = s.scan(v2, s.ScanOptions(workers=2))\n"
        "assert s._start_method().get_start_method() == 'spawn', 'pandas runs threads: no more forks'\n"
        "alone = s.scan(v2, s.ScanOptions(workers=1))\n"
        "import pandas.testing\n"
        "for table, df in alone.tables().items():\n"
        "    pandas.testing.assert_frame_equal(getattr(forked, table), df, check_exact=True, obj=table)\n"
        "show(s.Totals.of(alone.tables()), len(alone.findings))\n"
    )
    tally_program = start + "totals, found = s.tally(v2, s.ScanOptions(workers=2))\n" + "show(totals, len(found))\n"
    outputs = []
    for program in (scan_program, tally_program):
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert "('blobs', " in outputs[0] and "('references', " in outputs[0], outputs[0]


def test_a_worker_reads_the_tree_without_pyarrow_or_pandas(fixture_root) -> None:  # type: ignore[no-untyped-def]
    # A scan worker loads neither (each takes a CPU-second or so to import); the walk must not need them.
    v2 = fixture_root("multiarch") / V2
    program = (
        "import sys\n"
        "from storage_audit.scan.walk import Walker, read_manifest_units, walk_units\n"
        f"v2 = {str(v2)!r}\n"
        "repos, prefixes = Walker(v2).units()\n"
        "part = walk_units(v2, repos, prefixes)\n"
        "repository, digest = part.tables['revisions'][:2]\n"
        "parsed = read_manifest_units(v2, list(zip(repository, digest)))\n"
        "loaded = sorted({'pyarrow', 'pandas', 'numpy'} & set(sys.modules))\n"
        "assert not loaded, f'loaded: {loaded}'\n"
        "print(len(part.tables['blobs'][0]), len(parsed.tables['references'][0]))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    blobs, references = map(int, done.stdout.split())
    inv = scan(LocalStorage(v2), ScanOptions(workers=1))
    assert (blobs, references) == (len(inv.blobs), len(inv.references))


def test_namespaces_are_shared_out_by_their_children(fixture_copy) -> None:  # type: ignore[no-untyped-def]
    # basic holds team/app (with team/app/server nested in it) and tools/multi, below two mere namespaces.
    from storage_audit.scan.walk import Walker

    v2 = fixture_copy("basic") / V2
    repos, _ = Walker(v2).units()
    assert repos == ["team", "tools"]
    assert Walker(v2).split_namespaces(repos) == ["team/app", "tools/multi"]
    # Anything but repository directories keeps a namespace whole: its walk reports the stray file.
    (v2 / "repositories" / "tools" / "notes.txt").write_text("not a repository\n")
    assert Walker(v2).split_namespaces(repos) == ["team/app", "tools"]
    alone = scan(LocalStorage(v2), ScanOptions(workers=1))
    shared = scan(LocalStorage(v2), ScanOptions(workers=2))
    for table, df in alone.tables().items():
        pd.testing.assert_frame_equal(getattr(shared, table), df, check_exact=True, obj=table)
    assert "repositories/tools/notes.txt" in set(shared.findings["path"])


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("string", ("sha256:" + "a" * 64, "café", None, "")),
        ("string", ()),
        ("Int64", (1, None, -3)),
        ("int64", (0, 2**62)),
        ("bool", (True, False, None)),
        ("datetime64[ns, UTC]", (1_700_000_000_123_456_789, None)),
    ],
)
def test_packed_columns_give_back_their_values(kind: str, values: tuple[object, ...]) -> None:
    import pickle

    import pyarrow as pa

    from storage_audit.scan.rows import Packed, pack
    from storage_audit.scan.run import _unpacked

    packed = pickle.loads(pickle.dumps(pack(kind, values)))
    assert isinstance(packed, Packed)
    assert list(packed) == list(values) and len(packed) == len(values)
    arrow_type = {
        "string": pa.large_string(),
        "Int64": pa.int64(),
        "int64": pa.int64(),
        "bool": pa.bool_(),
        "datetime64[ns, UTC]": pa.timestamp("ns", tz="UTC"),
    }[kind]
    made = _unpacked(packed, arrow_type, pa.system_memory_pool())
    made.validate(full=True)
    assert made.equals(pa.array(list(values), type=arrow_type))


def test_columns_that_do_not_pack_are_sent_as_they_are() -> None:
    from storage_audit.scan.rows import pack

    # A lone surrogate is no UTF-8, an integer past 64 bits no int64: both stay Python values.
    assert pack("string", ("\udcff", None)) == ("\udcff", None)
    assert pack("int64", (2**70,)) == (2**70,)

"""Shared test helpers: the command line in-process, the fixture registries shipped in fixtures/ unpacked once
per run, and the markers of what drives the registry."""

from __future__ import annotations

import atexit
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import click

    from storage_audit.inventory.tables import Inventory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL_FIXTURES = sorted(p.name.removesuffix(".tar.gz") for p in FIXTURES.glob("*.tar.gz"))
BROKEN = FIXTURES / "broken"


# --------------------------------------------------------------------------
# The command line, in this process


class Ran(tuple[int, str, str]):
    """What one run of the command line gave: `(exit_code, stdout, stderr)`, and `output`, both as a terminal
    shows them interleaved."""

    output: str

    def __new__(cls, exit_code: int, stdout: str, stderr: str, output: str) -> Ran:
        ran = super().__new__(cls, (exit_code, stdout, stderr))
        ran.output = output
        return ran

    @property
    def exit_code(self) -> int:
        return self[0]

    @property
    def stdout(self) -> str:
        return self[1]

    @property
    def stderr(self) -> str:
        return self[2]


@functools.cache
def _command() -> click.Command:
    """The app as one click command, built once: typer builds it anew from the signatures on every invoke."""
    import typer.main

    from storage_audit.cli.app import app

    return typer.main.get_command(app)


def cli(
    *args: str | Path,
    env: Mapping[str, str | None] | None = None,
    input: str | None = None,
    expect: Collection[int] | None = None,
) -> Ran:
    """Run `storage-audit ARGS...` in this process, with `env` laid over the environment (None unsets a
    variable) and `input` as stdin; with `expect`, the exit code must be one of those.

    The tool turns every failure into an exit code and a line on stderr: an
    exception that escapes it is a bug, and fails the calling test with its traceback.
    """
    from typer.testing import CliRunner

    def text(stream: Any) -> str:
        return str(stream.getvalue().decode("utf-8", "replace").replace("\r\n", "\n"))

    runner = CliRunner()
    command = _command()
    code: int | str | None = 0
    with runner.isolation(input=input, env=env) as streams:
        try:
            command.main(args=[str(a) for a in args], prog_name=runner.get_default_prog_name(command))
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        stdout, stderr, output = map(text, streams)
    assert code is None or isinstance(code, int), f"exit with {code!r}"
    ran = Ran(code or 0, stdout, stderr, output)
    assert expect is None or ran.exit_code in expect, (args, ran.exit_code, ran.stderr)
    return ran


# --------------------------------------------------------------------------
# The command line in a process of its own, with its peak memory

# The child's peak resident memory is its VmHWM, read as it exits: the resource usage of a child (ru_maxrss)
# also takes in the memory of the test process it was forked from, which Linux carries over across exec.
_PEAK_PROGRAM = """
import atexit, os, sys
def _peak():
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(os.environ["STORAGE_AUDIT_TEST_PEAK"], "w") as out:
        out.write(str(kib))
atexit.register(_peak)
from storage_audit.__main__ import main
sys.argv = ["storage-audit", *sys.argv[1:]]
main()
"""


def peak_run(
    args: Collection[str | Path], env: Mapping[str, str], scratch: Path, **popen: Any
) -> tuple[subprocess.CompletedProcess[str], int]:
    """`storage-audit ARGS` run in a process of its own with environment `env` (text output captured unless
    `popen` says otherwise): what it gave, and its peak resident memory in bytes."""
    peak = scratch / f"peak-{os.getpid()}-{len(list(scratch.iterdir()))}"
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_PROGRAM, *map(str, args)],
        env={**env, "STORAGE_AUDIT_TEST_PEAK": str(peak)},
        text=True,
        check=False,
        **({"capture_output": True} | popen),
    )
    return done, int(peak.read_text()) * 1024


# --------------------------------------------------------------------------
# The fixture registries, unpacked once per run


_UNPACKED: dict[Path, Path] = {}
_FINGERPRINTS: dict[Path, str] = {}


def _extract(archive: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="tar")
    return into


@functools.cache
def _unpacked_here() -> Path:
    """Where this process keeps the archives it unpacked, removed when it ends."""
    place = Path(tempfile.mkdtemp(prefix="storage-audit-fixtures-"))
    atexit.register(shutil.rmtree, place, ignore_errors=True)
    return place


def unpacked(archive: Path) -> Path:
    """The fixture archive unpacked once in this run, shared: to read, never to change (see `shared_root`)."""
    tree = _UNPACKED.get(archive)
    if tree is None:
        parent = archive.parent.name if archive.parent != FIXTURES else ""
        tree = _extract(archive, _unpacked_here() / parent / archive.name.removesuffix(".tar.gz"))
        _UNPACKED[archive] = tree
        _FINGERPRINTS[tree] = fingerprint(tree)
    return tree


def unpack(archive: Path, into: Path) -> Path:
    """A copy of a fixture archive's tree of one's own in `into` (made if missing); returns the registry root.

    Copied from the tree unpacked once, with every mode and time as the
    archive has them: `into` itself is left as it is.
    """
    into.mkdir(parents=True, exist_ok=True)
    tree = unpacked(archive)
    for entry in tree.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, into / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, into / entry.name, follow_symlinks=False)
    return into


def fingerprint(root: Path) -> str:
    """A digest of every name, type, mode, size, mtime and content under `root`: what a change would alter."""
    digest = hashlib.sha256()
    for top, dirs, names in os.walk(root):
        dirs.sort()
        for name in [*dirs, *sorted(names)]:
            path = os.path.join(top, name)
            st = os.lstat(path)
            digest.update(os.fsencode(os.path.relpath(path, root)))
            digest.update(f"\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    digest.update(hashlib.sha256(fh.read()).digest())
            elif stat.S_ISLNK(st.st_mode):
                digest.update(os.fsencode(os.readlink(path)))
    return digest.hexdigest()


def built_at(archive: Path) -> datetime:
    """When a fixture registry was built: the newest mtime in its archive."""
    with tarfile.open(archive) as tar:
        return datetime.fromtimestamp(max(m.mtime for m in tar.getmembers()), UTC)


@functools.cache
def fixtures_built() -> datetime:
    """When the newest real-registry fixture was built: their times are all at or before it."""
    return max(built_at(FIXTURES / f"{name}.tar.gz") for name in REAL_FIXTURES)


@pytest.fixture
def pin_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], datetime]:
    """A function that sets the library's clock (STORAGE_AUDIT_NOW, inherited by subprocesses) to a time."""

    def pin(when: datetime) -> datetime:
        monkeypatch.setenv("STORAGE_AUDIT_NOW", when.isoformat())
        return when

    return pin


def as_of(inv: Inventory, when: datetime | str) -> Inventory:
    """The inventory as if scanned at `when`: a fixture is judged as of its build, so that its uploads never age."""
    moment = datetime.fromisoformat(when) if isinstance(when, str) else when
    return dataclasses.replace(inv, scanned_at=moment)


@pytest.fixture
def shared_root() -> Iterator[Callable[[Path], Path]]:
    """A function from a fixture archive to its tree unpacked once in this run, which the test must not change.

    A test that changed one fails when it ends: it needs a copy of its own (`unpack`).
    """
    used: set[Path] = set()

    def get(archive: Path) -> Path:
        tree = unpacked(archive)
        used.add(tree)
        return tree

    yield get
    changed = [tree for tree in sorted(used) if fingerprint(tree) != _FINGERPRINTS[tree]]
    for tree in changed:
        # The next test gets the archive unpacked anew.
        del _UNPACKED[next(archive for archive, unpacked in _UNPACKED.items() if unpacked == tree)]
        shutil.rmtree(tree)
    assert not changed, f"the test changed the shared tree {changed[0].name}: it needs a copy of its own"


@pytest.fixture
def fixture_root(shared_root: Callable[[Path], Path]) -> Callable[[str], Path]:
    """A function from the name of a real-registry fixture to its shared root (see `shared_root`)."""

    def get(name: str) -> Path:
        return shared_root(FIXTURES / f"{name}.tar.gz")

    return get


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Callable[[str], Path]:
    """A function from the name of a real-registry fixture to a copy of its tree of the test's own, to change."""

    def make(name: str) -> Path:
        return unpack(FIXTURES / f"{name}.tar.gz", tmp_path / name)

    return make


def fixture_builder() -> ModuleType:
    """fixtures/build.py as a module (fixtures/ is a directory of data with scripts, not a package)."""
    module = sys.modules.get("fixtures_build")
    if module is None:
        spec = importlib.util.spec_from_file_location("fixtures_build", FIXTURES / "build.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["fixtures_build"] = module
        spec.loader.exec_module(module)
    return module


# The S3 server, the GCS and Azure emulators and the registry fixtures live with their harnesses.
pytest_plugins = ["tests.s3_harness", "tests.cloud_harness"]


# What drives the reference registry or the S3 server, found from the source of a test and of its fixtures:
# `python -m pytest -m "not registry and not slow and not browser"` is the quick subset.
REGISTRY_CALLS = (
    "require_registry(",
    "Registry(",
    "garbage_collect(",
    "require_weed(",
    "SeaweedS3(",
    "require_cloud_emulator(",
)


def _drives_the_registry(item: pytest.Item) -> bool:
    functions = [getattr(item, "function", None)]
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is not None:
        for name in item.fixturenames:  # type: ignore[attr-defined]
            functions += [definition.func for definition in fixture_info.name2fixturedefs.get(name, ())]
    return any(_calls_the_registry(function) for function in functions)


@functools.cache
def _calls_the_registry(function: Callable[..., Any] | None) -> bool:
    # Once per function: a parametrized test and a shared fixture would otherwise be read and tokenized per item.
    try:
        source = inspect.getsource(function)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return False
    return any(call in source for call in REGISTRY_CALLS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _drives_the_registry(item):
            item.add_marker(pytest.mark.registry)
        # Property tests run many examples: seconds each, not milliseconds.
        if getattr(getattr(item, "function", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.slow)


# --------------------------------------------------------------------------
# Spark in local mode, one session for the whole run


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A SparkSession in local mode (two threads, no web UI), shared by every test of the run; its JVM is
    stopped by pid at the end."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from storage_audit.analysis.engine import SPARK_CONF

    builder = (
        SparkSession.builder.master("local[2]")
        .appName("storage-audit-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        # Small tables: a few partitions per shuffle, not the 200 sized for a cluster.
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
    )
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    gateway = SparkContext._gateway
    jvm = getattr(gateway, "proc", None)
    try:
        yield session
    finally:
        session.stop()
        if gateway is not None:
            gateway.shutdown()
        SparkContext._gateway = None
        SparkContext._jvm = None
        if jvm is not None:
            jvm.terminate()
            jvm.wait(timeout=30)

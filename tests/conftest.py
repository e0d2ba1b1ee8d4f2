"""Shared test helpers: unpack the fixture registries shipped in fixtures/; mark what drives the registry."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import sys
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from storage_audit.inventory.tables import Inventory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL_FIXTURES = sorted(p.name.removesuffix(".tar.gz") for p in FIXTURES.glob("*.tar.gz"))
BROKEN = FIXTURES / "broken"


def unpack(archive: Path, into: Path) -> Path:
    """Extract a fixture archive into `into` and return the registry root (holding docker/)."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="tar")
    return into


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
def fixture_root(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A function that unpacks the named real-registry fixture and returns its root."""

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


# The S3 server and registry fixtures live with their harness.
pytest_plugins = ["tests.s3_harness"]


# What drives the reference registry or the S3 server, found from the source of a test and of its fixtures:
# `python -m pytest -m "not registry and not slow and not browser"` is the quick subset.
REGISTRY_CALLS = ("require_registry(", "Registry(", "garbage_collect(", "require_weed(", "SeaweedS3(")


def _drives_the_registry(item: pytest.Item) -> bool:
    functions = [getattr(item, "function", None)]
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is not None:
        for name in item.fixturenames:  # type: ignore[attr-defined]
            functions += [definition.func for definition in fixture_info.name2fixturedefs.get(name, ())]
    for function in functions:
        try:
            source = inspect.getsource(function)  # type: ignore[arg-type]
        except (OSError, TypeError):
            continue
        if any(call in source for call in REGISTRY_CALLS):
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _drives_the_registry(item):
            item.add_marker(pytest.mark.registry)
        # Property tests run many examples: seconds each, not milliseconds.
        if getattr(getattr(item, "function", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.slow)

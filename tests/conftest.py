"""Shared test helpers: unpack the fixture registries shipped in fixtures/."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL_FIXTURES = sorted(p.name.removesuffix(".tar.gz") for p in FIXTURES.glob("*.tar.gz"))
BROKEN = FIXTURES / "broken"


def unpack(archive: Path, into: Path) -> Path:
    """Extract a fixture archive into `into` and return the registry root (holding docker/)."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="tar")
    return into


@pytest.fixture
def fixture_root(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A function that unpacks the named real-registry fixture and returns its root."""

    def make(name: str) -> Path:
        return unpack(FIXTURES / f"{name}.tar.gz", tmp_path / name)

    return make

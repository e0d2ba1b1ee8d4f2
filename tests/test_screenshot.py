"""benchmarks/screenshot.py, which makes docs/report.png: the page it builds, on a small tree, and the tree it dates."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import cli

# Each test makes a synthetic registry of its own: seconds.
pytestmark = pytest.mark.slow

TOP = Path(__file__).resolve().parents[1]
SCRIPT = TOP / "benchmarks" / "screenshot.py"
NOW = datetime.fromisoformat("2026-12-01T09:00:00+00:00")  # the script's pinned time, written out here


def screenshot(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(TOP))
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def small_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("work")
    page = work / "page.html"
    done = screenshot(
        "--html-only", str(page), "--work", str(work), "--repositories", "30", "--manifests", "200", "--blobs", "800"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {page}\n"
    return work / "registry", page


def test_the_page_is_of_the_synthetic_tree_as_of_the_pinned_time(small_page: tuple[Path, Path]) -> None:
    root, page = small_page
    text = page.read_text(encoding="utf-8")
    assert "in 30 repositories" in text
    assert '<span id="scanned-at">2026-12-01 09:00:00 UTC</span>' in text
    assert f"{root}/docker/registry/v2" in text


@pytest.mark.slow
def test_the_tree_is_dated_over_two_years_before_the_pinned_time(
    small_page: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = small_page
    monkeypatch.setenv("STORAGE_AUDIT_NOW", NOW.isoformat())
    tags = json.loads(cli("report", root, "--by", "tag", "-f", "json", expect=[0]).stdout)
    pushed = sorted(datetime.fromisoformat(tag["pushed_at"]) for tag in tags)
    assert NOW - timedelta(days=2 * 365) <= pushed[0] and pushed[-1] <= NOW
    assert pushed[-1] - pushed[0] > timedelta(days=90)
    uploads = json.loads(cli("report", root, "--by", "upload", "-f", "json", expect=[0]).stdout)
    assert uploads and all(0 <= upload["age"] <= 2 * 365 * 86400 for upload in uploads)


def test_a_work_directory_it_did_not_build_is_left_alone(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    (registry / "docker" / "registry" / "v2").mkdir(parents=True)
    done = screenshot("--html-only", str(tmp_path / "page.html"), "--work", str(tmp_path))
    assert done.returncode == 1
    assert re.search(r"registry exists and was not built by this script", done.stderr)
    assert (registry / "docker" / "registry" / "v2").is_dir()

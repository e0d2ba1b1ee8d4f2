"""The HTML page's bar charts, drawn in chromium: their axes tick in the binary units of every size on the page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from storage_audit.core.clock import ENV
from tests.conftest import cli

from .browser import Page, browser, require_chromium
from .conftest import FIXTURES, fixtures_built

BINARY = re.compile(r"0 B|[\d,]+(\.\d+)? (B|KiB|MiB|GiB|TiB)")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Page]:
    with browser(require_chromium()) as tab:
        yield tab


def axis(tab: Page, chart: str) -> tuple[list[str], list[int]]:
    """The tick labels of a bar chart's value axis as drawn, and the values of its bars."""
    return (
        tab.evaluate(f"Array.from(document.querySelectorAll('#{chart} .xtick text')).map(t => t.textContent)"),
        tab.evaluate(f"Array.from(document.getElementById('{chart}').data[0].x)"),
    )


@pytest.mark.browser
def test_bar_axes_tick_in_binary_units(chromium: Page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, (fixtures_built() + timedelta(days=30)).isoformat())
    page = tmp_path / "demo.html"
    result = cli("report", FIXTURES / "demo", "-f", "html", "-o", page, "-q")
    assert result.exit_code == 0, result.stderr
    chromium.open(page)
    # The demo's bars: 933 bytes untagged manifests free, tags of 1.0 to 2.4 KiB.
    labels, values = axis(chromium, "reclaimable")
    assert values == [933]
    assert labels == ["0 B", "200 B", "400 B", "600 B", "800 B", "1,000 B"]
    labels, values = axis(chromium, "largest-tags")
    assert 2048 < max(values) < 2560
    assert labels == ["0 B", "0.5 KiB", "1 KiB", "1.5 KiB", "2 KiB", "2.5 KiB"]
    for chart in ("reclaimable", "largest-tags"):
        for label in axis(chromium, chart)[0]:
            assert BINARY.fullmatch(label), (chart, label)
    # A chart is as high as its bars need: 22 pixels a bar, 60 for the axis, 160 at least.
    height = chromium.evaluate("document.getElementById('largest-tags').layout.height")
    assert height == max(160, 60 + 22 * len(values))

"""The HTML report: opened in a headless chromium with no network, its figures read back and compared with the JSON
that `report`, `untagged`, `orphans` and `check` write for the same storage."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from storage_audit.analysis.graph import Graph
from storage_audit.operations.inventory import load
from storage_audit.output.html import AGE_BUCKETS, HtmlOptions, page
from storage_audit.roots.resolve import resolve

from .browser import Page, browser, require_chromium
from .conftest import FIXTURES, cli, fixtures_built
from .registry_harness import REQUIRE_ENV

TOP = Path(__file__).resolve().parents[1]
DEMO = FIXTURES / "demo"
CHARTS = ("treemap", "reclaimable", "actions", "largest-tags", "tag-ages")


@pytest.fixture(autouse=True)
def month_after_the_fixtures(pin_clock: Callable[[datetime], datetime]) -> None:
    """Every page and every command's answer as of one time, a month after the fixtures were built: the demo's
    upload is stale by then, and its tags' ages are the same on any day the tests run."""
    pin_clock(fixtures_built() + timedelta(days=30))


def as_json(*args: str) -> Any:
    code, out, err = cli(*args, "-f", "json")
    assert code in (0, 3), err
    return json.loads(out)


# --------------------------------------------------------------------------
# The command line


def test_html_without_output_is_refused_in_one_line() -> None:
    code, out, err = cli("report", str(DEMO), "--format", "html")
    assert code == 2
    assert out == ""
    assert err.strip() == "storage-audit: error: --format html writes a page for a browser: add -o FILE"


@pytest.mark.parametrize("extra", [["--by", "tag"], ["--top", "3"], ["--sort", "tags"], ["--repository", "team/*"]])
def test_html_refuses_the_options_of_row_views(extra: list[str], tmp_path: Path) -> None:
    code, _, err = cli("report", str(DEMO), "-f", "html", "-o", str(tmp_path / "r.html"), *extra)
    assert code == 2
    assert "--format html reports the whole storage" in err
    assert not (tmp_path / "r.html").exists()


def test_html_to_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    code, _, err = cli("report", str(DEMO), "-f", "html", "-o", str(tmp_path / "missing" / "r.html"), "-q")
    assert code == 2
    assert err.startswith("storage-audit: error: ") and err.count("\n") == 1


@pytest.mark.slow
def test_a_snapshot_gives_the_same_page_as_its_tree(tmp_path: Path) -> None:
    assert cli("scan", str(DEMO), "-o", str(tmp_path / "snap"), "-q")[0] == 0
    assert cli("report", str(DEMO), "-f", "html", "-o", str(tmp_path / "tree.html"), "-q")[0] == 0
    assert cli("report", str(tmp_path / "snap"), "-f", "html", "-o", str(tmp_path / "snap.html"), "-q")[0] == 0
    tree, snap = ((tmp_path / n).read_text() for n in ("tree.html", "snap.html"))
    # Every figure the page holds for a program: cards, action shares, tag ages, table cells, rows left out.
    figures = re.compile(r'data-(?:key|value|bytes|left-out|total)="[^"]*"')
    assert len(figures.findall(tree)) > 60
    assert figures.findall(tree) == figures.findall(snap)
    assert f"storage-audit orphans {tmp_path / 'snap'} -f csv" in snap


@pytest.mark.slow
def test_the_page_references_nothing_outside_itself(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert cli("report", str(DEMO), "-f", "html", "-o", str(out), "-q")[0] == 0
    text = out.read_text()
    for needle in ("<script src", "<link", "<img", "@import", "url(http", "<iframe"):
        assert needle not in text.lower(), needle
    assert text.count("<script") >= 6  # plotly.js, one per chart, the table script


def test_a_missing_chromium_fails_the_tests_when_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        require_chromium()
    monkeypatch.delenv(REQUIRE_ENV)
    with pytest.raises(pytest.skip.Exception):
        require_chromium()


# --------------------------------------------------------------------------
# In the browser


@pytest.fixture(scope="module")
def chromium() -> Iterator[Page]:
    with browser(require_chromium()) as tab:
        yield tab


def demo_page(out: Path) -> Path:
    code, _, err = cli("report", str(DEMO), "--format", "html", "-o", str(out))
    assert code == 0, err
    assert f"wrote {out}" in err
    return out


def open_page(tab: Page, path: Path, shot: Path) -> None:
    """Open the page with the network blocked; it asks for nothing but itself and throws nothing."""
    loaded = tab.open(path)
    assert loaded.requests == [loaded.url], loaded.requests
    assert loaded.failed == [] and loaded.console_errors == []
    tab.screenshot(shot)
    assert_drawn(tab, shot)


def assert_drawn(tab: Page, shot: Path) -> None:
    """Every chart made its SVG with marks in it, and the screenshot shows a page, not a blank."""
    drawn = tab.evaluate(
        f"Object.fromEntries({json.dumps(list(CHARTS))}.map(id => {{ const el = document.getElementById(id);"
        " return [id, el && el.classList.contains('js-plotly-plot') ? el.querySelectorAll('svg.main-svg path,"
        " svg.main-svg rect').length : -1]; }))"
    )
    assert all(drawn[c] > 0 for c in CHARTS), drawn
    image = Image.open(shot).convert("RGB")
    assert image.width >= 1000 and image.height >= 1500
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200
    white = max(colours)[0] / (image.width * image.height)
    assert white < 0.9


def cards(tab: Page) -> dict[str, str]:
    return dict(
        tab.evaluate("Array.from(document.querySelectorAll('[data-key]')).map(e => [e.dataset.key, e.dataset.value])")
    )


def table_rows(tab: Page, name: str) -> list[dict[str, str]]:
    return list(
        tab.evaluate(
            f"(() => {{ const t = document.getElementById('table-{name}'); if (!t) return [];"
            " const heads = Array.from(t.tHead.rows[0].cells).map(c => c.textContent);"
            " return Array.from(t.tBodies[0].rows).map(r => Object.fromEntries("
            " Array.from(r.cells).map((c, i) => [heads[i], c.dataset.value]))); })()"
        )
    )


def trace(tab: Page, div: str) -> dict[str, Any]:
    """The chart's first trace as plotly holds it after drawing."""
    return dict(
        tab.evaluate(
            f"(() => {{ const d = document.getElementById('{div}').data[0]; const out = {{}};"
            " for (const k of ['ids', 'labels', 'parents', 'values', 'x', 'y']) if (d[k]) out[k] = Array.from(d[k]);"
            " return out; })()"
        )
    )


SCANNED_AT = "%Y-%m-%d %H:%M:%S UTC"
SEVERITY_COLOURS = {
    "error": "rgb(179, 38, 30)",
    "warning": "rgb(161, 92, 0)",
    "info": "rgb(31, 95, 168)",
    "none": "rgb(29, 35, 48)",
}
STALE_SECONDS = 7 * 86400  # check's default --upload-age
DAY = 86400


def age_bucket(scanned: datetime, pushed_at: str | None) -> str:
    """The name of the page's bar a tag pushed at `pushed_at` counts in."""
    if pushed_at is None:
        return "unknown"
    days = max((scanned - datetime.fromisoformat(pushed_at)).total_seconds(), 0) / DAY
    for upper, name in AGE_BUCKETS:
        if days < upper:
            return name
    raise AssertionError(days)


def check_figures(tab: Page, root: Path, options: HtmlOptions) -> dict[str, Any]:
    """Every figure the page shows equals the JSON output of the commands for the same storage."""
    shown = cards(tab)
    summary = as_json("report", str(root))
    for key in ("physical_bytes", "logical_bytes", "orphan_bytes", "untagged_reclaimable_bytes", "upload_bytes"):
        assert int(shown[key]) == summary[key], key
    assert int(shown["repositories"]) == summary["repositories"]
    assert int(shown["tags"]) == summary["tags"]
    assert float(shown["dedup_ratio"]) == pytest.approx(summary["dedup_ratio"], rel=1e-9)
    assert int(shown["untagged manifests"]) == summary["untagged_reclaimable_bytes"]
    assert int(shown["orphan blobs"]) == summary["orphan_bytes"]

    findings = as_json("check", str(root), "-q")
    for severity in ("error", "warning", "info"):
        assert int(shown[f"findings_{severity}"]) == sum(f["severity"] == severity for f in findings)
    assert int(shown["findings"]) == len(findings)
    # The card is coloured by its worst finding: red for an error, amber for a warning, blue for info alone.
    worst = next((sev for sev in ("error", "warning", "info") if any(f["severity"] == sev for f in findings)), "none")
    card = tab.evaluate(
        "(() => { const c = document.querySelector(\"#cards [data-key='findings']\");"
        " return [c.dataset.severity, getComputedStyle(c.querySelector('.value')).color]; })()"
    )
    assert card == [worst, SEVERITY_COLOURS[worst]]

    repositories = as_json("report", str(root), "--by", "repository")
    by_name = {r["repository"]: r for r in repositories}
    tree = trace(tab, "treemap")
    leaves = {
        i.removeprefix("repo:"): v for i, v in zip(tree["ids"], tree["values"], strict=True) if i.startswith("repo:")
    }
    ranked = sorted(repositories, key=lambda r: (-r["total_bytes"], r["repository"]))
    assert set(leaves) == {r["repository"] for r in ranked[: options.treemap_repositories]}
    assert all(by_name[name]["total_bytes"] == value for name, value in leaves.items())
    rest = ranked[options.treemap_repositories :]
    if rest:
        other = dict(zip(tree["ids"], tree["values"], strict=True))["other"]
        assert other == sum(r["total_bytes"] for r in rest)
    assert dict(zip(tree["ids"], tree["values"], strict=True))["all"] == sum(r["total_bytes"] for r in repositories)

    freeing = sorted(
        (r for r in repositories if r["reclaimable_bytes"] > 0),
        key=lambda r: (-r["reclaimable_bytes"], r["repository"]),
    )
    if freeing:
        bars = trace(tab, "reclaimable")
        assert bars["y"] == [r["repository"] for r in freeing[: options.bars]]
        assert bars["x"] == [r["reclaimable_bytes"] for r in freeing[: options.bars]]

    tags = as_json("report", str(root), "--by", "tag")
    largest = sorted(
        (t for t in tags if t["exclusive_bytes"] > 0), key=lambda t: (-t["exclusive_bytes"], t["repository"], t["tag"])
    )
    bars = trace(tab, "largest-tags")
    assert bars["y"] == [f"{t['repository']}:{t['tag']}" for t in largest[: options.bars]]
    assert bars["x"] == [t["exclusive_bytes"] for t in largest[: options.bars]]
    ages = trace(tab, "tag-ages")
    assert sum(ages["y"]) == len(tags) and ages["x"][: len(AGE_BUCKETS)] == [name for _, name in AGE_BUCKETS]
    scanned = datetime.strptime(tab.evaluate("document.getElementById('scanned-at').textContent"), SCANNED_AT)
    expected = Counter(age_bucket(scanned.replace(tzinfo=UTC), t["pushed_at"]) for t in tags)
    assert dict(zip(ages["x"], ages["y"], strict=True)) == {name: expected[name] for name in ages["x"]}

    uploads = as_json("report", str(root), "--by", "upload")
    stale = [u for u in uploads if u["age"] is None or u["age"] > STALE_SECONDS]
    assert int(shown["stale uploads"]) == sum(u["bytes"] for u in stale)
    assert len(stale) == sum(f["kind"] == "stale-upload" for f in findings)

    untagged = as_json("untagged", str(root))
    untagged.sort(key=lambda r: (-r["reclaimable_bytes"], r["repository"], r["digest"]))
    rows = table_rows(tab, "untagged")
    assert [(r["repository"], r["digest"], int(r["reclaimable_bytes"])) for r in rows] == [
        (r["repository"], r["digest"], r["reclaimable_bytes"]) for r in untagged[: options.table_rows]
    ]
    orphans = as_json("orphans", str(root))
    rows = table_rows(tab, "orphans")
    assert [(r["digest"], int(r["size"])) for r in rows] == [(o["digest"], o["size"]) for o in orphans][
        : options.table_rows
    ]
    rows = table_rows(tab, "findings")
    assert [(r["kind"], r["path"]) for r in rows] == [(f["kind"], f["path"]) for f in findings][: options.table_rows]
    return {"untagged": untagged, "orphans": orphans, "findings": findings}


@pytest.mark.browser
def test_the_demo_page_draws_its_charts_and_shows_the_commands_figures(chromium: Page, tmp_path: Path) -> None:
    path = demo_page(tmp_path / "demo.html")
    open_page(chromium, path, tmp_path / "demo.png")
    listed = check_figures(chromium, DEMO, HtmlOptions())
    assert listed["untagged"] and listed["orphans"] and listed["findings"]
    left_out = chromium.evaluate("Array.from(document.querySelectorAll('[data-left-out]')).map(e => e.dataset.leftOut)")
    assert left_out == ["0", "0", "0"]


@pytest.mark.browser
def test_tables_sort_and_filter_in_the_page(chromium: Page, tmp_path: Path) -> None:
    open_page(chromium, demo_page(tmp_path / "demo.html"), tmp_path / "demo.png")
    orphans = as_json("orphans", str(DEMO))
    # Filter by a digest's first characters: one row stays, and the count says so.
    wanted = orphans[1]["digest"]
    visible = chromium.evaluate(
        "(() => { const i = document.querySelector(\"input[data-filter='orphans']\");"
        f" i.value = {json.dumps(wanted[7:19])}; i.dispatchEvent(new Event('input'));"
        " const rows = Array.from(document.getElementById('table-orphans').tBodies[0].rows).filter(r => !r.hidden);"
        " return [rows.map(r => r.cells[0].dataset.value),"
        " document.querySelector(\"[data-shown='orphans']\").textContent]; })()"
    )
    assert visible == [[wanted], f"1 of {len(orphans)} rows shown"]
    # Sort by size, smallest first after the second click.
    order = chromium.evaluate(
        "(() => { const th = document.querySelectorAll('#table-orphans th')[1]; th.click(); th.click();"
        " return Array.from(document.getElementById('table-orphans').tBodies[0].rows)"
        ".map(r => Number(r.cells[1].dataset.value)); })()"
    )
    assert order == sorted(o["size"] for o in orphans)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic tree: 60 repositories in nested namespaces, orphans, untagged manifests, uploads."""
    root = tmp_path_factory.mktemp("synthetic")
    subprocess.run(
        [
            sys.executable,
            str(TOP / "benchmarks" / "synth.py"),
            str(root),
            "--repositories",
            "60",
            "--manifests",
            "400",
            "--blobs",
            "1500",
            "--seed",
            "3",
        ],
        check=True,
        capture_output=True,
    )
    return root


@pytest.mark.browser
def test_a_synthetic_page_groups_small_repositories_and_caps_its_tables(
    chromium: Page, synthetic: Path, tmp_path: Path
) -> None:
    options = HtmlOptions(treemap_repositories=20, bars=10, table_rows=15)
    inv = load(resolve(synthetic))
    path = tmp_path / "synthetic.html"
    path.write_text(page(Graph(inv), options), encoding="utf-8")
    open_page(chromium, path, tmp_path / "synthetic.png")
    listed = check_figures(chromium, synthetic, options)
    left_out = chromium.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('section'))"
        ".filter(s => s.querySelector('[data-left-out]')).map(s => [s.id,"
        " [s.querySelector('[data-left-out]').dataset.leftOut, s.querySelector('.left-out code').textContent]]))"
    )
    for name, command in (("untagged", "untagged"), ("orphans", "orphans"), ("findings", "check")):
        assert len(listed[name]) > options.table_rows, name
        assert left_out[f"section-{name}"] == [
            str(len(listed[name]) - options.table_rows),
            f"storage-audit {command} {inv.root} -f csv",  # the library's default: the inventory's root
        ]
    labels = trace(chromium, "treemap")["labels"]
    assert "other: 40 smaller repositories" in labels


@pytest.mark.browser
def test_the_command_writes_a_page_of_a_synthetic_tree_the_browser_draws(
    chromium: Page, synthetic: Path, tmp_path: Path
) -> None:
    path = tmp_path / "synthetic.html"
    code, _, err = cli("report", str(synthetic), "-f", "html", "-o", str(path), "-q")
    assert code == 0, err
    assert path.stat().st_size < 10 * 1024 * 1024
    open_page(chromium, path, tmp_path / "synthetic.png")
    check_figures(chromium, synthetic, HtmlOptions())
    commands = chromium.evaluate("Array.from(document.querySelectorAll('.left-out code')).map(e => e.textContent)")
    assert commands == [f"storage-audit {name} {synthetic} -f csv" for name in ("untagged", "orphans", "check")]

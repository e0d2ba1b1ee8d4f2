"""One count of findings by severity: `check`, the report's summary, the HTML page's card and the metrics agree,
from the storage tree and from its snapshot, on every fixture and on a synthetic tree."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage_audit.analysis.check import UPLOAD_AGE, CheckOptions, check
from storage_audit.analysis.graph import Graph
from storage_audit.analysis.metrics import metrics
from storage_audit.analysis.report import WholeViews, summary
from storage_audit.cli.app import app
from storage_audit.cli.options import parse_duration
from storage_audit.inventory.tables import read_view, write_snapshot
from storage_audit.operations.inventory import load
from storage_audit.output.html import HtmlOptions, cards, figures
from storage_audit.roots.resolve import resolve

from .conftest import BROKEN, FIXTURES, REAL_FIXTURES, cli, fixtures_built

TOP = Path(__file__).resolve().parents[1]
SEVERITIES = ("error", "warning", "info")
# Every source is judged a month after the fixtures were built: their uploads in progress are stale by then.
LATER = timedelta(days=30)
# Snapshots are given to every view but the page, which is read from one snapshot: its figures come from the same
# graph as the other views' (what the page draws is tests/test_html_report.py's matter).
PAGE_FROM_SNAPSHOT = ("demo", "synthetic")


class Cards(HTMLParser):
    """The findings card of a page: its worst severity, its total and its count per severity."""

    def __init__(self) -> None:
        super().__init__()
        self.card: dict[str, str | None] = {}
        self.counts: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        key, value = found.get("data-key"), found.get("data-value")
        if key == "findings":
            self.card = found
        elif key is not None and key.startswith("findings_") and value is not None:
            self.counts[key.removeprefix("findings_")] = int(value)


def page_counts(root: Path, out: Path) -> tuple[dict[str, int], str | None, str | None]:
    """The counts per severity the page's findings card shows, its worst severity and its colour."""
    cli("report", root, "-f", "html", "-o", out, "-q", expect=(0, 3))
    cards = Cards()
    cards.feed(out.read_text(encoding="utf-8"))
    assert cards.card and int(cards.card["data-value"] or -1) == sum(cards.counts.values())
    return cards.counts, cards.card.get("data-severity"), cards.card.get("class")


def counts_of(root: Path) -> dict[str, dict[str, int]]:
    """Findings per severity as each view gives them for `root`, a storage tree or a snapshot."""
    code, out, _ = cli("check", root, "-f", "json", "-q", expect=(0, 3))
    found = Counter(f["severity"] for f in json.loads(out))
    assert code == (3 if found["error"] else 0)
    summary = json.loads(cli("report", root, "-f", "json", "-q", expect=(0, 3)).stdout)
    metrics = Counter[str]()
    text = cli("report", root, "-f", "prometheus", "-q", expect=(0, 3)).stdout
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "storage_audit_findings":
                metrics[sample.labels["severity"]] += int(sample.value)
    return {
        "check": {sev: found[sev] for sev in SEVERITIES},
        "summary": {sev: summary[f"findings_{sev}"] for sev in SEVERITIES},
        "metrics": {sev: metrics[sev] for sev in SEVERITIES},
    }


def worst(counts: dict[str, int]) -> str:
    return next((sev for sev in SEVERITIES if counts[sev]), "none")


def assert_one_count(name: str, root: Path, tmp_path: Path) -> dict[str, int]:
    """Every view of `root` and of its snapshot gives the same findings per severity; returns them."""
    views = counts_of(root)
    expected = views["check"]
    shown, severity, classes = page_counts(root, tmp_path / "page.html")
    views["page"] = shown
    snapshot = tmp_path / "snapshot"
    cli("scan", root, "-o", snapshot, "-q", expect=(0, 3))
    views |= {f"snapshot {view}": counts for view, counts in counts_of(snapshot).items()}
    if name in PAGE_FROM_SNAPSHOT:
        views["snapshot page"] = page_counts(snapshot, tmp_path / "snapshot.html")[0]
    assert views == {view: expected for view in views}, name
    # The card takes the colour of its worst finding, not of how many there are.
    assert severity == worst(expected)
    tone = {"error": "bad", "warning": "warn", "info": "info", "none": None}[worst(expected)]
    assert (classes or "").split() == ["card", *([tone] if tone else [])]
    return expected


@pytest.fixture
def later(pin_clock: Callable[[datetime], datetime]) -> datetime:
    return pin_clock(fixtures_built() + LATER)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic tree: 60 repositories, index children without revision links, stale uploads."""
    root = tmp_path_factory.mktemp("synthetic")
    args = ["--repositories", "60", "--manifests", "400", "--blobs", "1500", "--seed", "3"]
    subprocess.run([sys.executable, str(TOP / "benchmarks" / "synth.py"), str(root), *args], check=True)
    return root


@pytest.mark.slow
def test_the_demo_tree_counts_its_stale_upload_everywhere(later: datetime, tmp_path: Path) -> None:
    counts = assert_one_count("demo", FIXTURES / "demo", tmp_path)
    # Its upload was started when the fixtures were built; the clock says a month later.
    assert counts == {"error": 0, "warning": 1, "info": 2}


@pytest.mark.slow
def test_a_synthetic_tree_counts_its_broken_indexes_everywhere(
    later: datetime, synthetic: Path, tmp_path: Path
) -> None:
    counts = assert_one_count("synthetic", synthetic, tmp_path)
    kinds = Counter(
        (f["kind"], f["severity"])
        for f in json.loads(cli("check", synthetic, "-f", "json", "-q", expect=(0, 3)).stdout)
    )
    assert kinds[("index-child-missing", "error")] >= 1
    assert counts["error"] == sum(n for (_, sev), n in kinds.items() if sev == "error")


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_a_real_fixture_counts_alike_everywhere(name: str, later: datetime, fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert_one_count(name, fixture_root(name), tmp_path)


def library_counts(root: Path, tmp_path: Path) -> dict[str, dict[str, int]]:
    """Findings per severity as each view's library function gives them, each from a graph of its own as each
    command builds one; the summary also as a snapshot stores it."""
    inv = load(resolve(root))
    found = check(Graph(inv))
    samples = metrics(Graph(inv))
    findings = samples[samples["metric"] == "storage_audit_findings"]
    by_metric = Counter[str]()
    for labels, value in zip(findings["labels"], findings["value"], strict=True):
        by_metric[labels["severity"]] += int(value)
    page = figures(Graph(inv), HtmlOptions())
    card = next(c for c in cards(page) if c.key == "findings")
    write_snapshot(inv, tmp_path / "snapshot", WholeViews(Graph(inv)))
    stored = read_view(tmp_path / "snapshot", "summary")
    assert stored is not None
    summaries = {"summary": page.summary.iloc[0], "snapshot summary": stored.iloc[0]}
    return {
        "check": {sev: int((found["severity"] == sev).sum()) for sev in SEVERITIES},
        "metrics": {sev: by_metric[sev] for sev in SEVERITIES},
        "page": {key.removeprefix("findings_"): int(value) for key, value, _ in card.parts},
        **{view: {sev: int(row[f"findings_{sev}"]) for sev in SEVERITIES} for view, row in summaries.items()},
    }


# A few damaged fixtures, of each severity, in the quick tests; the others with the slow ones.
QUICK_DAMAGE = ("dangling-tag", "index-child-missing", "stale-upload", "stray-file")
DAMAGED = [
    pytest.param(name, marks=() if name in QUICK_DAMAGE else pytest.mark.slow)
    for name in sorted(p.name.removesuffix(".tar.gz") for p in BROKEN.glob("*.tar.gz"))
]


@pytest.mark.parametrize("name", DAMAGED)
def test_a_damaged_fixture_counts_alike_in_every_view(
    name: str, later: datetime, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    views = library_counts(shared_root(BROKEN / f"{name}.tar.gz"), tmp_path)
    assert views == {view: views["check"] for view in views}
    assert sum(views["check"].values()) > 0, "each damaged fixture has a finding"


def test_the_default_upload_age_is_the_same_everywhere() -> None:
    assert CheckOptions().upload_age == HtmlOptions().upload_age == UPLOAD_AGE == timedelta(hours=168)
    command = next(c.callback for c in app.registered_commands if getattr(c.callback, "__name__", "") == "check")
    assert command is not None
    default = inspect.signature(command).parameters["upload_age"].default
    assert parse_duration(default, "--upload-age") == UPLOAD_AGE


def test_the_summary_and_the_check_of_one_graph_share_one_answer(later: datetime) -> None:
    """The summary, the page and the metrics of one command ask the same question: it is answered once."""
    graph = Graph(load(resolve(FIXTURES / "demo")))
    first = check(graph)
    row = summary(graph).iloc[0]
    assert [row[f"findings_{sev}"] for sev in SEVERITIES] == [(first["severity"] == sev).sum() for sev in SEVERITIES]
    first["added"] = 1  # a caller's own column stays its own
    assert "added" not in check(graph).columns


def test_a_summary_stored_before_it_counted_every_finding_is_computed_again(later: datetime, tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    cli("scan", FIXTURES / "demo", "-o", snapshot, "-q", expect=(0, 3))
    stored = snapshot / "report-summary.parquet"
    summary = pd.read_parquet(stored)
    summary[[f"findings_{sev}" for sev in SEVERITIES]] = 99
    summary.to_parquet(stored, index=False)
    # The snapshot's own stored summary is what a report of it says.
    assert json.loads(cli("report", snapshot, "-f", "json", "-q", expect=(0, 3)).stdout)["findings_warning"] == 99
    # One written before the views' format was recorded counted the findings otherwise: it is computed again.
    meta = json.loads((snapshot / "metadata.json").read_text())
    assert meta.pop("views_format") == 2
    (snapshot / "metadata.json").write_text(json.dumps(meta))
    again = json.loads(cli("report", snapshot, "-f", "json", "-q", expect=(0, 3)).stdout)
    assert {sev: again[f"findings_{sev}"] for sev in SEVERITIES} == {"error": 0, "warning": 1, "info": 2}
    # Its other views are still read as they are stored.
    assert read_view(snapshot, "repository") is not None

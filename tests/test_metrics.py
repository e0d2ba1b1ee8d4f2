"""report --format prometheus: each metric, parsed by prometheus_client, is the JSON report's or check's figure."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage_audit.core.findings import SEVERITY
from tests.conftest import BROKEN, FIXTURES, cli
from tests.registry_harness import Ledger, Registry, require_registry
from tests.workloads import random_workload

REPOSITORY_COLUMNS = (
    "total_bytes",
    "exclusive_bytes",
    "shared_bytes",
    "reclaimable_bytes",
    "tags",
    "manifests",
    "untagged_manifests",
    "upload_bytes",
)
Key = tuple[str, tuple[tuple[str, str], ...]]


def as_json(*args: str) -> object:
    code, out, err = cli(*args, "-f", "json", "-q")
    assert code in (0, 3), err
    return json.loads(out)


def parse(text: str) -> dict[Key, float]:
    """Every sample, by name and labels, through the official parser; every family a documented gauge."""
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge" and family.documentation, family.name
        assert family.name.startswith("storage_audit_")
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, key
            samples[key] = sample.value
    return samples


def expected(root: str) -> dict[Key, float]:
    """Every metric but the scan's time, from `report -f json` (summary and by repository) and `check -f json`."""
    summary = as_json("report", root)
    repositories = as_json("report", root, "--by", "repository")
    findings = as_json("check", root)
    assert isinstance(summary, dict) and isinstance(repositories, list) and isinstance(findings, list)
    out: dict[Key, float] = {}
    for column, value in summary.items():
        if not column.startswith("findings_"):
            out[(f"storage_audit_{column}", ())] = value
    for row in repositories:
        for column in REPOSITORY_COLUMNS:
            out[(f"storage_audit_repository_{column}", (("repository", row["repository"]),))] = row[column]
    counts = Counter((f["kind"], f["severity"]) for f in findings)
    for kind, severity in {(k.value, s.value) for k, s in SEVERITY.items()} | set(counts):
        out[("storage_audit_findings", (("kind", kind), ("severity", severity)))] = counts[(kind, severity)]
    return out


def check_metrics(root: str) -> dict[Key, float]:
    code, text, err = cli("report", root, "-f", "prometheus", "-q")
    assert code in (0, 3), err
    samples = parse(text)
    scan = {k: samples.pop(k) for k in list(samples) if k[0].startswith("storage_audit_scan_")}
    want = expected(root)
    # The JSON report writes a ratio to 10 decimal places (pandas' precision); the metric keeps the whole float.
    ratio = ("storage_audit_dedup_ratio", ())
    assert samples.pop(ratio) == pytest.approx(want.pop(ratio), abs=1e-10)
    assert samples == want
    return scan


@pytest.fixture(scope="module")
def workload_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_registry()
    root = tmp_path_factory.mktemp("metrics") / "root"
    with Registry(root, Ledger()) as reg:
        random_workload(reg, seed=17)
    return root


def test_every_metric_is_the_json_reports_figure_on_a_pushed_tree(workload_tree: Path, tmp_path: Path) -> None:
    scan = check_metrics(str(workload_tree))
    assert set(scan) == {("storage_audit_scan_timestamp_seconds", ()), ("storage_audit_scan_duration_seconds", ())}
    assert 0 < scan[("storage_audit_scan_duration_seconds", ())] < 600
    # From a snapshot: the same figures, and the scan's time and duration as its metadata records them.
    snapshot = tmp_path / "snap"
    assert cli("scan", str(workload_tree), "-o", str(snapshot), "-q")[0] == 0
    scan = check_metrics(str(snapshot))
    meta = json.loads((snapshot / "metadata.json").read_text())
    assert scan[("storage_audit_scan_timestamp_seconds", ())] == datetime.fromisoformat(meta["scanned_at"]).timestamp()
    assert scan[("storage_audit_scan_duration_seconds", ())] == meta["scan_seconds"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [*sorted(p.name.removesuffix(".tar.gz") for p in BROKEN.glob("*.tar.gz")), "multiarch", "referrers"]
)
def test_every_metric_is_the_json_reports_figure_on_fixtures(
    name: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    archive = BROKEN / f"{name}.tar.gz" if (BROKEN / f"{name}.tar.gz").exists() else FIXTURES / f"{name}.tar.gz"
    check_metrics(str(shared_root(archive)))


def test_a_snapshot_of_an_earlier_version_has_no_duration(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap"
    assert cli("scan", str(FIXTURES / "demo"), "-o", str(snapshot), "-q")[0] == 0
    meta = json.loads((snapshot / "metadata.json").read_text())
    del meta["scan_seconds"]
    (snapshot / "metadata.json").write_text(json.dumps(meta))
    assert set(check_metrics(str(snapshot))) == {("storage_audit_scan_timestamp_seconds", ())}


def test_the_metrics_file_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    out = tmp_path / "textfile" / "storage_audit.prom"
    out.parent.mkdir()
    out.write_text("# an older file\n")
    code, stdout, err = cli("report", str(FIXTURES / "demo"), "-f", "prometheus", "-o", str(out))
    assert code == 0 and stdout == "", err
    assert [p.name for p in out.parent.iterdir()] == ["storage_audit.prom"]
    assert parse(out.read_text())[("storage_audit_repositories", ())] == 3
    missing = tmp_path / "nowhere" / "storage_audit.prom"
    code, _, err = cli("report", str(FIXTURES / "demo"), "-f", "prometheus", "-o", str(missing))
    assert code == 2 and err.startswith(f"storage-audit: error: {missing}: cannot write") and err.count("\n") == 1
    assert not missing.parent.exists()


def test_prometheus_takes_no_row_options() -> None:
    code, out, err = cli("report", str(FIXTURES / "demo"), "-f", "prometheus", "--by", "repository")
    assert code == 2 and out == ""
    assert err == (
        "storage-audit: error: --format prometheus writes every metric: it takes no --by, --repository, "
        "--sort, --top or --gc-compatible\n"
    )


@pytest.mark.parametrize("command", [["untagged"], ["orphans"], ["check"], ["diff", "/nonexistent/old"]])
def test_other_commands_neither_offer_nor_take_prometheus(command: list[str]) -> None:
    # Their help lists the formats they write, and a format they do not is refused as any bad choice, unread.
    code, out, _ = cli(command[0], "--help")
    assert code == 0 and "-f, --format [table|csv|json|parquet]" in out and "prometheus" not in out
    code, out, err = cli(*command, "/nonexistent/root", "-f", "prometheus")
    assert (code, out) == (2, "")
    # typer 0.29 words it through pydantic: "Invalid value for '--format' / '-f': Value error, 'prometheus' is ...".
    error = err.splitlines()[-1]
    assert error.startswith("Error: Invalid value for '--format' / '-f': ")
    assert error.endswith("'prometheus' is not one of 'table', 'csv', 'json', 'parquet'.")


def test_report_offers_every_format() -> None:
    code, out, _ = cli("report", "--help")
    assert code == 0 and "-f, --format [table|csv|json|parquet|prometheus|html]" in out


def test_label_values_are_escaped_and_read_back_as_written(tmp_path: Path) -> None:
    import pandas as pd

    from storage_audit.core.view import View
    from storage_audit.output.prometheus import write

    name = 'odd "name" with \\ and\nnewline'
    frame = pd.DataFrame(
        [("storage_audit_repository_tags", "Tags.", {"repository": name}, 2.0)],
        columns=["metric", "help", "labels", "value"],
    )
    write(View(frame), tmp_path / "odd.prom")
    text = (tmp_path / "odd.prom").read_text()
    assert '\\"name\\"' in text and "\\\\" in text and "\\n" in text
    assert parse(text) == {("storage_audit_repository_tags", (("repository", name),)): 2.0}

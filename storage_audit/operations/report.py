"""Where the space of ROOT goes: a report view (cut from a snapshot's stored one where it can be), the HTML page, the
metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage_audit.analysis.options import By, Engine, ReportOptions, needs_inventory
from storage_audit.analysis.options import check as check_options
from storage_audit.core.errors import UsageError
from storage_audit.operations.inventory import engine_analysis, load, snapshot_findings, unreadable_paths
from storage_audit.roots.resolve import Root, RootError, Snapshot

if TYPE_CHECKING:
    import pandas as pd

    from storage_audit.cleanup.plan import Retention
    from storage_audit.core.view import View
    from storage_audit.scan.run import ScanOptions


@dataclass(frozen=True)
class Report:
    """One view's rows, and the paths that could not be read, whose content the figures leave out.

    `stored` when the rows were cut from the whole view a snapshot stores, not computed.
    """

    by: By
    frame: pd.DataFrame
    unreadable: list[str]
    stored: bool = False

    def view(self, table: bool = False) -> View:
        """The rows and how to show them; a table for people shows the summary as key and value rows."""
        from storage_audit.analysis.report import view

        return view(self.by, self.frame, table=table)


@dataclass(frozen=True)
class Metrics:
    """Every metric of the audit as gauge samples (`metric`, `help`, `labels`, `value`), and the unreadable paths."""

    view: View
    unreadable: list[str]


def report(
    root: Root, options: ReportOptions | None = None, scan: ScanOptions | None = None, engine: Engine = Engine.PANDAS
) -> Report:
    """The report view `options` ask for; raises ReportError for options that make no sense for the view.

    From a snapshot, the view is cut from the whole one it stores, unless the
    answer needs the tables (blobs narrowed to what some repositories reach).
    Another `engine` than pandas computes `--by repository` from a snapshot's tables.
    """
    options = options or ReportOptions()
    check_options(options)
    if engine is not Engine.PANDAS:
        return _on_engine(root, options, engine)
    stored = _stored(root, options)
    if stored is not None:
        assert isinstance(root, Snapshot)  # only a snapshot stores views
        return Report(options.by, stored, unreadable_paths(snapshot_findings(root)), stored=True)
    inv = load(root, scan)
    from storage_audit.analysis import report as reporting
    from storage_audit.analysis.graph import Graph

    return Report(options.by, reporting.report(Graph(inv), options), unreadable_paths(inv.findings))


def _on_engine(root: Root, options: ReportOptions, engine: Engine) -> Report:
    """`report --by repository` computed by SQL from a snapshot's tables on `engine`."""
    if options.by is not By.REPOSITORY:
        raise UsageError(
            f"--engine {engine.value} reports --by repository only; --by {options.by.value}: --engine pandas"
        )
    from storage_audit.analysis import report as reporting
    from storage_audit.analysis.engine import Keep

    Keep(True, True, options.collector).normal()  # refuses what the engine does not offer before reading
    with engine_analysis(root, engine) as analysis:
        whole = analysis.repositories(options.collector)
    assert isinstance(root, Snapshot)
    return Report(options.by, reporting.finish(whole, options), unreadable_paths(snapshot_findings(root)))


def _stored(root: Root, options: ReportOptions) -> pd.DataFrame | None:
    """The report cut from the whole view a snapshot stores, or None when it must be computed."""
    if not isinstance(root, Snapshot) or needs_inventory(options):
        return None
    from storage_audit.analysis import report as reporting
    from storage_audit.inventory.tables import read_view

    try:
        whole = read_view(root.path, options.by.value)
    except ValueError as exc:
        raise RootError(f"{root.path}: {exc}") from exc
    return None if whole is None else reporting.finish(whole, options)


def page(
    root: Root,
    command_root: str | None = None,
    scan: ScanOptions | None = None,
    retention: Retention | None = None,
) -> str:
    """The HTML page of the whole storage: every figure from one graph, a snapshot's included; with
    `retention` (a policy file's rules), a section of the verdict on every tag and untagged revision they
    touch, as `plan --policy FILE --explain` gives it.

    The commands the page names for the rows it leaves out read `command_root`
    (default: the inventory's root). Raises PlanRefused where the findings make the verdicts unsafe, and
    UsageError for rules that judge tags by their images' build (the page reads no config blob).
    """
    from storage_audit.analysis.options import AgeFrom

    if retention is not None and retention.age_from is not AgeFrom.PUSH:
        raise UsageError("report --policy judges tags by their push times only")
    inv = load(root, scan)
    from storage_audit.analysis.graph import Graph
    from storage_audit.output.html import HtmlOptions
    from storage_audit.output.html import page as html_page

    graph = Graph(inv)
    options = HtmlOptions(command_root=command_root)
    if retention is not None:
        from dataclasses import replace

        from storage_audit.cleanup.explain import explanation
        from storage_audit.cleanup.plan import decide, refuse_if_uncertain, tag_ages
        from storage_audit.core import clock

        refuse_if_uncertain(inv)
        decision = decide(graph, retention, clock.now(), tag_ages(inv.tags, retention, None))
        args = ("--policy", retention.source) if retention.source else ()
        options = replace(options, retention=explanation(graph, decision), retention_args=args)
    return html_page(graph, options)


def metrics(root: Root, scan: ScanOptions | None = None) -> Metrics:
    """The audit's metrics: the report's figures and the check's findings, from one graph."""
    inv = load(root, scan)
    from storage_audit.analysis.graph import Graph
    from storage_audit.analysis.metrics import metrics as samples
    from storage_audit.analysis.metrics import view

    return Metrics(view(samples(Graph(inv))), unreadable_paths(inv.findings))

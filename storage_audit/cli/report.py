"""`report`: where the space goes, as a view in any format, the audit's metrics, or one HTML page."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from storage_audit.analysis.options import By, Engine, Format, ReportFormat, ReportOptions
from storage_audit.analysis.options import check as check_options
from storage_audit.cli.options import (
    CacheDirOpt,
    EngineOpt,
    GcCompatibleOpt,
    Help,
    NoCacheOpt,
    OutputOpt,
    QuietOpt,
    RateOpt,
    RootArg,
    ScanWorkersOpt,
    WideOpt,
    at_least,
    choices,
    fail,
    open_root,
    remote,
    root_text,
)
from storage_audit.cli.output import emit, emit_text
from storage_audit.cli.progress import reading
from storage_audit.cli.render import exit_if_unreadable, say
from storage_audit.core.text import size
from storage_audit.operations import report as reporting

HELP = Help(
    "Show where the space goes: totals, or a row per repository, tag, manifest, blob or upload, "
    "as a table, CSV, JSON, Parquet, Prometheus metrics or one HTML page.",
    (
        ("The 20 repositories that keep the most bytes:", "/var/lib/registry --by repository --top 20"),
        ("The tags of one team, as CSV:", "--by tag --repository 'team/*' -f csv"),
        ("One page of charts and tables to open in a browser:", "/var/lib/registry -f html -o report.html"),
    ),
)


def report(
    root: RootArg = None,
    by: Annotated[
        By, typer.Option("--by", "-b", metavar=choices(By), help="What each row is; summary is one set of totals.")
    ] = By.SUMMARY,
    fmt: Annotated[
        ReportFormat,
        typer.Option(
            "--format",
            "-f",
            metavar=choices(ReportFormat),
            help="Output: a table for people, or csv, json, parquet (needs -o), "
            "prometheus: every metric, for node_exporter's textfile collector, "
            "or html: one page of charts and tables of the whole storage (needs -o).",
        ),
    ] = ReportFormat.TABLE,
    output: OutputOpt = None,
    wide: WideOpt = False,
    top: Annotated[
        int | None,
        typer.Option(
            "--top", "-n", metavar="N", callback=at_least(1), help="Keep only the first N rows.  [at least 1]"
        ),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            "-s",
            metavar="COLUMN",
            help="Sort by this column: numbers and times largest first, text A to Z. "
            "Default: the view's bytes column, largest first.",
        ),
    ] = None,
    repository: Annotated[
        str | None,
        typer.Option(
            "--repository",
            "-r",
            metavar="GLOB",
            help="Only repositories whose name matches this glob (with --by blob: the blobs they reach).",
        ),
    ] = None,
    gc_compatible: GcCompatibleOpt = None,
    engine: EngineOpt = Engine.PANDAS,
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            metavar="FILE",
            readable=False,
            help="With --format html: add a section of what this policy file's rules (plan --policy) keep and "
            "delete, tag by tag, and why.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    max_requests_per_second: RateOpt = None,
) -> None:
    """Show where the space goes: a summary, one row per repository, tag, manifest, blob or upload, or a page.

    --format html -o FILE writes one self-contained page of charts and tables of the whole storage;
    --format prometheus writes every metric of the audit instead, for monitoring.
    """
    options = ReportOptions(by=by, repository=repository, sort=sort, top=top, collector=gc_compatible)
    if fmt is ReportFormat.HTML:
        # A page of several megabytes is for a browser, not a terminal; as for parquet, -o names its file.
        if output is None:
            fail("--format html writes a page for a browser: add -o FILE")
        if options != ReportOptions(by=By.SUMMARY):
            fail(
                "--format html reports the whole storage: --by, --repository, --sort, --top and --gc-compatible "
                "do not apply"
            )
    if policy_file is not None and fmt is not ReportFormat.HTML:
        fail(
            "--policy adds a retention section to --format html; the verdicts as a table, csv or json: "
            "storage-audit plan ROOT --policy FILE --explain"
        )
    check_options(options)
    if fmt is ReportFormat.PROMETHEUS and options != ReportOptions():
        fail(
            "--format prometheus writes every metric: it takes no --by, --repository, --sort, --top or --gc-compatible"
        )
    if engine is not Engine.PANDAS and fmt in (ReportFormat.HTML, ReportFormat.PROMETHEUS):
        fail(f"--format {fmt.value} draws on every view: --engine {engine.value} computes --by repository only")
    root = root_text(root, quiet)
    source = open_root(root, remote(cache_dir, no_cache, max_requests_per_second))
    if fmt is ReportFormat.HTML:
        retention = None
        if policy_file is not None:
            from storage_audit.cleanup.policy_file import load

            retention = load(policy_file)
        with reading(quiet, workers) as scan:
            # The commands the page names for the rows it leaves out read the ROOT given here, a snapshot's included.
            text = reporting.page(source, command_root=root, scan=scan, retention=retention)
        emit_text(text, output)
        if not quiet:
            say(f"wrote {output} ({size(len(text.encode()))}); open it in a browser")
        return
    if fmt is ReportFormat.PROMETHEUS:
        with reading(quiet, workers) as scan:
            metrics = reporting.metrics(source, scan)
        emit(metrics.view, Format.PROMETHEUS, output)
        exit_if_unreadable(metrics.unreadable)
        return
    with reading(quiet, workers) as scan:
        found = reporting.report(source, options, scan, engine)
    # --top asks for that many rows: a table shows them all, past its usual limit.
    view = replace(found.view(table=fmt is ReportFormat.TABLE), table_rows=top)
    emit(view, Format(fmt), output, wide)
    exit_if_unreadable(found.unreadable)

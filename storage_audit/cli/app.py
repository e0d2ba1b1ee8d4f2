"""The command line: parse arguments, call the library, render, and map failures to exit codes.

Each command imports the parts of the library it uses when it runs: pandas and the analysis
take about a second to load, which `--help` need not wait for, and which a scan spends
loading them while its workers already read the tree.
"""

from __future__ import annotations

import errno
import functools
import gc
import inspect
import re
import sys
import time
import traceback
import typing
from collections import Counter
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand

from storage_audit import __version__
from storage_audit.analysis.options import By, DiffBy, Format, PlanFormat, ReportFormat
from storage_audit.cli.progress import RichByteProgress, RichProgress
from storage_audit.core import clock
from storage_audit.core.errors import EXIT_FINDINGS, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, AuditError, UsageError
from storage_audit.core.findings import Severity
from storage_audit.core.text import count, printable, size
from storage_audit.operations.inventory import load, snapshot_findings
from storage_audit.roots.resolve import Bucket, RemoteOptions, Root, Snapshot, Tree, resolve

if TYPE_CHECKING:
    import pandas as pd

    from storage_audit.analysis.graph import Graph, Reachability
    from storage_audit.analysis.options import ReportOptions
    from storage_audit.cleanup.apply import Outcome
    from storage_audit.cleanup.plan import Plan
    from storage_audit.cleanup.removers import Remover
    from storage_audit.core.findings import Finding
    from storage_audit.inventory.tables import Inventory
    from storage_audit.output.formats import View
    from storage_audit.scan.run import Streamed
    from storage_audit.scan.walk import Totals
    from storage_audit.storage.base import Storage

__all__ = ["EXIT_FINDINGS", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "app", "main"]

err = Console(stderr=True, highlight=False)


def say(message: str) -> None:
    """One message on stderr, names in it shown as they are: no markup, no emoji, control characters escaped."""
    err.print(Text(printable(message)), soft_wrap=True)


def report_failure(exc: Exception, debug: bool) -> int:
    """Say what went wrong in one line (after the traceback with --debug) and return the exit code."""
    if debug:
        err.print(Text("".join(traceback.format_exception(exc))), soft_wrap=True, end="")
    if isinstance(exc, AuditError):
        say(f"storage-audit: error: {exc}")
        return exc.exit_code
    say(f"storage-audit: internal error: {exc.__class__.__name__}: {exc}")
    return EXIT_INTERNAL


class AuditCommand(TyperCommand):
    """A command that maps failures to one line and an exit code, and names a required argument `PLAN`."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # a reader that went away: the command line exits quietly
            raise typer.Exit(report_failure(exc, _debug(ctx))) from exc
        except Exception as exc:
            raise typer.Exit(report_failure(exc, _debug(ctx))) from exc

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        # typer writes a required argument as `{PLAN}`.
        return [
            piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
            for piece in super().collect_usage_pieces(ctx)
        ]


def _debug(ctx: Any) -> bool:
    """Whether the global --debug was given (it belongs to the parent context, the command group's)."""
    parent = ctx.parent
    return bool(parent is not None and parent.params.get("debug"))


app = typer.Typer(
    name="storage-audit",
    help="Audit a Docker/OCI registry's storage offline, straight from its volume.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: rich's boxes cut option names at 80 columns.
    rich_markup_mode=None,
)

# Paths are checked by the commands, not by click, whose checks end in a box of five lines.
RootArg = Annotated[
    str,
    typer.Argument(
        metavar="ROOT",
        help="Registry root (holding docker/registry/v2), the v2 directory itself, "
        "a snapshot directory written by `scan -o`, s3://BUCKET or s3://BUCKET/ROOTDIRECTORY, "
        "or the registry's configuration file.",
        show_default=True,
        readable=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no summary on stderr.")]
ScanWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-j",
        min=1,
        metavar="N",
        help="Processes that read the tree (default: one per CPU, up to 8, once it holds about 5,000 blobs; "
        "1 below that). More than the CPUs can pay off on a slow network volume.",
    ),
]
DEFAULT_ROOT = "/var/lib/registry"

CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Object storage: where manifests are cached by digest "
        "(default: $XDG_CACHE_HOME/storage-audit, else ~/.cache/storage-audit).",
    ),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Object storage: neither read nor write the cache.")]
RateOpt = Annotated[
    float | None,
    typer.Option(
        "--max-requests-per-second",
        min=0.001,
        help="Object storage: start at most this many requests a second (AWS answers 503 SlowDown to bursts).",
    ),
]
_remote: ContextVar[RemoteOptions | None] = ContextVar("remote", default=None)

P = typing.ParamSpec("P")
R = typing.TypeVar("R")


def root_options(command: Callable[P, R]) -> Callable[P, R]:
    """Give a command that takes ROOT the options for a ROOT in object storage (cache, rate limit)."""
    signature = inspect.signature(command, eval_str=True)
    extra = [
        inspect.Parameter("cache_dir", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=CacheDirOpt),
        inspect.Parameter("no_cache", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=NoCacheOpt),
        inspect.Parameter("max_requests_per_second", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=RateOpt),
    ]

    @functools.wraps(command)
    def run(*args: typing.Any, **kwargs: typing.Any) -> R:
        cache_dir, no_cache = kwargs.pop("cache_dir", None), kwargs.pop("no_cache", False)
        rate = kwargs.pop("max_requests_per_second", None)
        _remote.set(RemoteOptions(cache=not no_cache, cache_dir=cache_dir, max_requests_per_second=rate))
        return command(*args, **kwargs)

    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    run.__annotations__ = typing.get_type_hints(command, include_extras=True) | {p.name: p.annotation for p in extra}
    return run


def fail(message: str) -> NoReturn:
    """Refuse arguments that cannot be used (exit 2)."""
    raise UsageError(message)


def open_root(root: str) -> Root:
    """The storage tree or snapshot ROOT designates, with the object-storage options given; raises RootError."""
    return resolve(root, _remote.get() or RemoteOptions())


def read_inventory(root: str, quiet: bool, workers: int | None = None, source: Root | None = None) -> Inventory:
    """Resolve ROOT (unless `source` is given) and load or scan it, with a progress display on a terminal.

    Commands call this before importing their analysis: a process that has not
    loaded pandas yet has one thread, and starts its scan workers by forking.
    """
    from storage_audit.scan.run import ScanOptions

    source = source or open_root(root)
    started = time.monotonic()
    with RichProgress(err, enabled=not quiet and err.is_terminal) as progress:
        inv = load(source, ScanOptions(progress=progress, workers=workers or 0))
    if not isinstance(source, Snapshot):
        inv.scan_seconds = time.monotonic() - started
    return inv


def stream_inventory(source: Tree, output: Path, quiet: bool, workers: int | None) -> Streamed:
    """Scan a storage tree straight into the tables of a snapshot at `output`, with a progress display."""
    from storage_audit.scan.run import ScanOptions, scan_to_snapshot

    started = time.monotonic()
    try:
        with RichProgress(err, enabled=not quiet and err.is_terminal) as progress:
            streamed = scan_to_snapshot(source.storage, output, ScanOptions(progress=progress, workers=workers or 0))
    except OSError as exc:
        fail(f"{output}: cannot write snapshot: {exc.strerror or exc}")
    streamed.scan_seconds = time.monotonic() - started
    return streamed


def tally(source: Tree, quiet: bool, workers: int | None) -> tuple[Totals, list[Finding]]:
    """Count and sum a storage tree, with a progress display when stderr is a terminal."""
    from storage_audit.scan.run import ScanOptions, tally

    with RichProgress(err, enabled=not quiet and err.is_terminal) as progress:
        return tally(source.storage, ScanOptions(progress=progress, workers=workers or 0))


def remote_summary(source: Root) -> list[tuple[str, str]]:
    """What reading a tree in object storage took: requests by kind, bytes received, cache hits."""
    if not isinstance(source, Bucket):
        return []
    stats = source.storage.stats()
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.requests.items()))
    return [
        ("requests", f"{stats.total_requests}" + (f" ({kinds})" if kinds else "")),
        ("bytes-received", size(stats.bytes_received)),
        ("links-by-etag", f"{stats.links_by_etag}"),
        ("cache-hits", "off" if stats.cache_hits is None else f"{stats.cache_hits}"),
    ]


def unreadable_paths(findings: pd.DataFrame) -> list[str]:
    """The paths of the `unreadable` findings, in their order."""
    return [str(path) for path in findings.loc[findings["kind"] == "unreadable", "path"]]


def exit_if_unreadable(paths: list[str]) -> None:
    """Say that the answer misses what could not be read, and exit 3; nothing when everything was read.

    Said even with --quiet: it is why the exit code is 3.
    """
    if not paths:
        return
    say(
        f"storage-audit: warning: {count(len(paths), 'path')} could not be read, the first: {paths[0] or '.'} "
        f"(relative to v2); this answer leaves out whatever {'it holds' if len(paths) == 1 else 'they hold'}; "
        "see `storage-audit check`"
    )
    raise typer.Exit(EXIT_FINDINGS)


def scan_summary(root: str, totals: Totals, severities: Iterable[str]) -> list[tuple[str, str]]:
    """`git count-objects -v`-style lines."""
    rows = totals.rows
    counts = Counter(severities)
    by_severity = ", ".join(f"{counts[sev]} {sev}" for sev in Severity if counts[sev])
    return [
        ("root", root),
        ("repositories", f"{rows['repositories']}"),
        ("tags", f"{rows['tags']}"),
        ("tag-history", f"{rows['tag_history']}"),
        ("revisions", f"{rows['revisions']} ({totals.unlinked_revisions} deleted)"),
        ("manifests", f"{rows['manifests']}"),
        ("references", f"{rows['references']}"),
        ("layer-links", f"{rows['layer_links']}"),
        ("blobs", f"{rows['blobs']}"),
        ("blob-bytes", size(totals.blob_bytes)),
        ("uploads", f"{rows['uploads']}"),
        ("upload-bytes", size(totals.upload_bytes)),
        ("findings", f"{counts.total()}" + (f" ({by_severity})" if by_severity else "")),
    ]


@app.command(cls=AuditCommand)
@root_options
def scan(
    root: RootArg = DEFAULT_ROOT,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            readable=False,
            help="Write the inventory here as Parquet tables plus metadata.json.",
        ),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option(
            "--keep",
            min=1,
            metavar="N",
            help="With -o DIR: keep the N newest snapshots in DIR's parent directory (DIR included) and remove "
            "older ones; only storage-audit snapshots are ever removed.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
) -> None:
    """Read the storage into an inventory and summarize it on stderr (like `git count-objects -v`).

    Exits 3, saying so, when part of the tree could not be read.
    """
    if keep is not None and output is None:
        fail("--keep needs -o DIR: it keeps the newest snapshots beside DIR")
    if output is not None:
        _check_snapshot_target(output)
    source = open_root(root)
    if output is None and not isinstance(source, Snapshot):
        # Counting needs no tables: neither pandas nor pyarrow is loaded.
        totals, found = tally(source, quiet, workers)
        summary = scan_summary(source.location, totals, (f.severity.value for f in found))
        unreadable = [f.path for f in found if f.kind == "unreadable"]
    else:
        # The analysis loads after the scan has started its workers: see read_inventory.
        streamed = None
        if output is not None and not isinstance(source, Snapshot):
            streamed = stream_inventory(source, output, quiet, workers)
            inv = streamed.inventory()
        else:
            inv = read_inventory(root, quiet, workers, source)
        from storage_audit.analysis.graph import Graph
        from storage_audit.analysis.report import WholeViews
        from storage_audit.inventory.tables import finish_snapshot, write_snapshot
        from storage_audit.scan.walk import Totals

        summary = scan_summary(inv.root, Totals.of(inv.tables()), inv.findings["severity"])
        unreadable = unreadable_paths(inv.findings)
        if output is not None:
            # The whole report views go along: a report from the snapshot then only reads one file.
            views = WholeViews(Graph(inv))
            try:
                if streamed is not None:
                    finish_snapshot(streamed.out, inv, views)
                else:
                    write_snapshot(inv, output, views)
            except OSError as exc:
                fail(f"{output}: cannot write snapshot: {exc.strerror or exc}")
            if keep is not None:
                prune_snapshots(output, keep, quiet)
    if not quiet:
        for key, value in summary + remote_summary(source):
            say(f"{key}: {value}")
    exit_if_unreadable(unreadable)


def prune_snapshots(output: Path, keep: int, quiet: bool) -> None:
    """Remove the snapshots beside `output` beyond the newest `keep`; say what was left, even with --quiet."""
    from storage_audit.inventory.retention import prune

    try:
        pruned = prune(output, keep)
    except OSError as exc:
        fail(f"{output.parent}: cannot list snapshots: {exc.strerror or exc}")
    if pruned.removed and not quiet:
        say(f"removed {count(len(pruned.removed), 'older snapshot')}: {', '.join(p.name for p in pruned.removed)}")
    for path, reason in pruned.left:
        say(f"storage-audit: warning: {path}: older snapshot left in place: {reason}")


def _check_snapshot_target(output: Path) -> None:
    """Refuse a snapshot directory that would overwrite something else, before the scan."""
    try:
        if not output.exists():
            return
        from storage_audit.inventory.retention import foreign_content

        if output.is_dir() and not foreign_content(output):
            return
    except OSError as exc:
        fail(f"{output}: cannot write snapshot: {exc.strerror or exc}")
    fail(f"{output}: exists and is not an empty directory or an earlier snapshot")


FormatOpt = Annotated[
    Format, typer.Option("--format", "-f", help="Output: a table for people, or csv, json, parquet (needs -o).")
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", metavar="FILE", readable=False, help="Write the result to this file instead of stdout."
    ),
]
GcCompatibleOpt = Annotated[
    bool,
    typer.Option(
        "--gc-compatible",
        help="Answer exactly as the reference registry 2.8's garbage-collect would, "
        "unsafe deletions of index children and referrers included.",
    ),
]
KeepReferrersOpt = Annotated[
    bool,
    typer.Option(
        "--keep-referrers/--no-keep-referrers",
        help="Keep artifacts (signatures, SBOMs) whose subject is kept.",
    ),
]


def rows_only(fmt: Format) -> None:
    """Refuse --format prometheus before any work: only `report` writes metrics."""
    if fmt is Format.PROMETHEUS:
        fail("--format prometheus is for `report`: it writes the audit's metrics")


def emit(view: View, fmt: Format, output: Path | None) -> None:
    """Write a result; the output file is opened only now, after the work succeeded."""
    from storage_audit.output.formats import write

    try:
        write(view, fmt, output)
    except OSError as exc:
        fail(f"{output}: cannot write: {exc.strerror or exc}")


def warn_gc_difference(graph: Graph, safe: Reachability) -> None:
    """Say on stderr what the stock collector's --delete-untagged would delete that `safe` keeps."""
    from storage_audit.analysis.collect import gc_difference

    diff = gc_difference(graph, safe=safe)
    if diff.manifests == 0 and diff.blobs == 0:
        return
    parts = [count(diff.index_children, "child", "children") + " of tagged indexes"] if diff.index_children else []
    if diff.referrers:
        parts.append(count(diff.referrers, "referrer") + " (signatures, SBOMs) of kept images")
    if diff.other_manifests:
        parts.append(count(diff.other_manifests, "other manifest"))
    say(
        f"warning: `registry garbage-collect --delete-untagged` would also delete "
        f"{count(diff.manifests, 'manifest')} ({', '.join(parts)}) and {count(diff.blobs, 'blob')} "
        f"({size(diff.blob_bytes)}) that are kept here; see --gc-compatible"
    )


def warn_plain_gc_difference(graph: Graph, plain: Reachability) -> None:
    """Say on stderr what plain `registry garbage-collect` would delete that `plain` keeps for broken references."""
    from storage_audit.analysis.collect import gc_difference

    diff = gc_difference(graph, safe=plain, delete_untagged=False)
    if diff.blobs == 0:
        return
    say(
        f"warning: `registry garbage-collect` would also delete {count(diff.blobs, 'blob')} "
        f"({size(diff.blob_bytes)}) that are kept here because a dangling tag or an index child without a "
        "revision link names them; see --gc-compatible"
    )


@app.command(cls=AuditCommand)
@root_options
def untagged(
    root: RootArg = DEFAULT_ROOT,
    fmt: FormatOpt = Format.TABLE,
    output: OutputOpt = None,
    gc_compatible: GcCompatibleOpt = False,
    keep_referrers: KeepReferrersOpt = True,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
) -> None:
    """List manifest revisions no tag reaches, per repository, with the bytes each would free alone.

    Reached: a tag's current target, the children of a reached index (same
    repository), and artifacts whose subject is reached.
    """
    rows_only(fmt)
    inv = read_inventory(root, quiet, workers)
    from storage_audit.analysis.collect import untagged_frame
    from storage_audit.analysis.graph import Graph, ReachOptions
    from storage_audit.output.formats import View

    graph = Graph(inv)
    result = graph.reach(ReachOptions(True, keep_referrers=keep_referrers, gc_compatible=gc_compatible))
    frame = untagged_frame(graph, result)
    if not gc_compatible and not quiet:
        warn_gc_difference(graph, result)
    view = View(
        frame,
        title="untagged manifests",
        size_columns=("manifest_bytes", "reclaimable_bytes"),
        optional_columns=("artifact_type", "subject", "media_type", "manifest_bytes", "pushed_at"),
        total_columns=("manifest_bytes", "reclaimable_bytes"),
    )
    emit(view, fmt, output)
    exit_if_unreadable(unreadable_paths(inv.findings))


@app.command(cls=AuditCommand)
@root_options
def orphans(
    root: RootArg = DEFAULT_ROOT,
    delete_untagged: Annotated[
        bool,
        typer.Option("--delete-untagged", "-m", help="Keep only manifests a tag reaches (as garbage-collect -m)."),
    ] = False,
    fmt: FormatOpt = Format.TABLE,
    output: OutputOpt = None,
    gc_compatible: GcCompatibleOpt = False,
    keep_referrers: KeepReferrersOpt = True,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
) -> None:
    """List the blobs a sweep would remove: no kept manifest in any repository references them."""
    rows_only(fmt)
    inv = read_inventory(root, quiet, workers)
    from storage_audit.analysis.collect import orphan_frame
    from storage_audit.analysis.graph import Graph, ReachOptions
    from storage_audit.output.formats import View

    graph = Graph(inv)
    options = ReachOptions(delete_untagged=delete_untagged, keep_referrers=keep_referrers, gc_compatible=gc_compatible)
    result = graph.reach(options)
    frame = orphan_frame(inv, result)
    if delete_untagged and not gc_compatible and not quiet:
        warn_gc_difference(graph, result)
    elif not gc_compatible and not quiet:
        warn_plain_gc_difference(graph, result)
    view = View(
        frame,
        title="orphan blobs",
        size_columns=("size",),
        optional_columns=("linked_from", "mtime"),
        total_columns=("size",),
    )
    emit(view, fmt, output)
    exit_if_unreadable(unreadable_paths(inv.findings))


@app.command(cls=AuditCommand)
@root_options
def report(
    root: RootArg = DEFAULT_ROOT,
    by: Annotated[By, typer.Option("--by", "-b", help="What each row is; summary is one set of totals.")] = By.SUMMARY,
    fmt: Annotated[
        ReportFormat,
        typer.Option(
            "--format",
            "-f",
            help="Output: a table for people, or csv, json, parquet (needs -o), "
            "prometheus: every metric, for node_exporter's textfile collector, "
            "or html: one page of charts and tables of the whole storage (needs -o).",
        ),
    ] = ReportFormat.TABLE,
    output: OutputOpt = None,
    top: Annotated[
        int | None, typer.Option("--top", "-n", min=1, metavar="N", help="Keep only the first N rows.")
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
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
) -> None:
    """Show where the space goes: a summary, one row per repository, tag, manifest, blob or upload, or a page.

    --format html -o FILE writes one self-contained page of charts and tables of the whole storage;
    --format prometheus writes every metric of the audit instead, for monitoring.
    """
    from storage_audit.analysis.options import ReportOptions
    from storage_audit.analysis.options import check as check_report

    options = ReportOptions(by=by, repository=repository, sort=sort, top=top)
    if fmt is ReportFormat.HTML:
        html_report(root, options, output, quiet, workers)
        return
    check_report(options)
    if fmt is ReportFormat.PROMETHEUS:
        report_metrics(root, options, output, quiet, workers)
        return
    source = open_root(root)
    frame = stored_report(source, options)
    inv = read_inventory(root, quiet, workers, source) if frame is None else None
    from storage_audit.analysis import report as reporting

    if inv is not None:
        from storage_audit.analysis.graph import Graph

        frame = reporting.report(Graph(inv), options)
    # --top asks for that many rows: a table shows them all, past its usual limit.
    view = replace(reporting.view(by, frame, table=fmt is ReportFormat.TABLE), table_rows=top)
    emit(view, Format(fmt.value), output)
    if inv is None:
        assert isinstance(source, Snapshot)  # only a snapshot stores views
        exit_if_unreadable(unreadable_paths(snapshot_findings(source)))
    else:
        exit_if_unreadable(unreadable_paths(inv.findings))


def html_report(root: str, options: ReportOptions, output: Path | None, quiet: bool, workers: int | None) -> None:
    """Write the HTML page of the whole storage: every figure from one graph, a snapshot's included."""
    from storage_audit.analysis.options import ReportOptions

    # A page of several megabytes is for a browser, not a terminal; as for parquet, -o names its file.
    if output is None:
        fail("--format html writes a page for a browser: add -o FILE")
    if options != ReportOptions(by=By.SUMMARY):
        fail("--format html reports the whole storage: --by, --repository, --sort and --top do not apply")
    inv = read_inventory(root, quiet, workers)
    from storage_audit.analysis.graph import Graph
    from storage_audit.output.html import HtmlOptions, page

    # The commands the page names for the rows it leaves out read the ROOT given here, a snapshot's included.
    text = page(Graph(inv), HtmlOptions(command_root=str(root)))
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"{output}: cannot write: {exc.strerror or exc}")
    if not quiet:
        say(f"wrote {output} ({size(len(text.encode()))}); open it in a browser")


def report_metrics(root: str, options: ReportOptions, output: Path | None, quiet: bool, workers: int | None) -> None:
    """Write the audit's metrics: the report's figures and the check's findings, from one graph."""
    if options != type(options)():
        fail("--format prometheus writes every metric: it takes no --by, --repository, --sort or --top")
    inv = read_inventory(root, quiet, workers)
    from storage_audit.analysis.graph import Graph
    from storage_audit.analysis.metrics import metrics, view

    emit(view(metrics(Graph(inv))), Format.PROMETHEUS, output)
    exit_if_unreadable(unreadable_paths(inv.findings))


def stored_report(source: Root, options: ReportOptions) -> pd.DataFrame | None:
    """The report cut from the whole view a snapshot stores, or None when it must be computed."""
    from storage_audit.analysis.options import needs_inventory

    if not isinstance(source, Snapshot) or needs_inventory(options):
        return None
    from storage_audit.analysis import report as reporting
    from storage_audit.inventory.tables import read_view

    try:
        whole = read_view(source.path, options.by.value)
    except ValueError as exc:
        fail(f"{source.path}: {exc}")
    return None if whole is None else reporting.finish(whole, options)


@app.command(cls=AuditCommand)
@root_options
def diff(
    old: Annotated[
        str, typer.Argument(metavar="OLD", readable=False, help="The earlier audit: a snapshot or any ROOT.")
    ],
    new: Annotated[str, typer.Argument(metavar="NEW", readable=False, help="The later audit: a snapshot or any ROOT.")],
    by: Annotated[
        DiffBy, typer.Option("--by", "-b", help="What each row is: a repository, a tag, or a blob.")
    ] = DiffBy.REPOSITORY,
    fmt: FormatOpt = Format.TABLE,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
) -> None:
    """Show what changed between two audits, largest change first, with a one-line summary on stderr.

    A snapshot's stored report views are compared as they are; a storage tree is scanned and analyzed.
    """
    rows_only(fmt)
    sides = [open_root(old), open_root(new)]
    from storage_audit.analysis import diff as diffing

    audits, unreadable = [], []
    for path, source in zip((old, new), sides, strict=True):
        if isinstance(source, Snapshot):
            audits.append(diffing.Audit.of_snapshot(source.path, str(path)))
            unreadable += unreadable_paths(snapshot_findings(source))
        else:
            inv = read_inventory(path, quiet, workers, source)
            audits.append(diffing.Audit.of_inventory(inv, str(path)))
            unreadable += unreadable_paths(inv.findings)
    result = diffing.diff(audits[0], audits[1], by)
    for warning in result.warnings:
        say(f"storage-audit: warning: {warning}")
    emit(diffing.view(result), fmt, output)
    if not quiet:
        say(diffing.summary_line(result))
    exit_if_unreadable(unreadable)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Times are pandas timestamps, which begin in 1677: 100,000 days (274 years) back from now stays inside.
MAX_DURATION_DAYS = 100_000


def parse_duration(text: str, option: str) -> timedelta:
    """`30d`, `12h`, `90m`, `0s`, `2w` -> timedelta; anything else, or over MAX_DURATION_DAYS, is a usage error."""
    match = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if match is None:
        fail(f"{option}: {text!r} is not a duration such as 30d, 12h, 90m or 0s")
    seconds = int(match.group(1)) * DURATION_UNITS[match.group(2)]
    if seconds > MAX_DURATION_DAYS * DURATION_UNITS["d"]:
        fail(f"{option}: {text!r} is longer than {MAX_DURATION_DAYS}d, the longest duration accepted")
    return timedelta(seconds=seconds)


def _regexes(patterns: list[str], option: str) -> tuple[str, ...]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            fail(f"{option}: {pattern!r} is not a regular expression: {exc}")
    return tuple(patterns)


def plan_stats(plan: Plan) -> View:
    import pandas as pd

    from storage_audit.output.formats import View

    totals = plan.totals()["by_repository"]
    rows = [(repo, t["count"], t["bytes"]) for repo, t in sorted(totals.items())]
    frame = pd.DataFrame(rows, columns=["repository", "actions", "bytes"])
    return View(frame, title="deletion plan", size_columns=("bytes",), total_columns=("actions", "bytes"))


@app.command(cls=AuditCommand)
@root_options
def plan(
    root: RootArg = DEFAULT_ROOT,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", readable=False, help="Write the plan here (default: stdout)."),
    ] = None,
    delete_untagged: Annotated[
        bool,
        typer.Option(
            "--delete-untagged",
            help="Delete manifests no tag reaches (index children and referrers of kept images are kept).",
        ),
    ] = False,
    keep_last: Annotated[
        int | None,
        typer.Option(
            "--keep-last",
            min=0,
            metavar="N",
            help="Per repository, keep the N most recently pushed tags; "
            "delete the other tags, then their manifests if nothing else reaches them.",
        ),
    ] = None,
    keep_tag: Annotated[
        list[str] | None,
        typer.Option(
            "--keep-tag", metavar="REGEX", help="Never delete a tag matching this regular expression (repeatable)."
        ),
    ] = None,
    only_tag: Annotated[
        list[str] | None,
        typer.Option(
            "--only-tag",
            metavar="REGEX",
            help="Consider only tags matching this regular expression for deletion (repeatable).",
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Delete every tag pushed before this long ago (30d, 12h, 0s), then the manifests only such tags "
            "reach: alone, a rule that deletes, not a filter. With --keep-last, only tags beyond the last N that "
            "are also this old; with --delete-untagged, only untagged manifests this old.",
        ),
    ] = None,
    repository: Annotated[
        list[str] | None,
        typer.Option(
            "--repository",
            metavar="GLOB",
            help="Limit the policy to repositories matching this glob (repeatable).",
        ),
    ] = None,
    uploads_older_than: Annotated[
        str | None,
        typer.Option(
            "--uploads-older-than",
            metavar="DURATION",
            help="Also delete uploads started before this long ago, and those without startedat.",
        ),
    ] = None,
    prune_empty_repositories: Annotated[
        bool, typer.Option("--prune-empty-repositories", help="Also remove repositories the plan leaves with nothing.")
    ] = False,
    min_age: Annotated[
        str,
        typer.Option(
            "--min-age",
            metavar="DURATION",
            help="Grace period: nothing newer is ever planned for deletion (protects a push in progress); "
            "what it holds back is counted on stderr.",
        ),
    ] = "1h",
    keep_referrers: KeepReferrersOpt = True,
    fmt: Annotated[
        PlanFormat,
        typer.Option(
            "--format",
            "-f",
            help="json: the plan `apply` reads; sh: a reviewable shell script; http: curl DELETEs for a live registry.",
        ),
    ] = PlanFormat.JSON,
    registry_url: Annotated[
        str | None, typer.Option("--registry-url", metavar="URL", help="Registry URL for --format http.")
    ] = None,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
) -> None:
    """Write a reviewable deletion plan: what the retention rules remove, in a safe order, with reasons.

    Orphan blobs are always included. Nothing is deleted here: review the plan, then `storage-audit apply` it.
    """
    from storage_audit.cleanup.plan import Policy, make_plan
    from storage_audit.cleanup.plan_formats import refusal, render
    from storage_audit.output.table import render as render_table

    if fmt is PlanFormat.HTTP and not registry_url:
        fail("--format http needs --registry-url")
    policy = Policy(
        delete_untagged=delete_untagged,
        keep_last=keep_last,
        keep_tags=_regexes(keep_tag or [], "--keep-tag"),
        only_tags=_regexes(only_tag or [], "--only-tag"),
        older_than=None if older_than is None else parse_duration(older_than, "--older-than"),
        repositories=tuple(repository or []),
        uploads_older_than=None
        if uploads_older_than is None
        else parse_duration(uploads_older_than, "--uploads-older-than"),
        prune_empty_repositories=prune_empty_repositories,
        min_age=parse_duration(min_age, "--min-age"),
        keep_referrers=keep_referrers,
    )
    source = open_root(root)
    if isinstance(source, Snapshot):
        fail(f"{root}: plan from the storage itself, not a snapshot: apply re-checks the live files")
    storage = source.storage
    refused = refusal(fmt, storage)
    if refused is not None:
        fail(f"{root}: {refused}")
    # Read before the scan: a grace period measured from its start holds back what was pushed during it.
    now = clock.now()
    inv = read_inventory(root, quiet, workers, source)
    from storage_audit.analysis.graph import Graph

    result = make_plan(Graph(inv), policy, now, storage)
    text = render(result, fmt, registry_url)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            fail(f"{output}: cannot write: {exc.strerror or exc}")
    if not quiet:
        render_table(plan_stats(result), err)
        warn_held_back(result.held_back, min_age)


def warn_held_back(held_back: dict[str, int], min_age: str) -> None:
    """Say how much the grace period kept out of the plan: a plan of nothing is otherwise a puzzle."""
    nouns = {"tags": "tag", "manifests": "manifest", "blobs": "blob", "uploads": "upload"}
    parts = [count(held_back[key], noun) for key, noun in nouns.items() if held_back.get(key)]
    if parts:
        say(
            f"held back by the grace period (--min-age {min_age}), as newer: {', '.join(parts)}; "
            "they are planned once older"
        )


@app.command(cls=AuditCommand)
@root_options
def apply(
    plan_file: Annotated[
        Path, typer.Argument(metavar="PLAN", readable=False, help="A plan written by `storage-audit plan`.")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be done.")] = False,
    quarantine_to: Annotated[
        str | None,
        typer.Option(
            "--quarantine",
            metavar="DIR|s3://BUCKET/PREFIX",
            help="Move what is removed into this directory (same layout), restorable, instead of deleting. "
            "For a bucket: a local directory, or an s3:// location (server-side copies).",
        ),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(
            "--root",
            metavar="ROOT",
            help="Where to apply the plan (a bucket's plan: its s3:// URL or the registry's configuration file, "
            "for the credentials); refused unless it is where the plan was made. Default: the plan's own root.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Apply a deletion plan: validate it, re-check each action right before it, never remove what is in use.

    A journal beside the plan (PLAN.<hash>.journal) lets an interrupted apply resume, and stops a plan from
    being applied twice; a second apply of a plan while one runs is refused. Restart the registry afterwards:
    its blob cache still believes removed blobs exist. Answering no at the prompt exits 2, deleting nothing.
    """
    from storage_audit.cleanup.apply import AlreadyApplied, ApplyOptions, prepare, read_plan
    from storage_audit.cleanup.plan import PlanError
    from storage_audit.cleanup.removers import remover_for
    from storage_audit.output.formats import View
    from storage_audit.output.table import render as render_table

    refusing = f"{plan_file}: refusing the plan, nothing was deleted"
    try:
        loaded, digest = read_plan(plan_file)
        remover = remover_for(_plan_storage(loaded, root), quarantine_to)
        applier = prepare(loaded, digest, plan_file, remover, ApplyOptions(dry_run))
    except AlreadyApplied as exc:
        say(f"storage-audit: {exc}")
        raise typer.Exit(exc.exit_code) from exc
    except PlanError as exc:
        fail(f"{refusing}: {exc}")
    with applier:
        totals = loaded.totals()
        if not quiet:
            planned = f"{count(totals['count'], 'action')}, {size(totals['bytes'])} of blobs and uploads"
            say(f"plan: {planned}, on {loaded.root}")
        if not dry_run and not yes and not _confirmed("Apply this plan?"):
            fail("not confirmed; nothing was deleted")
        try:
            outcome = applier.run(None if quiet else say)
        except PlanError as exc:  # the journal could not be written: nothing was removed
            fail(f"{refusing}: {exc}")
    kept = remover.quarantine
    if kept is not None and kept.restore and outcome.done and not dry_run and not quiet:
        say(f"quarantined in {kept.where}; to restore: {kept.restore}")
    if outcome.failed:
        say(
            f"storage-audit: {count(len(outcome.failed), 'action')} failed and were left for the next run "
            f"(the first: {outcome.failed[0][1]})"
        )
    if quiet:
        if outcome.failed:
            raise typer.Exit(EXIT_FINDINGS)
        return
    if not outcome.frame().empty:
        render_table(View(outcome.frame(), title="apply", total_columns=("count",)), err)
    say(apply_summary(outcome, remover, dry_run))
    if not dry_run and outcome.done:
        say("Restart the registry now: its blob descriptor cache still believes removed blobs exist.")
    if outcome.failed:
        raise typer.Exit(EXIT_FINDINGS)


def apply_summary(outcome: Outcome, remover: Remover, dry_run: bool) -> str:
    """What an apply removed and where its data went (freed, moved or copied to a quarantine); in a dry run, what
    it would."""
    amount = f"{size(outcome.bytes)} ({count(outcome.bytes, 'byte')})"
    kept = remover.quarantine
    if kept is None:
        would, did = f"free {amount} {remover.where}", f"freed {amount} {remover.where}"
    elif kept.copied:
        would = f"copy {amount} to the quarantine {kept.where}, then delete the originals {remover.where}"
        did = f"copied {amount} to the quarantine {kept.where}, then deleted the originals {remover.where}"
    else:
        would = f"move {amount} into the quarantine {kept.where}"
        did = f"moved {amount} into the quarantine {kept.where}"
    head = f"would remove {count(len(outcome.done), 'action')} and would {would}" if dry_run else did
    return f"{head}; {count(len(outcome.skipped), 'action')} skipped"


def _plan_storage(plan: Plan, root: str | None) -> Storage:
    """Where a plan goes: ROOT's storage when given (refused unless the plan's), else the plan's own."""
    from storage_audit.cleanup.removers import plan_storage

    if root is not None:
        target = open_root(root)
        if isinstance(target, Snapshot):
            fail(f"refusing the plan, nothing was deleted: it is for {plan.root}, not the snapshot {root}")
        return target.storage
    return plan_storage(plan, _remote.get() or RemoteOptions())


def _confirmed(question: str) -> bool:
    """The answer at a yes/no prompt on stderr; no when input ends (a closed stdin, Ctrl-D)."""
    try:
        return typer.confirm(question, err=True)
    except typer.Abort:
        err.print()
        return False


def emit_tables(views: list[View], output: Path | None) -> None:
    """Write tables one after another, to stdout or to one file opened only now."""
    from storage_audit.output.table import MIN_WIDTH
    from storage_audit.output.table import render as render_table

    if output is None:
        for view in views:
            emit(view, Format.TABLE, None)
        return
    try:
        with open(output, "w", encoding="utf-8") as fh:
            console = Console(file=fh, width=MIN_WIDTH, no_color=True)
            for view in views:
                render_table(view, console)
    except OSError as exc:
        fail(f"{output}: cannot write: {exc.strerror or exc}")


def check_summary(counts: dict[str, int], verified: bool) -> str:
    words = {"error": ("error", "errors"), "warning": ("warning", "warnings"), "info": ("info", "info")}
    found = ", ".join(f"{n} {words[sev][n != 1]}" for sev, n in counts.items())
    hint = "" if verified else "; blob content not verified (--verify-digests)"
    return f"check: {found}{hint}"


@app.command(cls=AuditCommand)
@root_options
def check(
    root: RootArg = DEFAULT_ROOT,
    verify_digests: Annotated[
        bool,
        typer.Option("--verify-digests", help="Also hash every blob and compare it with its name: reads all data."),
    ] = False,
    upload_age: Annotated[
        str,
        typer.Option(
            "--upload-age",
            metavar="DURATION",
            help="An upload started this long before the scan is stale: 168h, 7d, 90m.",
        ),
    ] = "168h",
    fmt: FormatOpt = Format.TABLE,
    output: OutputOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 3 on warnings too, not only on errors.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-j",
            min=1,
            metavar="N",
            help="Processes that read the tree, and blobs hashed at once by --verify-digests (default: one per CPU).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Check the storage for damage: every finding (README, "Findings"), with a count per kind.

    Exit codes: 0 no error findings; 3 error findings (with --strict, warnings
    too); 2 unusable arguments or ROOT; 1 internal failure.
    """
    from storage_audit.analysis import check as checking
    from storage_audit.analysis.graph import Graph

    rows_only(fmt)
    age = parse_duration(upload_age, "--upload-age")
    source = open_root(root)
    if verify_digests and isinstance(source, Snapshot):
        fail(f"{root}: --verify-digests reads blob content, which a snapshot does not hold; give the storage tree")
    inv = read_inventory(root, quiet, workers, source)
    with RichByteProgress(err, enabled=verify_digests and not quiet and err.is_terminal) as progress:
        storage = None if isinstance(source, Snapshot) else source.storage
        options = checking.CheckOptions(verify_digests, age, workers or 0, progress, storage)
        findings = checking.check(Graph(inv), options)
    views = checking.views(findings, table=fmt is Format.TABLE)
    if fmt is Format.TABLE:
        emit_tables(views, output)
    else:
        emit(views[0], fmt, output)
    counts = checking.severity_counts(findings)
    if not quiet:
        err.print(check_summary(counts, verify_digests), markup=False, soft_wrap=True)
    if counts["error"] or (strict and counts["warning"]):
        raise typer.Exit(EXIT_FINDINGS)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"storage-audit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="On an error, show its traceback before its one line. Give it before the command."
        ),
    ] = False,
) -> None:
    """Audit a Docker/OCI registry's storage offline, straight from its volume."""


def main() -> None:
    """Entry point: run the app; an exception that escapes it (none should) is one line and exit 1."""
    try:
        app()
    except Exception as exc:
        sys.exit(report_failure(exc, debug="--debug" in sys.argv[1:2]))
    finally:
        # What is still alive is freed on exit anyway: spare the collector's last pass over it.
        gc.freeze()

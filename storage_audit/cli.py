"""The command line: parse arguments, call the library, render, and map failures to exit codes.

Each command imports the parts of the library it uses when it runs: pandas and the analysis
take about a second to load, which `--help` need not wait for, and which a scan spends
loading them while its workers already read the tree.
"""

from __future__ import annotations

import functools
import gc
import inspect
import re
import sys
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import humanize
import typer
from rich.console import Console

from . import __version__
from .choices import By, Format, PlanFormat
from .errors import AuditError
from .findings import Severity
from .progress import RichByteProgress, RichProgress
from .source import RemoteOptions, RootError, Source, load, resolve

if TYPE_CHECKING:
    import pandas as pd

    from .choices import ReportOptions
    from .findings import Finding
    from .formats import View
    from .inventory import Inventory
    from .plan import Plan
    from .reach import Reachability
    from .walk import Totals

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_FINDINGS = 3

app = typer.Typer(
    name="storage-audit",
    help="Audit a Docker/OCI registry's storage offline, straight from its volume.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)

RootArg = Annotated[
    str,
    typer.Argument(
        help="Registry root (holding docker/registry/v2), the v2 directory itself, "
        "a snapshot directory written by `scan -o`, s3://BUCKET or s3://BUCKET/ROOTDIRECTORY, "
        "or the registry's configuration file.",
        show_default=True,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no summary on stderr.")]
ScanWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-j",
        min=1,
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


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"storage-audit: error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def storage_failures() -> Iterator[None]:
    """A ROOT that cannot be resolved or read (a bad URL or configuration, a bucket refusing us): one line, exit 2."""
    try:
        yield
    except RootError as exc:
        fail(str(exc))
    except AuditError as exc:
        fail(str(exc), exc.exit_code)


def open_root(root: str) -> Source:
    with storage_failures():
        return resolve(root, _remote.get() or RemoteOptions())


def read_inventory(root: str, quiet: bool, workers: int | None = None, source: Source | None = None) -> Inventory:
    """Resolve ROOT (unless `source` is given) and load or scan it, with a progress display on a terminal.

    Commands call this before importing their analysis: a process that has not
    loaded pandas yet has one thread, and starts its scan workers by forking.
    """
    from .scan import ScanOptions

    source = source or open_root(root)
    with RichProgress(err, enabled=not quiet and err.is_terminal) as progress, storage_failures():
        return load(source, ScanOptions(progress=progress, workers=workers or 0))


def tally(source: Source, quiet: bool, workers: int | None) -> tuple[Totals, list[Finding]]:
    """Count and sum a storage tree, with a progress display when stderr is a terminal."""
    from .scan import ScanOptions, tally

    with RichProgress(err, enabled=not quiet and err.is_terminal) as progress, storage_failures():
        return tally(source.tree(), ScanOptions(progress=progress, workers=workers or 0))


def remote_summary(source: Source) -> list[tuple[str, str]]:
    """What reading a tree in object storage took: requests by kind, bytes received, cache hits."""
    from .s3storage import S3Storage

    if not isinstance(source.storage, S3Storage):
        return []
    stats = source.storage.stats()
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.requests.items()))
    return [
        ("requests", f"{stats.total_requests}" + (f" ({kinds})" if kinds else "")),
        ("bytes-received", size(stats.bytes_received)),
        ("links-by-etag", f"{stats.links_by_etag}"),
        ("cache-hits", "off" if stats.cache_hits is None else f"{stats.cache_hits}"),
    ]


def size(n: int) -> str:
    return humanize.naturalsize(n, binary=True)


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


@app.command()
@root_options
def scan(
    root: RootArg = DEFAULT_ROOT,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the inventory here as Parquet tables plus metadata.json."),
    ] = None,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
) -> None:
    """Read the storage into an inventory and summarize it on stderr (like `git count-objects -v`)."""
    if output is not None and output.exists() and (not output.is_dir() or _foreign_content(output)):
        fail(f"{output}: exists and is not an empty directory or an earlier snapshot")
    source = open_root(root)
    if output is None and not source.snapshot:
        # Counting needs no tables: neither pandas nor pyarrow is loaded.
        totals, found = tally(source, quiet, workers)
        summary = scan_summary(source.location, totals, (f.severity.value for f in found))
    else:
        # The analysis loads after the scan has started its workers: see read_inventory.
        inv = read_inventory(root, quiet, workers, source)
        from .inventory import write_snapshot
        from .report import whole
        from .walk import Totals

        summary = scan_summary(inv.root, Totals.of(inv.tables()), inv.findings["severity"])
        if output is not None:
            # The whole report views go along: a report from the snapshot then only reads one file.
            views = {by.value: whole(inv, by) for by in By}
            try:
                write_snapshot(inv, output, views)
            except OSError as exc:
                fail(f"{output}: cannot write snapshot: {exc.strerror or exc}")
    if not quiet:
        for key, value in summary + remote_summary(source):
            err.print(f"{key}: {value}", markup=False, soft_wrap=True)


FormatOpt = Annotated[
    Format, typer.Option("--format", "-f", help="Output: a table for people, or csv, json, parquet (needs -o).")
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write the result to this file instead of stdout.")
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


def emit(view: View, fmt: Format, output: Path | None) -> None:
    """Write a result; the output file is opened only now, after the work succeeded."""
    from .formats import FormatError, write

    try:
        write(view, fmt, output)
    except FormatError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{output}: cannot write: {exc.strerror or exc}")


def warn_gc_difference(inv: Inventory, safe: Reachability) -> None:
    """Say on stderr what the stock collector's --delete-untagged would delete that `safe` keeps."""
    from .collect import gc_difference

    diff = gc_difference(inv, safe=safe)
    if diff.manifests == 0 and diff.blobs == 0:
        return
    parts = [f"{diff.index_children} children of tagged indexes"] if diff.index_children else []
    if diff.referrers:
        parts.append(f"{diff.referrers} referrers (signatures, SBOMs) of kept images")
    if diff.other_manifests:
        parts.append(f"{diff.other_manifests} other manifests")
    err.print(
        f"warning: `registry garbage-collect --delete-untagged` would also delete "
        f"{diff.manifests} manifests ({', '.join(parts)}) and {diff.blobs} blobs "
        f"({size(diff.blob_bytes)}) that are kept here; see --gc-compatible",
        markup=False,
        soft_wrap=True,
    )


@app.command()
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
    inv = read_inventory(root, quiet, workers)
    from .collect import untagged_frame
    from .formats import View
    from .reach import ReachOptions, reach

    result = reach(inv, ReachOptions(delete_untagged=True, keep_referrers=keep_referrers, gc_compatible=gc_compatible))
    frame = untagged_frame(inv, result)
    if not gc_compatible and not quiet:
        warn_gc_difference(inv, result)
    view = View(
        frame,
        title="untagged manifests",
        size_columns=("manifest_bytes", "reclaimable_bytes"),
        optional_columns=("artifact_type", "subject", "media_type", "manifest_bytes", "pushed_at"),
        total_columns=("manifest_bytes", "reclaimable_bytes"),
    )
    emit(view, fmt, output)


@app.command()
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
    inv = read_inventory(root, quiet, workers)
    from .collect import orphan_frame
    from .formats import View
    from .reach import ReachOptions, reach

    options = ReachOptions(delete_untagged=delete_untagged, keep_referrers=keep_referrers, gc_compatible=gc_compatible)
    result = reach(inv, options)
    frame = orphan_frame(inv, result)
    if delete_untagged and not gc_compatible and not quiet:
        warn_gc_difference(inv, result)
    view = View(
        frame,
        title="orphan blobs",
        size_columns=("size",),
        optional_columns=("linked_from", "mtime"),
        total_columns=("size",),
    )
    emit(view, fmt, output)


@app.command()
@root_options
def report(
    root: RootArg = DEFAULT_ROOT,
    by: Annotated[By, typer.Option("--by", "-b", help="What each row is; summary is one set of totals.")] = By.SUMMARY,
    fmt: FormatOpt = Format.TABLE,
    output: OutputOpt = None,
    top: Annotated[int | None, typer.Option("--top", "-n", min=1, help="Keep only the first N rows.")] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            "-s",
            help="Sort by this column: numbers and times largest first, text A to Z. "
            "Default: the view's bytes column, largest first.",
        ),
    ] = None,
    repository: Annotated[
        str | None,
        typer.Option(
            "--repository",
            "-r",
            help="Only repositories whose name matches this glob (with --by blob: the blobs they reach).",
        ),
    ] = None,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
) -> None:
    """Show where the space goes: a summary, or one row per repository, tag, manifest, blob or upload."""
    from .choices import ReportError, ReportOptions
    from .choices import check as check_report

    options = ReportOptions(by=by, repository=repository, sort=sort, top=top)
    try:
        check_report(options)
    except ReportError as exc:
        fail(str(exc))
    source = open_root(root)
    frame = stored_report(source, options)
    inv = read_inventory(root, quiet, workers, source) if frame is None else None
    from . import report as reporting

    if inv is not None:
        frame = reporting.report(inv, options)
    # --top asks for that many rows: a table shows them all, past its usual limit.
    emit(replace(reporting.view(by, frame, table=fmt is Format.TABLE), table_rows=top), fmt, output)


def stored_report(source: Source, options: ReportOptions) -> pd.DataFrame | None:
    """The report cut from the whole view a snapshot stores, or None when it must be computed."""
    from .choices import needs_inventory

    if not source.snapshot or needs_inventory(options):
        return None
    from . import report as reporting
    from .inventory import read_view

    try:
        whole = read_view(source.path, options.by.value)
    except ValueError as exc:
        fail(f"{source.path}: {exc}")
    return None if whole is None else reporting.finish(whole, options)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str) -> timedelta:
    """`30d`, `12h`, `90m`, `0s`, `2w` -> timedelta; anything else is a usage error."""
    match = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if match is None:
        fail(f"{option}: {text!r} is not a duration such as 30d, 12h, 90m or 0s")
    return timedelta(seconds=int(match.group(1)) * DURATION_UNITS[match.group(2)])


def _regexes(patterns: list[str], option: str) -> tuple[str, ...]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            fail(f"{option}: {pattern!r} is not a regular expression: {exc}")
    return tuple(patterns)


def plan_stats(plan: Plan) -> View:
    import pandas as pd

    from .formats import View

    totals = plan.totals()["by_repository"]
    rows = [(repo, t["count"], t["bytes"]) for repo, t in sorted(totals.items())]
    frame = pd.DataFrame(rows, columns=["repository", "actions", "bytes"])
    return View(frame, title="deletion plan", size_columns=("bytes",), total_columns=("actions", "bytes"))


@app.command()
@root_options
def plan(
    root: RootArg = DEFAULT_ROOT,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the plan here (default: stdout).")
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
            help="Per repository, keep the N most recently pushed tags; "
            "delete the other tags, then their manifests if nothing else reaches them.",
        ),
    ] = None,
    keep_tag: Annotated[
        list[str] | None,
        typer.Option("--keep-tag", help="Never delete a tag matching this regular expression (repeatable)."),
    ] = None,
    only_tag: Annotated[
        list[str] | None,
        typer.Option(
            "--only-tag", help="Consider only tags matching this regular expression for deletion (repeatable)."
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Only delete tags and manifests pushed before this long ago (30d, 12h, 0s)."),
    ] = None,
    repository: Annotated[
        list[str] | None,
        typer.Option("--repository", help="Limit the policy to repositories matching this glob (repeatable)."),
    ] = None,
    uploads_older_than: Annotated[
        str | None,
        typer.Option(
            "--uploads-older-than",
            help="Also delete uploads started before this long ago, and those without startedat.",
        ),
    ] = None,
    prune_empty_repositories: Annotated[
        bool, typer.Option("--prune-empty-repositories", help="Also remove repositories the plan leaves with nothing.")
    ] = False,
    min_age: Annotated[
        str,
        typer.Option(
            "--min-age", help="Grace period: nothing newer is ever planned for deletion (protects a push in progress)."
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
    registry_url: Annotated[str | None, typer.Option("--registry-url", help="Registry URL for --format http.")] = None,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
) -> None:
    """Write a reviewable deletion plan: what the retention rules remove, in a safe order, with reasons.

    Orphan blobs are always included. Nothing is deleted here: review the plan, then `storage-audit apply` it.
    """
    from .formats.table import render as render_table
    from .plan import PlanRefused, Policy, make_plan
    from .plan_formats import render

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
    if source.snapshot:
        fail(f"{root}: plan from the storage itself, not a snapshot: apply re-checks the live files")
    if source.storage is not None:
        fail(f"{root}: deletion plans for object storage are not supported yet; the read-only commands are")
    inv = read_inventory(root, quiet, workers, source)
    try:
        result = make_plan(inv, policy, datetime.now(UTC))
    except PlanRefused as exc:
        fail(str(exc), EXIT_FINDINGS)
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


@app.command()
def apply(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="A plan written by `storage-audit plan`.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be done.")] = False,
    quarantine: Annotated[
        Path | None,
        typer.Option(
            "--quarantine",
            help="Move what is removed into this directory (same layout), restorable, instead of deleting.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Apply a deletion plan: validate it, re-check each action right before it, never remove what is in use.

    A journal beside the plan (PLAN.<hash>.journal) lets an interrupted apply resume, and stops a plan from
    being applied twice. Restart the registry afterwards: its blob cache still believes removed blobs exist.
    """
    from .apply import AlreadyApplied, ApplyOptions, apply_plan, read_plan
    from .errors import AuditError
    from .formats import View
    from .formats.table import render as render_table
    from .plan import PlanError

    try:
        loaded, digest = read_plan(plan_file)
    except PlanError as exc:
        fail(f"{plan_file}: refusing the plan, nothing was deleted: {exc}")
    if quarantine is not None and quarantine.exists() and not quarantine.is_dir():
        fail(f"{quarantine}: not a directory")
    totals = loaded.totals()
    if not quiet:
        err.print(
            f"plan: {totals['count']} actions, {size(totals['bytes'])} of blobs and uploads, on {loaded.root}",
            markup=False,
            soft_wrap=True,
        )
    if not dry_run and not yes and not typer.confirm("Apply this plan?", err=True):
        fail("not confirmed; nothing was deleted", EXIT_INTERNAL)
    log = (lambda line: None) if quiet else (lambda line: err.print(line, markup=False, soft_wrap=True))
    try:
        outcome = apply_plan(loaded, digest, plan_file, ApplyOptions(dry_run=dry_run, quarantine=quarantine), log)
    except AlreadyApplied as exc:
        err.print(f"storage-audit: {exc}", markup=False, soft_wrap=True)
        return
    except PlanError as exc:
        fail(str(exc))
    except AuditError as exc:
        fail(str(exc), exc.exit_code)
    if outcome.failed:
        err.print(
            f"storage-audit: {len(outcome.failed)} actions failed and were left for the next run "
            f"(the first: {outcome.failed[0][1]})",
            markup=False,
            soft_wrap=True,
        )
    if quiet:
        if outcome.failed:
            raise typer.Exit(EXIT_FINDINGS)
        return
    if not outcome.frame().empty:
        render_table(View(outcome.frame(), title="apply", total_columns=("count",)), err)
    verb = "would free" if dry_run else "freed"
    err.print(
        f"{verb} {size(outcome.bytes_freed)} ({outcome.bytes_freed} bytes) on disk; "
        f"{len(outcome.skipped)} actions skipped",
        markup=False,
    )
    if not dry_run and outcome.done:
        err.print(
            "Restart the registry now: its blob descriptor cache still believes removed blobs exist.", markup=False
        )
    if outcome.failed:
        raise typer.Exit(EXIT_FINDINGS)


def emit_tables(views: list[View], output: Path | None) -> None:
    """Write tables one after another, to stdout or to one file opened only now."""
    from .formats.table import MIN_WIDTH
    from .formats.table import render as render_table

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


@app.command()
@root_options
def check(
    root: RootArg = DEFAULT_ROOT,
    verify_digests: Annotated[
        bool,
        typer.Option("--verify-digests", help="Also hash every blob and compare it with its name: reads all data."),
    ] = False,
    upload_age: Annotated[
        str,
        typer.Option("--upload-age", help="An upload started this long before the scan is stale: 168h, 7d, 90m."),
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
            help="Processes that read the tree, and blobs hashed at once by --verify-digests (default: one per CPU).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Check the storage for damage: every finding (README, "Findings"), with a count per kind.

    Exit codes: 0 no error findings; 3 error findings (with --strict, warnings
    too); 2 unusable arguments or ROOT; 1 internal failure.
    """
    from . import check as checking

    age = parse_duration(upload_age, "--upload-age")
    source = open_root(root)
    if verify_digests and source.snapshot:
        fail(f"{root}: --verify-digests reads blob content, which a snapshot does not hold; give the storage tree")
    inv = read_inventory(root, quiet, workers, source)
    with (
        RichByteProgress(err, enabled=verify_digests and not quiet and err.is_terminal) as progress,
        storage_failures(),
    ):
        options = checking.CheckOptions(verify_digests, age, workers or 0, progress, source.storage)
        findings = checking.check(inv, options)
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


def _foreign_content(directory: Path) -> bool:
    from .schema import METADATA_FILE, SCHEMA, VIEW_FILE

    allowed = {METADATA_FILE, *(f"{name}.parquet" for name in SCHEMA), *(VIEW_FILE.format(by) for by in By)}
    return any(p.name not in allowed for p in directory.iterdir())


def _version(value: bool) -> None:
    if value:
        typer.echo(f"storage-audit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Audit a Docker/OCI registry's storage offline, straight from its volume."""


def main() -> None:
    """Entry point: run the app; an unexpected exception is one line on stderr and exit 1."""
    try:
        app()
    except Exception as exc:
        err.print(f"storage-audit: internal error: {exc.__class__.__name__}: {exc}", markup=False)
        sys.exit(EXIT_INTERNAL)
    finally:
        # What is still alive is freed on exit anyway: spare the collector's last pass over it.
        gc.freeze()

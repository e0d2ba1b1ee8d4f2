"""`check`: every finding about the storage, errors first, and an exit code that says whether it is damaged."""

from __future__ import annotations

from typing import Annotated

import typer

from storage_audit.analysis.options import Format, ViewFormat
from storage_audit.cli.options import (
    CacheDirOpt,
    FormatOpt,
    Help,
    NoCacheOpt,
    OutputOpt,
    QuietOpt,
    RateOpt,
    RootArg,
    WideOpt,
    at_least,
    open_root,
    parse_duration,
    remote,
    root_text,
)
from storage_audit.cli.output import emit, emit_tables
from storage_audit.cli.progress import Reporter
from storage_audit.cli.render import check_summary, err
from storage_audit.core.errors import EXIT_FINDINGS
from storage_audit.operations import check as checking

HELP = Help(
    "Check the storage for damage: missing blobs, dangling tags, corrupt manifests and links, "
    "stale uploads; exits 3 on errors.",
    (
        ("Every finding, errors first:", "/var/lib/registry"),
        ("Also hash every blob, four at a time:", "/var/lib/registry --verify-digests --workers 4"),
        ("In a nightly job, failing on warnings too:", "--strict --quiet -f json -o findings.json"),
    ),
)


def check(
    root: RootArg = None,
    verify_digests: Annotated[
        bool,
        typer.Option("--verify-digests", help="Also hash every blob and compare it with its name: reads all data."),
    ] = False,
    upload_age: Annotated[
        str,
        typer.Option(
            "--upload-age",
            metavar="DURATION",
            help="An upload started this long before the scan is stale: 168h, 7d, 1d12h, 90m.",
        ),
    ] = "168h",
    fmt: FormatOpt = ViewFormat.TABLE,
    output: OutputOpt = None,
    wide: WideOpt = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 3 on warnings too, not only on errors.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-j",
            metavar="N",
            callback=at_least(1),
            help="Processes that read the tree, and blobs hashed at once by --verify-digests (default: one per "
            "CPU).  [at least 1]",
        ),
    ] = None,
    quiet: QuietOpt = False,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    max_requests_per_second: RateOpt = None,
) -> None:
    """Check the storage for damage: every finding (docs/findings.md), with a count per kind.

    Exit codes: 0 no error findings; 3 error findings (with --strict, warnings
    too); 2 unusable arguments or ROOT; 1 internal failure.
    """
    from storage_audit.scan.run import ScanOptions

    age = parse_duration(upload_age, "--upload-age")
    source = open_root(root_text(root, quiet), remote(cache_dir, no_cache, max_requests_per_second))
    # The digests' progress follows the scan's on the same line.
    with Reporter(err, enabled=not quiet and err.is_terminal) as progress:
        options = checking.CheckOptions(verify_digests, age, workers or 0, progress)
        checked = checking.check(source, options, ScanOptions(progress=progress, workers=workers or 0))
    table = fmt is ViewFormat.TABLE
    views = checked.views(table=table)
    if table:
        emit_tables(views, output, wide)
    else:
        emit(views[0], Format(fmt), output)
    if not quiet:
        err.print(check_summary(checked.counts, verify_digests), markup=False, soft_wrap=True)
    if checked.failed(strict):
        raise typer.Exit(EXIT_FINDINGS)

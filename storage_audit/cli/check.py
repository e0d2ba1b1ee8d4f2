"""`check`: every finding about the storage, errors first, and an exit code that says whether it is damaged."""

from __future__ import annotations

from pathlib import Path

import click

from storage_audit.analysis.options import Format, ViewFormat
from storage_audit.cli.options import (
    AtLeast,
    AuditCommand,
    duration_option,
    open_root,
    output_option,
    parse_duration,
    quiet_option,
    remote,
    remote_options,
    root_argument,
    root_text,
    view_format_option,
    wide_option,
)
from storage_audit.cli.output import emit, emit_tables
from storage_audit.cli.progress import Reporter
from storage_audit.cli.render import check_summary, err
from storage_audit.core.errors import EXIT_FINDINGS
from storage_audit.operations import check as checking


@click.command(
    "check",
    cls=AuditCommand,
    short_help="Check the storage for damage: missing blobs, dangling tags, corrupt manifests and links, "
    "stale uploads; exits 3 on errors.",
    examples=[
        ("Every finding, errors first:", "/var/lib/registry"),
        ("Also hash every blob, four at a time:", "/var/lib/registry --verify-digests --workers 4"),
        ("In a nightly job, failing on warnings too:", "--strict --quiet -f json -o findings.json"),
    ],
)
@root_argument
@click.option(
    "--verify-digests", is_flag=True, help="Also hash every blob and compare it with its name: reads all data."
)
@duration_option(
    "--upload-age", "An upload started this long before the scan is stale: 168h, 7d, 1d12h, 90m.", default="168h"
)
@view_format_option
@output_option
@wide_option
@click.option("--strict", is_flag=True, help="Exit 3 on warnings too, not only on errors.")
@click.option(
    "--workers",
    "-j",
    type=AtLeast(1),
    metavar="N",
    help="Processes that read the tree, and blobs hashed at once by --verify-digests (default: one per CPU).",
)
@quiet_option
@remote_options
def check(
    root: str | None,
    verify_digests: bool,
    upload_age: str,
    fmt: ViewFormat,
    output: Path | None,
    wide: bool,
    strict: bool,
    workers: int | None,
    quiet: bool,
    cache_dir: Path | None,
    no_cache: bool,
    max_requests_per_second: float | None,
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
        raise click.exceptions.Exit(EXIT_FINDINGS)

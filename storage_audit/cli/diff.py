"""`diff`: what changed between two audits, largest change first, with a one-line summary on stderr."""

from __future__ import annotations

from typing import Annotated

import typer

from storage_audit.analysis.options import DiffBy, Format, ViewFormat
from storage_audit.cli.options import (
    CacheDirOpt,
    FormatOpt,
    Help,
    NoCacheOpt,
    OutputOpt,
    QuietOpt,
    RateOpt,
    ScanWorkersOpt,
    WideOpt,
    choices,
    open_root,
    remote,
)
from storage_audit.cli.output import emit
from storage_audit.cli.progress import reading
from storage_audit.cli.render import exit_if_unreadable, say
from storage_audit.operations import diff as diffing

HELP = Help(
    "Show what changed between two audits (snapshots or trees), largest change first.",
    (
        ("What each repository gained or lost since last week's snapshot:", "/srv/audit/w48 /srv/audit/w49"),
        ("Since then, to the registry as it is now, per tag:", "/srv/audit/w48 /var/lib/registry --by tag"),
        ("The blobs added and removed, as CSV:", "/srv/audit/w48 /srv/audit/w49 -b blob -f csv"),
    ),
)


def diff(
    old: Annotated[str, typer.Argument(metavar="OLD", help="The earlier audit: a snapshot or any ROOT.")],
    new: Annotated[str, typer.Argument(metavar="NEW", help="The later audit: a snapshot or any ROOT.")],
    by: Annotated[
        DiffBy,
        typer.Option("--by", "-b", metavar=choices(DiffBy), help="What each row is: a repository, a tag, or a blob."),
    ] = DiffBy.REPOSITORY,
    fmt: FormatOpt = ViewFormat.TABLE,
    output: OutputOpt = None,
    wide: WideOpt = False,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    max_requests_per_second: RateOpt = None,
) -> None:
    """Show what changed between two audits, largest change first, with a one-line summary on stderr.

    A snapshot's stored report views are compared as they are; a storage tree is scanned and analyzed.
    """
    options = remote(cache_dir, no_cache, max_requests_per_second)
    sides = open_root(old, options), open_root(new, options)
    with reading(quiet, workers) as scan:
        found = diffing.diff(*sides, diffing.DiffOptions(by, names=(old, new)), scan)
    for warning in found.result.warnings:
        say(f"storage-audit: warning: {warning}")
    emit(found.view(), Format(fmt), output, wide)
    if not quiet:
        say(found.summary())
    exit_if_unreadable(found.unreadable)

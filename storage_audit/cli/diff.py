"""`diff`: what changed between two audits, largest change first, with a one-line summary on stderr."""

from __future__ import annotations

from pathlib import Path

import click

from storage_audit.analysis.options import DiffBy, Format, ViewFormat
from storage_audit.cli.options import (
    AuditCommand,
    EnumChoice,
    argument,
    open_root,
    output_option,
    quiet_option,
    remote,
    remote_options,
    view_format_option,
    wide_option,
    workers_option,
)
from storage_audit.cli.output import emit
from storage_audit.cli.progress import reading
from storage_audit.cli.render import exit_if_unreadable, say
from storage_audit.operations import diff as diffing


@click.command(
    "diff",
    cls=AuditCommand,
    short_help="Show what changed between two audits (snapshots or trees), largest change first.",
    examples=[
        ("What each repository gained or lost since last week's snapshot:", "/srv/audit/w48 /srv/audit/w49"),
        ("Since then, to the registry as it is now, per tag:", "/srv/audit/w48 /var/lib/registry --by tag"),
        ("The blobs added and removed, as CSV:", "/srv/audit/w48 /srv/audit/w49 -b blob -f csv"),
    ],
)
@argument("old", "The earlier audit: a snapshot or any ROOT.")
@argument("new", "The later audit: a snapshot or any ROOT.")
@click.option(
    "--by",
    "-b",
    type=EnumChoice(DiffBy),
    default=DiffBy.REPOSITORY.value,
    show_default=True,
    help="What each row is: a repository, a tag, or a blob.",
)
@view_format_option
@output_option
@wide_option
@quiet_option
@workers_option
@remote_options
def diff(
    old: str,
    new: str,
    by: DiffBy,
    fmt: ViewFormat,
    output: Path | None,
    wide: bool,
    quiet: bool,
    workers: int | None,
    cache_dir: Path | None,
    no_cache: bool,
    max_requests_per_second: float | None,
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

"""`untagged` and `orphans`: what a collector would remove, and what the stock one would remove beyond it."""

from __future__ import annotations

from pathlib import Path

import click

from storage_audit.analysis.options import Format, ViewFormat
from storage_audit.cli.options import (
    AuditCommand,
    gc_compatible_option,
    keep_referrers_option,
    open_root,
    output_option,
    quiet_option,
    remote,
    remote_options,
    root_argument,
    root_text,
    view_format_option,
    wide_option,
    workers_option,
)
from storage_audit.cli.output import emit
from storage_audit.cli.progress import reading
from storage_audit.cli.render import exit_if_unreadable, warn_gc_difference, warn_plain_gc_difference
from storage_audit.operations import collect


@click.command(
    "untagged",
    cls=AuditCommand,
    short_help="List the manifests no tag needs, and what deleting each would free.",
    examples=[
        ("The untagged manifests of the registry found by default:", ""),
        ("Exactly those `registry garbage-collect --delete-untagged` deletes:", "/var/lib/registry --gc-compatible"),
        ("Every row, for a spreadsheet:", "/var/lib/registry --format csv -o untagged.csv"),
    ],
)
@root_argument
@view_format_option
@output_option
@wide_option
@gc_compatible_option
@keep_referrers_option
@quiet_option
@workers_option
@remote_options
def untagged(
    root: str | None,
    fmt: ViewFormat,
    output: Path | None,
    wide: bool,
    gc_compatible: bool,
    keep_referrers: bool,
    quiet: bool,
    workers: int | None,
    cache_dir: Path | None,
    no_cache: bool,
    max_requests_per_second: float | None,
) -> None:
    """List manifest revisions no tag reaches, per repository, with the bytes each would free alone.

    Reached: a tag's current target, the children of a reached index (same
    repository), and artifacts whose subject is reached.
    """
    source = open_root(root_text(root, quiet), remote(cache_dir, no_cache, max_requests_per_second))
    options = collect.CollectOptions(keep_referrers=keep_referrers, gc_compatible=gc_compatible, compare_gc=not quiet)
    with reading(quiet, workers) as scan:
        found = collect.untagged(source, options, scan)
    if found.gc_difference is not None:
        warn_gc_difference(found.gc_difference)
    emit(found.view, Format(fmt), output, wide)
    exit_if_unreadable(found.unreadable)


@click.command(
    "orphans",
    cls=AuditCommand,
    short_help="List the blobs nothing references, which a garbage collection removes.",
    examples=[
        ("The blobs `registry garbage-collect` would remove:", ""),
        ("And those that deleting untagged manifests would leave:", "/var/lib/registry --delete-untagged"),
        ("Every row as JSON:", "/var/lib/registry -m --format json -o orphans.json"),
    ],
)
@root_argument
@click.option(
    "--delete-untagged", "-m", is_flag=True, help="Keep only manifests a tag reaches (as garbage-collect -m)."
)
@view_format_option
@output_option
@wide_option
@gc_compatible_option
@keep_referrers_option
@quiet_option
@workers_option
@remote_options
def orphans(
    root: str | None,
    delete_untagged: bool,
    fmt: ViewFormat,
    output: Path | None,
    wide: bool,
    gc_compatible: bool,
    keep_referrers: bool,
    quiet: bool,
    workers: int | None,
    cache_dir: Path | None,
    no_cache: bool,
    max_requests_per_second: float | None,
) -> None:
    """List the blobs a sweep would remove: no kept manifest in any repository references them."""
    source = open_root(root_text(root, quiet), remote(cache_dir, no_cache, max_requests_per_second))
    options = collect.CollectOptions(delete_untagged, keep_referrers, gc_compatible, compare_gc=not quiet)
    with reading(quiet, workers) as scan:
        found = collect.orphans(source, options, scan)
    if found.gc_difference is not None and delete_untagged:
        warn_gc_difference(found.gc_difference)
    elif found.gc_difference is not None:
        warn_plain_gc_difference(found.gc_difference)
    emit(found.view, Format(fmt), output, wide)
    exit_if_unreadable(found.unreadable)

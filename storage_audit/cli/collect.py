"""`untagged` and `orphans`: what a collector would remove, and what the stock one would remove beyond it."""

from __future__ import annotations

from typing import Annotated

import typer

from storage_audit.analysis.options import Engine, Format, ViewFormat
from storage_audit.cli.options import (
    CacheDirOpt,
    EngineOpt,
    FormatOpt,
    GcCompatibleOpt,
    Help,
    KeepReferrersOpt,
    NoCacheOpt,
    OutputOpt,
    QuietOpt,
    RateOpt,
    RootArg,
    ScanWorkersOpt,
    WideOpt,
    open_root,
    remote,
    root_text,
)
from storage_audit.cli.output import emit
from storage_audit.cli.progress import reading
from storage_audit.cli.render import exit_if_unreadable, warn_gc_differences
from storage_audit.operations import collect

UNTAGGED_HELP = Help(
    "List the manifests no tag needs, and what deleting each would free.",
    (
        ("The untagged manifests of the registry found by default:", ""),
        ("Exactly those registry 2.8's `garbage-collect -m` deletes:", "/var/lib/registry --gc-compatible"),
        ("Those registry 3's, for a spreadsheet:", "/var/lib/registry --gc-compatible=3 -f csv -o u.csv"),
    ),
)
ORPHANS_HELP = Help(
    "List the blobs nothing references, which a garbage collection removes.",
    (
        ("The blobs `registry garbage-collect` would remove:", ""),
        ("And those that deleting untagged manifests would leave:", "/var/lib/registry --delete-untagged"),
        ("Every row as JSON:", "/var/lib/registry -m --format json -o orphans.json"),
    ),
)


def untagged(
    root: RootArg = None,
    fmt: FormatOpt = ViewFormat.TABLE,
    output: OutputOpt = None,
    wide: WideOpt = False,
    gc_compatible: GcCompatibleOpt = None,
    engine: EngineOpt = Engine.PANDAS,
    keep_referrers: KeepReferrersOpt = True,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    max_requests_per_second: RateOpt = None,
) -> None:
    """List manifest revisions no tag reaches, per repository, with the bytes each would free alone.

    Reached: a tag's current target, the children of a reached index (same
    repository), and artifacts whose subject is reached.
    """
    source = open_root(root_text(root, quiet), remote(cache_dir, no_cache, max_requests_per_second))
    options = collect.CollectOptions(
        keep_referrers=keep_referrers, collector=gc_compatible, compare_gc=not quiet, engine=engine
    )
    with reading(quiet, workers) as scan:
        found = collect.untagged(source, options, scan)
    warn_gc_differences(found.gc_differences, delete_untagged=True)
    emit(found.view, Format(fmt), output, wide)
    exit_if_unreadable(found.unreadable)


def orphans(
    root: RootArg = None,
    delete_untagged: Annotated[
        bool,
        typer.Option("--delete-untagged", "-m", help="Keep only manifests a tag reaches (as garbage-collect -m)."),
    ] = False,
    fmt: FormatOpt = ViewFormat.TABLE,
    output: OutputOpt = None,
    wide: WideOpt = False,
    gc_compatible: GcCompatibleOpt = None,
    engine: EngineOpt = Engine.PANDAS,
    keep_referrers: KeepReferrersOpt = True,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    max_requests_per_second: RateOpt = None,
) -> None:
    """List the blobs a sweep would remove: no kept manifest in any repository references them."""
    source = open_root(root_text(root, quiet), remote(cache_dir, no_cache, max_requests_per_second))
    # A table shows the first rows: the engine computes no others.
    first = collect.TABLE_ROWS if Format(fmt) is Format.TABLE else None
    options = collect.CollectOptions(
        delete_untagged, keep_referrers, gc_compatible, compare_gc=not quiet, engine=engine, first=first
    )
    with reading(quiet, workers) as scan:
        found = collect.orphans(source, options, scan)
    warn_gc_differences(found.gc_differences, delete_untagged)
    emit(found.view, Format(fmt), output, wide)
    exit_if_unreadable(found.unreadable)

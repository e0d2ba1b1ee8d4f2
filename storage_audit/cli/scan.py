"""`scan`: read the storage into an inventory, summarize it on stderr, and write it as a snapshot with -o."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from storage_audit.cli.options import (
    CacheDirOpt,
    Help,
    NoCacheOpt,
    QuietOpt,
    RateOpt,
    RootArg,
    ScanWorkersOpt,
    at_least,
    fail,
    open_root,
    remote,
    root_text,
)
from storage_audit.cli.progress import reading
from storage_audit.cli.render import exit_if_unreadable, say, say_pruned, scan_summary
from storage_audit.core.shard import Shard
from storage_audit.operations import scan as scanning

HELP = Help(
    "Read the whole storage once and count what it holds; -o DIR keeps it as a snapshot.",
    (
        ("Count what the registry found by default holds:", ""),
        (
            "Keep a snapshot, which every other command reads as it reads the tree:",
            "/var/lib/registry -o /srv/audit/w49",
        ),
        ("Keep the 30 newest snapshots in /srv/audit, quietly:", "-o /srv/audit/w49 --keep 30 --quiet"),
    ),
)


def scan(
    root: RootArg = None,
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
            metavar="N",
            callback=at_least(1),
            help="With -o DIR: keep the N newest snapshots in DIR's parent directory (DIR included) and remove "
            "older ones; only storage-audit snapshots are ever removed.  [at least 1]",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="I/N",
            help="With -o DIR: read only share I (from 0) of N of the repositories and blob prefixes, into "
            "DIR/shard-I-of-N; DIR, once it holds all N shares, is read as one snapshot.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    max_requests_per_second: RateOpt = None,
) -> None:
    """Read the storage into an inventory and summarize it on stderr (like `git count-objects -v`).

    Exits 3, saying so, when part of the tree could not be read.
    """
    if keep is not None and output is None:
        fail("--keep needs -o DIR: it keeps the newest snapshots beside DIR")
    if output is not None and str(output) == "-":
        fail("-o -: a snapshot is a directory, not stdout")
    part = None
    if shard is not None:
        if output is None:
            fail("--shard needs -o DIR: each share is written as a snapshot into DIR")
        if keep is not None:
            fail("--keep does not go with --shard: a share is no whole snapshot")
        try:
            part = Shard.parse(shard)
        except ValueError as exc:
            fail(f"--shard {exc}")
        scanning.check_shard_target(output, part)
    elif output is not None:
        scanning.check_target(output)
    source = open_root(root_text(root, quiet), remote(cache_dir, no_cache, max_requests_per_second))
    snapshot = None if output is None else scanning.SnapshotOptions(output, keep)
    with reading(quiet, workers) as options:
        survey = scanning.survey(source, replace(options, shard=part), snapshot)
    if survey.pruned is not None:
        say_pruned(survey.pruned, quiet)
    if not quiet:
        for key, value in scan_summary(survey):
            say(f"{key}: {value}")
    exit_if_unreadable(survey.unreadable)

"""The command line: parse arguments, call the library, render, and map failures to exit codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import humanize
import typer
from rich.console import Console

from . import __version__, collect
from .formats import Format, FormatError, View, write
from .inventory import Inventory, write_snapshot
from .progress import RichProgress
from .reach import ReachOptions
from .scan import ScanOptions
from .source import RootError, Source, load, resolve

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="storage-audit",
    help="Audit a Docker/OCI registry's storage offline, straight from its volume.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)

RootArg = Annotated[
    Path,
    typer.Argument(
        help="Registry root (holding docker/registry/v2), the v2 directory itself, "
        "or a snapshot directory written by `scan -o`.",
        show_default=True,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no summary on stderr.")]
DEFAULT_ROOT = Path("/var/lib/registry")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"storage-audit: error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def open_root(root: Path) -> Source:
    try:
        return resolve(root)
    except RootError as exc:
        fail(str(exc))


def read_inventory(root: Path, quiet: bool) -> Inventory:
    """Resolve ROOT and load or scan it, with a progress display when stderr is a terminal."""
    source = open_root(root)
    with RichProgress(err, enabled=not quiet and err.is_terminal) as progress:
        try:
            return load(source, ScanOptions(progress=progress))
        except RootError as exc:
            fail(str(exc))


def size(n: int) -> str:
    return humanize.naturalsize(n, binary=True)


def scan_summary(inv: Inventory) -> list[tuple[str, str]]:
    """`git count-objects -v`-style lines describing an inventory."""
    deleted = int((~inv.revisions["linked"]).sum())
    severities = inv.findings["severity"].value_counts()
    by_severity = ", ".join(f"{n} {sev}" for sev, n in severities.items())
    return [
        ("root", inv.root),
        ("repositories", f"{len(inv.repositories)}"),
        ("tags", f"{len(inv.tags)}"),
        ("tag-history", f"{len(inv.tag_history)}"),
        ("revisions", f"{len(inv.revisions)} ({deleted} deleted)"),
        ("manifests", f"{len(inv.manifests)}"),
        ("references", f"{len(inv.references)}"),
        ("layer-links", f"{len(inv.layer_links)}"),
        ("blobs", f"{len(inv.blobs)}"),
        ("blob-bytes", size(int(inv.blobs["size"].sum()))),
        ("uploads", f"{len(inv.uploads)}"),
        ("upload-bytes", size(int(inv.uploads["bytes"].sum()))),
        ("findings", f"{len(inv.findings)}" + (f" ({by_severity})" if by_severity else "")),
    ]


@app.command()
def scan(
    root: RootArg = DEFAULT_ROOT,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the inventory here as Parquet tables plus metadata.json."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Read the storage into an inventory and summarize it on stderr (like `git count-objects -v`)."""
    if output is not None and output.exists() and (not output.is_dir() or _foreign_content(output)):
        fail(f"{output}: exists and is not an empty directory or an earlier snapshot")
    inv = read_inventory(root, quiet)
    if output is not None:
        try:
            write_snapshot(inv, output)
        except OSError as exc:
            fail(f"{output}: cannot write snapshot: {exc.strerror or exc}")
    if not quiet:
        for key, value in scan_summary(inv):
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
    try:
        write(view, fmt, output)
    except FormatError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{output}: cannot write: {exc.strerror or exc}")


def warn_gc_difference(inv: Inventory, keep_referrers: bool) -> None:
    """Say on stderr what the stock collector's --delete-untagged would delete that we keep."""
    diff = collect.gc_difference(inv, keep_referrers)
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
def untagged(
    root: RootArg = DEFAULT_ROOT,
    fmt: FormatOpt = Format.TABLE,
    output: OutputOpt = None,
    gc_compatible: GcCompatibleOpt = False,
    keep_referrers: KeepReferrersOpt = True,
    quiet: QuietOpt = False,
) -> None:
    """List manifest revisions no tag reaches, per repository, with the bytes each would free alone.

    Reached: a tag's current target, the children of a reached index (same
    repository), and artifacts whose subject is reached.
    """
    inv = read_inventory(root, quiet)
    options = ReachOptions(delete_untagged=True, keep_referrers=keep_referrers, gc_compatible=gc_compatible)
    frame = collect.untagged(inv, options)
    if not gc_compatible and not quiet:
        warn_gc_difference(inv, keep_referrers)
    view = View(
        frame,
        title="untagged manifests",
        size_columns=("manifest_bytes", "reclaimable_bytes"),
        optional_columns=("artifact_type", "subject", "media_type", "manifest_bytes", "pushed_at"),
        total_columns=("manifest_bytes", "reclaimable_bytes"),
    )
    emit(view, fmt, output)


@app.command()
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
) -> None:
    """List the blobs a sweep would remove: no kept manifest in any repository references them."""
    inv = read_inventory(root, quiet)
    options = ReachOptions(delete_untagged=delete_untagged, keep_referrers=keep_referrers, gc_compatible=gc_compatible)
    frame = collect.orphans(inv, options)
    if delete_untagged and not gc_compatible and not quiet:
        warn_gc_difference(inv, keep_referrers)
    view = View(
        frame,
        title="orphan blobs",
        size_columns=("size",),
        optional_columns=("linked_from", "mtime"),
        total_columns=("size",),
    )
    emit(view, fmt, output)


def _foreign_content(directory: Path) -> bool:
    from .inventory import METADATA_FILE, SCHEMA

    allowed = {METADATA_FILE, *(f"{name}.parquet" for name in SCHEMA)}
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

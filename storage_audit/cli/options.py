"""The options the commands share, as `Annotated` types, and the parsing of what the library takes typed: ROOT with
its object-storage options, durations, regular expressions, `-o -`."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from storage_audit.analysis.options import ViewFormat
from storage_audit.core.errors import UsageError
from storage_audit.roots.resolve import Root, resolve
from storage_audit.storage.base import RemoteOptions

DEFAULT_ROOT = "/var/lib/registry"

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

# The options of a ROOT in object storage, which every command that takes ROOT declares, and `apply`.
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


def stdout_dash(value: Path | None) -> Path | None:
    """`-o -` is stdout, as for most tools: never a file named `-`."""
    return None if value is not None and str(value) == "-" else value


FormatOpt = Annotated[
    ViewFormat,
    typer.Option("--format", "-f", help="Output: a table for people, or csv, json, parquet (needs -o)."),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        readable=False,
        callback=stdout_dash,
        help="Write the result to this file instead of stdout (- is stdout).",
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


def fail(message: str) -> NoReturn:
    """Refuse arguments that cannot be used (exit 2)."""
    raise UsageError(message)


def remote(cache_dir: Path | None, no_cache: bool, max_requests_per_second: float | None) -> RemoteOptions:
    """The object-storage options as the library takes them."""
    return RemoteOptions(cache=not no_cache, cache_dir=cache_dir, max_requests_per_second=max_requests_per_second)


def open_root(root: str, options: RemoteOptions) -> Root:
    """The storage tree or snapshot ROOT designates; raises RootError."""
    return resolve(root, options)


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


def parse_regexes(patterns: list[str] | None, option: str) -> tuple[str, ...]:
    """The patterns, each checked to be a regular expression; a usage error names the first that is not."""
    for pattern in patterns or []:
        try:
            re.compile(pattern)
        except re.error as exc:
            fail(f"{option}: {pattern!r} is not a regular expression: {exc}")
    return tuple(patterns or [])

"""The typer command every storage-audit command is (failures mapped to one line and an exit code, its examples
last), the options the commands share as `Annotated` types, and the parsing of what the library takes typed: ROOT
with its object-storage options and its default, whole numbers and rates in their ranges, durations, regular
expressions, `-o -`."""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NamedTuple, NoReturn, TypeVar

import typer
from rich.text import Text
from typer.core import TyperCommand

from storage_audit.analysis.options import Collector, Engine, ViewFormat
from storage_audit.core import durations
from storage_audit.core.errors import EXIT_INTERNAL, AuditError, UsageError
from storage_audit.roots.resolve import Root, find_default, resolve
from storage_audit.storage.base import RemoteOptions

PROG = "storage-audit"


def report_failure(exc: Exception, debug: bool) -> int:
    """Say what went wrong in one line (after the traceback with --debug) and return the exit code."""
    from storage_audit.cli.render import err, say

    if debug:
        err.print(Text("".join(traceback.format_exception(exc))), soft_wrap=True, end="")
    if isinstance(exc, AuditError):
        say(f"{PROG}: error: {exc}")
        for line in exc.details:
            say(line)
        return exc.exit_code
    say(f"{PROG}: internal error: {exc.__class__.__name__}: {exc}")
    return EXIT_INTERNAL


class AuditCommand(TyperCommand):
    """A command that maps failures to one line and an exit code, names a required argument `PLAN`, and ends its
    help with its examples (its epilog, written by `Help.epilog`) under their own heading, as its options are."""

    def invoke(self, ctx: Any) -> Any:
        from storage_audit.cli.output import closed_pipe, end_on_closed_pipe

        try:
            try:
                return super().invoke(ctx)
            finally:
                # What stdout still holds goes now, where a reader that went away is caught below.
                sys.stdout.flush()
        except OSError as exc:
            if closed_pipe(exc):
                end_on_closed_pipe()
            raise typer.Exit(report_failure(exc, _debug(ctx))) from exc
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except Exception as exc:
            raise typer.Exit(report_failure(exc, _debug(ctx))) from exc

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, attach_optional_values(args))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        # typer writes a required argument as `{PLAN}`.
        return [
            piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
            for piece in super().collect_usage_pieces(ctx)
        ]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        # As typer does, but an argument is named by its metavar alone: typer 0.29 adds its type (`ROOT <str>`).
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                sections["Arguments"].append((param.metavar or record[0], record[1]))
            else:
                sections["Options"].append(record)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        # At the margin, as "Options:" is: typer would indent it as a paragraph of the description.
        if self.epilog:
            formatter.write_paragraph()
            formatter.write_text(self.epilog)


def _debug(ctx: Any) -> bool:
    """Whether the global --debug was given (it belongs to the parent context, the command group's)."""
    parent = ctx.parent
    return bool(parent is not None and parent.params.get("debug"))


class Help(NamedTuple):
    """What the list of commands says of a command, in a whole sentence, and the examples its help ends with: what
    each does, and its arguments after `storage-audit COMMAND`."""

    short: str
    examples: tuple[tuple[str, str], ...]

    def epilog(self, command: str) -> str:
        """The examples as the command's epilog; `\\b` keeps a command line whole: it is copied, not read."""
        lines = [f"  {what}\n    {PROG} {command} {args}".rstrip() for what, args in self.examples]
        return "\b\nExamples:\n" + "\n".join(lines)


def choices(enum: type[StrEnum]) -> str:
    """The metavar of an option that takes one of an enum's values: `[table|csv|json]`, as click writes choices."""
    return f"[{'|'.join(member.value for member in enum)}]"


N = TypeVar("N", int, float)


def at_least(minimum: N) -> Callable[[N | None], N | None]:
    """A callback that refuses a number below `minimum`, in words (typer's `min=` writes `x>=1` in the help)."""

    def check(value: N | None) -> N | None:
        if value is not None and value < minimum:
            raise typer.BadParameter(f"{value:g} is less than {minimum:g}, the least accepted")
        return value

    return check


ROOT_HELP = (
    "Registry root (holding docker/registry/v2), the v2 directory itself, a snapshot directory written by "
    "`scan -o`, s3://BUCKET[/ROOTDIRECTORY], gs://BUCKET[/ROOTDIRECTORY], az://CONTAINER[/ROOTDIRECTORY], "
    "or the registry's configuration file. "
    "Default: /etc/docker/registry/config.yml if it exists, else the first of /var/lib/registry and "
    "/var/lib/docker-registry that holds docker/registry/v2."
)

# ROOT is text: a path, an s3:// URL or a configuration file, which roots.resolve tells apart. A path option is
# `readable=False`: the commands check what they open, in one line, where typer's refusal is a box of lines.
RootArg = Annotated[str | None, typer.Argument(metavar="ROOT", help=ROOT_HELP, show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no summary on stderr.")]
WideOpt = Annotated[
    bool,
    typer.Option(
        "--wide",
        "-w",
        help="A table keeps every column, wrapping cells, where a terminal too narrow for it would see the least "
        "needed ones left out (stderr names them). Piped or written to a file, a table always keeps every column.",
    ),
]
ScanWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-j",
        metavar="N",
        callback=at_least(1),
        help="Processes that read the tree (default: one per CPU, up to 8, once it holds about 5,000 blobs; "
        "1 below that). More than the CPUs can pay off on a slow network volume.  [at least 1]",
    ),
]

# The options of a ROOT in object storage, which every command that takes ROOT declares, and `apply`.
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        metavar="DIR",
        readable=False,
        help="Object storage: where manifests are cached by digest "
        "(default: $XDG_CACHE_HOME/storage-audit, else ~/.cache/storage-audit).",
    ),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Object storage: neither read nor write the cache.")]
RateOpt = Annotated[
    float | None,
    typer.Option(
        "--max-requests-per-second",
        metavar="RATE",
        callback=at_least(0.001),
        help="Object storage, and the registry with apply --registry-url: start at most this many requests a second "
        "(AWS answers 503 SlowDown to bursts).  "
        "[at least 0.001]",
    ),
]


def stdout_dash(value: Path | None) -> Path | None:
    """`-o -` is stdout, as for most tools: never a file named `-`."""
    return None if value is not None and str(value) == "-" else value


FormatOpt = Annotated[
    ViewFormat,
    typer.Option(
        "--format",
        "-f",
        metavar=choices(ViewFormat),
        help="Output: a table for people, or csv, json, parquet (needs -o).",
    ),
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
    Collector | None,
    typer.Option(
        "--gc-compatible",
        metavar="[=2.8|=3]",
        help="Answer exactly as that version of the reference registry's garbage-collect would, its unsafe "
        "deletions included: alone, 2.8 (Debian's docker-registry, registry:2); =3 for registry:3.",
    ),
]
OPTIONAL_VALUES = {"--gc-compatible": Collector.V2_8.value}
"""Options whose value may be left out, and what they mean alone. As git's `--color[=WHEN]`, a value is
given only attached (`--gc-compatible=3`): the next word is never taken as one, so it stays ROOT."""


def attach_optional_values(args: list[str]) -> list[str]:
    """The command line with each option of OPTIONAL_VALUES given alone written with its value attached."""
    end = args.index("--") if "--" in args else len(args)
    return [f"{arg}={OPTIONAL_VALUES[arg]}" if arg in OPTIONAL_VALUES else arg for arg in args[:end]] + args[end:]


EngineOpt = Annotated[
    Engine,
    typer.Option(
        "--engine",
        metavar=choices(Engine),
        help="What computes the answer: pandas in memory, or duckdb from a snapshot (scan -o) in bounded memory, "
        "spilling to disk.",
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


def root_text(root: str | None, quiet: bool) -> str:
    """ROOT as given, or, when none was, the registry found where one is kept by default, said on stderr once
    (not with --quiet); raises RootError naming every place looked at when there is none."""
    if root is not None:
        return root
    from storage_audit.cli.render import say

    found = find_default()
    if not quiet:
        say(f"ROOT: {found}, found by default")
    return str(found.path)


def open_root(root: str, options: RemoteOptions) -> Root:
    """The storage tree or snapshot ROOT designates; raises RootError."""
    return resolve(root, options)


def parse_duration(text: str, option: str) -> timedelta:
    """`30d`, `1d12h`, `1h30m` (as the registry's own Go durations), `90m`, `0s`, `2w` -> timedelta; anything
    else, or over durations.MAX_DAYS, is a usage error naming the option."""
    try:
        return durations.parse(text)
    except durations.DurationError as exc:
        fail(f"{option}: {exc}")


def parse_regexes(patterns: Sequence[str] | None, option: str) -> tuple[str, ...]:
    """The patterns, each checked to be a regular expression; a usage error names the first that is not."""
    for pattern in patterns or []:
        try:
            re.compile(pattern)
        except re.error as exc:
            fail(f"{option}: {pattern!r} is not a regular expression: {exc}")
    return tuple(patterns or [])

"""The click command every storage-audit command is (failures mapped to one line and an exit code, a help that
lists its arguments and ends with examples), the options the commands share, as click decorators, and the parsing
of what the library takes typed: ROOT with its object-storage options and its default, durations, regular
expressions, `-o -`."""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from click.shell_completion import CompletionItem
from rich.text import Text

from storage_audit.analysis.options import ViewFormat
from storage_audit.core.errors import EXIT_INTERNAL, AuditError, UsageError
from storage_audit.roots.resolve import Root, find_default, resolve
from storage_audit.storage.base import RemoteOptions

F = TypeVar("F", bound=Callable[..., Any])

PROG = "storage-audit"


def report_failure(exc: Exception, debug: bool) -> int:
    """Say what went wrong in one line (after the traceback with --debug) and return the exit code."""
    from storage_audit.cli.render import err, say

    if debug:
        err.print(Text("".join(traceback.format_exception(exc))), soft_wrap=True, end="")
    if isinstance(exc, AuditError):
        say(f"{PROG}: error: {exc}")
        return exc.exit_code
    say(f"{PROG}: internal error: {exc.__class__.__name__}: {exc}")
    return EXIT_INTERNAL


class AuditCommand(click.Command):
    """A command that maps failures to one line and an exit code, and whose help ends with `examples`: pairs of
    what an example does and its arguments after `storage-audit COMMAND`."""

    def __init__(self, *args: Any, examples: Sequence[tuple[str, str]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.examples = tuple(examples)

    def invoke(self, ctx: click.Context) -> Any:
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
            raise click.exceptions.Exit(report_failure(exc, _debug(ctx))) from exc
        except (click.exceptions.Exit, click.exceptions.Abort, click.exceptions.ClickException):
            raise
        except Exception as exc:
            raise click.exceptions.Exit(report_failure(exc, _debug(ctx))) from exc

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # As click 8.5 does; the releases before it list no arguments.
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_arguments(ctx, formatter)
        self.format_options(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments = [
            (param.metavar or (param.name or "").upper(), param.help)
            for param in self.get_params(ctx)
            if isinstance(param, Argument) and param.help
        ]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if not self.examples:
            return
        with formatter.section("Examples"):
            for what, args in self.examples:
                formatter.write_text(what)
                # A command line is copied, not read: it is never wrapped.
                formatter.write(f"{'':>{formatter.current_indent + 2}}{PROG} {self.name} {args}".rstrip() + "\n")


def _debug(ctx: click.Context) -> bool:
    """Whether the global --debug was given (it belongs to the parent context, the command group's)."""
    parent = ctx.parent
    return bool(parent is not None and parent.params.get("debug"))


ROOT_HELP = (
    "Registry root (holding docker/registry/v2), the v2 directory itself, a snapshot directory written by "
    "`scan -o`, s3://BUCKET or s3://BUCKET/ROOTDIRECTORY, or the registry's configuration file. "
    "Default: /etc/docker/registry/config.yml if it exists, else the first of /var/lib/registry and "
    "/var/lib/docker-registry that holds docker/registry/v2."
)


class PathText(click.ParamType):
    """A path as given, stat()ed by the commands, not by click (whose checks end in a box of lines, and whose
    stat of a path holding a NUL raises); the shell completes it as a file or a directory."""

    name = "path"

    def __init__(self, as_path: bool = True, directory: bool = False) -> None:
        self.as_path = as_path
        self.directory = directory

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Path) or not self.as_path:
            return value
        return Path(value)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(incomplete, type="dir" if self.directory else "file")]


class EnumChoice(click.Choice):  # type: ignore[type-arg]
    """One of an enum's values, given as its value (`--by repository`), handed over as the enum's member."""

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__([member.value for member in enum])
        self.enum = enum

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{'|'.join(str(choice) for choice in self.choices)}]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.enum):
            return value
        return self.enum(super().convert(value, param, ctx))


class AtLeast(click.IntRange):
    """A whole number from `min` up, its range said in words in the help and in a refusal."""

    def __init__(self, min: int) -> None:
        super().__init__(min=min)

    def _describe_range(self) -> str:
        return f"at least {self.min}"


class RateRange(click.FloatRange):
    """A positive rate, its range said in words."""

    def __init__(self, min: float) -> None:
        super().__init__(min=min)

    def _describe_range(self) -> str:
        return f"at least {self.min:g}"


class Argument(click.Argument):
    """A positional argument with a help text, which the command's help lists under "Arguments"."""

    def __init__(self, param_decls: Sequence[str], help: str = "", **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.help = help


def argument(name: str, help: str, **attrs: Any) -> Callable[[F], F]:
    """A positional argument with `help`, completed by the shell as a path; its name, in capitals, is its metavar
    unless `metavar` says otherwise."""
    attrs.setdefault("type", PathText(as_path=False))
    return click.argument(name, cls=Argument, help=help, **attrs)


def root_argument(function: F) -> F:
    """ROOT, optional: without it a command reads the registry found where one is kept by default."""
    return argument("root", ROOT_HELP, required=False, default=None)(function)


def compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several option decorators as one, applied in the order written (so the help lists them so)."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def stdout_dash(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """`-o -` is stdout, as for most tools: never a file named `-`."""
    return None if value is not None and str(value) == "-" else value


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress display and no summary on stderr.")
workers_option = click.option(
    "--workers",
    "-j",
    type=AtLeast(1),
    metavar="N",
    help="Processes that read the tree (default: one per CPU, up to 8, once it holds about 5,000 blobs; "
    "1 below that). More than the CPUs can pay off on a slow network volume.",
)

# The options of a ROOT in object storage, which every command that takes ROOT declares, and `apply`.
remote_options = compose(
    click.option(
        "--cache-dir",
        type=PathText(directory=True),
        metavar="DIR",
        help="Object storage: where manifests are cached by digest "
        "(default: $XDG_CACHE_HOME/storage-audit, else ~/.cache/storage-audit).",
    ),
    click.option("--no-cache", is_flag=True, help="Object storage: neither read nor write the cache."),
    click.option(
        "--max-requests-per-second",
        type=RateRange(0.001),
        metavar="RATE",
        help="Object storage: start at most this many requests a second (AWS answers 503 SlowDown to bursts).",
    ),
)


def format_option(enum: type[StrEnum], default: StrEnum, help: str) -> Callable[[F], F]:
    return click.option(
        "--format", "-f", "fmt", type=EnumChoice(enum), default=default.value, show_default=True, help=help
    )


view_format_option = format_option(
    ViewFormat, ViewFormat.TABLE, "Output: a table for people, or csv, json, parquet (needs -o)."
)
output_option = click.option(
    "--output",
    "-o",
    type=PathText(),
    metavar="FILE",
    callback=stdout_dash,
    help="Write the result to this file instead of stdout (- is stdout).",
)
wide_option = click.option(
    "--wide",
    "-w",
    is_flag=True,
    help="A table keeps every column, wrapping cells, where a terminal too narrow for it would see the least "
    "needed ones left out (stderr names them). Piped or written to a file, a table always keeps every column.",
)
gc_compatible_option = click.option(
    "--gc-compatible",
    is_flag=True,
    help="Answer exactly as the reference registry 2.8's garbage-collect would, "
    "unsafe deletions of index children and referrers included.",
)
keep_referrers_option = click.option(
    "--keep-referrers/--no-keep-referrers",
    default=True,
    show_default=True,
    help="Keep artifacts (signatures, SBOMs) whose subject is kept.",
)


def duration_option(name: str, help: str, default: str | None = None) -> Callable[[F], F]:
    """An option taking a DURATION, parsed by parse_duration when the command runs (its error is one line)."""
    return click.option(name, metavar="DURATION", default=default, show_default=default is not None, help=help)


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


DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
# Times are pandas timestamps, which begin in 1677: 100,000 days (274 years) back from now stays inside.
MAX_DURATION_DAYS = 100_000
_DURATION = re.compile(r"(?:\d+[wdhms])+")
_DURATION_PART = re.compile(r"(\d+)([wdhms])")


def parse_duration(text: str, option: str) -> timedelta:
    """`30d`, `1d12h`, `1h30m` (as the registry's own Go durations), `90m`, `0s`, `2w` -> timedelta.

    A duration is whole numbers of weeks, days, hours, minutes and seconds written one after another, in any
    order, as Go's time.ParseDuration reads them. Anything else, or over MAX_DURATION_DAYS, is a usage error.
    """
    written = text.strip()
    if _DURATION.fullmatch(written) is None:
        fail(f"{option}: {text!r} is not a duration such as 30d, 1d12h, 1h30m, 90m or 0s")
    seconds = sum(int(n) * DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(written))
    if seconds > MAX_DURATION_DAYS * DURATION_UNITS["d"]:
        fail(f"{option}: {text!r} is longer than {MAX_DURATION_DAYS}d, the longest duration accepted")
    return timedelta(seconds=seconds)


def parse_regexes(patterns: Sequence[str] | None, option: str) -> tuple[str, ...]:
    """The patterns, each checked to be a regular expression; a usage error names the first that is not."""
    for pattern in patterns or []:
        try:
            re.compile(pattern)
        except re.error as exc:
            fail(f"{option}: {pattern!r} is not a regular expression: {exc}")
    return tuple(patterns or [])

"""The command line: the typer app of every command, the global options, and failures mapped to exit codes.

Each command lives in a module of its own, parses its arguments, calls one
operation of `storage_audit.operations` and renders what it returns. They
import the library's analysis when they run: pandas and the analysis take
about a second to load, which `--help` need not wait for, and which a scan
spends loading them while its workers already read the tree.
"""

from __future__ import annotations

import gc
import sys
import traceback
from typing import Annotated, Any

import typer
from rich.text import Text
from typer.core import TyperCommand

from storage_audit.cli.apply import apply
from storage_audit.cli.check import check
from storage_audit.cli.collect import orphans, untagged
from storage_audit.cli.diff import diff
from storage_audit.cli.output import buffered_stdout, closed_pipe, end_on_closed_pipe
from storage_audit.cli.plan import plan
from storage_audit.cli.render import err, say
from storage_audit.cli.report import report
from storage_audit.cli.scan import scan
from storage_audit.core.errors import EXIT_FINDINGS, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, AuditError
from storage_audit.core.version import __version__

__all__ = ["EXIT_FINDINGS", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "app", "main"]


def report_failure(exc: Exception, debug: bool) -> int:
    """Say what went wrong in one line (after the traceback with --debug) and return the exit code."""
    if debug:
        err.print(Text("".join(traceback.format_exception(exc))), soft_wrap=True, end="")
    if isinstance(exc, AuditError):
        say(f"storage-audit: error: {exc}")
        return exc.exit_code
    say(f"storage-audit: internal error: {exc.__class__.__name__}: {exc}")
    return EXIT_INTERNAL


class AuditCommand(TyperCommand):
    """A command that maps failures to one line and an exit code, and names a required argument `PLAN`."""

    def invoke(self, ctx: Any) -> Any:
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
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            raise typer.Exit(report_failure(exc, _debug(ctx))) from exc

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        # typer writes a required argument as `{PLAN}`.
        return [
            piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
            for piece in super().collect_usage_pieces(ctx)
        ]


def _debug(ctx: Any) -> bool:
    """Whether the global --debug was given (it belongs to the parent context, the command group's)."""
    parent = ctx.parent
    return bool(parent is not None and parent.params.get("debug"))


app = typer.Typer(
    name="storage-audit",
    help="Audit a Docker/OCI registry's storage offline, straight from its volume.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: rich's boxes cut option names at 80 columns.
    rich_markup_mode=None,
)

for command in (scan, untagged, orphans, report, diff, plan, apply, check):
    app.command(cls=AuditCommand)(command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"storage-audit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="On an error, show its traceback before its one line. Give it before the command."
        ),
    ] = False,
) -> None:
    """Audit a Docker/OCI registry's storage offline, straight from its volume."""


def main() -> None:
    """Entry point: run the app; an exception that escapes it (none should) is one line and exit 1."""
    buffered_stdout()
    try:
        app()
    except Exception as exc:
        sys.exit(report_failure(exc, debug="--debug" in sys.argv[1:2]))
    finally:
        # What is still alive is freed on exit anyway: spare the collector's last pass over it.
        gc.freeze()

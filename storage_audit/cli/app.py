"""The command line: the click group of every command, the global options, and shell completion.

Each command lives in a module of its own, parses its arguments, calls one
operation of `storage_audit.operations` and renders what it returns. They
import the library's analysis when they run: pandas and the analysis take
about a second to load, which `--help` and the shell's completion need not
wait for, and which a scan spends loading them while its workers already read
the tree.

Plain click, not typer: typer from 0.29 on loads pydantic to check every
argument (60 to 70 ms more for each command, measured), and its rich help cuts
long option names at 80 columns; with those off, as they were, it was click
behind a pinned dependency. click gives the completion of bash, zsh and fish.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import click
from click.shell_completion import get_completion_class

from storage_audit.cli.apply import apply
from storage_audit.cli.check import check
from storage_audit.cli.collect import orphans, untagged
from storage_audit.cli.diff import diff
from storage_audit.cli.options import PROG, AuditCommand, report_failure
from storage_audit.cli.output import buffered_stdout
from storage_audit.cli.plan import plan
from storage_audit.cli.report import report
from storage_audit.cli.scan import scan
from storage_audit.core.errors import EXIT_FINDINGS, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE
from storage_audit.core.version import __version__

__all__ = ["COMPLETE_VAR", "EXIT_FINDINGS", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "SHELLS", "app", "main"]

COMPLETE_VAR = "_STORAGE_AUDIT_COMPLETE"
"""The variable through which a shell's completion script asks the command for completions."""
SHELLS = ("bash", "zsh", "fish")


def _version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"{PROG} {__version__}")
        ctx.exit()


def _show_completion(ctx: click.Context, param: click.Parameter, shell: str | None) -> None:
    if shell is None or ctx.resilient_parsing:
        return
    complete = get_completion_class(shell)
    assert complete is not None  # one of SHELLS, each of which click completes
    click.echo(complete(app, {}, PROG, COMPLETE_VAR).source())
    ctx.exit()


class AuditGroup(click.Group):
    """The group of commands, listed in the order a session uses them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    PROG,
    cls=AuditGroup,
    no_args_is_help=True,
    context_settings={"help_option_names": ["--help", "-h"]},
    epilog="`storage-audit COMMAND --help` says what each command takes, with examples; the documentation is in docs/.",
)
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_version, help="Show the version and exit."
)
@click.option(
    "--debug", is_flag=True, help="On an error, show its traceback before its one line. Give it before the command."
)
@click.option(
    "--show-completion",
    type=click.Choice(SHELLS),
    expose_value=False,
    is_eager=True,
    callback=_show_completion,
    help="Print the completion script of this shell and exit; docs/commands.md says where to put it.",
)
def app(debug: bool) -> None:
    """Audit a Docker/OCI registry's storage offline, straight from its volume."""


for command in (scan, untagged, orphans, report, check, diff, plan, apply):
    assert isinstance(command, AuditCommand)
    app.add_command(command)


def main(args: list[str] | None = None) -> Any:
    """Entry point: run the app; an exception that escapes it (none should) is one line and exit 1."""
    buffered_stdout()
    try:
        # The name and the variable fixed, whatever started the process (`python -m storage_audit` included).
        app.main(args, prog_name=PROG, complete_var=COMPLETE_VAR)
    except Exception as exc:
        sys.exit(report_failure(exc, debug="--debug" in sys.argv[1:2]))
    finally:
        # What is still alive is freed on exit anyway: spare the collector's last pass over it.
        gc.freeze()

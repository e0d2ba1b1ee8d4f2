"""The command line: the typer app of every command, the global options, and shell completion.

Each command lives in a module of its own, parses its arguments, calls one
operation of `storage_audit.operations` and renders what it returns. They
import the library's analysis when they run: pandas and the analysis take
about a second to load, which `--help` and the shell's completion need not
wait for, and which a scan spends loading them while its workers already read
the tree.

The completion scripts and the protocol between them and the command
(`_STORAGE_AUDIT_COMPLETE=complete_bash` and the like) are typer's. Its own
`--show-completion` names no shell: it prints the script of the shell it
detects, whatever word follows. Here `--show-completion SHELL` names the shell,
and `--install-completion` installs the script of the shell it runs in.
"""

from __future__ import annotations

import gc
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer
import typer.completion

from storage_audit.cli import apply, check, collect, diff, plan, report, scan
from storage_audit.cli.options import PROG, AuditCommand, choices, report_failure
from storage_audit.cli.output import buffered_stdout
from storage_audit.core.errors import EXIT_FINDINGS, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE
from storage_audit.core.version import __version__

__all__ = ["COMPLETE_VAR", "EXIT_FINDINGS", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "Shell", "app", "main"]

COMPLETE_VAR = "_STORAGE_AUDIT_COMPLETE"
"""The variable through which a shell's completion script asks the command for completions (typer's name for it)."""


class Shell(StrEnum):
    """The shells whose completion the command line writes."""

    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


app = typer.Typer(
    name=PROG,
    help="Audit a Docker/OCI registry's storage offline, straight from its volume.",
    epilog="`storage-audit COMMAND --help` says what each command takes, with examples; the documentation is in docs/.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["--help", "-h"]},
    # The completion options are declared below, where --show-completion takes the shell's name.
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help, not rich's panels: at 80 columns the panels give a flag a type for a metavar
    # (`--quiet -q <bool>`, `ROOT <str>`), drop the ranges an option takes (`[at least 1]`) and leave a
    # description a third of the width (typer 0.29, looked at with COLUMNS=80).
    rich_markup_mode=None,
)

# In the order a session uses them, which is the order `--help` lists them in.
for command, about in (
    (scan.scan, scan.HELP),
    (collect.untagged, collect.UNTAGGED_HELP),
    (collect.orphans, collect.ORPHANS_HELP),
    (report.report, report.HELP),
    (check.check, check.HELP),
    (diff.diff, diff.HELP),
    (plan.plan, plan.HELP),
    (apply.apply, apply.HELP),
):
    app.command(cls=AuditCommand, short_help=about.short, epilog=about.epilog(command.__name__))(command)

# typer's completion classes answer `_STORAGE_AUDIT_COMPLETE=complete_bash` and the like (typer registers them
# itself only with its own completion options).
typer.completion.completion_init()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


def _install_completion(ctx: typer.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    shell, path = typer.completion.install(prog_name=PROG, complete_var=COMPLETE_VAR)
    typer.echo(f"{shell} completion installed in {path}; it takes effect in the next shell started")
    raise typer.Exit()


def _show_completion(ctx: typer.Context, shell: Shell | None) -> None:
    if shell is None or ctx.resilient_parsing:
        return
    typer.echo(typer.completion.get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell.value))
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
    install_completion: Annotated[
        bool,
        typer.Option(
            "--install-completion",
            callback=_install_completion,
            is_eager=True,
            expose_value=False,
            help="Install the completion of the shell this runs in (bash, zsh or fish) and exit.",
        ),
    ] = False,
    show_completion: Annotated[
        Shell | None,
        typer.Option(
            "--show-completion",
            metavar=choices(Shell),
            callback=_show_completion,
            is_eager=True,
            expose_value=False,
            help="Print the completion script of this shell and exit; docs/commands.md says where to put it.",
        ),
    ] = None,
) -> None:
    """Audit a Docker/OCI registry's storage offline, straight from its volume."""


def main(args: list[str] | None = None) -> Any:
    """Entry point: run the app; an exception that escapes it (none should) is one line and exit 1."""
    buffered_stdout()
    try:
        # The name and the variable fixed, whatever started the process (`python -m storage_audit` included).
        app(args, prog_name=PROG, complete_var=COMPLETE_VAR)
    except Exception as exc:
        sys.exit(report_failure(exc, debug="--debug" in sys.argv[1:2]))
    finally:
        # What is still alive is freed on exit anyway: spare the collector's last pass over it.
        gc.freeze()

"""`apply`: carry out a reviewed plan after asking, saying each removal, and what it freed or kept in quarantine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from storage_audit.cli.options import CacheDirOpt, Help, NoCacheOpt, QuietOpt, RateOpt, fail, open_root, remote
from storage_audit.cli.render import apply_summary, err, planned, say, table
from storage_audit.core.errors import EXIT_FINDINGS
from storage_audit.core.text import count
from storage_audit.operations import apply as applying

HELP = Help(
    "Carry out a reviewed plan: re-check each removal right before it, never remove what is in use.",
    (
        ("Say what the plan would remove, and free:", "plan.json --dry-run"),
        ("Apply it, keeping what it removes to restore:", "plan.json --quarantine /srv/quarantine"),
        ("Without asking, in a script:", "plan.json --yes --quiet"),
    ),
)


def apply(
    plan_file: Annotated[
        Path, typer.Argument(metavar="PLAN", readable=False, help="A plan written by `storage-audit plan`.")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be done.")] = False,
    quarantine_to: Annotated[
        str | None,
        typer.Option(
            "--quarantine",
            metavar="DIR|s3://BUCKET/PREFIX",
            help="Move what is removed into this directory (same layout), restorable, instead of deleting. "
            "For a bucket: a local directory, or an s3:// location (server-side copies).",
        ),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(
            "--root",
            metavar="ROOT",
            help="Where to apply the plan (a bucket's plan: its s3:// URL or the registry's configuration file, "
            "for the credentials); refused unless it is where the plan was made. Default: the plan's own root.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    quiet: QuietOpt = False,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    max_requests_per_second: RateOpt = None,
) -> None:
    """Apply a deletion plan: validate it, re-check each action right before it, never remove what is in use.

    A journal beside the plan (PLAN.<hash>.journal) lets an interrupted apply resume, and stops a plan from
    being applied twice; a second apply of a plan while one runs is refused. Restart the registry afterwards:
    its blob cache still believes removed blobs exist. Answering no at the prompt exits 2, deleting nothing.
    """
    from storage_audit.cleanup.apply import AlreadyApplied

    storage = remote(cache_dir, no_cache, max_requests_per_second)
    target = None if root is None else open_root(root, storage)
    options = applying.ApplyOptions(dry_run, quarantine_to, target, storage)
    try:
        application = applying.open_plan(plan_file, options)
    except AlreadyApplied as exc:
        say(f"storage-audit: {exc}")
        raise typer.Exit(exc.exit_code) from exc
    with application:
        if not quiet:
            say(planned(application.plan.totals(), application.plan.root))
        if not dry_run and not yes and not _confirmed("Apply this plan?"):
            fail("not confirmed; nothing was deleted")
        outcome = application.run(None if quiet else say)
    remover = application.remover
    kept = remover.quarantine
    if kept is not None and kept.restore and outcome.done and not dry_run and not quiet:
        say(f"quarantined in {kept.where}; to restore: {kept.restore}")
    if outcome.failed:
        say(
            f"storage-audit: {count(len(outcome.failed), 'action')} failed and were left for the next run "
            f"(the first: {outcome.failed[0][1]})"
        )
    if quiet:
        if outcome.failed:
            raise typer.Exit(EXIT_FINDINGS)
        return
    from storage_audit.core.view import View

    if not outcome.frame().empty:
        table(View(outcome.frame(), title="apply", total_columns=("count",)))
    say(apply_summary(outcome, remover, dry_run))
    if not dry_run and outcome.done:
        say("Restart the registry now: its blob descriptor cache still believes removed blobs exist.")
    if outcome.failed:
        raise typer.Exit(EXIT_FINDINGS)


def _confirmed(question: str) -> bool:
    """The answer at a yes/no prompt on stderr; no when input ends (a closed stdin, Ctrl-D)."""
    try:
        return typer.confirm(question, err=True)
    except typer.Abort:
        err.print()
        return False

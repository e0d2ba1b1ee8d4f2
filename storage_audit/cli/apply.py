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
        (
            "Delete its manifests while the registry serves, without asking:",
            "plan.json --registry-url https://registry:5000 --yes",
        ),
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
    registry_url: Annotated[
        str | None,
        typer.Option(
            "--registry-url",
            metavar="URL",
            help="Carry out the plan's tag and manifest removals through this running registry's API "
            "(DELETE by digest), re-checked against it; blobs, links, uploads and repositories are left for "
            "`apply PLAN` on storage afterwards, with the registry read-only. The storage is still read, for the "
            "fresh scans. Credentials: --username, else Docker's config.json (auths, credential helpers).",
        ),
    ] = None,
    username: Annotated[
        str | None,
        typer.Option(
            "--username",
            metavar="USER",
            help="The registry user; its password from stdin (--password-stdin) or STORAGE_AUDIT_REGISTRY_PASSWORD.",
        ),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the registry password from stdin (with --username).")
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", metavar="FILE", help="Verify the registry's TLS certificate against these CAs."),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Do not verify the registry's TLS certificate (refused unless it is on loopback)."
        ),
    ] = False,
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
    registry = None
    if registry_url is not None:
        registry = _registry(registry_url, username, password_stdin, ca_file, insecure, max_requests_per_second)
    elif username is not None or password_stdin or ca_file is not None or insecure:
        fail("--username, --password-stdin, --ca-file and --insecure are for --registry-url")
    if registry is not None and not dry_run and not yes and password_stdin:
        fail("--password-stdin takes stdin, where the prompt would read its answer: add --yes")
    options = applying.ApplyOptions(dry_run, quarantine_to, target, storage, registry)
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
    if registry is not None:
        if outcome.left:
            say(f"Now make the registry read-only and run `storage-audit apply {plan_file}` to sweep the rest.")
    elif not dry_run and outcome.done:
        say("Restart the registry now: its blob descriptor cache still believes removed blobs exist.")
    if outcome.failed:
        raise typer.Exit(EXIT_FINDINGS)


def _registry(
    url: str,
    username: str | None,
    password_stdin: bool,
    ca_file: Path | None,
    insecure: bool,
    max_requests_per_second: float | None,
) -> applying.RegistryTarget:
    """The registry to delete through, with the credentials of --username (the password from stdin or the
    environment) or of Docker's config.json; the password is read here and goes nowhere but request headers."""
    import sys

    from storage_audit.registry_api.client import ClientOptions
    from storage_audit.registry_api.credentials import resolve_credentials

    if password_stdin and username is None:
        fail("--password-stdin needs --username")
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    credentials = resolve_credentials(url, username, password)
    options = ClientOptions(ca_file=ca_file, insecure=insecure, max_requests_per_second=max_requests_per_second)
    return applying.RegistryTarget(url, credentials, options)


def _confirmed(question: str) -> bool:
    """The answer at a yes/no prompt on stderr; no when input ends (a closed stdin, Ctrl-D)."""
    try:
        return typer.confirm(question, err=True)
    except typer.Abort:
        err.print()
        return False

"""`plan`: write a reviewable deletion plan from retention rules, and say on stderr what it holds."""

from __future__ import annotations

from pathlib import Path

import click

from storage_audit.analysis.options import PlanFormat
from storage_audit.cli.options import (
    AtLeast,
    AuditCommand,
    PathText,
    duration_option,
    fail,
    format_option,
    keep_referrers_option,
    open_root,
    parse_duration,
    parse_regexes,
    quiet_option,
    remote,
    remote_options,
    root_argument,
    root_text,
    stdout_dash,
    workers_option,
)
from storage_audit.cli.output import emit_text
from storage_audit.cli.progress import reading
from storage_audit.cli.render import table, warn_held_back
from storage_audit.operations import plan as planning


@click.command(
    "plan",
    cls=AuditCommand,
    short_help="Write a deletion plan to review, from retention rules; it deletes nothing itself.",
    examples=[
        ("Untagged manifests and orphan blobs, for `apply`:", "/var/lib/registry --delete-untagged -o plan.json"),
        (
            "Keep the last 10 tags per repository, and uploads abandoned for a week:",
            "--keep-last 10 --uploads-older-than 7d -o plan.json",
        ),
        (
            "The tags of team/* pushed over 90 days ago, as a script:",
            "--older-than 90d --repository 'team/*' -f sh",
        ),
    ],
)
@root_argument
@click.option(
    "--output",
    "-o",
    type=PathText(),
    metavar="FILE",
    callback=stdout_dash,
    help="Write the plan here (default, or -: stdout).",
)
@click.option(
    "--delete-untagged",
    is_flag=True,
    help="Delete manifests no tag reaches (index children and referrers of kept images are kept).",
)
@click.option(
    "--keep-last",
    type=AtLeast(0),
    metavar="N",
    help="Per repository, keep the N most recently pushed tags; "
    "delete the other tags, then their manifests if nothing else reaches them.",
)
@click.option(
    "--keep-tag",
    multiple=True,
    metavar="REGEX",
    help="Never delete a tag matching this regular expression (repeatable).",
)
@click.option(
    "--only-tag",
    multiple=True,
    metavar="REGEX",
    help="Consider only tags matching this regular expression for deletion (repeatable).",
)
@duration_option(
    "--older-than",
    "Delete every tag pushed before this long ago (30d, 1d12h, 0s), then the manifests only such tags "
    "reach: alone, a rule that deletes, not a filter. With --keep-last, only tags beyond the last N that "
    "are also this old; with --delete-untagged, only untagged manifests this old.",
)
@click.option(
    "--repository",
    multiple=True,
    metavar="GLOB",
    help="Limit the policy to repositories matching this glob (repeatable).",
)
@duration_option(
    "--uploads-older-than",
    "Also delete uploads started before this long ago, and those without startedat.",
)
@click.option("--prune-empty-repositories", is_flag=True, help="Also remove repositories the plan leaves with nothing.")
@duration_option(
    "--min-age",
    "Grace period: nothing newer is ever planned for deletion (protects a push in progress); "
    "what it holds back is counted on stderr.",
    default="1h",
)
@keep_referrers_option
@format_option(
    PlanFormat,
    PlanFormat.JSON,
    "json: the plan `apply` reads; sh: a reviewable shell script; http: curl DELETEs for a live registry.",
)
@click.option("--registry-url", metavar="URL", help="Registry URL for --format http.")
@quiet_option
@workers_option
@remote_options
def plan(
    root: str | None,
    output: Path | None,
    delete_untagged: bool,
    keep_last: int | None,
    keep_tag: tuple[str, ...],
    only_tag: tuple[str, ...],
    older_than: str | None,
    repository: tuple[str, ...],
    uploads_older_than: str | None,
    prune_empty_repositories: bool,
    min_age: str,
    keep_referrers: bool,
    fmt: PlanFormat,
    registry_url: str | None,
    quiet: bool,
    workers: int | None,
    cache_dir: Path | None,
    no_cache: bool,
    max_requests_per_second: float | None,
) -> None:
    """Write a reviewable deletion plan: what the retention rules remove, in a safe order, with reasons.

    Orphan blobs are always included. Nothing is deleted here: review the plan, then `storage-audit apply` it.
    """
    from storage_audit.cleanup.plan import Policy

    if fmt is PlanFormat.HTTP and not registry_url:
        fail("--format http needs --registry-url")
    policy = Policy(
        delete_untagged=delete_untagged,
        keep_last=keep_last,
        keep_tags=parse_regexes(keep_tag, "--keep-tag"),
        only_tags=parse_regexes(only_tag, "--only-tag"),
        older_than=None if older_than is None else parse_duration(older_than, "--older-than"),
        repositories=tuple(repository),
        uploads_older_than=None
        if uploads_older_than is None
        else parse_duration(uploads_older_than, "--uploads-older-than"),
        prune_empty_repositories=prune_empty_repositories,
        min_age=parse_duration(min_age, "--min-age"),
        keep_referrers=keep_referrers,
    )
    source = open_root(root_text(root, quiet), remote(cache_dir, no_cache, max_requests_per_second))
    options = planning.PlanOptions(fmt, registry_url)
    refused = planning.refusal(source, options)
    if refused is not None:
        fail(refused)
    with reading(quiet, workers) as scan:
        planned = planning.plan(source, policy, options, scan)
    emit_text(planned.text, output)
    if not quiet:
        table(planned.stats())
        warn_held_back(planned.plan.held_back, min_age)

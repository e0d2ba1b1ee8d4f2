"""`plan`: write a reviewable deletion plan from retention rules, and say on stderr what it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from storage_audit.analysis.options import AgeFrom, Collector, PlanFormat
from storage_audit.cli.options import (
    CacheDirOpt,
    Help,
    KeepReferrersOpt,
    NoCacheOpt,
    QuietOpt,
    RateOpt,
    RootArg,
    ScanWorkersOpt,
    at_least,
    choices,
    fail,
    open_root,
    parse_duration,
    parse_regexes,
    remote,
    root_text,
    stdout_dash,
)
from storage_audit.cli.output import emit_text
from storage_audit.cli.progress import reading
from storage_audit.cli.render import table, warn_ages, warn_held_back, warn_refused
from storage_audit.operations import plan as planning

HELP = Help(
    "Write a deletion plan to review, from retention rules; it deletes nothing itself.",
    (
        ("Untagged manifests and orphan blobs, for `apply`:", "/var/lib/registry --delete-untagged -o plan.json"),
        (
            "Keep the last 10 tags per repository, and uploads abandoned for a week:",
            "--keep-last 10 --uploads-older-than 7d -o plan.json",
        ),
        ("The tags of team/* pushed over 90 days ago, as a script:", "--older-than 90d --repository 'team/*' -f sh"),
    ),
)


def plan(
    root: RootArg = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            readable=False,
            callback=stdout_dash,
            help="Write the plan here (default, or -: stdout).",
        ),
    ] = None,
    delete_untagged: Annotated[
        bool,
        typer.Option(
            "--delete-untagged",
            help="Delete manifests no tag reaches (index children and referrers of kept images are kept).",
        ),
    ] = False,
    keep_last: Annotated[
        int | None,
        typer.Option(
            "--keep-last",
            metavar="N",
            callback=at_least(0),
            help="Per repository, keep the N most recently pushed tags (ties: the higher version, then the later "
            "name), besides those the grace period, --keep-tag and `latest` keep; delete the other tags, then their "
            "manifests if nothing else reaches them.  [at least 0]",
        ),
    ] = None,
    keep_tag: Annotated[
        list[str] | None,
        typer.Option(
            "--keep-tag", metavar="REGEX", help="Never delete a tag matching this regular expression (repeatable)."
        ),
    ] = None,
    only_tag: Annotated[
        list[str] | None,
        typer.Option(
            "--only-tag",
            metavar="REGEX",
            help="Consider only tags matching this regular expression for deletion (repeatable); "
            "`latest` only if the expression spells it (^latest$).",
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Delete every tag pushed before this long ago (30d, 1d12h, 0s), then the manifests only such tags "
            "reach: alone, a rule that deletes, not a filter. With --keep-last, only tags beyond the last N that "
            "are also this old; with --delete-untagged, only untagged manifests this old.",
        ),
    ] = None,
    repository: Annotated[
        list[str] | None,
        typer.Option(
            "--repository",
            metavar="GLOB",
            help="Limit the policy to repositories matching this glob (repeatable).",
        ),
    ] = None,
    uploads_older_than: Annotated[
        str | None,
        typer.Option(
            "--uploads-older-than",
            metavar="DURATION",
            help="Also delete uploads started before this long ago, and those without startedat.",
        ),
    ] = None,
    prune_empty_repositories: Annotated[
        bool, typer.Option("--prune-empty-repositories", help="Also remove repositories the plan leaves with nothing.")
    ] = False,
    min_age: Annotated[
        str,
        typer.Option(
            "--min-age",
            metavar="DURATION",
            help="Grace period: nothing newer is ever planned for deletion (protects a push in progress); "
            "what it holds back is counted on stderr.",
        ),
    ] = "1h",
    keep_latest: Annotated[
        bool,
        typer.Option(
            "--keep-latest/--no-keep-latest",
            help="Keep the tag `latest` unless an --only-tag expression spells it.",
        ),
    ] = True,
    age_from: Annotated[
        AgeFrom,
        typer.Option(
            "--age-from",
            metavar=choices(AgeFrom),
            help="A tag's age for --keep-last and --older-than: its push (the link's mtime), or the `created` time "
            "of its image's config (an index: its newest child's), which copies keep.",
        ),
    ] = AgeFrom.PUSH,
    keep_referrers: KeepReferrersOpt = True,
    gc_compatible: Annotated[
        Collector | None,
        typer.Option(
            "--gc-compatible",
            metavar="[=2.8|=3]",
            help="Plan exactly what that version of the reference registry's garbage-collect deletes (with "
            "--delete-untagged: its -m), alone 2.8, =3 for registry:3; each action storage-audit's own rules would "
            "not take is marked refused, with why, and apply refuses it.",
        ),
    ] = None,
    fmt: Annotated[
        PlanFormat,
        typer.Option(
            "--format",
            "-f",
            metavar=choices(PlanFormat),
            help="json: the plan `apply` reads; sh: a reviewable shell script; http: curl DELETEs for a live registry.",
        ),
    ] = PlanFormat.JSON,
    registry_url: Annotated[
        str | None, typer.Option("--registry-url", metavar="URL", help="Registry URL for --format http.")
    ] = None,
    quiet: QuietOpt = False,
    workers: ScanWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    max_requests_per_second: RateOpt = None,
) -> None:
    """Write a reviewable deletion plan: what the retention rules remove, in a safe order, with reasons.

    Orphan blobs are always included. Nothing is deleted here: review the plan, then `storage-audit apply` it.
    """
    from storage_audit.cleanup.plan import Policy, collector_conflicts

    if fmt is PlanFormat.HTTP and not registry_url:
        fail("--format http needs --registry-url")
    policy = Policy(
        delete_untagged=delete_untagged,
        keep_last=keep_last,
        keep_tags=parse_regexes(keep_tag, "--keep-tag"),
        only_tags=parse_regexes(only_tag, "--only-tag"),
        older_than=None if older_than is None else parse_duration(older_than, "--older-than"),
        repositories=tuple(repository or ()),
        uploads_older_than=None
        if uploads_older_than is None
        else parse_duration(uploads_older_than, "--uploads-older-than"),
        prune_empty_repositories=prune_empty_repositories,
        min_age=parse_duration(min_age, "--min-age"),
        keep_referrers=keep_referrers,
        keep_latest=keep_latest,
        age_from=age_from,
        collector=gc_compatible,
    )
    conflicts = collector_conflicts(policy) if gc_compatible is not None else []
    if conflicts:
        fail(f"--gc-compatible plans what the stock collector deletes: it takes no {', '.join(conflicts)}")
    source = open_root(root_text(root, quiet), remote(cache_dir, no_cache, max_requests_per_second))
    options = planning.PlanOptions(fmt, registry_url)
    refused = planning.refusal(source, options)
    if refused is not None:
        fail(refused)
    with reading(quiet, workers) as scan:
        planned = planning.plan(source, policy, options, scan)
    emit_text(planned.text, output)
    warn_ages(planned.plan)
    warn_refused(planned.plan)
    if not quiet:
        table(planned.stats())
        warn_held_back(planned.plan.held_back, min_age)

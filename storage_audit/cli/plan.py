"""`plan`: write a reviewable deletion plan from retention rules, and say on stderr what it holds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from storage_audit.analysis.options import EXPLAIN_FORMATS, AgeFrom, Collector, PlanFormat, PlanOutput
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
from storage_audit.cli.output import emit, emit_text
from storage_audit.cli.progress import reading
from storage_audit.cli.render import table, warn_ages, warn_held_back, warn_refused
from storage_audit.operations import plan as planning

if TYPE_CHECKING:
    from storage_audit.cleanup.plan import Policy, Retention

HELP = Help(
    "Write a deletion plan to review, from retention rules; it deletes nothing itself.",
    (
        ("Untagged manifests and orphan blobs, for `apply`:", "/var/lib/registry --delete-untagged -o plan.json"),
        (
            "Keep the last 10 tags per repository, and uploads abandoned for a week:",
            "--keep-last 10 --uploads-older-than 7d -o plan.json",
        ),
        ("The rules of a policy file, and why each tag stays or goes:", "--policy retention.yaml --explain"),
    ),
)

ONE_RUN_RULES = (
    "--delete-untagged",
    "--keep-last",
    "--keep-tag",
    "--only-tag",
    "--older-than",
    "--repository",
    "--min-age",
    "--no-keep-latest",
    "--no-keep-referrers",
)
"""The rules given on the command line, which a policy file replaces: --policy refuses them."""
DEFAULT_MIN_AGE = "1h"


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
        str | None,
        typer.Option(
            "--min-age",
            metavar="DURATION",
            show_default=False,
            help="Grace period: nothing newer is ever planned for deletion (protects a push in progress); "
            f"what it holds back is counted on stderr.  [default: {DEFAULT_MIN_AGE}]",
        ),
    ] = None,
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
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            metavar="FILE",
            readable=False,
            help="Take the rules from this YAML policy file (rules per repository glob; a tag stays if any rule "
            "applying to its repository keeps it) instead of the options that give rules on the command line.",
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Instead of the plan, write every tag and untagged manifest of the repositories the rules touch, "
            "kept or deleted, with the rule that decided and the bytes a deletion frees (-f table, csv or json).",
        ),
    ] = False,
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
        PlanOutput | None,
        typer.Option(
            "--format",
            "-f",
            metavar=choices(PlanOutput),
            show_default=False,
            help="json: the plan `apply` reads (default); sh: a reviewable shell script; http: curl DELETEs for a "
            "live registry. With --explain: table (default), csv or json.",
        ),
    ] = None,
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

    if explain and fmt not in (None, *EXPLAIN_FORMATS):
        fail(f"--explain writes a table, csv or json, not {fmt}: the plan itself is written without --explain")
    if not explain and fmt in (PlanOutput.TABLE, PlanOutput.CSV):
        fail(f"--format {fmt} is for --explain; the plan is json, sh or http")
    plan_format = PlanFormat.JSON if explain or fmt is None else PlanFormat(fmt.value)
    if plan_format is PlanFormat.HTTP and not registry_url:
        fail("--format http needs --registry-url")
    given = {
        "--delete-untagged": delete_untagged,
        "--keep-last": keep_last is not None,
        "--keep-tag": bool(keep_tag),
        "--only-tag": bool(only_tag),
        "--older-than": older_than is not None,
        "--repository": bool(repository),
        "--min-age": min_age is not None,
        "--no-keep-latest": not keep_latest,
        "--no-keep-referrers": not keep_referrers,
    }
    if policy_file is not None and gc_compatible is not None:
        fail("--gc-compatible plans what the stock collector deletes: it takes no --policy")
    if explain and gc_compatible is not None:
        fail("--explain says why the rules keep or delete each tag: it takes no --gc-compatible")
    if policy_file is not None and any(given.values()):
        named = ", ".join(option for option in ONE_RUN_RULES if given[option])
        fail(f"--policy takes the rules from {policy_file}: {named} cannot be added to them (write them in a rule)")
    uploads = None if uploads_older_than is None else parse_duration(uploads_older_than, "--uploads-older-than")
    rules: Policy | Retention
    if policy_file is not None:
        from dataclasses import replace

        from storage_audit.cleanup.policy_file import load

        read = load(policy_file)
        rules = replace(
            read,
            rules=tuple(replace(r, age_from=age_from) for r in read.rules),
            uploads_older_than=uploads,
            prune_empty_repositories=prune_empty_repositories,
            age_from=age_from,
        )
        grace = ", ".join(sorted({_written(r.min_age) for r in read.rules} | {_written(read.min_age)}))
    else:
        grace = min_age or DEFAULT_MIN_AGE
        rules = _policy(
            delete_untagged,
            keep_last,
            keep_tag,
            only_tag,
            older_than,
            repository,
            uploads,
            prune_empty_repositories,
            grace,
            keep_referrers,
            keep_latest,
            age_from,
            gc_compatible,
        )
        from storage_audit.cleanup.plan import collector_conflicts

        conflicts = collector_conflicts(rules) if gc_compatible is not None else []
        if conflicts:
            fail(f"--gc-compatible plans what the stock collector deletes: it takes no {', '.join(conflicts)}")
    source = open_root(root_text(root, quiet), remote(cache_dir, no_cache, max_requests_per_second))
    options = planning.PlanOptions(plan_format, registry_url, explain)
    refused = planning.refusal(source, options)
    if refused is not None:
        fail(refused)
    with reading(quiet, workers) as scan:
        planned = planning.plan(source, rules, options, scan)
    if explain:
        emit(planned.explanation(), EXPLAIN_FORMATS[fmt or PlanOutput.TABLE], output)
    else:
        emit_text(planned.text, output)
    warn_ages(planned.plan)
    warn_refused(planned.plan)
    if not quiet:
        table(planned.stats())
        warn_held_back(planned.plan.held_back, grace)


def _written(delta: timedelta) -> str:
    from storage_audit.core.durations import written

    return written(delta)


def _policy(
    delete_untagged: bool,
    keep_last: int | None,
    keep_tag: list[str] | None,
    only_tag: list[str] | None,
    older_than: str | None,
    repository: list[str] | None,
    uploads_older_than: timedelta | None,
    prune_empty_repositories: bool,
    min_age: str,
    keep_referrers: bool,
    keep_latest: bool,
    age_from: AgeFrom,
    gc_compatible: Collector | None,
) -> Policy:
    """The rules given on the command line, as one Policy."""
    from storage_audit.cleanup.plan import Policy

    return Policy(
        delete_untagged=delete_untagged,
        keep_last=keep_last,
        keep_tags=parse_regexes(keep_tag, "--keep-tag"),
        only_tags=parse_regexes(only_tag, "--only-tag"),
        older_than=None if older_than is None else parse_duration(older_than, "--older-than"),
        repositories=tuple(repository or ()),
        uploads_older_than=uploads_older_than,
        prune_empty_repositories=prune_empty_repositories,
        min_age=parse_duration(min_age, "--min-age"),
        keep_referrers=keep_referrers,
        keep_latest=keep_latest,
        age_from=age_from,
        collector=gc_compatible,
    )

"""What the commands say on stderr: summaries, warnings and tables for people, names in them shown, never obeyed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.text import Text

from storage_audit.cli.options import OPTIONAL_VALUES
from storage_audit.core.errors import EXIT_FINDINGS
from storage_audit.core.findings import Severity
from storage_audit.core.text import count, printable, size

if TYPE_CHECKING:
    from storage_audit.analysis.collect import GcDifference
    from storage_audit.analysis.options import Collector
    from storage_audit.cleanup.apply import Outcome
    from storage_audit.cleanup.plan import Plan
    from storage_audit.cleanup.removers import Remover
    from storage_audit.core.view import View
    from storage_audit.inventory.retention import Pruned
    from storage_audit.operations.scan import Survey
    from storage_audit.storage.s3 import RemoteStats

err = Console(stderr=True, highlight=False)


def say(message: str) -> None:
    """One message on stderr, names in it shown as they are: no markup, no emoji, control characters escaped."""
    text = printable(message)
    if err.is_terminal:
        err.print(Text(text), soft_wrap=True)
    else:
        # A log or a pipe: nothing for rich to lay out, and `apply` says a line for each of thousands of removals.
        err.file.write(text + "\n")


def table(view: View) -> None:
    """A table for people on stderr."""
    from storage_audit.output.table import columns_wanted, render

    render(view, err, err.width if err.is_terminal else columns_wanted())


def exit_if_unreadable(paths: list[str]) -> None:
    """Say that the answer misses what could not be read, and exit 3; nothing when everything was read.

    Said even with --quiet: it is why the exit code is 3.
    """
    if not paths:
        return
    say(
        f"storage-audit: warning: {count(len(paths), 'path')} could not be read, the first: {paths[0] or '.'} "
        f"(relative to v2); this answer leaves out whatever {'it holds' if len(paths) == 1 else 'they hold'}; "
        "see `storage-audit check`"
    )
    raise typer.Exit(EXIT_FINDINGS)


# -- scan ---------------------------------------------------------------------------------


def scan_summary(survey: Survey) -> list[tuple[str, str]]:
    """`git count-objects -v`-style lines, and what reading a bucket took."""
    totals = survey.totals
    rows = totals.rows
    counts: Counter[str] = survey.severities
    by_severity = ", ".join(f"{counts[sev]} {sev}" for sev in Severity if counts[sev])
    lines = [
        ("root", survey.root),
        ("repositories", f"{rows['repositories']}"),
        ("tags", f"{rows['tags']}"),
        ("tag-history", f"{rows['tag_history']}"),
        ("revisions", f"{rows['revisions']} ({totals.unlinked_revisions} deleted)"),
        ("manifests", f"{rows['manifests']}"),
        ("references", f"{rows['references']}"),
        ("layer-links", f"{rows['layer_links']}"),
        ("blobs", f"{rows['blobs']}"),
        ("blob-bytes", size(totals.blob_bytes)),
        ("uploads", f"{rows['uploads']}"),
        ("upload-bytes", size(totals.upload_bytes)),
        ("findings", f"{counts.total()}" + (f" ({by_severity})" if by_severity else "")),
    ]
    return lines + remote_summary(survey.remote)


def remote_summary(stats: RemoteStats | None) -> list[tuple[str, str]]:
    """What reading a tree in object storage took: requests by kind, bytes received, cache hits."""
    if stats is None:
        return []
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.requests.items()))
    return [
        ("requests", f"{stats.total_requests}" + (f" ({kinds})" if kinds else "")),
        ("bytes-received", size(stats.bytes_received)),
        ("links-by-etag", f"{stats.links_by_etag}"),
        ("cache-hits", "off" if stats.cache_hits is None else f"{stats.cache_hits}"),
    ]


def say_pruned(pruned: Pruned, quiet: bool) -> None:
    """What pruning removed (not with --quiet), and the older snapshots it had to leave (always)."""
    if pruned.removed and not quiet:
        say(f"removed {count(len(pruned.removed), 'older snapshot')}: {', '.join(p.name for p in pruned.removed)}")
    for path, reason in pruned.left:
        say(f"storage-audit: warning: {path}: older snapshot left in place: {reason}")


# -- untagged, orphans --------------------------------------------------------------------


def warn_gc_differences(diffs: Sequence[GcDifference], delete_untagged: bool) -> None:
    """Say on stderr what each version of the stock collector (`--delete-untagged` or plain) would delete that is
    kept here, naming the version; versions that would delete the same are named in one line."""
    versions: dict[str, list[GcDifference]] = {}
    for diff in diffs:
        what = _untagged_difference(diff) if delete_untagged else _plain_difference(diff)
        if what:
            versions.setdefault(what, []).append(diff)
    flag = " --delete-untagged" if delete_untagged else ""
    for what, same in versions.items():
        who = "registry " + " and ".join(f"{diff.collector.value}'s" for diff in same)
        hint = " or ".join(_gc_compatible(diff.collector) for diff in same)
        say(f"warning: {who} `garbage-collect{flag}` would also delete {what}; see {hint}")


def _gc_compatible(collector: Collector) -> str:
    alone = collector.value == OPTIONAL_VALUES["--gc-compatible"]
    return "--gc-compatible" if alone else f"--gc-compatible={collector}"


def _untagged_difference(diff: GcDifference) -> str:
    if diff.manifests == 0 and diff.blobs == 0:
        return ""
    parts = [count(diff.index_children, "child", "children") + " of tagged indexes"] if diff.index_children else []
    if diff.referrers:
        parts.append(count(diff.referrers, "referrer") + " (signatures, SBOMs) of kept images")
    if diff.other_manifests:
        parts.append(count(diff.other_manifests, "other manifest"))
    blobs = f"{count(diff.blobs, 'blob')} ({size(diff.blob_bytes)}) that are kept here"
    return f"{count(diff.manifests, 'manifest')} ({', '.join(parts)}) and {blobs}" if parts else blobs


def _plain_difference(diff: GcDifference) -> str:
    if diff.blobs == 0:
        return ""
    return (
        f"{count(diff.blobs, 'blob')} ({size(diff.blob_bytes)}) that are kept here because a dangling tag or an "
        "index child without a revision link names them"
    )


# -- check, plan, apply -------------------------------------------------------------------


def check_summary(counts: dict[str, int], verified: bool) -> str:
    words = {"error": ("error", "errors"), "warning": ("warning", "warnings"), "info": ("info", "info")}
    found = ", ".join(f"{n} {words[sev][n != 1]}" for sev, n in counts.items())
    hint = "" if verified else "; blob content not verified (--verify-digests)"
    return f"check: {found}{hint}"


def warn_held_back(held_back: dict[str, int], min_age: str) -> None:
    """Say how much the grace period kept out of the plan: a plan of nothing is otherwise a puzzle."""
    nouns = {"tags": "tag", "manifests": "manifest", "blobs": "blob", "uploads": "upload"}
    parts = [count(held_back[key], noun) for key, noun in nouns.items() if held_back.get(key)]
    if parts:
        say(
            f"held back by the grace period (--min-age {min_age}), as newer: {', '.join(parts)}; "
            "they are planned once older"
        )


def warn_refused(plan: Plan) -> None:
    """Say how much of a `--gc-compatible` plan apply refuses, by why: what storage-audit's own rules keep."""
    refused = [a for a in plan.actions if a.refused is not None]
    if not refused:
        return
    collector = plan.policy.get("collector")
    say(
        f"warning: {count(len(refused), 'action')} ({size(sum(a.bytes for a in refused))}) of this plan, which "
        f"registry {collector}'s garbage-collect would carry out, are marked refused: apply refuses them"
    )
    for (op, why), n in sorted(Counter((str(a.op), _refusal_kind(a.refused or "")) for a in refused).items()):
        say(f"  {n:,} {op}: {why}")


def _refusal_kind(refused: str) -> str:
    """A refusal without the digest it names, to count alike ones together."""
    kinds = {
        "child of index": "child of an index that stays",
        "referrer": "referrer (signature, SBOM, attestation) of a manifest that stays",
    }
    for prefix, kind in kinds.items():
        if refused.startswith(prefix):
            return f"{kind}: {refused.rpartition(': ')[2]}"
    return refused


def warn_ages(plan: Plan) -> None:
    """Warn where the tags' ages cannot be trusted: mtimes that look reset by a copy, or images without a
    readable `created` time (those tags are kept)."""
    if plan.reset_times:
        names = ", ".join(plan.reset_times[:3]) + (
            f" and {len(plan.reset_times) - 3:,} more" if len(plan.reset_times) > 3 else ""
        )
        say(
            f"warning: most tags of {count(len(plan.reset_times), 'repository', 'repositories')} ({names}) were "
            "pushed in the same second: their push times look reset (a copy without -a or -t, a restore from "
            "backup), so age rules may keep or delete the wrong tags; see --age-from created"
        )
    if plan.undated:
        say(
            f"warning: {count(plan.undated, 'tag')} kept, as their image has no readable `created` time "
            "(--age-from created)"
        )


def planned(totals: dict[str, int], root: str) -> str:
    """The line an apply starts with: what the plan holds, and where it goes."""
    return f"plan: {count(totals['count'], 'action')}, {size(totals['bytes'])} of blobs and uploads, on {root}"


def apply_summary(outcome: Outcome, remover: Remover, dry_run: bool) -> str:
    """What an apply removed and where its data went (freed, moved or copied to a quarantine); in a dry run, what
    it would."""
    amount = f"{size(outcome.bytes)} ({count(outcome.bytes, 'byte')})"
    kept = remover.quarantine
    if kept is None:
        would, did = f"free {amount} {remover.where}", f"freed {amount} {remover.where}"
    elif kept.copied:
        would = f"copy {amount} to the quarantine {kept.where}, then delete the originals {remover.where}"
        did = f"copied {amount} to the quarantine {kept.where}, then deleted the originals {remover.where}"
    else:
        would = f"move {amount} into the quarantine {kept.where}"
        did = f"moved {amount} into the quarantine {kept.where}"
    head = f"would remove {count(len(outcome.done), 'action')} and would {would}" if dry_run else did
    left = f"; {count(len(outcome.left), 'action')} left for {remover.leaves_to}" if outcome.left else ""
    refused = sum(1 for action, _ in outcome.skipped if action.refused is not None)
    marked = f" ({refused:,} refused, as the plan marks them)" if refused else ""
    return f"{head}; {count(len(outcome.skipped), 'action')} skipped{marked}{left}"

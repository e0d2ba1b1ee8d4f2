"""Plan deletions in ROOT: what the retention rules remove, in a safe order, written as text for review."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage_audit.analysis.options import PlanFormat
from storage_audit.core import clock
from storage_audit.core.errors import UsageError
from storage_audit.operations.inventory import load
from storage_audit.roots.resolve import Root, Snapshot

if TYPE_CHECKING:
    import pandas as pd

    from storage_audit.cleanup.plan import Plan, Policy, Retention
    from storage_audit.core.view import View
    from storage_audit.scan.run import ScanOptions


@dataclass(frozen=True)
class PlanOptions:
    """How the plan is written: the JSON `apply` reads, a shell script, or curl DELETEs to `registry_url`; with
    `explain`, also the verdict on every tag and untagged revision of the repositories the rules touch."""

    format: PlanFormat = PlanFormat.JSON
    registry_url: str | None = None
    explain: bool = False


@dataclass(frozen=True)
class Planned:
    """The plan, its text in the format asked for, and, when asked for, why each tag and untagged revision of
    the repositories the rules touch stays or goes (`cleanup.explain.COLUMNS`)."""

    plan: Plan
    text: str
    explained: pd.DataFrame | None = None

    def explanation(self) -> View:
        """The verdicts as a View (asked for with PlanOptions.explain)."""
        from storage_audit.cleanup.explain import view

        if self.explained is None:
            raise ValueError("the plan was made without explain")
        return view(self.explained)

    def stats(self) -> View:
        """The actions and bytes per repository, with totals."""
        import pandas as pd

        from storage_audit.core.view import View

        totals = self.plan.totals()["by_repository"]
        rows = [(repo, t["count"], t["bytes"]) for repo, t in sorted(totals.items())]
        frame = pd.DataFrame(rows, columns=["repository", "actions", "bytes"])
        refused = self.plan.frame().dropna(subset=["refused"])
        if refused.empty:
            return View(frame, title="deletion plan", size_columns=("bytes",), total_columns=("actions", "bytes"))
        # A plan made --gc-compatible: how many of each repository's actions apply refuses.
        counts = refused.fillna({"repository": ""}).groupby("repository").size()
        counts.index = counts.index.map(lambda repo: repo or "(blob store)")
        frame["refused"] = frame["repository"].map(counts).fillna(0).astype("int64")
        totals_of = ("actions", "refused", "bytes")
        return View(frame, title="deletion plan", size_columns=("bytes",), total_columns=totals_of)


def refusal(root: Root, options: PlanOptions) -> str | None:
    """Why no plan of `root` can be written as `options` ask, or None: checked before any scan."""
    if options.format is PlanFormat.HTTP and not options.registry_url:
        return "--format http needs --registry-url"
    if isinstance(root, Snapshot):
        return f"{root.location}: plan from the storage itself, not a snapshot: apply re-checks the live files"
    from storage_audit.cleanup.plan_formats import refusal as format_refusal

    refused = format_refusal(options.format, root.storage)
    return None if refused is None else f"{root.location}: {refused}"


def plan(
    root: Root, policy: Policy | Retention, options: PlanOptions | None = None, scan: ScanOptions | None = None
) -> Planned:
    """The deletions `policy` (the one-run options, or a policy file's rules) implies in `root`'s storage, made
    from a scan of it now.

    Raises UsageError for a snapshot (apply re-checks the live files) or a
    format `root` cannot take, PlanRefused when its findings make deleting unsafe.
    """
    options = options or PlanOptions()
    refused = refusal(root, options)
    if refused is not None:
        raise UsageError(refused)
    assert not isinstance(root, Snapshot)  # refused above
    # Read before the scan: a grace period measured from its start holds back what was pushed during it.
    now = clock.now()
    inv = load(root, scan)
    from storage_audit.analysis.graph import Graph
    from storage_audit.analysis.options import AgeFrom
    from storage_audit.cleanup.plan import make_plan
    from storage_audit.cleanup.plan_formats import render

    created = None
    if policy.age_from is AgeFrom.CREATED and policy.tag_rules():
        from storage_audit.scan.created import created_times

        # Only the images the tags name: one config blob each, read as manifests are (and cached with them).
        created = created_times(root.storage, inv, inv.tags["digest"].dropna())
    graph = Graph(inv)
    made = make_plan(graph, policy, now, root.storage, created)
    explained = None
    if options.explain:
        from storage_audit.cleanup.explain import explanation

        assert made.decision is not None  # make_plan keeps the decision its actions come from
        explained = explanation(graph, made.decision)
    return Planned(made, render(made, options.format, options.registry_url), explained)

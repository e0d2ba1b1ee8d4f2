"""The HTML report: one self-contained page of charts and tables, every figure taken from the engine's views.

Charts are plotly figures. plotly draws treemaps, bars and pies from a
description, ships plotly.js inside its Python package (nothing to fetch) and
inlines it in the page, and gives hover, zoom and a treemap that opens a
namespace on click without a line of our own JavaScript. Its cost is the size
of plotly.js, about 4.8 MB in every page; the charts' data stays small because
the page holds the largest repositories, tags and rows, not all of them.
The page is a jinja2 template in the package (templates/report.html.j2).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from storage_audit.analysis.check import UPLOAD_AGE, CheckOptions, severity_counts, stale_upload_rows, worst_severity
from storage_audit.analysis.check import check as check_findings
from storage_audit.analysis.collect import orphan_frame, untagged_frame
from storage_audit.analysis.graph import Graph, ReachOptions
from storage_audit.analysis.options import By
from storage_audit.analysis.report import whole
from storage_audit.core.text import count, size
from storage_audit.core.version import __version__

TEMPLATE = "report.html.j2"

# Tag ages as an operator thinks of them: upper bounds in days, and the bar's name.
AGE_BUCKETS: tuple[tuple[float, str], ...] = (
    (7, "< 1 week"),
    (30, "1-4 weeks"),
    (91, "1-3 months"),
    (182, "3-6 months"),
    (365, "6-12 months"),
    (730, "1-2 years"),
    (float("inf"), "> 2 years"),
)
UNKNOWN_AGE = "unknown"
SEVERITY_PLURALS = {"error": "errors", "warning": "warnings", "info": "info"}
# The findings card takes the colour of its worst finding, whatever their number.
SEVERITY_TONES = {"error": "bad", "warning": "warn", "info": "info", "none": ""}


@dataclass(frozen=True)
class HtmlOptions:
    """How much the page holds: the rest is grouped ("other") or left to the commands that list everything.

    `upload_age` is check's: an upload older than that is stale. The commands the page names to list
    every row read `command_root` (default: the inventory's root).
    """

    upload_age: timedelta = UPLOAD_AGE
    treemap_repositories: int = 400
    bars: int = 25
    table_rows: int = 1000
    command_root: str | None = None
    retention: pd.DataFrame | None = None
    """With a policy: the verdict on every tag and untagged revision it touches (`cleanup.explain.COLUMNS`)."""
    retention_args: tuple[str, ...] = ()
    """What `plan` takes besides ROOT to list those verdicts (`--policy FILE`)."""


@dataclass(frozen=True)
class Figures:
    """What the page shows, as the engine answers it: the same frames the other commands output."""

    root: str
    scanned_at: datetime
    summary: pd.DataFrame
    repositories: pd.DataFrame
    tags: pd.DataFrame
    untagged: pd.DataFrame
    orphans: pd.DataFrame
    findings: pd.DataFrame
    stale_uploads: pd.DataFrame


def figures(graph: Graph, options: HtmlOptions) -> Figures:
    """Every figure of the page from one graph: the report views, `untagged`, `orphans` and `check`."""
    inv = graph.inv
    return Figures(
        root=inv.root,
        scanned_at=inv.scanned_at,
        summary=whole(graph, By.SUMMARY),
        repositories=whole(graph, By.REPOSITORY),
        tags=whole(graph, By.TAG),
        # The commands' defaults: `untagged` keeps referrers of kept images, plain `orphans` keeps every manifest.
        untagged=untagged_frame(graph, graph.reach(ReachOptions(delete_untagged=True))),
        orphans=orphan_frame(inv, graph.reach()),
        findings=check_findings(graph, CheckOptions(upload_age=options.upload_age)),
        stale_uploads=stale_upload_rows(inv, options.upload_age),
    )


# --------------------------------------------------------------------------
# Charts


def _layout(fig: Any, height: int) -> Any:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        font={"family": "system-ui, sans-serif", "size": 12},
        hoverlabel={"align": "left"},
    )
    return fig


def _repository_hover(row: Any) -> str:
    last = "" if pd.isna(row.last_push) else f"{row.last_push:%Y-%m-%d %H:%M} UTC"
    return "<br>".join(
        [
            f"<b>{_inert(row.repository)}</b>",
            f"total_bytes: {size(row.total_bytes)}",
            f"exclusive_bytes: {size(row.exclusive_bytes)}",
            f"shared_bytes: {size(row.shared_bytes)}",
            f"reclaimable_bytes: {size(row.reclaimable_bytes)}",
            f"upload_bytes: {size(row.upload_bytes)}",
            f"tags: {row.tags:,}",
            f"manifests: {row.manifests:,}",
            f"untagged_manifests: {row.untagged_manifests:,}",
            f"last_push: {last}",
        ]
    )


def _inert(text: str) -> str:
    # plotly reads hover and tile text as a little HTML: names from the storage must stay text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _share(exclusive: float, total: float) -> float:
    return exclusive / total if total else 0.0


def treemap(repositories: pd.DataFrame, limit: int) -> Any:
    """Bytes each repository keeps, nested by namespace; colour: the share only it holds."""
    import plotly.graph_objects as go

    ranked = repositories.sort_values(["total_bytes", "repository"], ascending=[False, True], kind="stable")
    shown, rest = ranked.head(limit), ranked.iloc[limit:]
    nodes: dict[str, dict[str, Any]] = {}

    def node(node_id: str, label: str, parent: str, hover: str = "") -> dict[str, Any]:
        return nodes.setdefault(
            node_id, {"label": label, "parent": parent, "total": 0, "exclusive": 0, "hover": hover, "repos": 0}
        )

    top = "all"
    node(top, f"all repositories ({len(repositories):,})", "")
    for row in shown.itertuples(index=False):
        parts = str(row.repository).split("/")
        parent = top
        chain = [top]
        for depth in range(1, len(parts)):
            namespace = "/".join(parts[:depth])
            node(f"ns:{namespace}", _inert(parts[depth - 1]) + "/", parent)
            parent = f"ns:{namespace}"
            chain.append(parent)
        node(f"repo:{row.repository}", _inert(parts[-1]), parent, _repository_hover(row))
        for at in [*chain, f"repo:{row.repository}"]:
            nodes[at]["total"] += int(row.total_bytes)
            nodes[at]["exclusive"] += int(row.exclusive_bytes)
            nodes[at]["repos"] += 1
    if len(rest):
        other = node("other", f"other: {len(rest):,} smaller repositories", top)
        other["total"] = int(rest["total_bytes"].sum())
        other["exclusive"] = int(rest["exclusive_bytes"].sum())
        other["repos"] = len(rest)
        nodes[top]["total"] += other["total"]
        nodes[top]["exclusive"] += other["exclusive"]
        nodes[top]["repos"] += len(rest)
    for node_id, n in nodes.items():
        if not n["hover"]:
            # A namespace's hover names it whole (its tile only by its last part).
            name = {top: "all repositories", "other": n["label"]}.get(node_id, node_id.removeprefix("ns:") + "/")
            n["hover"] = "<br>".join(
                [
                    f"<b>{_inert(name)}</b>",
                    f"repositories: {n['repos']:,}",
                    f"total_bytes: {size(n['total'])}",
                    f"exclusive_bytes: {size(n['exclusive'])}",
                ]
            )
    ids = list(nodes)
    fig = go.Figure(
        go.Treemap(
            ids=ids,
            labels=[nodes[i]["label"] for i in ids],
            parents=[nodes[i]["parent"] for i in ids],
            values=[nodes[i]["total"] for i in ids],
            branchvalues="total",
            customdata=[size(nodes[i]["total"]) for i in ids],
            hovertext=[nodes[i]["hover"] for i in ids],
            texttemplate="<b>%{label}</b><br>%{customdata}",
            hovertemplate="%{hovertext}<extra></extra>",
            marker={
                "colors": [_share(nodes[i]["exclusive"], nodes[i]["total"]) for i in ids],
                "colorscale": [[0, "#c6dbef"], [1, "#d94801"]],
                "cmin": 0,
                "cmax": 1,
                "showscale": True,
                "colorbar": {
                    "title": {"text": "exclusive<br>share", "side": "top"},
                    "tickvals": [0, 0.5, 1],
                    "ticktext": ["0% (shared)", "50%", "100% (its own)"],
                    "thickness": 12,
                },
            },
            maxdepth=3,
            pathbar={"visible": True},
        )
    )
    return _layout(fig, 560)


UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def binary_ticks(top: int, most: int = 6) -> tuple[list[int], list[str]]:
    """Ticks of a bytes axis from 0 past `top`: round numbers of one binary unit (0, 256 MiB, 512 MiB, ...),
    at most `most` + 1 of them, each labelled in that unit."""
    power = 0
    while power < len(UNITS) - 1 and top >= 1024 ** (power + 1):
        power += 1
    unit = 1024**power
    # A step of 1, 2 or 5 times a power of ten, of 256 or 512 (a quarter and a half of the next unit), or of a
    # quarter or a half of the unit itself, for an axis that ends below 3 of them.
    steps = ([0.25, 0.5] if power else []) + sorted({m * 10**e for e in range(4) for m in (1, 2, 5)} | {256, 512})
    step = next((s for s in steps if top / unit / s <= most), steps[-1])
    count = max(1, math.ceil(top / (step * unit)))
    ticks = [round(i * step * unit) for i in range(count + 1)]
    return ticks, ["0 B" if i == 0 else f"{i * step:,g} {UNITS[power]}" for i in range(count + 1)]


def _bars(labels: list[str], values: list[int], hover: list[str], color: str, height: int | None = None) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Bar(
            x=values,
            y=labels,
            orientation="h",
            marker_color=color,
            text=[size(v) for v in values],
            textposition="auto",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", automargin=True)
    ticks, ticktext = binary_ticks(max(values, default=0))
    # plotly's own ticks are SI (GB for 10^9 bytes): these are the binary units of every size on the page.
    fig.update_xaxes(tickvals=ticks, ticktext=ticktext, title_text="bytes", range=[0, max(ticks[-1], 1) * 1.02])
    return _layout(fig, height or max(160, 60 + 22 * len(labels)))


def reclaimable_bars(repositories: pd.DataFrame, limit: int) -> Any:
    """What deleting untagged manifests frees, per repository, largest first."""
    frame = repositories[repositories["reclaimable_bytes"] > 0]
    frame = frame.sort_values(["reclaimable_bytes", "repository"], ascending=[False, True], kind="stable").head(limit)
    hover = [_repository_hover(row) for row in frame.itertuples(index=False)]
    return _bars(
        [_inert(r) for r in frame["repository"]], frame["reclaimable_bytes"].astype(int).tolist(), hover, "#d94801"
    )


def action_shares(actions: list[tuple[str, int]]) -> Any:
    """The share of each action in what collecting would free."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Pie(
            labels=[name for name, _ in actions],
            values=[n for _, n in actions],
            hole=0.5,
            sort=False,
            marker={"colors": ["#d94801", "#6a51a3", "#807dba"]},
            customdata=[size(n) for _, n in actions],
            texttemplate="%{label}<br>%{customdata}",
            hovertemplate="%{label}: %{customdata} (%{percent})<extra></extra>",
            textposition="outside",
        )
    )
    fig.update_layout(showlegend=False)
    return _layout(fig, 300)


def tag_bars(tags: pd.DataFrame, limit: int) -> Any:
    """The tags whose deletion alone frees the most."""
    frame = tags[tags["exclusive_bytes"] > 0]
    frame = frame.sort_values(
        ["exclusive_bytes", "repository", "tag"], ascending=[False, True, True], kind="stable"
    ).head(limit)
    labels = [_inert(f"{r}:{t}") for r, t in zip(frame["repository"], frame["tag"], strict=True)]
    hover = [
        "<br>".join(
            [
                f"<b>{label}</b>",
                f"exclusive_bytes: {size(row.exclusive_bytes)}",
                f"image_bytes: {size(row.image_bytes)}",
                f"pushed_at: {'' if pd.isna(row.pushed_at) else f'{row.pushed_at:%Y-%m-%d %H:%M} UTC'}",
                f"digest: {row.digest}",
            ]
        )
        for label, row in zip(labels, frame.itertuples(index=False), strict=True)
    ]
    return _bars(labels, frame["exclusive_bytes"].astype(int).tolist(), hover, "#2171b5")


def age_buckets(tags: pd.DataFrame, scanned_at: datetime) -> pd.DataFrame:
    """Tags per age bucket (time from pushed_at to the scan), with the bytes deleting each alone would free."""
    scanned = pd.Timestamp(scanned_at)
    scanned = scanned.tz_localize(UTC) if scanned.tzinfo is None else scanned
    days = ((scanned - tags["pushed_at"]).dt.total_seconds() / 86400).to_numpy(dtype=float, na_value=np.nan)
    bounds = np.array([upper for upper, _ in AGE_BUCKETS])
    names = np.array([name for _, name in AGE_BUCKETS] + [UNKNOWN_AGE], dtype=object)
    # A push after the scan (clock skew) counts as new.
    bucket = np.where(np.isnan(days), len(AGE_BUCKETS), np.searchsorted(bounds, np.maximum(days, 0), side="right"))
    frame = pd.DataFrame({"bucket": bucket, "exclusive_bytes": tags["exclusive_bytes"].to_numpy()})
    grouped = frame.groupby("bucket")["exclusive_bytes"].agg(["size", "sum"])
    grouped = grouped.reindex(np.arange(len(names)), fill_value=0)
    out = pd.DataFrame({"age": names, "tags": grouped["size"].to_numpy(), "exclusive_bytes": grouped["sum"].to_numpy()})
    # Unknown ages only when there are some.
    return out if out["tags"].iloc[-1] else out.iloc[:-1]


def age_histogram(buckets: pd.DataFrame) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Bar(
            x=buckets["age"].tolist(),
            y=buckets["tags"].astype(int).tolist(),
            marker_color="#41ab5d",
            text=[f"{n:,}" for n in buckets["tags"]],
            textposition="auto",
            customdata=[size(n) for n in buckets["exclusive_bytes"]],
            hovertemplate="pushed %{x} before the scan: %{y:,} tags<br>"
            "deleted one by one they would free %{customdata}<extra></extra>",
        )
    )
    fig.update_yaxes(title_text="tags")
    fig.update_xaxes(title_text="time since the tag was last pushed", type="category")
    return _layout(fig, 300)


def _html(fig: Any, div_id: str) -> str:
    import plotly.io as pio

    # No mode bar: it covers the top bars, and hover and the treemap's clicks are all these charts need.
    config = {"displayModeBar": False, "responsive": True}
    return str(pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, config=config))


# --------------------------------------------------------------------------
# Tables


@dataclass(frozen=True)
class Column:
    name: str
    kind: str = "text"  # text, label (one line), path, bytes, time, digest, count


@dataclass(frozen=True)
class Table:
    """Rows for the page: each cell's raw value (what the JSON output holds) and its text for people."""

    id: str
    title: str
    columns: list[Column]
    rows: list[list[tuple[str, str, str]]]
    total: int
    command: str

    @property
    def left_out(self) -> int:
        return self.total - len(self.rows)


def _cell(value: Any, kind: str) -> tuple[str, str]:
    if value is None or (not isinstance(value, list | tuple) and pd.isna(value)):
        return "", ""
    if kind == "bytes":
        return str(int(value)), size(int(value))
    if kind == "count":
        return str(int(value)), f"{int(value):,}"
    if kind == "time":
        stamp = pd.Timestamp(value)
        return stamp.isoformat(), f"{stamp:%Y-%m-%d %H:%M}"
    if kind == "digest":
        text = str(value)
        return text, text[: len("sha256:") + 12]
    return str(value), str(value)


def table(div_id: str, title: str, frame: pd.DataFrame, columns: list[Column], limit: int, command: str) -> Table:
    rows = [
        [(*_cell(value, col.kind), col.kind) for value, col in zip(values, columns, strict=True)]
        for values in frame[[c.name for c in columns]].head(limit).itertuples(index=False)
    ]
    return Table(div_id, title, columns, rows, len(frame), command)


def _command(name: str, root: str, *extra: str) -> str:
    return shlex.join(["storage-audit", name, root, *extra])


def tables(fig: Figures, options: HtmlOptions) -> list[Table]:
    root = options.command_root or fig.root
    untagged = fig.untagged.sort_values(
        ["reclaimable_bytes", "repository", "digest"], ascending=[False, True, True], kind="stable"
    )
    return [
        table(
            "untagged",
            "Untagged manifests: what deleting them frees",
            untagged,
            [
                Column("repository"),
                Column("digest", "digest"),
                Column("media_type"),
                Column("pushed_at", "time"),
                Column("manifest_bytes", "bytes"),
                Column("reclaimable_bytes", "bytes"),
            ],
            options.table_rows,
            _command("untagged", root, "-f", "csv"),
        ),
        table(
            "orphans",
            "Orphan blobs: what a sweep removes",
            fig.orphans,
            [
                Column("digest", "digest"),
                Column("size", "bytes"),
                Column("kind"),
                Column("mtime", "time"),
                Column("linked_from"),
            ],
            options.table_rows,
            _command("orphans", root, "-f", "csv"),
        ),
        table(
            "findings",
            "Findings of check",
            fig.findings,
            [
                Column("severity", "label"),
                Column("kind", "label"),
                Column("repository"),
                Column("path", "path"),
                Column("detail"),
            ],
            options.table_rows,
            _command("check", root, "-f", "csv"),
        ),
        *_retention(options, root),
    ]


def _retention(options: HtmlOptions, root: str) -> list[Table]:
    """The policy's verdicts, deletions first, when the page was asked for with one."""
    if options.retention is None:
        return []
    frame = options.retention.sort_values(
        ["verdict", "frees_bytes", "repository", "tag"], ascending=[True, False, True, True], kind="stable"
    )
    deleted = int((frame["verdict"] == "deleted").sum())
    return [
        table(
            "retention",
            f"Retention: what the policy keeps and deletes ({deleted:,} deleted), and why",
            frame,
            [
                Column("repository"),
                Column("tag", "label"),
                Column("digest", "digest"),
                Column("verdict", "label"),
                Column("reason"),
                Column("frees_bytes", "bytes"),
            ],
            options.table_rows,
            _command("plan", root, *options.retention_args, "--explain", "-f", "csv"),
        )
    ]


# --------------------------------------------------------------------------
# The page


@dataclass(frozen=True)
class Card:
    key: str
    label: str
    value: str
    text: str
    note: str = ""
    tone: str = ""
    parts: list[tuple[str, str, str]] = field(default_factory=list)
    """Figures the note breaks the value into: key, raw value, text."""
    severity: str = ""
    """For the findings card, the worst severity found (error, warning, info or none)."""


def cards(fig: Figures) -> list[Card]:
    row = fig.summary.iloc[0]
    counts = severity_counts(fig.findings)
    worst = worst_severity(counts)
    stale = int(fig.stale_uploads["bytes"].sum())

    def sized(key: str, label: str, note: str = "", tone: str = "") -> Card:
        return Card(key, label, str(int(row[key])), size(int(row[key])), note, tone)

    return [
        sized("physical_bytes", "on disk (blobs)", count(int(row["blobs"]), "blob")),
        sized("logical_bytes", "kept by repositories", "a shared blob counts in each"),
        Card("dedup_ratio", "dedup ratio", repr(float(row["dedup_ratio"])), f"{float(row['dedup_ratio']):.2f}"),
        sized("orphan_bytes", "orphan blobs", count(int(row["orphan_blobs"]), "blob") + " nothing references", "free"),
        sized(
            "untagged_reclaimable_bytes",
            "deleting untagged manifests frees",
            count(int(row["untagged_manifests"]), "untagged manifest"),
            "free",
        ),
        sized("upload_bytes", "uploads in progress", f"{size(stale)} of them stale"),
        Card("repositories", "repositories", str(int(row["repositories"])), f"{int(row['repositories']):,}"),
        Card("tags", "tags", str(int(row["tags"])), f"{int(row['tags']):,}", count(int(row["manifests"]), "manifest")),
        Card(
            "findings",
            "check findings",
            str(sum(counts.values())),
            f"{sum(counts.values()):,}",
            tone=SEVERITY_TONES[worst],
            parts=[(f"findings_{sev}", str(n), count(n, sev, SEVERITY_PLURALS[sev])) for sev, n in counts.items()],
            severity=worst,
        ),
    ]


def render(fig: Figures, options: HtmlOptions | None = None) -> str:
    """The page: the figures' charts and tables in the template, plotly.js inlined."""
    import jinja2
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs

    options = options or HtmlOptions()
    row = fig.summary.iloc[0]
    stale = int(fig.stale_uploads["bytes"].sum())
    actions = [
        ("untagged manifests", int(row["untagged_reclaimable_bytes"])),
        ("orphan blobs", int(row["orphan_bytes"])),
        ("stale uploads", stale),
    ]
    buckets = age_buckets(fig.tags, fig.scanned_at)
    charts = {
        "treemap": _html(treemap(fig.repositories, options.treemap_repositories), "treemap"),
        "reclaimable": _html(reclaimable_bars(fig.repositories, options.bars), "reclaimable"),
        "actions": _html(action_shares(actions), "actions"),
        "tags": _html(tag_bars(fig.tags, options.bars), "largest-tags"),
        "ages": _html(age_histogram(buckets), "tag-ages"),
    }
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("storage_audit.output", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    scanned = pd.Timestamp(fig.scanned_at)
    counts = {
        "treemap_shown": min(len(fig.repositories), options.treemap_repositories),
        "repositories": len(fig.repositories),
        "reclaimable_repositories": int((fig.repositories["reclaimable_bytes"] > 0).sum()),
        "freeing_tags": int((fig.tags["exclusive_bytes"] > 0).sum()),
        "bars": options.bars,
    }
    physical = int(row["physical_bytes"])
    freeable = sum(n for _, n in actions)
    headline = Markup(
        "{} on disk in {} repositories; <b>{} can be freed</b> ({:.0%}), {} of it by deleting untagged manifests."
    ).format(
        size(physical),
        f"{int(row['repositories']):,}",
        size(freeable),
        freeable / physical if physical else 0,
        size(actions[0][1]),
    )
    return env.get_template(TEMPLATE).render(
        headline=headline,
        root=fig.root,
        scanned_at=f"{scanned:%Y-%m-%d %H:%M:%S} UTC",
        version=__version__,
        cards=cards(fig),
        actions=[(name, str(n), size(n)) for name, n in actions],
        reclaimable_total=size(freeable),
        charts={k: Markup(v) for k, v in charts.items()},
        counts=counts,
        ages=buckets,
        tables=tables(fig, options),
        freeable=freeable,
        all_repositories=_command("report", options.command_root or fig.root, "--by", "repository", "-f", "csv"),
        all_tags=_command("report", options.command_root or fig.root, "--by", "tag", "-f", "csv"),
        plotly_js=Markup(get_plotlyjs()),
    )


def page(graph: Graph, options: HtmlOptions | None = None) -> str:
    """The HTML report of the storage `graph` describes."""
    options = options or HtmlOptions()
    return render(figures(graph, options), options)

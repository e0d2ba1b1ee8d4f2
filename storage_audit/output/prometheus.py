"""Prometheus text exposition through prometheus_client for node_exporter's textfile collector, written atomically.

prometheus_client is imported only when this format is written: it takes about 0.2 s to load.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from storage_audit.core.view import View
from storage_audit.output.formats import FormatError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

COLUMNS = ("metric", "help", "labels", "value")


class Samples:
    """A collector of a view's gauge samples (metric, help, labels, value): one family per metric, in order."""

    def __init__(self, view: View) -> None:
        self.frame = view.frame

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        for name, rows in self.frame.groupby("metric", sort=False):
            labels = list(rows["labels"].iloc[0])
            family = GaugeMetricFamily(str(name), str(rows["help"].iloc[0]), labels=labels)
            for values, value in zip(rows["labels"], rows["value"], strict=True):
                family.add_metric([values[label] for label in labels], float(value))
            yield family


def registry(view: View) -> CollectorRegistry:
    """A registry holding only the view's samples: none of the library's own process or platform metrics."""
    from prometheus_client import CollectorRegistry

    if list(view.frame.columns) != list(COLUMNS):
        raise FormatError("--format prometheus is for `report`: it writes the audit's metrics")
    out = CollectorRegistry(auto_describe=False)
    out.register(Samples(view))  # type: ignore[arg-type]  # any object with collect() is a collector
    return out


def write(view: View, dest: Path | None) -> None:
    from prometheus_client import generate_latest, write_to_textfile

    metrics = registry(view)
    if dest is None:
        sys.stdout.write(generate_latest(metrics).decode("utf-8"))
    else:
        # A temporary file beside dest, then a rename: the collector never reads half a file.
        write_to_textfile(str(dest), metrics)

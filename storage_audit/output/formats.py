"""Output formats behind one interface: a View (a frame plus how to show it) written to a file or stdout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from storage_audit.analysis.options import Format
from storage_audit.core.errors import UsageError
from storage_audit.core.view import View


class FormatError(UsageError, ValueError):
    """A format that cannot be written where asked (parquet to a terminal, say)."""


Writer = Callable[[View, "Path | None"], None]


def writer(fmt: Format) -> Writer:
    """The writer of `fmt`; every Format maps to exactly one module."""
    from storage_audit.output import csv, json, parquet, prometheus, table

    writers: dict[Format, Writer] = {
        Format.TABLE: table.write,
        Format.CSV: csv.write,
        Format.JSON: json.write,
        Format.PARQUET: parquet.write,
        Format.PROMETHEUS: prometheus.write,
    }
    return writers[fmt]


def write(view: View, fmt: Format, dest: Path | None) -> None:
    """Write `view` as `fmt` to `dest`, or to stdout when dest is None."""
    writer(fmt)(view, dest)


def time_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)]

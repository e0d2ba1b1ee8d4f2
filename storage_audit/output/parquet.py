"""Parquet through pyarrow, keeping the frame's dtypes."""

from __future__ import annotations

from pathlib import Path

from storage_audit.core.view import View
from storage_audit.output.formats import FormatError


def write(view: View, dest: Path | None) -> None:
    if dest is None:
        raise FormatError("parquet needs an output file: add -o FILE")
    view.frame.to_parquet(dest, engine="pyarrow", index=False)

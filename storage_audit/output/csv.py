"""CSV: a header row, raw integers, ISO 8601 UTC times, booleans as `true`/`false`."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from storage_audit.core.view import View

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
BOOLEAN_WORDS = {True: "true", False: "false"}


def _csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its boolean columns as the words JSON and most tools read (pandas writes True and False)."""
    booleans = [col for col in frame.columns if pd.api.types.is_bool_dtype(frame[col].dtype)]
    if not booleans:
        return frame
    return frame.assign(**{col: frame[col].map(BOOLEAN_WORDS) for col in booleans})


def write(view: View, dest: Path | None) -> None:
    frame = _csv_frame(view.frame)
    if dest is None:
        frame.to_csv(sys.stdout, index=False, date_format=ISO_FORMAT)
    else:
        frame.to_csv(dest, index=False, date_format=ISO_FORMAT)

"""CSV: a header row, raw integers, ISO 8601 UTC times, booleans as `true`/`false`; written a batch of rows at once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import pandas as pd

from storage_audit.core.view import View
from storage_audit.output.batches import view_batches

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
BOOLEAN_WORDS = {True: "true", False: "false"}


def _csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its boolean columns as the words JSON and most tools read (pandas writes True and False)."""
    booleans = [col for col in frame.columns if pd.api.types.is_bool_dtype(frame[col].dtype)]
    if not booleans:
        return frame
    return frame.assign(**{col: frame[col].map(BOOLEAN_WORDS) for col in booleans})


def _write(view: View, out: TextIO) -> None:
    for number, part in enumerate(view_batches(view, iso_times=True)):
        _csv_frame(part).to_csv(out, index=False, header=number == 0, date_format=ISO_FORMAT)


def write(view: View, dest: Path | None) -> None:
    if dest is None:
        _write(view, sys.stdout)
    else:
        # As pandas opens a path: no newline translation, its own line terminator.
        with open(dest, "w", encoding="utf-8", newline="") as out:
            _write(view, out)

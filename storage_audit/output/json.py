"""JSON: an array of row objects (one object for a single-row view), raw integers, ISO 8601 UTC times.

The array is written a batch of rows at a time: pandas writes each batch as an
array, and the batches' rows are joined inside one pair of brackets.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pandas as pd

from storage_audit.core.view import View
from storage_audit.output.batches import ROWS, batches, view_batches

# pandas escapes every `/` as `\/`, and a backslash of the text as `\\`: the `\/` the text left to right holds
# are those escapes (the other backslashes come in pairs followed by anything but `/`), and read as `/`.
_ESCAPED_SLASH = "\\/"
# pandas' array of records with an indent: "[" + rows, each "\n  {...}", joined by "," + "\n]".
_OPEN, _CLOSE = "[", "\n]"
JSON_ROWS = ROWS // 4
"""Rows written at a time: a batch's text is copied three times on its way out (some 15 MB each)."""


def _json(frame: pd.DataFrame | pd.Series) -> str:
    orient = "records" if isinstance(frame, pd.DataFrame) else None
    text = frame.to_json(orient=orient, date_format="iso", date_unit="us", indent=2)
    return text.replace(_ESCAPED_SLASH, "/")


def _array(view: View) -> Iterator[str]:
    """The text of the array of `view`'s rows, in pieces."""
    yield _OPEN
    first = True
    for part in view_batches(view, JSON_ROWS, iso_times=True):
        if part.empty:
            continue
        text = _json(part)
        assert text.startswith(_OPEN) and text.endswith(_CLOSE)
        yield text[len(_OPEN) : -len(_CLOSE)] if first else "," + text[len(_OPEN) : -len(_CLOSE)]
        first = False
    yield "]" if first else _CLOSE


def _write(view: View, out: TextIO) -> None:
    if view.single:
        (row,) = batches(view.frame.iloc[:1])
        # As objects, a row of ints and floats keeps its ints (a plain row Series upcasts them to float).
        out.write(_json(row.astype(object).iloc[0]))
    else:
        for piece in _array(view):
            out.write(piece)
    out.write("\n")


def write(view: View, dest: Path | None) -> None:
    if dest is None:
        _write(view, sys.stdout)
    else:
        with open(dest, "w", encoding="utf-8") as out:
            _write(view, out)

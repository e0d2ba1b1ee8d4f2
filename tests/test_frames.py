"""positions() against a plain dictionary lookup, with the hashed slice small enough that every path runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage_audit.inventory import frames

TEXT = st.one_of(st.none(), st.sampled_from(["", "a", "ab", "sha256:0f", "sha256:f0", "é", "ba"]), st.text(max_size=6))


def expected(values: list[str | None], among: list[str | None]) -> list[int]:
    first: dict[str, int] = {}
    for i, name in enumerate(among):
        if name is not None:
            first.setdefault(name, i)
    return [-1 if v is None else first.get(v, -1) for v in values]


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(TEXT, max_size=40), st.lists(TEXT, max_size=40), st.integers(1, 5))
def test_positions_is_a_first_occurrence_lookup(values: list[str | None], among: list[str | None], hashed: int) -> None:
    saved = frames.HASHED
    frames.HASHED = hashed
    try:
        got = frames.positions(pd.Series(values, dtype="string"), pd.Series(among, dtype="string"))
    finally:
        frames.HASHED = saved
    assert got.tolist() == expected(values, among)


def test_positions_across_chunks_and_parts() -> None:
    rng = np.random.default_rng(7)
    among = [f"sha256:{rng.integers(0, 1 << 62):064x}" for _ in range(3000)]
    among += among[:500]  # repeated: the first occurrence counts
    values = [*among[::7], "sha256:" + "0" * 64, None, ""]
    left = pd.Series(pd.concat([pd.Series(values[:200]), pd.Series(values[200:])], ignore_index=True), dtype="string")
    right = pd.concat([pd.Series(among[:1000], dtype="string"), pd.Series(among[1000:], dtype="string")])
    saved = frames.HASHED
    frames.HASHED = 64
    try:
        got = frames.positions(left, right)
    finally:
        frames.HASHED = saved
    assert got.tolist() == expected(values, among)
    assert (got[: len(among[::7])] >= 0).all()

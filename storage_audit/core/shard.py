"""One share of a scan: `I/N` takes the repositories whose top-level name hashes to I and the blob prefixes
`blobs/<alg>/<xx>` whose two hex digits are I modulo N, so that every key of a tree falls in exactly one share."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

SHARD_DIR = "shard-{index:05d}-of-{count:05d}"
"""The directory, inside `scan -o DIR`, of one share's snapshot; DIR holding all N is read as one snapshot."""
SHARD_DIR_PATTERN = re.compile(r"shard-(\d{5})-of-(\d{5})")
MAX_SHARDS = 99_999


@dataclass(frozen=True)
class Shard:
    """Share `index` (from 0) of `count`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N`, 0 <= I < N; ValueError with a one-line reason otherwise."""
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not I/N (say 0/4: the first of four shares)")
        index, count = int(match[1]), int(match[2])
        if not 1 <= count <= MAX_SHARDS or index >= count:
            raise ValueError(f"{text!r}: I/N needs 0 <= I < N <= {MAX_SHARDS}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def directory(self) -> str:
        return SHARD_DIR.format(index=self.index, count=self.count)

    def has_repository(self, top: str) -> bool:
        """Whether the top-level repository directory `top` (and every repository below it) is this share's."""
        hashed = int.from_bytes(hashlib.sha256(top.encode("utf-8", "surrogateescape")).digest()[:8], "big")
        return hashed % self.count == self.index

    def has_prefix(self, prefix: str) -> bool:
        """Whether the blob prefix directory `prefix` (two hex digits) is this share's."""
        return int(prefix, 16) % self.count == self.index

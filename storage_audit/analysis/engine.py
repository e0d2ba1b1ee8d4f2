"""The analysis as SQL over a snapshot's Parquet tables, on an engine that does not hold the registry in memory.

One set of statements, run unchanged by DuckDB (on one machine, spilling to disk past its memory limit) and by
Spark SQL (local mode or a cluster); each engine adds only how it reads Parquet, keeps an intermediate table,
counts, hands rows back as Arrow, and two expressions of its dialect. The closures (what tags keep through index
children and referrers, what broken references name through the lists' contents) are iterated from here, one
level of nesting per statement: neither needs a recursive query.

The semantics are `graph.Graph`'s, statement by statement: present revisions, what each holds (its own blob and the
stored blobs its manifest references as config, layer, child or fslayer), child and referrer edges within a
repository, dangling tags and missing index children protecting what they name and all it holds (in their
repository), and the marks. Revisions are keyed by (repository, digest), blobs by digest, each as an integer id
given once as the tables are read (its rank among the distinct values, so ids order as their text); the text is
joined back only to the rows of an answer. The answers are read-only reports: `untagged`, `orphans` (plain, with
delete_untagged, and registry 2.8's rule) and `report --by repository`. Registry 3's mark, a walk whose answer
depends on its order, stays with the graph.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from storage_audit.analysis.collect import ORPHAN_COLUMNS, UNTAGGED_COLUMNS
from storage_audit.analysis.options import COLUMNS, By, Collector
from storage_audit.core.errors import AuditError, UsageError
from storage_audit.core.memory import release

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

HOLDING = "('config', 'layer', 'child', 'fslayer')"
"""graph.HOLDING_REFS as SQL: the references that keep a blob alive while their manifest is kept."""

TABLES = ("blobs", "revisions", "tags", "references", "manifests", "layer_links", "repositories", "uploads")
"""The snapshot tables the answers read (`references` is known to SQL as `refs`: a reserved word)."""
TIMES = ("pushed_at", "mtime", "last_push")
"""Columns handed back as nanoseconds since the epoch (Spark reads Parquet's nanosecond times as such), made
times in UTC here."""

DUCKDB_MEMORY = "STORAGE_AUDIT_DUCKDB_MEMORY"
"""The environment variable that sets DuckDB's memory limit (default: `default_memory`); past it, DuckDB spills."""
LEAST_MEMORY_MB = 64
"""DuckDB's least memory limit: what a snapshot of up to some 670,000 blobs is given."""
SMALL_BYTES_PER_BLOB = 100
"""DuckDB's memory limit per blob of a smaller snapshot, up to MIDDLE_MEMORY_MB: less spilled at a cost in memory."""
MIDDLE_MEMORY_MB = 500
"""DuckDB's memory limit from 5 to 13 million blobs: at ten million, the whole process stays within 1 GB."""
BYTES_PER_BLOB = 40
"""DuckDB's memory limit for larger snapshots, per blob: 4 GB at a hundred million, where spilling costs most."""
THREAD_MB = 32
"""DuckDB's threads are at most one for each THREAD_MB of its default limit: each holds its own share of a sort or
a join (at 600,000 blobs and 96 MB, eight threads ran out of memory, two and four did not)."""


def default_memory(blobs: int) -> int:
    """DuckDB's memory limit, in MB, for a snapshot of `blobs` blobs: SMALL_BYTES_PER_BLOB for each blob, between
    LEAST_MEMORY_MB and MIDDLE_MEMORY_MB, or BYTES_PER_BLOB for each when that is more, and at most a quarter of
    this machine's memory (never less than the first)."""
    small = max(LEAST_MEMORY_MB, min(MIDDLE_MEMORY_MB, blobs * SMALL_BYTES_PER_BLOB >> 20))
    wanted = max(small, blobs * BYTES_PER_BLOB >> 20)
    try:
        machine = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    except (ValueError, OSError):
        machine = 0
    return max(small, min(wanted, machine // 4)) if machine else wanted


def default_threads(memory_mb: int) -> int:
    """DuckDB's threads under a limit of `memory_mb`: one a CPU, and one for each THREAD_MB at most."""
    return max(1, min(os.cpu_count() or 1, memory_mb // THREAD_MB))


@dataclass(frozen=True)
class Keep:
    """What is kept, as graph.ReachOptions says it (registry 3's collector is not offered here)."""

    delete_untagged: bool = False
    keep_referrers: bool = True
    collector: Collector | None = None

    def normal(self) -> Keep:
        """As `Graph.reach` reads it: keep_referrers only matters when untagged revisions go by the safe rule."""
        if self.collector is Collector.V3:
            raise UsageError("registry 3's mark (--gc-compatible=3) is a walk in order: use --engine pandas")
        if self.collector is not None or not self.delete_untagged:
            return Keep(self.delete_untagged, True, self.collector)
        return self


class EngineError(AuditError):
    """The engine could not answer: DuckDB out of memory or disk, say."""


class Sql(ABC):
    """One SQL engine: where the tables are read from, how a table is kept, and its dialect's few differences."""

    @abstractmethod
    def source(self, name: str, files: Sequence[str], distinct: bool = False) -> None:
        """Make `name` the rows of these Parquet files (each distinct row once with `distinct`)."""

    @abstractmethod
    def create(self, name: str, query: str) -> None:
        """Compute `query` now and keep its rows as the table `name` (replacing one of that name)."""

    @abstractmethod
    def drop(self, name: str) -> None:
        """Forget the table `name`."""

    @abstractmethod
    def count(self, name: str) -> int:
        """The rows of table `name` (or of a subquery with an alias)."""

    @abstractmethod
    def reader(self, query: str, rows: int = 1 << 17) -> pa.RecordBatchReader:
        """The rows of `query`, in its order, `rows` at a time."""

    def arrow(self, query: str) -> pa.Table:
        """The rows of `query`, in its order."""
        return self.reader(query).read_all()

    @abstractmethod
    def joined(self, column: str) -> str:
        """An aggregate: the distinct non-null values of `column`, sorted, joined by commas."""

    @abstractmethod
    def nanos(self, column: str) -> str:
        """A time column as nanoseconds since the epoch."""

    @abstractmethod
    def key(self, column: str) -> str:
        """A digest's key: 128 bits of a hash of its text (NULL for NULL), the one thing the analysis compares."""

    @contextmanager
    def errors(self) -> Iterator[None]:
        """The engine's own errors in the block as EngineError (what a command reports without a traceback)."""
        yield

    def close(self) -> None:  # noqa: B027 - most engines have nothing to give back
        """Give back what the engine holds."""


class DuckDB(Sql):
    """DuckDB in this process, held to `memory`: its intermediate tables in a database file in `temp_directory`,
    and what its operators spill beside it."""

    def __init__(self, temp_directory: Path, memory: str | int | None = None, threads: int | None = None) -> None:
        """`memory` in DuckDB's notation (`4GB`) or in MB (then `threads` defaults to `default_threads`, else to a
        thread a CPU); None: `default_memory(0)`."""
        try:
            import duckdb
        except ImportError as exc:
            raise UsageError("--engine duckdb needs DuckDB: pip install 'storage-audit[engine]'") from exc

        # A database file, not memory: its tables are written out and evicted under the memory limit, where an
        # in-memory database's (and temporary tables) must stay in memory.
        if memory is None:
            memory = default_memory(0)
        if isinstance(memory, int):
            threads = threads or default_threads(memory)
            memory = f"{memory}MB"
        self.con = duckdb.connect(
            str(temp_directory / "analysis.duckdb"), config={"threads": threads or os.cpu_count() or 1}
        )
        self.memory = memory
        self.con.execute(f"SET memory_limit = {sql_text(self.memory)}")
        self.con.execute(f"SET temp_directory = {sql_text(str(temp_directory))}")
        # Rows come out in the order each query asks for; nothing else needs the order they went in.
        self.con.execute("SET preserve_insertion_order = false")

    def source(self, name: str, files: Sequence[str], distinct: bool = False) -> None:
        listed = ", ".join(sql_text(f) for f in files)
        select = "SELECT DISTINCT *" if distinct else "SELECT *"
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS {select} FROM read_parquet([{listed}])")

    def create(self, name: str, query: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TABLE {name} AS {query}")

    def drop(self, name: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {name}")

    def count(self, name: str) -> int:
        row = self.con.execute(f"SELECT count(*) FROM {name}").fetchone()
        assert row is not None
        return int(row[0])

    def reader(self, query: str, rows: int = 1 << 17) -> pa.RecordBatchReader:
        # Batch by batch: DuckDB holds no whole result of its own beside what is read. On a cursor of its own,
        # as the connection takes no other query while a result is being read.
        return self.con.cursor().sql(query).to_arrow_reader(rows)

    @contextmanager
    def errors(self) -> Iterator[None]:
        import duckdb

        try:
            yield
        except duckdb.OutOfMemoryException as exc:
            raise EngineError(
                f"DuckDB ran out of memory at its limit of {self.memory}: set {DUCKDB_MEMORY} higher (e.g. 4GB)"
            ) from exc
        except duckdb.Error as exc:
            raise EngineError(f"DuckDB: {str(exc).splitlines()[0]}") from exc

    def joined(self, column: str) -> str:
        return f"array_to_string(list_sort(list_distinct(list({column}))), ',')"

    def nanos(self, column: str) -> str:
        return f"epoch_ns({column})"

    def key(self, column: str) -> str:
        return f"md5_number({column})"

    def close(self) -> None:
        self.con.close()


SPARK_CONF = {
    # The snapshot's times are Parquet nanoseconds, which Spark reads only as integers; they stay exact.
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.session.timeZone": "UTC",
}
"""What a SparkSession needs set to read a snapshot (`spark-submit --conf` or the session's builder)."""


class Spark(Sql):
    """Spark SQL in a SparkSession (built with SPARK_CONF); kept tables are checkpointed, cutting their lineage."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        for key, value in SPARK_CONF.items():
            spark.conf.set(key, value)
        self._kept: dict[str, Any] = {}

    def source(self, name: str, files: Sequence[str], distinct: bool = False) -> None:
        frame = self.spark.read.parquet(*files)
        (frame.distinct() if distinct else frame).createOrReplaceTempView(name)

    def create(self, name: str, query: str) -> None:
        frame = self.spark.sql(query).localCheckpoint(eager=True)
        self.drop(name)
        frame.createOrReplaceTempView(name)
        self._kept[name] = frame

    def drop(self, name: str) -> None:
        frame = self._kept.pop(name, None)
        if frame is not None:
            self.spark.catalog.dropTempView(name)
            frame.unpersist()

    def count(self, name: str) -> int:
        return int(self.spark.sql(f"SELECT count(*) FROM {name}").collect()[0][0])

    def reader(self, query: str, rows: int = 1 << 17) -> pa.RecordBatchReader:
        return self.spark.sql(query).toArrow().to_reader(rows)

    def joined(self, column: str) -> str:
        return f"array_join(array_sort(collect_set({column})), ',')"

    def nanos(self, column: str) -> str:
        return column

    def key(self, column: str) -> str:
        return f"unhex(md5({column}))"

    def close(self) -> None:
        for name in list(self._kept):
            self.drop(name)


def sql_text(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_name(column: str) -> str:
    """A SQL name, quoted."""
    return '"' + column.replace('"', '""') + '"'


class Analysis:
    """The answers of one snapshot on one engine; each intermediate table is computed once, when first needed.

    A digest is known by its key (`Sql.key`: 128 bits of a hash of its text), computed as the tables are read,
    and a repository name by an integer id: its rank among the distinct names of all tables (`repository_ids`),
    so that ids order as the names. The analysis joins, groups and closes over keys and ids alone; the text is
    read again only for the rows of an answer. Two digests of one key (a chance of about 1 in 10^22 among a
    hundred million) would be one node of the graph: what either is kept by would keep both, so no blob would
    be called an orphan that any kept revision holds.
    """

    def __init__(self, sql: Sql, files: Mapping[str, Sequence[str]], shards: bool = False) -> None:
        self.sql = sql
        self._made: set[str] = set()
        for table in TABLES:
            # The shares of a sharded scan each read the manifests their links name: each row once.
            distinct = shards and table in ("manifests", "references")
            sql.source("refs" if table == "references" else table, files[table], distinct)

    def _table(self, name: str, query: str) -> str:
        if name not in self._made:
            self.sql.create(name, query)
            self._made.add(name)
        return name

    # -- the keys --------------------------------------------------------------------

    @property
    def repository_ids(self) -> str:
        """(id, repository): every repository name the tables name, with its rank in byte order (1 first)."""
        values = " UNION ALL ".join(
            f"SELECT repository AS v FROM {table} WHERE repository IS NOT NULL"
            for table in ("repositories", "revisions", "tags", "layer_links")
        )
        return self._table(
            "repository_ids",
            "SELECT row_number() OVER (ORDER BY v) AS id, v AS repository"
            f" FROM (SELECT DISTINCT v FROM ({values}) a) d",
        )

    @property
    def blob_rows(self) -> str:
        """(digest, size): the stored blobs, by key."""
        return self._table("blob_rows", f"SELECT {self.sql.key('digest')} AS digest, size FROM blobs")

    @property
    def ref_rows(self) -> str:
        """(manifest, digest, k): every reference, by key, its type as a rank: 3 child, 2 config, 1 layer or
        fslayer (the others 0); those above 0 hold their blob."""
        key = self.sql.key
        return self._table(
            "ref_rows",
            f"SELECT {key('manifest')} AS manifest, {key('digest')} AS digest, CASE ref_type WHEN 'child' THEN 3"
            " WHEN 'config' THEN 2 WHEN 'layer' THEN 1 WHEN 'fslayer' THEN 1 ELSE 0 END AS k FROM refs",
        )

    @property
    def manifest_rows(self) -> str:
        """(digest, subject, subject_name, media_type, artifact_type): the manifests, digests by key (and the
        subject's text, for the answers)."""
        key = self.sql.key
        return self._table(
            "manifest_rows",
            f"SELECT {key('digest')} AS digest, {key('subject')} AS subject, subject AS subject_name, media_type,"
            " artifact_type FROM manifests",
        )

    @property
    def tag_rows(self) -> str:
        """(repository, digest, pushed_at): the tags, by id and key."""
        return self._table(
            "tag_rows",
            f"SELECT r.id AS repository, {self.sql.key('t.digest')} AS digest, t.pushed_at FROM tags t"
            f" LEFT JOIN {self.repository_ids} r ON r.repository = t.repository",
        )

    # -- the graph -------------------------------------------------------------------

    @property
    def present(self) -> str:
        """Linked revisions whose manifest blob is stored (with the digest's text, `name`, for the answers)."""
        key, blobs = self.sql.key, self.blob_rows
        # The keys made first: a blob compared with a column is a plain semi-join, where one compared with an
        # expression is planned around a table of its distinct values (twice the time at ten million blobs).
        linked = (
            f"SELECT repository, {key('digest')} AS digest, {key('target')} AS target, pushed_at, digest AS name"
            " FROM revisions WHERE linked AND target IS NOT NULL"
        )
        return self._table(
            "present",
            "SELECT p.id AS repository, r.digest, r.target, r.pushed_at, r.name"
            f" FROM ({linked}) r LEFT JOIN {self.repository_ids} p ON p.repository = r.repository"
            f" WHERE EXISTS (SELECT 1 FROM {blobs} b WHERE b.digest = r.target)",
        )

    @property
    def held_refs(self) -> str:
        """(manifest, blob): the distinct stored blobs each manifest references as config, layer, child, fslayer."""
        refs, blobs = self.ref_rows, self.blob_rows
        return self._table(
            "held_refs",
            f"SELECT DISTINCT r.manifest, r.digest AS blob FROM {refs} r WHERE r.k > 0"
            f" AND EXISTS (SELECT 1 FROM {blobs} b WHERE b.digest = r.digest)",
        )

    @property
    def children(self) -> str:
        """(manifest, digest) of every child reference of a list or index."""
        return self._table(
            "children",
            f"SELECT DISTINCT manifest, digest FROM {self.ref_rows}"
            " WHERE k = 3 AND manifest IS NOT NULL AND digest IS NOT NULL",
        )

    @property
    def holds(self) -> str:
        """(repository, digest, blob): every present revision and each stored blob it holds, itself included."""
        present, held = self.present, self.held_refs
        if "holds" in self._made:
            return "holds"
        own = f"SELECT repository, digest, target AS blob FROM {present}"
        listed = f"SELECT p.repository, p.digest, h.blob FROM {present} p JOIN {held} h ON h.manifest = p.target"
        if self.sql.count(present) == self.sql.count(f"(SELECT DISTINCT repository, digest FROM {present}) d"):
            # Each revision once (as a registry stores them): its rows are distinct but for a manifest that lists
            # its own digest, and the union needs no hash table of every row (the largest the analysis builds).
            return self._table("holds", f"{own} UNION ALL {listed} AND h.blob <> p.target")
        return self._table("holds", f"{own} UNION {listed}")

    @property
    def child_edges(self) -> str:
        """(repository, src, dst): the revision src of an index keeps the revision dst of its child, beside it."""
        present, children = self.present, self.children
        return self._table(
            "child_edges",
            f"SELECT DISTINCT p.repository, p.digest AS src, c.digest AS dst FROM {present} p"
            f" JOIN {children} r ON r.manifest = p.target"
            f" JOIN {present} c ON c.repository = p.repository AND c.digest = r.digest",
        )

    @property
    def edges(self) -> str:
        """child_edges and (repository, src, dst): the revision src of a subject keeps its referrer dst."""
        present, child_edges, manifests = self.present, self.child_edges, self.manifest_rows
        return self._table(
            "edges",
            f"SELECT repository, src, dst FROM {child_edges} UNION"
            f" SELECT p.repository, s.digest, p.digest FROM {present} p"
            f" JOIN {manifests} m ON m.digest = p.target AND m.subject IS NOT NULL"
            f" JOIN {present} s ON s.repository = p.repository AND s.digest = m.subject",
        )

    @property
    def tagged(self) -> str:
        """(repository, digest): the revisions some tag names."""
        present, tags = self.present, self.tag_rows
        return self._table(
            "tagged",
            f"SELECT DISTINCT p.repository, p.digest FROM {present} p"
            f" JOIN {tags} t ON t.repository = p.repository AND t.digest = p.digest",
        )

    @property
    def dangling(self) -> str:
        """(repository, digest): what tags name that is no present revision of their repository."""
        present, tags = self.present, self.tag_rows
        return self._table(
            "dangling",
            f"SELECT DISTINCT t.repository, t.digest FROM {tags} t WHERE t.digest IS NOT NULL"
            f" AND NOT EXISTS (SELECT 1 FROM {present} p WHERE p.repository = t.repository AND p.digest = t.digest)",
        )

    def _closure(self, name: str, start: str, step: str) -> str:
        """The table `name` of (repository, digest): the rows of `start` and, level by level, those `step` gives
        from the rows found last (`step` reads them as `{frontier}`), until no new row comes."""
        sql = self.sql
        sql.create(name, f"SELECT DISTINCT repository, digest FROM ({start}) s")
        frontier, level = name, 0
        while True:
            level += 1
            new = f"{name}_{level}"
            sql.create(
                new,
                f"SELECT DISTINCT n.repository, n.digest FROM ({step.format(frontier=frontier)}) n WHERE NOT EXISTS"
                f" (SELECT 1 FROM {name} k WHERE k.repository = n.repository AND k.digest = n.digest)",
            )
            if frontier != name:
                sql.drop(frontier)
            if sql.count(new) == 0:
                sql.drop(new)
                break
            grown = f"{name}_grown"
            sql.create(grown, f"SELECT repository, digest FROM {name} UNION ALL SELECT repository, digest FROM {new}")
            sql.create(name, f"SELECT repository, digest FROM {grown}")
            sql.drop(grown)
            frontier = new
        self._made.add(name)
        return name

    def kept(self, keep: Keep) -> str:
        """(repository, digest): the revisions `keep` keeps."""
        if not keep.delete_untagged:
            return self._table("kept_all", f"SELECT repository, digest FROM {self.present}")
        if keep.collector is Collector.V2_8:
            return self.tagged
        name = "kept_tagged" if keep.keep_referrers else "kept_tagged_children"
        if name in self._made:
            return name
        edges = self.edges if keep.keep_referrers else self.child_edges
        return self._closure(
            name,
            f"SELECT repository, digest FROM {self.tagged}",
            f"SELECT e.repository, e.dst AS digest FROM {{frontier}} f"
            f" JOIN {edges} e ON e.repository = f.repository AND e.src = f.digest",
        )

    def protected(self, kept: str) -> str:
        """(repository, blob): what broken references keep when `kept` are the kept revisions: the targets of
        dangling tags and the missing children of what kept revisions hold, their contents (children, by what
        the lists say) and all those hold, by the repository of the reference."""
        name = f"protected_{kept}"
        if name in self._made:
            return name
        holds, children, present = self.holds, self.children, self.present
        broken = self._table(
            f"broken_{kept}",
            f"SELECT repository, digest FROM {self.dangling} UNION"
            f" SELECT h.repository, r.digest FROM {holds} h"
            f" JOIN {kept} k ON k.repository = h.repository AND k.digest = h.digest"
            f" JOIN {children} r ON r.manifest = h.blob"
            f" WHERE NOT EXISTS (SELECT 1 FROM {present} q WHERE q.repository = h.repository AND q.digest = r.digest)",
        )
        contents = self._closure(
            f"contents_{kept}",
            f"SELECT repository, digest FROM {broken}",
            f"SELECT f.repository, r.digest FROM {{frontier}} f JOIN {children} r ON r.manifest = f.digest",
        )
        return self._table(
            name,
            f"SELECT c.repository, c.digest AS blob FROM {contents} c"
            f" WHERE EXISTS (SELECT 1 FROM {self.blob_rows} b WHERE b.digest = c.digest)"
            f" UNION SELECT c.repository, h.blob FROM {contents} c JOIN {self.held_refs} h ON h.manifest = c.digest",
        )

    def marked(self, keep: Keep) -> str:
        """(blob): what the kept revisions hold and, unless a stock collector's rule decides, what broken
        references protect."""
        keep = keep.normal()
        kept = self.kept(keep)
        name = f"marked_{kept}" + ("" if keep.collector is None else "_unprotected")
        held = f"SELECT h.blob FROM {self.holds} h JOIN {kept} k ON k.repository = h.repository AND k.digest = h.digest"
        if keep.collector is None:
            held += f" UNION ALL SELECT blob FROM {self.protected(kept)}"
        # One DISTINCT over both: a UNION would make its rows distinct once more before it.
        return self._table(name, f"SELECT DISTINCT blob FROM ({held}) m")

    # -- the answers ------------------------------------------------------------------

    def untagged_query(self, keep: Keep) -> str:
        """The rows of `untagged`: the revisions `keep` (with delete_untagged) does not keep, with what each
        would free alone (the blobs it alone holds that no broken reference protects)."""
        keep = Keep(True, keep.keep_referrers, keep.collector).normal()
        kept, holds, blobs = self.kept(keep), self.holds, self.blob_rows
        sole = self._table(
            f"sole_{kept}",
            f"SELECT blob FROM {holds} GROUP BY blob HAVING count(*) = 1"
            f" EXCEPT SELECT blob FROM {self.protected(kept)}",
        )
        untagged = self._table(
            f"untagged_{kept}",
            "SELECT p.repository, p.digest, p.name, p.target, p.pushed_at, coalesce(f.freed, 0) AS reclaimable_bytes"
            f" FROM {self.present} p"
            f" LEFT JOIN (SELECT h.repository, h.digest, CAST(sum(s.size) AS BIGINT) AS freed FROM {holds} h"
            f" JOIN {sole} o ON o.blob = h.blob JOIN {blobs} s ON s.digest = h.blob"
            " GROUP BY h.repository, h.digest) f ON f.repository = p.repository AND f.digest = p.digest"
            f" WHERE NOT EXISTS (SELECT 1 FROM {kept} k WHERE k.repository = p.repository AND k.digest = p.digest)",
        )
        # What the answer's rows name of the manifests and blobs, first: the joins below build no table of all.
        named = f"WHERE EXISTS (SELECT 1 FROM {untagged} u WHERE u.target = t.digest)"
        manifests = self._table(f"manifests_{untagged}", f"SELECT * FROM {self.manifest_rows} t {named}")
        sizes = self._table(f"sizes_{untagged}", f"SELECT digest, size FROM {blobs} t {named}")
        return (
            "SELECT r.repository, u.name AS digest, m.media_type, m.artifact_type, m.subject_name AS subject,"
            f" {self.sql.nanos('u.pushed_at')} AS pushed_at, coalesce(b.size, 0) AS manifest_bytes,"
            " u.reclaimable_bytes"
            f" FROM {untagged} u"
            f" LEFT JOIN {manifests} m ON m.digest = u.target"
            f" LEFT JOIN {sizes} b ON b.digest = u.target"
            f" LEFT JOIN {self.repository_ids} r ON r.id = u.repository"
            " ORDER BY u.repository ASC NULLS LAST, u.pushed_at ASC NULLS LAST, u.name ASC NULLS LAST"
        )

    ORPHAN_ORDER = "ORDER BY o.size DESC NULLS LAST, o.digest ASC NULLS LAST"

    def _orphans(self, keep: Keep) -> str:
        """(id, digest, size, mtime): the blobs no kept revision holds and no broken reference protects, by key
        and, read again from the blobs, by text: only the answer's rows carry it."""
        marked = self.marked(keep)
        return self._table(
            f"orphans_{marked}",
            f"SELECT * FROM (SELECT {self.sql.key('digest')} AS id, digest, size, mtime FROM blobs) o"
            f" WHERE NOT EXISTS (SELECT 1 FROM {marked} m WHERE m.blob = o.id)",
        )

    def orphans_query(self, keep: Keep, first: int | None = None) -> str:
        """The rows of `orphans`: the blobs no kept revision holds and no broken reference protects (with
        `first`, only the first so many)."""
        orphans = self._orphans(keep)
        if first is not None:
            # A table's rows: the first by size found before their kinds and links are looked up.
            orphans = self._table(
                f"first_{first}_{orphans}", f"SELECT * FROM {orphans} o {self.ORPHAN_ORDER} LIMIT {first}"
            )
        kinds = self._table(
            f"kinds_{orphans}",
            f"SELECT r.digest, max(r.k) AS k FROM (SELECT digest, k FROM {self.ref_rows}"
            f" UNION ALL SELECT digest, 3 AS k FROM {self.manifest_rows}) r"
            f" WHERE EXISTS (SELECT 1 FROM {orphans} o WHERE o.id = r.digest) GROUP BY r.digest",
        )
        # Kinds and links in one table, joined once: sorting every orphan while two joins' tables are held ran
        # out of memory where one did not (at 600,000 blobs, at 80 MB against 64 MB).
        details = self._table(
            f"details_{orphans}",
            "SELECT coalesce(k.digest, l.target) AS id, k.k, l.linked_from"
            f" FROM {kinds} k FULL OUTER JOIN {self._linked_from(orphans)} l ON l.target = k.digest",
        )
        return (
            f"SELECT o.digest, o.size, {self.sql.nanos('o.mtime')} AS mtime,"
            " CASE coalesce(d.k, 0) WHEN 3 THEN 'manifest' WHEN 2 THEN 'config' WHEN 1 THEN 'layer'"
            " ELSE 'unknown' END AS kind,"
            " coalesce(d.linked_from, '') AS linked_from"
            f" FROM {orphans} o LEFT JOIN {details} d ON d.id = o.id"
            f" {self.ORPHAN_ORDER}"
        )

    def _linked_from(self, orphans: str) -> str:
        """(target, linked_from): the names of the repositories whose layer links name each of `orphans`, sorted
        and joined by commas.

        Most blobs are linked from one or two repositories: their names come from the first and last repository
        id (ids order as names do), aggregates of a fixed size, which spill past the memory limit. Only the few
        linked from more are listed whole (`Sql.joined`, an aggregate DuckDB holds in memory).
        """
        ids = self.repository_ids
        pairs = self._table(
            f"links_of_{orphans}",
            f"SELECT DISTINCT l.target, r.id AS repository"
            f" FROM (SELECT {self.sql.key('target')} AS target, repository FROM layer_links) l"
            f" JOIN {ids} r ON r.repository = l.repository"
            f" WHERE EXISTS (SELECT 1 FROM {orphans} x WHERE x.id = l.target)",
        )
        spans = (
            "SELECT target, count(*) AS n, min(repository) AS first, max(repository) AS last"
            f" FROM {pairs} GROUP BY target"
        )
        many = (
            f"SELECT p.target, {self.sql.joined('r.repository')} AS names FROM {pairs} p"
            f" JOIN {ids} r ON r.id = p.repository"
            f" WHERE p.target IN (SELECT target FROM {pairs} GROUP BY target HAVING count(*) > 2) GROUP BY p.target"
        )
        return self._table(
            f"linked_from_{orphans}",
            "SELECT s.target, CASE WHEN s.n = 1 THEN f.repository"
            " WHEN s.n = 2 THEN concat(f.repository, ',', l.repository) ELSE m.names END AS linked_from"
            f" FROM ({spans}) s JOIN {ids} f ON f.id = s.first JOIN {ids} l ON l.id = s.last"
            f" LEFT JOIN ({many}) m ON m.target = s.target",
        )

    def orphans_counted(self, keep: Keep) -> tuple[int, dict[str, int]]:
        """How many orphans there are, and their bytes (by `size`), without their rows."""
        found = self.sql.arrow(
            f"SELECT count(*) AS n, CAST(coalesce(sum(size), 0) AS BIGINT) AS size FROM {self._orphans(keep)}"
        )
        return int(found.column("n")[0].as_py()), {"size": int(found.column("size")[0].as_py())}

    def repositories_query(self, collector: Collector | None = None) -> str:
        """The whole view `report --by repository`, in repository order: what each repository keeps alive (its
        revisions' holdings and what its broken references protect), alone and shared, and what deleting its
        untagged revisions would free."""
        kept_all = self.kept(Keep())
        safe = Keep(True, True, collector).normal()
        kept, marked = self.kept(safe), self.marked(safe)
        pairs = self._table(
            "repository_blobs",
            f"SELECT DISTINCT repository, blob FROM (SELECT repository, blob FROM {self.holds}"
            f" UNION ALL SELECT repository, blob FROM {self.protected(kept_all)}) a",
        )
        holders = self._table("holders", f"SELECT blob, count(*) AS n FROM {pairs} GROUP BY blob")
        bytes_by = (
            "SELECT p.repository, sum(b.size) AS total_bytes,"
            " sum(CASE WHEN h.n = 1 THEN b.size ELSE 0 END) AS exclusive_bytes,"
            " sum(CASE WHEN h.n = 1 AND m.blob IS NULL THEN b.size ELSE 0 END) AS reclaimable_bytes"
            f" FROM {pairs} p JOIN {self.blob_rows} b ON b.digest = p.blob JOIN {holders} h ON h.blob = p.blob"
            f" LEFT JOIN {marked} m ON m.blob = p.blob GROUP BY p.repository"
        )
        revisions = (
            "SELECT p.repository, count(*) AS manifests,"
            " sum(CASE WHEN k.digest IS NULL THEN 1 ELSE 0 END) AS untagged_manifests"
            f" FROM {self.present} p LEFT JOIN {kept} k ON k.repository = p.repository AND k.digest = p.digest"
            " GROUP BY p.repository"
        )
        tags = (
            f"SELECT repository, count(*) AS tags, max({self.sql.nanos('pushed_at')}) AS last_push"
            f" FROM {self.tag_rows} GROUP BY repository"
        )
        uploads = "SELECT repository, sum(bytes) AS upload_bytes FROM uploads GROUP BY repository"
        return (
            "SELECT r.repository, coalesce(t.tags, 0) AS tags, coalesce(v.manifests, 0) AS manifests,"
            " coalesce(v.untagged_manifests, 0) AS untagged_manifests,"
            " coalesce(s.total_bytes, 0) AS total_bytes, coalesce(s.exclusive_bytes, 0) AS exclusive_bytes,"
            " coalesce(s.total_bytes, 0) - coalesce(s.exclusive_bytes, 0) AS shared_bytes,"
            " coalesce(s.reclaimable_bytes, 0) AS reclaimable_bytes, coalesce(u.upload_bytes, 0) AS upload_bytes,"
            " t.last_push"
            " FROM repositories r"
            f" LEFT JOIN {self.repository_ids} i ON i.repository = r.repository"
            f" LEFT JOIN ({tags}) t ON t.repository = i.id"
            f" LEFT JOIN ({revisions}) v ON v.repository = i.id"
            f" LEFT JOIN ({bytes_by}) s ON s.repository = i.id"
            f" LEFT JOIN ({uploads}) u ON u.repository = r.repository"
            " ORDER BY r.repository ASC NULLS LAST"
        )

    def frame(self, query: str, columns: Sequence[str]) -> pd.DataFrame:
        """The rows of `query` as pandas columns of the graph's types: text as strings, times in UTC."""
        return _pandas(self.sql.arrow(query), columns)

    def answer(self, query: str, columns: Sequence[str]) -> Answer:
        """The rows of `query`, read a batch at a time from the engine while it is open."""
        return Answer(self.sql, query, columns)

    def untagged(self, keep: Keep) -> pd.DataFrame:
        return self.frame(self.untagged_query(keep), UNTAGGED_COLUMNS)

    def orphans(self, keep: Keep) -> pd.DataFrame:
        return self.frame(self.orphans_query(keep), ORPHAN_COLUMNS)

    def untagged_answer(self, keep: Keep) -> Answer:
        return self.answer(self.untagged_query(keep), UNTAGGED_COLUMNS)

    def orphans_answer(self, keep: Keep) -> Answer:
        return self.answer(self.orphans_query(keep), ORPHAN_COLUMNS)

    def orphans_first(self, keep: Keep, first: int) -> tuple[pd.DataFrame, Counted]:
        """The first `first` orphans, and how many there are with their bytes."""
        count, totals = self.orphans_counted(keep)
        return self.frame(self.orphans_query(keep, first), ORPHAN_COLUMNS), Counted(count, totals)

    def repositories(self, collector: Collector | None = None) -> pd.DataFrame:
        return self.frame(self.repositories_query(collector), COLUMNS[By.REPOSITORY])


def _pandas(table: pa.Table, columns: Sequence[str]) -> pd.DataFrame:
    """An engine's rows as pandas columns of the graph's types: text as strings, times in UTC, integers int64."""
    return _frame(_typed(table, columns))


def _frame(typed: pa.Table) -> pd.DataFrame:
    """Rows of the graph's Arrow types as pandas columns: text as strings."""
    return typed.to_pandas(types_mapper={pa.large_string(): pd.StringDtype()}.get)


def _typed(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """An engine's rows as Arrow columns of the graph's types: text as large strings, times in UTC, integers
    int64."""
    out = {}
    for name in columns:
        values = table.column(name)
        if name in TIMES:
            values = values.cast(pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
        elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values = values.cast(pa.large_string())
        elif pa.types.is_integer(values.type) or pa.types.is_decimal(values.type):
            # Sums are wider than their terms in some engines (DuckDB's of BIGINT are HUGEINT).
            values = values.cast(pa.int64())
        out[name] = values
    return pa.table(out)


class Answer:
    """An answer's rows, computed by the engine as they are read: `core.view.Rows`. The first rows asked for
    (`head`) are kept, and the first reading of every row goes on from them; any later one asks again. With
    `keep_open`, the answer holds the engine open until it is collected."""

    BATCH = 1 << 14
    """Rows the engine hands over at a time (the first of them kept for the view while the rest are written)."""

    def __init__(self, sql: Sql, query: str, columns: Sequence[str]) -> None:
        self.sql, self.query, self.columns = sql, query, list(columns)
        self._started: tuple[list[pa.RecordBatch], pa.RecordBatchReader] | None = None
        self._sums: dict[str, int] | None = None

    def keep_open(self, engine: ExitStack) -> None:
        """Close `engine` (what keeps the engine open) when this answer is collected."""
        weakref.finalize(self, engine.close)

    def _reader(self) -> tuple[list[pa.RecordBatch], pa.RecordBatchReader]:
        """The engine's batches from the first row: those `head` read and the rest of its reader, or a new one."""
        started, self._started = self._started, None
        return started or ([], self.sql.reader(self.query, self.BATCH))

    def arrow(self, rows: int) -> Iterator[pa.Table]:
        """The rows as Arrow tables of the graph's types, `rows` at a time (at least one table, empty for none)."""
        with self.sql.errors():
            taken, reader = self._reader()
            pending: list[pa.RecordBatch] = []
            count, tables = 0, 0
            for batch in chain(taken, reader):
                pending.append(batch)
                count += batch.num_rows
                while count >= rows:
                    table = pa.Table.from_batches(pending, reader.schema)
                    yield _typed(table.slice(0, rows), self.columns)
                    tables += 1
                    rest = table.slice(rows)
                    pending, count = rest.to_batches(), rest.num_rows
            if count or not tables:
                yield _typed(pa.Table.from_batches(pending, reader.schema), self.columns)

    def batches(self, rows: int) -> Iterator[pd.DataFrame]:
        """The rows as pandas frames, `rows` at a time (at least one frame, empty for none)."""
        for table in self.arrow(rows):
            yield _frame(table)

    def head(self, rows: int) -> pd.DataFrame:
        """The first `rows` rows (kept for the first reading of every row)."""
        with self.sql.errors():
            taken, reader = self._reader()
            while sum(batch.num_rows for batch in taken) < rows:
                try:
                    taken.append(reader.read_next_batch())
                except StopIteration:
                    break
        self._started = taken, reader
        table = pa.Table.from_batches(taken, reader.schema)
        return _pandas(table.slice(0, rows), self.columns)

    def __len__(self) -> int:
        return self._totals()["*"]

    def total(self, column: str) -> int:
        """The sum of an integer column over every row."""
        return self._totals()[column]

    def _totals(self) -> dict[str, int]:
        """How many rows there are, as `*`, and the sum of each integer column but the times: asked of the engine
        once."""
        if self._sums is None:
            with self.sql.errors():
                schema = self.sql.reader(f"SELECT * FROM ({self.query}) q LIMIT 0").schema
            summed = [
                field.name
                for field in schema
                if field.name not in TIMES and (pa.types.is_integer(field.type) or pa.types.is_decimal(field.type))
            ]
            sums = "".join(f", CAST(coalesce(sum({sql_name(c)}), 0) AS BIGINT) AS {sql_name(c)}" for c in summed)
            with self.sql.errors():
                found = self.sql.arrow(f'SELECT count(*) AS "*"{sums} FROM ({self.query}) q')
            self._sums = {name: int(found.column(name)[0].as_py()) for name in found.column_names}
        return self._sums


@dataclass(frozen=True)
class Counted:
    """How many rows an answer has and their totals, when only its first rows were asked for (a table's):
    `core.view.Rows` without the rows."""

    count: int
    totals: Mapping[str, int]

    def __len__(self) -> int:
        return self.count

    def total(self, column: str) -> int:
        return self.totals[column]

    def batches(self, rows: int) -> Iterator[pd.DataFrame]:
        raise EngineError("only the first rows of this answer were computed")

    def arrow(self, rows: int) -> Iterator[pa.Table]:
        raise EngineError("only the first rows of this answer were computed")


def snapshot_files(directory: Path) -> tuple[dict[str, list[str]], bool]:
    """Each table's Parquet files of the snapshot (or shard set) in `directory`, its metadata validated, and
    whether it is a set of shares; raises ValueError when it is no readable snapshot."""
    from storage_audit.inventory.tables import read_metadata, table_files

    meta = read_metadata(directory)
    files = table_files(directory, meta)
    return {table: [str(path) for path in files[table]] for table in TABLES}, bool(meta.get("shards"))


def _blobs(files: Mapping[str, Sequence[str]]) -> int:
    """The rows of the blobs table, from its files' footers."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in files["blobs"])


@contextmanager
def duckdb_analysis(directory: Path, memory: str | int | None = None) -> Iterator[Analysis]:
    """The analysis of the snapshot in `directory` on DuckDB in this process, spilling to a temporary
    directory that is removed afterwards."""
    files, shards = snapshot_files(directory)
    if memory is None:
        memory = os.environ.get(DUCKDB_MEMORY) or default_memory(_blobs(files))
    spill = Path(tempfile.mkdtemp(prefix="storage-audit-duckdb-"))
    sql: DuckDB | None = None
    try:
        sql = DuckDB(spill, memory)
        with sql.errors():
            yield Analysis(sql, files, shards)
    finally:
        if sql is not None:
            sql.close()
        shutil.rmtree(spill, ignore_errors=True)
        release()  # what DuckDB freed, given back to the system


def spark_analysis(spark: SparkSession, files: Mapping[str, Sequence[str]], shards: bool = False) -> Analysis:
    """The analysis of a snapshot's tables (local paths or URLs Spark reads) on Spark."""
    return Analysis(Spark(spark), files, shards)

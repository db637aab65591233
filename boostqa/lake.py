"""Logical table names (``bronze.seeds``) -> Delta tables, with the operations stages need.

Two layouts:
- path lake (default): ``<root>/<layer>/<table>``, maintenance through the ``deltalake`` package
  (Sail has no DESCRIBE HISTORY/DETAIL);
- catalog lake (``lake.catalog`` set, e.g. Databricks Unity Catalog):
  ``<catalog>.<schema_prefix><layer>.<table>``, maintenance through SQL.

Writes are checked strictly against the table schema first, because Sail silently drops extra
columns and casts wrong types where Delta would raise. MERGE goes through SQL strings, which
run unchanged on Sail, Spark + Delta and Databricks.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from boostqa.config import LakeConfig

LAYERS = ("ref", "bronze", "silver", "gold", "quarantine", "ops")
_NAME = re.compile(r"^(%s)\.([a-z][a-z0-9_]*)$" % "|".join(LAYERS))
# one component of a staging path (run id, stage, chunk): no separator, no "..", nothing hidden
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class LakeError(RuntimeError):
    """A lake operation was refused; the message names the table and the reason."""


class SchemaMismatch(LakeError):
    pass


@dataclass(frozen=True)
class TableInfo:
    name: str
    location: str
    version: int
    rows: int
    files: int
    size_bytes: int


def check_name(name: str) -> tuple[str, str]:
    m = _NAME.match(name)
    if not m:
        raise LakeError(f"bad table name {name!r}: expected <layer>.<table> with layer in {LAYERS}")
    return m.group(1), m.group(2)


def _type_map(schema: StructType) -> dict[str, str]:
    return {f.name: f.dataType.simpleString() for f in schema.fields}


def schema_problems(have: StructType, want: StructType) -> dict[str, list[str]]:
    """Differences by column name and type (nullability ignored: engines disagree on it)."""
    h, w = _type_map(have), _type_map(want)
    return {k: v for k, v in {
        "extra": sorted(set(h) - set(w)),
        "missing": sorted(set(w) - set(h)),
        "type": sorted(f"{c}: {h[c]} != table {w[c]}" for c in set(h) & set(w) if h[c] != w[c]),
    }.items() if v}


def _is_commit_conflict(e: Exception) -> bool:
    text = str(e)
    return any(s in text for s in ("Failed to commit transaction", "ConcurrentAppend", "ConcurrentModification",
                                   "concurrent", "CommitFailed", "version already exists"))


def retry_conflicts(commit, retries: int):
    """Run a Delta commit, again after a lost concurrent-commit race (safe for insert-only merges
    and conditional updates, which re-read the table)."""
    for attempt in range(retries + 1):
        try:
            return commit()
        except Exception as e:
            if attempt >= retries or not _is_commit_conflict(e):
                raise
            time.sleep(min(0.2 * 2 ** attempt, 5.0))


class Lake:
    def __init__(self, spark: SparkSession, cfg: LakeConfig, commit_retries: int = 5):
        self.spark, self.cfg, self.commit_retries = spark, cfg, commit_retries
        self.catalog_mode = cfg.catalog is not None

    # ---------- naming
    def location(self, name: str) -> str:
        layer, table = check_name(name)
        if self.catalog_mode:
            return f"{self.cfg.catalog}.{self.cfg.schema_prefix}{layer}.{table}"
        return str(Path(self.cfg.root).resolve() / layer / table) if "://" not in self.cfg.root \
            else f"{self.cfg.root.rstrip('/')}/{layer}/{table}"

    def _sql_ref(self, name: str) -> str:
        loc = self.location(name)
        return loc if self.catalog_mode else f"delta.`{loc}`"

    @property
    def staging_root(self) -> str:
        """Scratch space for materialised chunk results (always a path, also in catalog mode)."""
        root = self.cfg.root if "://" in self.cfg.root else str(Path(self.cfg.root).resolve())
        return f"{root.rstrip('/')}/_staging"

    def staging_path(self, *parts: str) -> str:
        """A directory under the staging root; every part must be a plain name (a run id from the
        command line cannot reach outside the lake)."""
        for part in parts:
            if not _PART.match(part) or ".." in part:
                raise LakeError(f"refused staging path part {part!r}: letters, digits, '.', '_', '-' only "
                                "(at most 128, no '..')")
        return "/".join([self.staging_root, *parts])

    def journal_path(self, *parts: str) -> str:
        """Where LLM calls are journalled until their chunk commits (beside the staging root)."""
        return self.staging_path(*parts).replace("/_staging/", "/_journal/", 1)

    def inside_staging(self, path: str) -> bool:
        """True when ``path`` is the staging root or below it (checked before anything is deleted)."""
        if "://" in path:
            return path.startswith(self.staging_root + "/")
        root, p = Path(self.staging_root).resolve(), Path(path).resolve()
        return p == root or root in p.parents

    # ---------- reading
    def exists(self, name: str) -> bool:
        if self.catalog_mode:
            return self.spark.catalog.tableExists(self.location(name))
        return self._delta_rs(name) is not None

    def _delta_rs(self, name: str, version: int | None = None):
        from deltalake import DeltaTable

        loc = self.location(name)
        if not DeltaTable.is_deltatable(loc):
            return None
        return DeltaTable(loc, version=version) if version is not None else DeltaTable(loc)

    def version(self, name: str) -> int | None:
        """Current Delta version, or None when the table does not exist yet."""
        if self.catalog_mode:
            if not self.exists(name):
                return None
            return int(self.spark.sql(f"DESCRIBE HISTORY {self.location(name)} LIMIT 1").first()["version"])
        dt = self._delta_rs(name)
        return None if dt is None else int(dt.version())

    def read(self, name: str, version: int | None = None) -> DataFrame:
        if not self.exists(name):
            raise LakeError(f"table {name} does not exist yet ({self.location(name)}): run the stage that writes it")
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", int(version))
        return reader.table(self.location(name)) if self.catalog_mode else reader.load(self.location(name))

    def schema(self, name: str) -> StructType:
        return self.read(name).schema

    # ---------- writing
    def _check(self, df: DataFrame, name: str, evolve: bool = False) -> DataFrame:
        """The rows in the table's column order. With ``evolve``, columns the table lacks are added
        to it first (explicit schema evolution: Sail would drop them silently); any other
        difference, and any difference without ``evolve``, is refused."""
        if not self.exists(name):
            return df
        want = self.schema(name)
        problems = schema_problems(df.schema, want)
        if evolve and set(problems) == {"extra"}:
            self._add_columns(name, [f for f in df.schema.fields if f.name in problems["extra"]])
            want = self.schema(name)
            problems = schema_problems(df.schema, want)
        if problems:
            raise SchemaMismatch(f"schema mismatch writing {name} ({self.location(name)}): {problems}")
        return df.select(*want.fieldNames())

    def _add_columns(self, name: str, fields) -> None:
        """Add nullable columns to an existing table (rows written before read them as null)."""
        if self.catalog_mode:
            cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in fields)
            self.spark.sql(f"ALTER TABLE {self.location(name)} ADD COLUMNS ({cols})")
            return
        import json

        from deltalake import Field

        self._delta_rs(name).alter.add_columns(
            [Field.from_json(json.dumps({**f.jsonValue(), "nullable": True})) for f in fields])

    def _save(self, df: DataFrame, name: str, mode: str) -> None:
        w = df.write.format("delta").mode(mode)
        if not self.catalog_mode and not self.exists(name):
            # Sail 0.7.2 cannot read a version older than the table's last checkpoint (it looks for
            # commit 0 and fails): pinned reads and time travel would break after 10 commits. Path
            # tables are created without checkpoints; the JSON log is replayed instead.
            w = w.option("delta.checkpointInterval", "1000000")
        if mode == "overwrite":
            w = w.option("overwriteSchema", "false")
        if self.catalog_mode:
            w.saveAsTable(self.location(name))
        else:
            w.save(self.location(name))

    def create(self, name: str, schema: StructType, evolve: bool = False) -> bool:
        """Create an empty table with this schema if missing; True when it was created. An existing
        table must have the same columns (with ``evolve``: at least a subset of them)."""
        if self.exists(name):
            problems = schema_problems(schema, self.schema(name))
            if problems and not (evolve and set(problems) == {"extra"}):  # added by the write (_check)
                raise SchemaMismatch(f"{name} exists with another schema: {problems}")
            return False
        if self.catalog_mode:
            layer, _ = check_name(name)
            self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {self.cfg.catalog}.{self.cfg.schema_prefix}{layer}")
        try:
            self._save(self.spark.createDataFrame([], schema), name, "error")
        except Exception as e:  # lost a creation race: fine if the winner made the same table
            if not self.exists(name):
                raise
            if schema_problems(schema, self.schema(name)):
                raise LakeError(f"could not create {name}: {e}") from e
            return False
        return True

    def append(self, df: DataFrame, name: str, evolve: bool = False) -> int | None:
        self._save(self._check(df, name, evolve), name, "append")
        return self.version(name)

    def overwrite(self, df: DataFrame, name: str, evolve: bool = False) -> int | None:
        """Replace the content (old versions stay readable by time travel)."""
        self._save(self._check(df, name, evolve), name, "overwrite")
        return self.version(name)

    def insert_new(self, df: DataFrame, name: str, keys: tuple[str, ...] | list[str],
                   evolve: bool = False) -> int | None:
        """Insert only rows whose key is not in the table (MERGE insert-only): reruns never duplicate.

        The source must be unique on the key (a stage's deterministic ids make it so); a lost
        concurrent-commit race is retried, which is safe because the merge is insert-only.
        """
        keys = list(keys)
        self.create(name, df.schema, evolve)
        df = self._check(df, name, evolve)
        view = f"src_{uuid.uuid4().hex[:12]}"
        df.createOrReplaceTempView(view)
        cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        sql = f"MERGE INTO {self._sql_ref(name)} t USING {view} s ON {cond} WHEN NOT MATCHED THEN INSERT *"
        try:
            retry_conflicts(lambda: self.spark.sql(sql), self.commit_retries)
        finally:
            self.spark.catalog.dropTempView(view)
        return self.version(name)

    def delete_where(self, name: str, predicate: str) -> int | None:
        self.spark.sql(f"DELETE FROM {self._sql_ref(name)} WHERE {predicate}")
        return self.version(name)

    # ---------- metadata
    def history(self, name: str, limit: int = 20) -> list[dict]:
        """Newest first: version, timestamp (ms), operation, parameters, metrics."""
        if self.catalog_mode:
            rows = self.spark.sql(f"DESCRIBE HISTORY {self.location(name)} LIMIT {int(limit)}").collect()
            return [{"version": r["version"], "timestamp": r["timestamp"], "operation": r["operation"],
                     "operationParameters": r["operationParameters"],
                     "operationMetrics": r["operationMetrics"]} for r in rows]
        dt = self._delta_rs(name)
        if dt is None:
            raise LakeError(f"table {name} does not exist ({self.location(name)})")
        return dt.history(limit)

    def info(self, name: str) -> TableInfo:
        if self.catalog_mode:
            d = self.spark.sql(f"DESCRIBE DETAIL {self.location(name)}").first()
            rows = self.read(name).count()
            return TableInfo(name, self.location(name), self.version(name) or 0, rows,
                             int(d["numFiles"]), int(d["sizeInBytes"]))
        dt = self._delta_rs(name)
        if dt is None:
            raise LakeError(f"table {name} does not exist ({self.location(name)})")
        adds = dt.get_add_actions(flatten=True)
        cols = {n: adds.column(n).to_pylist() for n in ("size_bytes", "num_records")} if len(adds) else \
            {"size_bytes": [], "num_records": []}
        return TableInfo(name, self.location(name), int(dt.version()), int(sum(x or 0 for x in cols["num_records"])),
                         len(cols["size_bytes"]), int(sum(cols["size_bytes"])))

    def tables(self) -> list[str]:
        """Logical names of every table in the lake."""
        names = []
        if self.catalog_mode:
            for layer in LAYERS:
                schema = f"{self.cfg.catalog}.{self.cfg.schema_prefix}{layer}"
                try:
                    rows = self.spark.sql(f"SHOW TABLES IN {schema}").collect()
                except Exception:  # schema not created yet
                    continue
                names += [f"{layer}.{r['tableName']}" for r in rows]
            return sorted(names)
        root = Path(self.cfg.root)
        for layer in LAYERS:
            for d in sorted((root / layer).glob("*")) if (root / layer).is_dir() else []:
                if (d / "_delta_log").is_dir():
                    names.append(f"{layer}.{d.name}")
        return names

    def digest(self, name: str, version: int) -> str:
        """Content digest of a table version: its data files are immutable, so their list identifies it."""
        if self.catalog_mode:
            row = self.spark.sql(f"DESCRIBE HISTORY {self.location(name)}").where(f"version = {int(version)}").first()
            basis = f"{self.location(name)}@{version}@{row['timestamp'] if row else ''}"
        else:
            dt = self._delta_rs(name, version)
            adds = dt.get_add_actions(flatten=True)
            files = sorted(zip(adds.column("path").to_pylist(), adds.column("size_bytes").to_pylist())) \
                if len(adds) else []
            basis = "\n".join(f"{p}\t{s}" for p, s in files)
        return hashlib.sha256(basis.encode()).hexdigest()[:16]

    def register_sql_names(self) -> list[str]:
        """Make every table queryable in SQL under its logical name (``SELECT ... FROM bronze.seeds``)."""
        names = self.tables()
        if self.catalog_mode:
            return names  # already catalog tables; query them as <catalog>.<schema>.<table>
        for name in names:
            layer, table = check_name(name)
            self.spark.sql(f"CREATE DATABASE IF NOT EXISTS {layer}")
            # external tables: DROP forgets a registration that may point at another lake, never data
            self.spark.sql(f"DROP TABLE IF EXISTS {layer}.{table}")
            self.spark.sql(f"CREATE TABLE {layer}.{table} USING delta LOCATION '{self.location(name)}'")
        return names

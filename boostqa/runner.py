"""Runs stages under the stage contract: pinned inputs, pending rows, chunked idempotent commits.

For each stage:
1. pin every input table at its current Delta version (logged to MLflow);
2. pending rows = driving input anti-join output and rejects on the key, so a rerun does only
   what is left;
3. split pending rows into chunks by a hash of ``chunk_by``; for each chunk run the transform
   once, materialise its result in staging, check it (no row lost, unique keys), then commit
   kept rows to the output and rejected rows to the rejects table with insert-only MERGEs on
   the key. A crash loses at most the chunk in flight; a rerun never duplicates a row;
4. record rows in/out, rejections by reason, chunks, throughput and whatever the stage put in
   ``ctx.stats`` (metrics, tags, artifacts), plus the lake reports it names.

The runner knows no stage by name: everything stage-specific is in the Stage declaration.
"""

from __future__ import annotations

import math
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from boostqa import crash, sources
from boostqa.config import Settings, redact
from boostqa.engine import get_spark
from boostqa.lake import Lake
from boostqa.lease import Lease
from boostqa.stages import STAGES, resolve
from boostqa.stages.base import Stage, StageContext, StageError, Stats
from boostqa.tracking import TableRef, Tracker


@dataclass
class Progress:
    stage: str
    chunk: int  # chunks committed so far
    chunks: int
    rows_done: int
    rows_total: int
    kept: int
    rejected: int
    deferred: int
    elapsed: float
    calls: int = 0  # LLM calls made so far (LLM stages), their tokens and failed requests
    tokens: int = 0
    errors: int = 0

    @property
    def eta(self) -> float | None:
        if not self.rows_done:
            return None
        return self.elapsed / self.rows_done * (self.rows_total - self.rows_done)


ProgressFn = Callable[[Progress], None]


@dataclass
class StageResult:
    stage: str
    pending: int = 0
    kept: int = 0
    rejected: int = 0
    deferred: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    chunks_done: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    inputs: list[TableRef] = field(default_factory=list)
    outputs: list[TableRef] = field(default_factory=list)
    mlflow_run_id: str | None = None
    stats: Stats = field(default_factory=Stats)  # what the stage reported (ctx.stats)
    skipped: str | None = None  # why a pipeline run did not run this stage

    @property
    def complete(self) -> bool:
        return self.chunks_done == self.chunks_total

    def metrics(self) -> dict[str, float]:
        m = {"rows_pending": self.pending, "rows_kept": self.kept, "rows_rejected": self.rejected,
             "rows_deferred": self.deferred, "chunks_done": self.chunks_done, "chunks_total": self.chunks_total,
             "seconds": round(self.seconds, 3),
             "rows_per_second": round((self.kept + self.rejected + self.deferred) / self.seconds, 2)
             if self.seconds else 0.0}
        m.update({f"rejected.{k}": v for k, v in self.rejected_by_reason.items()})
        m.update(self.stats.metrics())
        return m


RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def summary(results: list[StageResult]) -> dict[str, float]:
    """The run's totals per stage (feedback passes added up) and LLM usage, for the parent run, so
    runs compare side by side in the MLflow UI."""
    out: dict[str, float] = {}
    for r in results:
        if r.skipped:
            continue
        for k in ("pending", "kept", "rejected", "deferred"):
            out[f"{r.stage}.{k}"] = out.get(f"{r.stage}.{k}", 0) + getattr(r, k)
        for k in ("llm.calls", "llm.reused", "llm.prompt_tokens", "llm.completion_tokens", "llm.reasoning_tokens"):
            if isinstance(r.stats.get(k), (int, float)):
                out[f"total.{k}"] = out.get(f"total.{k}", 0) + r.stats.get(k)
    return out


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def check_run_id(run_id: str) -> str:
    """A run id names staging directories and MLflow runs: letters, digits, '.', '_', '-' only."""
    if not RUN_ID.match(run_id) or ".." in run_id:
        raise StageError(f"bad run id {run_id!r}: use letters, digits, '.', '_' and '-' (at most 128, no '..')")
    return run_id


class Session:
    """One settings with its Spark session, lake and (lazily) MLflow tracker: what the CLI,
    planning and the runner share. Reading tables needs no runner."""

    def __init__(self, settings: Settings, spark=None, tracker: Tracker | None = None):
        self.settings = settings
        self.spark = spark or get_spark(settings.engine)
        self.lake = Lake(self.spark, settings.lake, settings.runner.commit_retries)
        self._tracker = tracker

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            s = self.settings
            self._tracker = Tracker(s.tracking_uri(), s.tracking.experiment, s.tracking.enabled)
        return self._tracker

    def ref(self, name: str, version: int | None = None) -> TableRef:
        """A table at a version (default: current) with its location and content digest."""
        version = self.lake.version(name) if version is None else version
        rows = None
        if version is not None and not self.lake.catalog_mode and version == self.lake.version(name):
            rows = self.lake.info(name).rows  # the Delta log's record counts: no scan
        return TableRef(name, self.lake.location(name), version,
                        self.lake.digest(name, version) if version is not None else None, self.lake.catalog_mode, rows)


class Runner:
    def __init__(self, settings: Settings, spark=None, tracker: Tracker | None = None,
                 progress: ProgressFn | None = None, session: Session | None = None):
        self.session = session or Session(settings, spark, tracker)
        self.progress = progress or (lambda p: None)

    settings = property(lambda self: self.session.settings)
    spark = property(lambda self: self.session.spark)
    lake = property(lambda self: self.session.lake)
    tracker = property(lambda self: self.session.tracker)

    # ------------------------------------------------------------------ pipeline
    def run(self, stage_names: list[str] | None = None, run_id: str | None = None,
            max_chunks: int | None = None, skip_missing: bool | None = None) -> tuple[str, list[StageResult]]:
        """Run stages in pipeline order under one MLflow parent run; returns (run_id, results).

        A stage whose input table does not exist is skipped with the reason (whole-pipeline runs
        and scheduled jobs, where an upstream stage may legitimately produce nothing) or is an
        error (``skip_missing=False``, the default when stages are named explicitly)."""
        skip_missing = not stage_names if skip_missing is None else skip_missing
        stages = [s for s in resolve(stage_names) if s.enabled is None or s.enabled(self.settings)]
        run_id = check_run_id(run_id or new_run_id())
        results = []
        with self.tracker.pipeline(run_id, {"boostqa.profile": self.settings.profile}):
            self.tracker.log_dict(self.settings.redacted(), "settings.json")
            for stage in stages:
                missing = self.missing_inputs(stage)
                if missing and skip_missing:  # say why, and go on
                    results.append(StageResult(stage.name, skipped=f"no input table {', '.join(missing)} "
                                                                    "(nothing upstream produced it)"))
                    continue
                result = self.run_stage(stage, run_id, max_chunks)
                results.append(result)
                if not result.complete:
                    break  # later stages would read a half-done table
                if stage.feeds_back and not self._feedback(stage, stages, run_id, max_chunks, results):
                    break
            self.tracker.log_summary(summary(results), {"stages": ",".join(s.name for s in stages)})
        return run_id, results

    def _feedback(self, stage: Stage, stages: list[Stage], run_id: str, max_chunks: int | None,
                  results: list[StageResult]) -> bool:
        """Rerun ``stage.feeds_back`` through ``stage`` while the earlier stage has pending rows (the
        work this stage planned for it), at most ``runner.max_feedback_passes`` times, so one run
        converges. False when a pass stopped incomplete."""
        names = [s.name for s in stages]
        if stage.feeds_back not in names:
            return True
        loop = stages[names.index(stage.feeds_back):names.index(stage.name) + 1]
        for _ in range(self.settings.runner.max_feedback_passes):
            if self.missing_inputs(loop[0]) or not self.pending(loop[0]).limit(1).count():
                return True
            for s in loop:
                results.append(self.run_stage(s, run_id, max_chunks))
                if not results[-1].complete:
                    return False
        return True

    def missing_inputs(self, stage: Stage) -> list[str]:
        """Required input tables that do not exist; all of them when every input is optional and
        none exists (nothing to work on)."""
        tables = {a: t for a, t in stage.input_specs(self.settings).items() if not t.startswith("files:")}
        missing = {a: t for a, t in tables.items() if not self.lake.exists(t)}
        if tables and len(missing) == len(tables) and all(map(stage.is_optional, tables)):
            return list(missing.values())
        return [t for a, t in missing.items() if not stage.is_optional(a)]

    def problems(self, run_id: str, results: list[StageResult]) -> list[str]:
        """Why a run did not finish its work, one line per stage: chunks left (rerun to finish) or
        rows deferred by failures, with the most frequent errors this run logged for them."""
        out = []
        for r in results:
            if r.skipped:
                continue
            if not r.complete:
                out.append(f"{r.stage}: stopped after {r.chunks_done} of {r.chunks_total} chunks; rerun to finish")
            stage = STAGES.get(r.stage)
            if r.deferred and (stage is None or stage.deferral_is_failure):
                reasons = "; ".join(f"{n} x {e}" for e, n in self._failures(run_id, r.stage)) or "see ops.llm_failures"
                out.append(f"{r.stage}: {r.deferred} rows deferred (pending for the next run): {reasons}")
        return out

    def _failures(self, run_id: str, stage: str, top: int = 3) -> list[tuple[str, int]]:
        if not self.lake.exists("ops.llm_failures"):
            return []
        rows = (self.lake.read("ops.llm_failures").where((F.col("run_id") == run_id) & (F.col("stage") == stage))
                .groupBy(F.substring("error", 1, 160).alias("e")).count().orderBy(F.col("count").desc()).limit(top)
                .collect())
        return [(r["e"], int(r["count"])) for r in rows]

    # ------------------------------------------------------------------ one stage
    def context(self, stage: Stage, run_id: str, staging: str | None = None) -> StageContext:
        """The stage's view of the world: its declared settings, every input pinned at its
        current version (source files read into ``staging``) and the output so far."""
        staging = staging or self.lake.staging_path(stage.name, run_id)
        ctx = StageContext(self.spark, stage.settings_view(self.settings), run_id, stage,
                           checkpoint=self._checkpointer(staging))
        for alias, spec in stage.input_specs(self.settings).items():
            if spec.startswith("files:"):
                ctx.inputs[alias] = self._read_files(spec, f"{staging}/raw.parquet", ctx)
            elif stage.is_optional(alias) and not self.lake.exists(spec):
                ctx.inputs[alias] = None
            else:
                ref = self.session.ref(spec)
                if ref.version is None:
                    raise StageError(f"stage {stage.name}: input table {spec} does not exist yet")
                ctx.versions[alias], ctx.digests[alias] = ref.version, ref.digest
                ctx.inputs[alias] = self.lake.read(spec, ref.version)  # pinned: later commits do not leak in
        self._refresh_existing(ctx)
        return ctx

    def pending(self, stage: Stage, ctx: StageContext | None = None) -> DataFrame:
        """The rows the stage would process now: its driving input (after ``prepare``) minus the
        keys already in its output or rejects (all of it for snapshot stages)."""
        ctx = ctx or self.context(stage, "pending")
        driving = ctx.inputs[next(iter(stage.input_specs(self.settings)))]
        if stage.prepare:
            driving = stage.prepare(ctx, driving)
        if stage.mode == "overwrite":
            return driving
        key = list(stage.key)
        for name in (stage.output, stage.rejects):
            if name and self.lake.exists(name):
                driving = driving.join(self.lake.read(name).select(*key), key, "left_anti")
        return driving

    def run_stage(self, stage: Stage, run_id: str, max_chunks: int | None = None) -> StageResult:
        t0, result = time.monotonic(), StageResult(stage.name)
        check_run_id(run_id)
        staging = self.lake.staging_path(stage.name, run_id)
        params = {"stage": stage.name, "run_id": run_id, "chunk_rows": self.settings.runner.chunk_rows,
                  "config": redact(stage.config(self.settings))}
        with Lease(self.lake, stage.name, run_id, self.settings.runner.lease_seconds,
                   self.settings.runner.lease_wait_seconds), self.tracker.stage(stage.name, params) as mlflow_run:
            self._clear_dead_staging(stage.name, run_id)
            self._replay_journal(stage)
            result.mlflow_run_id = mlflow_run
            ctx = self.context(stage, run_id, staging)
            result.stats = ctx.stats  # what reading the inputs reported (e.g. unsupported files) included
            if stage.journal:
                ctx.journal = self.lake.journal_path(stage.name, run_id)
            self._log_inputs(stage, ctx, result)
            pending = self.pending(stage, ctx)
            chunks = self._plan_chunks(stage, pending)
            result.pending, result.chunks_total = sum(n for _, n in chunks), len(chunks)
            self.progress(Progress(stage.name, 0, result.chunks_total, 0, result.pending, 0, 0, 0, 0.0))  # started
            for i, (where, rows) in enumerate(chunks):
                if max_chunks is not None and i >= max_chunks:
                    break
                chunk = pending if where is None else pending.where(where)
                self._commit_chunk(stage, ctx, rows, self._chunk_args(stage, ctx, chunk),
                                   f"{staging}/chunk-{i:05d}", result)
                result.chunks_done += 1
                result.seconds = time.monotonic() - t0
                st = ctx.stats
                self.progress(Progress(stage.name, result.chunks_done, result.chunks_total,
                                       result.kept + result.rejected + result.deferred, result.pending,
                                       result.kept, result.rejected, result.deferred, result.seconds,
                                       int(st.get("llm.calls", 0)), int(st.get("llm.prompt_tokens", 0)
                                                                        + st.get("llm.completion_tokens", 0)),
                                       int(st.get("llm.failed", 0))))
            result.seconds = time.monotonic() - t0
            self._log_outcome(stage, result)
        self._remove(staging)
        return result

    # ------------------------------------------------------------------ steps
    def _clear_dead_staging(self, stage: str, run_id: str) -> None:
        """Staging left by killed runs of this stage (we hold its lease: no other run is live)."""
        root = Path(self.lake.staging_path(stage)) if "://" not in self.lake.staging_root else None
        if root is None or not root.is_dir():
            return
        for d in root.iterdir():
            if d.name != run_id and d.is_dir():
                self._remove(str(d))

    def _replay_journal(self, stage: Stage) -> None:
        """Calls answered by an earlier run that died before its chunk committed go into the call
        log first, so they are not paid for again (we hold the lease: no live writer)."""
        if not stage.journal or "://" in self.lake.staging_root:
            return
        from boostqa.llm import journal

        found = journal.files(self.lake.journal_path(stage.name))
        if found:
            rows = self.spark.read.parquet(*found).dropDuplicates(["request_key"])
            if self.lake.exists(stage.journal):  # a journal of an older version may lack columns
                rows = rows.select("*", *[F.lit(None).cast(f.dataType).alias(f.name)
                                          for f in self.lake.schema(stage.journal).fields if f.name not in rows.columns])
            self.lake.insert_new(rows, stage.journal, ("request_key",), evolve=True)
            journal.clear(found)

    def _read_files(self, spec: str, raw_path: str, ctx: StageContext) -> DataFrame:
        """Declared sources (files or tables) -> raw records staged at ``raw_path``, read by Spark
        on the executors (small local inputs on the driver); the files and their checksums go to
        MLflow, unsupported files to the stage's stats (sources.read_raw)."""
        declared = getattr(self.settings, spec.split(":", 1)[1])
        raw = sources.read_raw(self.spark, declared, self.settings.cache_dir(), raw_path, self.settings.ingest,
                               stats=ctx.stats)
        ctx.files.extend(raw.files)
        return raw.df

    def _log_inputs(self, stage: Stage, ctx: StageContext, result: StageResult) -> None:
        for f in ctx.files:
            self.tracker.log_file(f"{f.source}/{f.rel}", str(f.path), f.sha256[:16])
        specs = stage.input_specs(self.settings)
        for alias, version in ctx.versions.items():
            ref = self.session.ref(specs[alias], version)
            result.inputs.append(ref)
            self.tracker.log_table(ref, "input")

    def _refresh_existing(self, ctx: StageContext) -> None:
        if ctx.stage.reads_output:
            ctx.existing = self.lake.read(ctx.stage.output) if self.lake.exists(ctx.stage.output) else None

    def _chunk_args(self, stage: Stage, ctx: StageContext, chunk: DataFrame) -> dict[str, DataFrame | None]:
        """The transform's inputs for one chunk: pinned inputs, the chunk as the driving input, the
        live inputs (e.g. the call log the stage appends to) and the output at their current version."""
        specs = stage.input_specs(self.settings)
        args = dict(ctx.inputs, **{next(iter(specs)): chunk})
        for alias in stage.live_inputs:
            args[alias] = self.lake.read(specs[alias]) if self.lake.exists(specs[alias]) else None
        self._refresh_existing(ctx)
        return args

    def _log_outcome(self, stage: Stage, result: StageResult) -> None:
        for name, ctx_name in ((stage.output, "output"), (stage.rejects, "rejects")):
            if name and self.lake.exists(name):
                ref = self.session.ref(name)
                result.outputs.append(ref)
                self.tracker.log_table(ref, ctx_name)
        self.tracker.log_metrics(result.metrics())
        self.tracker.set_tags({"boostqa.complete": str(result.complete).lower(), **result.stats.tags})
        if stage.reports and result.chunks_done:
            from boostqa.reports import REPORTS, as_jsonable

            for name in stage.reports:
                self.tracker.log_dict(as_jsonable(REPORTS[name](self.lake)), f"{name}_report.json")

    def _checkpointer(self, staging: str):
        """Materialise a DataFrame in staging and read it back: cuts an iterative plan (Sail has no
        localCheckpoint), and the files go away with the stage's staging area."""
        counter = iter(range(1_000_000))

        def checkpoint(df: DataFrame) -> DataFrame:
            path = f"{staging}/checkpoint-{next(counter):04d}"
            df.write.mode("overwrite").parquet(path)
            return self.spark.read.schema(df.schema).parquet(path)

        return checkpoint

    def _plan_chunks(self, stage: Stage, pending: DataFrame) -> list[tuple[Column | None, int]]:
        """The chunks to run: each a filter on the pending rows (None: all of them) and its row count.

        Rows judged together (``chunk_by``, e.g. one source file) stay in one chunk; the groups are
        packed (first fit, largest first) into chunks of at most the stage's chunk rows (a larger group
        is a chunk of its own), so a chunk holds what ``runner.chunk_rows`` promises however unevenly
        files are sized (hashing 8 equal files into 2 buckets had made one chunk of 6). Other stages
        hash their key into ceil(rows / chunk rows) buckets. Empty chunks never appear, so
        --max-chunks always makes progress."""
        total = pending.count()
        if total == 0:
            return []
        rows = stage.chunk_rows(self.settings) if callable(stage.chunk_rows) else stage.chunk_rows
        rows = rows or self.settings.runner.chunk_rows
        if stage.whole or stage.mode == "overwrite" or total <= rows:
            return [(None, total)]
        if stage.chunk_by:
            group = F.xxhash64(*stage.chunk_by)  # a hash collision only keeps two groups together
            sizes = {int(r["g"]): int(r["count"]) for r in pending.groupBy(group.alias("g")).count().collect()}
            return [(group.isin(*members), n) for members, n in _pack(sizes, rows)]
        buckets = math.ceil(total / rows)
        counts = pending.groupBy(_bucket(stage, buckets).alias("c")).count().collect()
        return [(_bucket(stage, buckets) == int(r["c"]), int(r["count"])) for r in sorted(counts, key=lambda r: r["c"])]

    def _stage_chunk(self, stage: Stage, ctx: StageContext, expected: int, args: dict,
                     path: str) -> tuple[DataFrame, dict]:
        """Run the transform once, write its result to staging and check it: every pending row
        accounted for, no duplicate kept key. Returns the staged rows and their (outcome, reason)
        counts."""
        out = stage.transform(ctx, **args)
        if "_outcome" not in out.columns:
            out = out.withColumn("_outcome", F.when(F.col("_reason").isNull(), "kept").otherwise("rejected"))
        out.write.mode("overwrite").parquet(path)  # the transform runs exactly once per chunk
        staged = self.spark.read.schema(out.schema).parquet(path)  # schema: an empty result writes no file
        counts = {(r["_outcome"], r["_reason"]): r["count"]
                  for r in staged.groupBy("_outcome", "_reason").count().collect()}
        total = sum(counts.values())
        if stage.one_to_one and total != expected:
            raise StageError(f"stage {stage.name} returned {total} rows for {expected} pending rows: "
                             "a transform must account for every row (kept, rejected or deferred)")
        key = list(stage.key)
        dup = staged.where(F.col("_outcome") == "kept").groupBy(*key).count().where(F.col("count") > 1).limit(3).collect()
        if dup:
            raise StageError(f"stage {stage.name} produced duplicate keys {key}: {[tuple(r)[:-1] for r in dup]}")
        return staged, counts

    def _commit_chunk(self, stage: Stage, ctx: StageContext, expected: int, args: dict,
                      path: str, result: StageResult) -> None:
        staged, counts = self._stage_chunk(stage, ctx, expected, args, path)
        for d in stage.derived:  # the call log before anything that uses its answers
            if d.first:
                crash.point("call_log_write")
                self.lake.insert_new(d.build(ctx, staged), d.table, d.key, evolve=True)
                crash.point("call_log_committed")
        if ctx.journal:  # its calls are in the call log now
            from boostqa.llm import journal

            journal.clear(journal.files(ctx.journal))
        n_kept = sum(v for (o, _), v in counts.items() if o == "kept")
        n_rej = sum(v for (o, _), v in counts.items() if o == "rejected")
        self._write_kept(stage, staged, n_kept)
        if stage.rejects and (n_rej or not self.lake.exists(stage.rejects)):
            self.lake.insert_new(self._rejected_rows(stage, ctx, staged), stage.rejects, list(stage.key), evolve=True)
        for d in stage.derived:
            if not d.first:
                self.lake.insert_new(d.build(ctx, staged), d.table, d.key, evolve=True)
        if stage.summarize:
            stage.summarize(ctx, staged)
        for name, text in ctx.stats.artifacts.items():
            self.tracker.log_text(text, name)
        ctx.stats.artifacts.clear()
        result.kept += n_kept
        result.rejected += n_rej
        result.deferred += sum(v for (o, _), v in counts.items() if o == "deferred")
        for (o, reason), v in counts.items():
            if o == "rejected":
                result.rejected_by_reason[reason] = result.rejected_by_reason.get(reason, 0) + v
        self._remove(path)

    def _remove(self, path: str) -> None:
        """Delete a staging directory and the parents it leaves empty, never outside the staging root."""
        if not self.lake.inside_staging(path):
            raise StageError(f"refusing to delete {path}: not under the lake's staging root {self.lake.staging_root}")
        if "://" in path:
            return
        p, root = Path(path), Path(self.lake.staging_root).resolve()
        shutil.rmtree(p, ignore_errors=True)
        for parent in (p.parent, p.parent.parent):
            if parent.resolve() != root and root in parent.resolve().parents and parent.is_dir() \
                    and not any(parent.iterdir()):
                parent.rmdir()

    def _write_kept(self, stage: Stage, staged: DataFrame, n_kept: int) -> None:
        kept = staged.where(F.col("_outcome") == "kept").select(*[c for c in staged.columns if not c.startswith("_")])
        # outputs may gain columns between versions of boostqa: added to the table, old rows read null
        if stage.mode == "overwrite":
            if not self.lake.exists(stage.output):
                self.lake.append(kept, stage.output)
            elif not self._same_snapshot(kept, n_kept, stage.output):
                self.lake.overwrite(kept, stage.output, evolve=True)
        elif n_kept or not self.lake.exists(stage.output):
            self.lake.insert_new(kept, stage.output, list(stage.key), evolve=True)

    def _same_snapshot(self, kept: DataFrame, n_kept: int, name: str) -> bool:
        """The snapshot a rerun rebuilt equals the table's content, run ids aside: then it is not
        written, so an unchanged snapshot does not become a new Delta version (and a dataset
        version in MLflow) on every run. Row counts first (a changed snapshot mostly differs in
        size), then ``exceptAll`` both ways: one direction is not enough on every engine (on Sail
        it found no difference where the other direction did)."""
        current = self.lake.read(name)
        if set(current.columns) != set(kept.columns) or current.count() != n_kept:
            return False
        cols = sorted(c for c in kept.columns if c != "run_id")
        a, b = kept.select(*cols), current.select(*cols)
        return not a.exceptAll(b).limit(1).count() and not b.exceptAll(a).limit(1).count()

    @staticmethod
    def _rejected_rows(stage: Stage, ctx: StageContext, staged: DataFrame) -> DataFrame:
        return staged.where(F.col("_outcome") == "rejected").select(  # "_x" is stored as "x"
            *[F.col(c).alias(c.lstrip("_")) for c in stage.reject_columns], F.col("_reason").alias("reason"),
            F.col("_detail").alias("detail"), F.lit(stage.name).alias("stage"), F.lit(ctx.run_id).alias("run_id"),
            F.current_timestamp().alias("rejected_at"))


def _pack(sizes: dict[int, int], capacity: int) -> list[tuple[list[int], int]]:
    """Groups (id -> rows) into chunks of at most ``capacity`` rows: first fit, largest group first
    (a group larger than a chunk is a chunk of its own). Deterministic: same sizes, same chunks."""
    chunks: list[tuple[int, list[int]]] = []
    for g, n in sorted(sizes.items(), key=lambda x: (-x[1], x[0])):
        i = next((i for i, (load, _) in enumerate(chunks) if load + n <= capacity), None)
        if i is None:
            chunks.append((n, [g]))
        else:
            chunks[i] = (chunks[i][0] + n, chunks[i][1] + [g])
    return [(sorted(members), load) for load, members in chunks]


def _bucket(stage: Stage, buckets: int):
    """Chunk of a row: rows that must be judged together (chunk_by, default the key) share one."""
    return F.pmod(F.xxhash64(*(stage.chunk_by or stage.key)), F.lit(buckets))


__all__ = ["Runner", "Session", "StageResult", "Progress", "StageError", "new_run_id", "STAGES"]

"""Runs stages under the stage contract: pinned inputs, pending rows, chunked idempotent commits.

For each stage:
1. pin every input table at its current Delta version (logged to MLflow);
2. pending rows = driving input anti-join output and rejects on the key, so a rerun does only
   what is left;
3. split pending rows into chunks by a hash of ``chunk_by``; for each chunk run the transform
   once, materialise its result in staging, check it (no row lost, unique keys), then commit
   kept rows to the output and rejected rows to the rejects table with insert-only MERGEs on
   the key. A crash loses at most the chunk in flight; a rerun never duplicates a row;
4. record rows in/out, rejections by reason, chunks and throughput per stage.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from boostqa import sources
from boostqa.config import Settings
from boostqa.engine import get_spark
from boostqa.lake import Lake
from boostqa.stages import STAGES, resolve
from boostqa.stages.base import Stage, StageContext, StageError
from boostqa.tracking import SIMULATED_TAG, TableRef, Tracker


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
    extra: dict[str, float] = field(default_factory=dict)  # stage-specific metrics (Stage.report)
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
        m.update(self.extra)
        return m


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


class Runner:
    def __init__(self, settings: Settings, spark=None, tracker: Tracker | None = None,
                 progress: ProgressFn | None = None):
        self.settings = settings
        self.spark = spark or get_spark(settings.engine)
        self.lake = Lake(self.spark, settings.lake, settings.runner.commit_retries)
        self.tracker = tracker or Tracker(settings.tracking_uri(), settings.tracking.experiment,
                                          settings.tracking.enabled)
        self.progress = progress or (lambda p: None)

    # ------------------------------------------------------------------ pipeline
    def run(self, stage_names: list[str] | None = None, run_id: str | None = None,
            max_chunks: int | None = None, skip_missing: bool | None = None) -> tuple[str, list[StageResult]]:
        """Run stages in pipeline order under one MLflow parent run; returns (run_id, results).

        A stage whose input table does not exist is skipped with the reason (whole-pipeline runs
        and scheduled jobs, where an upstream stage may legitimately produce nothing) or is an
        error (``skip_missing=False``, the default when stages are named explicitly)."""
        skip_missing = not stage_names if skip_missing is None else skip_missing
        stages = [s for s in resolve(stage_names) if s.enabled is None or s.enabled(self.settings)]
        run_id = run_id or new_run_id()
        results = []
        with self.tracker.pipeline(run_id, {"boostqa.profile": self.settings.profile}):
            self.tracker.log_dict(self.settings.redacted(), "settings.json")
            for stage in stages:
                missing = self._missing_inputs(stage)
                if missing and skip_missing:  # say why, and go on
                    results.append(StageResult(stage.name, skipped=f"no input table {', '.join(missing)} "
                                                                    "(nothing upstream produced it)"))
                    continue
                result = self.run_stage(stage, run_id, max_chunks)
                results.append(result)
                if not result.complete:
                    break  # later stages would read a half-done table
            if any(r.stage == "gate" and not r.skipped for r in results):
                from boostqa.reports import as_jsonable, synthesis_report

                self.tracker.log_dict(as_jsonable(synthesis_report(self.lake)), "synthesis_report.json")
        return run_id, results

    # ------------------------------------------------------------------ one stage
    def run_stage(self, stage: Stage, run_id: str, max_chunks: int | None = None) -> StageResult:
        lake, t0 = self.lake, time.monotonic()
        result = StageResult(stage.name)
        staging = lake.staging_path(stage.name, run_id)
        ctx = StageContext(self.spark, self.settings, run_id, stage, checkpoint=self._checkpointer(staging))
        params = {"stage": stage.name, "run_id": run_id, "chunk_rows": self.settings.runner.chunk_rows,
                  "config": stage.config(self.settings) if stage.config else {}}
        with self.tracker.stage(stage.name, params) as mlflow_run:
            result.mlflow_run_id = mlflow_run
            inputs = self._pin_inputs(stage, staging, result, ctx)
            specs = stage.input_specs(self.settings)
            driving_alias = next(iter(specs))
            driving = inputs[driving_alias]
            ctx.inputs = inputs
            if stage.reads_output and lake.exists(stage.output):
                ctx.existing = lake.read(stage.output)
            if stage.prepare:
                driving = stage.prepare(ctx, driving)
            pending = driving if stage.mode == "overwrite" else self._pending(stage, driving)
            buckets, chunks = self._plan_chunks(stage, pending)
            result.pending, result.chunks_total = sum(chunks.values()), len(chunks)
            for i, (chunk_id, rows) in enumerate(sorted(chunks.items())):
                if max_chunks is not None and i >= max_chunks:
                    break
                chunk = pending if chunk_id is None else pending.where(_bucket(stage, buckets) == chunk_id)
                args = dict(inputs, **{driving_alias: chunk})
                if stage.reads_output:
                    args["existing"] = lake.read(stage.output) if lake.exists(stage.output) else None
                for alias in stage.live_inputs:
                    table = specs[alias]
                    args[alias] = lake.read(table) if lake.exists(table) else None
                self._commit_chunk(stage, ctx, rows, args, f"{staging}/chunk-{i:05d}", result)
                result.chunks_done += 1
                result.seconds = time.monotonic() - t0
                done = result.kept + result.rejected + result.deferred
                self.progress(Progress(stage.name, result.chunks_done, result.chunks_total, done, result.pending,
                                       result.kept, result.rejected, result.deferred, result.seconds))
            result.seconds = time.monotonic() - t0
            for name, ctx_name in ((stage.output, "output"), (stage.rejects, "rejects")):
                if name and lake.exists(name):
                    ref = self._ref(name)
                    result.outputs.append(ref)
                    self.tracker.log_table(ref, ctx_name)
            self.tracker.log_metrics(result.metrics())
            tags = {"boostqa.complete": str(result.complete).lower()}
            if result.extra.get("llm_simulated"):
                tags[SIMULATED_TAG] = "true"  # outputs came from boostqa's simulator, not a model
            self.tracker.set_tags(tags)
        _remove(staging)
        return result

    def _missing_inputs(self, stage: Stage) -> list[str]:
        """Required input tables that do not exist; all of them when every input is optional and
        none exists (nothing to work on)."""
        tables = {a: t for a, t in stage.input_specs(self.settings).items() if not t.startswith("files:")}
        missing = {a: t for a, t in tables.items() if not self.lake.exists(t)}
        if tables and len(missing) == len(tables) and all(map(stage.is_optional, tables)):
            return list(missing.values())
        return [t for a, t in missing.items() if not stage.is_optional(a)]

    def _ref(self, name: str, version: int | None = None) -> TableRef:
        version = self.lake.version(name) if version is None else version
        return TableRef(name, self.lake.location(name), version,
                        self.lake.digest(name, version) if version is not None else None, self.lake.catalog_mode)

    def _pin_inputs(self, stage: Stage, staging: str, result: StageResult,
                    ctx: StageContext) -> dict[str, DataFrame | None]:
        inputs = {}
        for alias, spec in stage.input_specs(self.settings).items():
            if spec.startswith("files:"):
                raw_path = f"{staging}/raw.parquet"
                declared = getattr(self.settings, spec.split(":", 1)[1])
                files, _ = sources.write_raw(declared, self.settings.cache_dir(), raw_path)
                for f in files:
                    self.tracker.log_file(f"{f.source}/{f.rel}", str(f.path), f.sha256[:16])
                inputs[alias] = self.spark.read.parquet(raw_path)
            elif stage.is_optional(alias) and not self.lake.exists(spec):
                inputs[alias] = None
            else:
                ref = self._ref(spec)
                if ref.version is None:
                    raise StageError(f"stage {stage.name}: input table {spec} does not exist yet")
                result.inputs.append(ref)
                ctx.versions[alias] = ref.version
                ctx.digests[alias] = ref.digest
                self.tracker.log_table(ref, "input")
                inputs[alias] = self.lake.read(spec, ref.version)  # pinned: later commits do not leak in
        return inputs

    def _checkpointer(self, staging: str):
        """Materialise a DataFrame in staging and read it back: cuts an iterative plan (Sail has no
        localCheckpoint), and the files go away with the stage's staging area."""
        counter = iter(range(1_000_000))

        def checkpoint(df: DataFrame) -> DataFrame:
            path = f"{staging}/checkpoint-{next(counter):04d}"
            df.write.mode("overwrite").parquet(path)
            return self.spark.read.schema(df.schema).parquet(path)

        return checkpoint

    def _plan_chunks(self, stage: Stage, pending: DataFrame) -> tuple[int, dict]:
        """Bucket count and the non-empty buckets with their row counts. Empty buckets are skipped,
        so --max-chunks always makes progress; None means a single chunk of everything."""
        total = pending.count()
        if total == 0:
            return 0, {}
        rows = stage.chunk_rows(self.settings) if callable(stage.chunk_rows) else stage.chunk_rows
        buckets = 1 if stage.whole or stage.mode == "overwrite" else math.ceil(total / (rows or self.settings.runner.chunk_rows))
        if buckets == 1:
            return 1, {None: total}
        rows = pending.groupBy(_bucket(stage, buckets).alias("c")).count().collect()
        return buckets, {int(r["c"]): int(r["count"]) for r in rows}

    def _pending(self, stage: Stage, driving: DataFrame) -> DataFrame:
        key = list(stage.key)
        for name in (stage.output, stage.rejects):
            if name and self.lake.exists(name):
                driving = driving.join(self.lake.read(name).select(*key), key, "left_anti")
        return driving

    def _commit_chunk(self, stage: Stage, ctx: StageContext, expected: int, args: dict,
                      path: str, result: StageResult) -> None:
        out = stage.transform(ctx, **args)
        if "_outcome" not in out.columns:
            out = out.withColumn("_outcome", F.when(F.col("_reason").isNull(), "kept").otherwise("rejected"))
        out.write.mode("overwrite").parquet(path)  # the transform runs exactly once per chunk
        staged = self.spark.read.schema(out.schema).parquet(path)  # schema: an empty result writes no file
        counts = {(r["_outcome"], r["_reason"]): r["count"]
                  for r in staged.groupBy("_outcome", "_reason").count().collect()}
        total = sum(counts.values())
        if stage.one_to_one:
            if total != expected:
                raise StageError(f"stage {stage.name} returned {total} rows for {expected} pending rows: "
                                 "a transform must account for every row (kept, rejected or deferred)")
        key = list(stage.key)
        kept = staged.where(F.col("_outcome") == "kept").select(*[c for c in staged.columns if not c.startswith("_")])
        dup = kept.groupBy(*key).count().where(F.col("count") > 1).limit(3).collect()
        if dup:
            raise StageError(f"stage {stage.name} produced duplicate keys {key}: {[tuple(r)[:-1] for r in dup]}")
        n_kept = sum(v for (o, _), v in counts.items() if o == "kept")
        n_rej = sum(v for (o, _), v in counts.items() if o == "rejected")
        if stage.mode == "overwrite":
            if self.lake.exists(stage.output):
                self.lake.overwrite(kept, stage.output)
            else:
                self.lake.append(kept, stage.output)
        elif n_kept or not self.lake.exists(stage.output):
            self.lake.insert_new(kept, stage.output, key)
        if stage.rejects and (n_rej or not self.lake.exists(stage.rejects)):
            rejected = staged.where(F.col("_outcome") == "rejected").select(  # "_x" is stored as "x"
                *[F.col(c).alias(c.lstrip("_")) for c in stage.reject_columns], F.col("_reason").alias("reason"), F.col("_detail").alias("detail"),
                F.lit(stage.name).alias("stage"), F.lit(ctx.run_id).alias("run_id"),
                F.current_timestamp().alias("rejected_at"))
            self.lake.insert_new(rejected, stage.rejects, key)
        for d in stage.derived:
            self.lake.insert_new(d.build(ctx, staged), d.table, d.key)
        if stage.artifacts:
            for name, text in stage.artifacts(ctx, staged).items():
                self.tracker.log_text(text, name)
        extra = dict(stage.report(staged)) if stage.report else {}
        extra.update({k: v for k, v in ctx.extra.items() if isinstance(v, (int, float))})
        for k, v in extra.items():  # counters add up over chunks; the simulated flag is a flag
            result.extra[k] = 1 if k == "llm_simulated" else result.extra.get(k, 0) + v
        ctx.extra.clear()
        result.kept += n_kept
        result.rejected += n_rej
        result.deferred += sum(v for (o, _), v in counts.items() if o == "deferred")
        for (o, reason), v in counts.items():
            if o == "rejected":
                result.rejected_by_reason[reason] = result.rejected_by_reason.get(reason, 0) + v
        _remove(path)


def _bucket(stage: Stage, buckets: int):
    """Chunk of a row: rows that must be judged together (chunk_by, default the key) share one."""
    return F.pmod(F.xxhash64(*(stage.chunk_by or stage.key)), F.lit(buckets))


def _remove(path: str) -> None:
    """Delete a staging directory and the parents it leaves empty."""
    if "://" in path:
        return
    p = Path(path)
    shutil.rmtree(p, ignore_errors=True)
    for parent in (p.parent, p.parent.parent):
        if parent.name and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


__all__ = ["Runner", "StageResult", "Progress", "StageError", "new_run_id", "STAGES"]

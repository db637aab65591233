"""bench: benchmark test-set files -> ref.bench_items (reference data for decontamination).

Benchmarks are read exactly like seed sources (same file formats, compressed files, tables, field
mapping and quarantine rules), so a user points each entry of ``benchmarks:`` at their copy of
MMLU, CMMLU, GSM8K, ...
"""

from __future__ import annotations

from pyspark.sql import DataFrame

from boostqa.stages import ingest
from boostqa.stages.base import BENCHMARK_FILES, Stage, StageContext

ITEM_COLUMNS = ["item_id", "record_key", "benchmark", "source_file", "source_row", "source_row_id", "question",
                "answer", "choices", "subject_hint", "lang", "raw", "ingested_at", "run_id"]


def transform(ctx: StageContext, raw: DataFrame) -> DataFrame:
    prior = ctx.existing.withColumnRenamed("item_id", "seed_uid") if ctx.existing is not None else None
    out = ingest.parse(ctx, raw, prior)
    return out.withColumnRenamed("seed_uid", "item_id").withColumnRenamed("source", "benchmark") \
        .select(*ITEM_COLUMNS, "_reason", "_detail")


STAGE = Stage(
    name="bench",
    inputs={"raw": BENCHMARK_FILES},
    output="ref.bench_items",
    rejects="quarantine.bench_items",
    key=("record_key",),
    reject_columns=("record_key", "benchmark", "source_file", "source_row", "source_row_id", "raw"),
    chunk_by=("source", "source_file"),
    reads_output=True,
    transform=transform,
    sections=("benchmarks", "ingest"),
    description="benchmark test sets -> ref.bench_items (reference data for decontamination)",
)

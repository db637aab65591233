"""ingest: seed source files -> bronze.seeds (+ quarantine.seeds).

Each raw record (read from files or tables by ``boostqa.sources``, which never fails on what a
file holds) is mapped to the seed fields by its source's field mapping; a row that cannot be a
seed goes to quarantine with a reason and a detail naming file, row and field (the reasons:
``boostqa.text.records.REASONS``). Duplicate row ids
within a source keep the first row (by file, then row) and quarantine the others, also against
rows ingested by earlier runs, so nothing is overwritten or silently skipped.

``kps`` holds the knowledge points a source supplies (``fields.kps``, e.g. CHAMP's concepts; null
when it maps none or the record has none): LinkQA's kp_extract reads them from bronze.seeds and
asks the LLM only for the other seeds.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import SOURCE_FILES, Stage, StageContext
from boostqa.text.records import Rules, parse_batch

RAW_COLUMNS = [("record_key", T.StringType()), ("source", T.StringType()), ("source_file", T.StringType()),
               ("source_row", T.LongType()), ("raw", T.StringType()), ("read_error", T.StringType())]
SEED_FIELDS = [("seed_uid", T.StringType()), ("source_row_id", T.StringType()), ("question", T.StringType()),
               ("answer", T.StringType()), ("choices", T.ArrayType(T.StringType())),
               ("subject_hint", T.StringType()), ("lang", T.StringType()), ("kps", T.ArrayType(T.StringType())),
               ("_reason", T.StringType()), ("_detail", T.StringType())]
PARSED_SCHEMA = T.StructType([T.StructField(n, t) for n, t in RAW_COLUMNS + SEED_FIELDS])

BRONZE_COLUMNS = ["seed_uid", "record_key", "source", "source_file", "source_row", "source_row_id", "question",
                  "answer", "choices", "subject_hint", "lang", "kps", "source_weight", "raw", "ingested_at", "run_id"]
_BATCH_ROWS = 5_000


def _declared(ctx: StageContext):
    """The config list this stage reads (sources for ingest, benchmarks for bench)."""
    return [s for s in getattr(ctx.settings, ctx.stage.input_specs(ctx.settings)["raw"].split(":", 1)[1]) if s.enabled]


def _rules(ctx: StageContext) -> dict[str, Rules]:
    lim = ctx.settings.ingest
    return {s.name: Rules(fields=s.fields.model_dump(), lang=s.lang, require_answer=s.require_answer,
                          max_question_chars=lim.max_question_chars, max_answer_chars=lim.max_answer_chars,
                          max_choices=lim.max_choices, choices_fields=tuple(s.choices_fields),
                          answer_is_label=s.answer_is_label, max_choice_chars=lim.max_choice_chars,
                          max_subject_chars=lim.max_subject_chars, max_lang_chars=lim.max_lang_chars,
                          max_id_chars=lim.max_id_chars, max_kps=lim.max_kps, max_kp_chars=lim.max_kp_chars)
            for s in _declared(ctx)}


def parse(ctx: StageContext, raw: DataFrame, existing: DataFrame | None) -> DataFrame:
    """Raw records -> seed rows or quarantine reasons; ``existing``: rows earlier runs ingested
    (their ids are taken). Shared with ``bench``, which reads benchmarks like sources."""
    rules = _rules(ctx)

    def parse(batches):  # defined here, not at import: Connect UDFs need the session first
        for pdf in batches:
            for start in range(0, len(pdf), _BATCH_ROWS):  # Sail ignores Arrow batch sizes: re-chunk
                part = pdf.iloc[start:start + _BATCH_ROWS].reset_index(drop=True)
                yield pd.concat([part, parse_batch(part, rules)], axis=1)

    # parsed once, read twice below: the duplicate checks rank only the ids, so no step ever sorts or
    # builds a hash table of whole records (profiled 150k-row chunk: staging peak 1.20 -> 1.00 GB)
    parsed = ctx.checkpoint(raw.select(*[c for c, _ in RAW_COLUMNS]).mapInPandas(parse, PARSED_SCHEMA))
    locator = F.concat_ws(":", "source_file", F.col("source_row").cast("string"))
    valid = F.col("_reason").isNull()

    # duplicate row ids inside what is being ingested now: the first by (file, row) wins
    w = Window.partitionBy("source", "seed_uid").orderBy("source_file", "source_row")
    later = (parsed.select("record_key", "source", "seed_uid", "source_file", "source_row")
             .withColumn("_rank", F.row_number().over(w)).withColumn("_first", F.first(locator).over(w))
             .where(F.col("_rank") > 1).select("record_key", "_first"))
    parsed = later.join(parsed, "record_key", "right")  # the small side first: it is the one held in memory
    dup_now = valid & F.col("_first").isNotNull()

    if existing is not None:  # ... and against rows earlier runs already ingested
        prior = existing.select("seed_uid", F.concat_ws(":", "source_file", F.col("source_row").cast("string"))
                                .alias("_prior"), F.col("run_id").alias("_prior_run"))
        parsed = prior.join(parsed, "seed_uid", "right")
    else:
        parsed = (parsed.withColumn("_prior", F.lit(None).cast("string"))
                  .withColumn("_prior_run", F.lit(None).cast("string")))
    dup_prior = valid & F.col("_prior").isNotNull()

    reason = (F.when(dup_prior | dup_now, F.lit("duplicate_row_id")).otherwise(F.col("_reason")))
    detail = (F.when(dup_prior, F.concat(locator, F.lit(": row id '"), F.col("source_row_id"),
                                         F.lit("' already ingested from "), F.col("_prior"),
                                         F.lit(" by run "), F.col("_prior_run")))
              .when(dup_now, F.concat(locator, F.lit(": row id '"), F.col("source_row_id"),
                                      F.lit("' already used at "), F.col("_first")))
              .otherwise(F.col("_detail")))

    weights = F.create_map(*[x for s in _declared(ctx) for x in (F.lit(s.name), F.lit(float(s.weight)))])
    return parsed.select(
        "seed_uid", "record_key", "source", "source_file", "source_row", "source_row_id", "question", "answer",
        "choices", "subject_hint", "lang", "kps",
        weights[F.col("source")].cast("double").alias("source_weight"),
        "raw",
        F.current_timestamp().alias("ingested_at"),
        F.lit(ctx.run_id).alias("run_id"),
        reason.alias("_reason"), detail.alias("_detail"),
    )


def transform(ctx: StageContext, raw: DataFrame) -> DataFrame:
    return parse(ctx, raw, ctx.existing)


STAGE = Stage(
    name="ingest",
    inputs={"raw": SOURCE_FILES},
    output="bronze.seeds",
    rejects="quarantine.seeds",
    key=("record_key",),
    reject_columns=("record_key", "source", "source_file", "source_row", "source_row_id", "raw"),
    chunk_by=("source", "source_file"),  # a file is judged whole: its duplicate ids resolve by row order
    reads_output=True,
    transform=transform,
    sections=("sources", "ingest"),
    description="seed source files -> bronze.seeds; bad rows -> quarantine.seeds",
)

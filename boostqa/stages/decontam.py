"""decontam: rows that overlap a benchmark test item leave the corpus, with the evidence.

Two independent detectors, both configurable (``decontam:`` in conf):
- exact word n-grams (default n = 10) on normalised text: the benchmark side hashes every n-gram
  of question + answer (so n-grams spanning question -> answer count too), broadcast-joined with
  the rows' n-gram hashes; a row is contaminated when it shares at least ``min_shared_ngrams``
  n-grams with one item. Evidence: benchmark, item, the matching n-gram text, count.
- embedding cosine: rows and items are embedded (question + choices), the maximum cosine over
  the benchmark matrix is computed in blocks inside the UDF; at or above ``threshold`` is a hit.
  Evidence: benchmark, item, cosine.

The stage is built by ``make_stage`` for any table and text columns, so synthesised QA is
decontaminated by the same code as seeds.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import Stage, StageContext, StageError
from boostqa.stages.bench_embed import embedder_config, embedding_text, model_name
from boostqa.text.embed import make_embedder, max_cosine
from boostqa.text.ngrams import matching_ngrams, ngram_distinct_words, ngram_hashes
from boostqa.text.normalize import NormalizeOptions, words_array

_BATCH_ROWS = 4096


def _joined_text(b: pa.RecordBatch, cols: list[str]) -> pa.Array:
    """Columns joined by spaces (list columns flattened), nulls as empty."""
    parts = []
    for c in cols:
        arr = b.column(c)
        if pa.types.is_null(arr.type):  # an all-null column from pandas has no type
            arr = pa.nulls(len(arr), pa.string())
        if pa.types.is_list(arr.type):
            arr = pc.binary_join(pc.fill_null(arr, pa.scalar([], arr.type)), " ")
        parts.append(pc.fill_null(arr, ""))
    return pc.binary_join_element_wise(*parts, " ") if len(parts) > 1 else parts[0]


def _gram_kernel(key: str, cols: list[str], n: int, opts: NormalizeOptions, min_distinct: int):
    def grams(batches):
        for batch in batches:
            for start in range(0, batch.num_rows, _BATCH_ROWS):
                b = batch.slice(start, _BATCH_ROWS)
                words = words_array(_joined_text(b, cols), opts)
                hashes = ngram_hashes(words, n)
                if min_distinct > 1:  # drop low-information n-grams ("1 1 1 1 ...")
                    keep = pc.greater_equal(ngram_distinct_words(words, n).flatten(), min_distinct)
                    hashes = pa.ListArray.from_arrays(
                        pa.array(np.concatenate([[0], np.cumsum(_kept_per_row(hashes, keep))]).astype(np.int32)),
                        pc.filter(hashes.flatten(), keep))
                yield pa.RecordBatch.from_arrays([b.column(key), hashes], names=[key, "hashes"])

    return grams


def _kept_per_row(lists: pa.ListArray, keep: pa.Array) -> np.ndarray:
    """How many flattened elements each row keeps."""
    lens = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.repeat(np.arange(len(lens)), lens)
    return np.bincount(rows[keep.to_numpy(zero_copy_only=False)], minlength=len(lens))


def _grams(df: DataFrame, key: str, cols: list[str], n: int, opts: NormalizeOptions,
           min_distinct: int = 1) -> DataFrame:
    schema = T.StructType([T.StructField(key, T.StringType()), T.StructField("hashes", T.ArrayType(T.LongType()))])
    return (df.select(key, *cols).mapInArrow(_gram_kernel(key, cols, n, opts, min_distinct), schema)
            .select(key, F.explode("hashes").alias("hash")).distinct())


def _ngram_hits(ctx: StageContext, rows: DataFrame, bench: DataFrame, key: str, cols: list[str]) -> DataFrame:
    cfg = ctx.settings.decontam
    opts = NormalizeOptions(**cfg.normalize.model_dump())
    bench_grams = _grams(bench, "item_id", ["question", "answer"], cfg.ngram, opts, cfg.min_distinct_words) \
        .join(bench.select("item_id", "benchmark"), "item_id")
    row_grams = _grams(rows, key, cols, cfg.ngram, opts)
    hits = (row_grams.join(F.broadcast(bench_grams), "hash")
            .groupBy(key, "benchmark", "item_id").agg(F.count("*").alias("shared"), F.min("hash").alias("hash"))
            .where(F.col("shared") >= cfg.min_shared_ngrams))
    best = Window.partitionBy(key).orderBy(F.col("shared").desc(), "benchmark", "item_id")
    hits = hits.withColumn("_r", F.row_number().over(best)).where("_r = 1").drop("_r")
    # the evidence text, computed only for the (few) contaminated rows
    n = cfg.ngram

    def evidence(batches):
        for pdf in batches:
            texts = _joined_text(pa.RecordBatch.from_pandas(pdf[cols], preserve_index=False), cols).to_pylist()
            words = words_array(pa.array(texts, pa.string()), opts).to_pylist()
            found = [matching_ngrams(w or [], n, [h]) for w, h in zip(words, pdf["hash"])]
            yield pd.DataFrame({key: pdf[key], "ngram": [f[0][1] if f else None for f in found]})

    schema = T.StructType([T.StructField(key, T.StringType()), T.StructField("ngram", T.StringType())])
    text = hits.select(key, "hash").join(rows.select(key, *cols), key).mapInPandas(evidence, schema)
    return hits.join(text, key, "left").select(
        key, F.col("benchmark").alias("ng_benchmark"), F.col("item_id").alias("ng_item"),
        F.col("shared").alias("ng_shared"), F.col("ngram").alias("ng_text"))


def _embedding_hits(ctx: StageContext, rows: DataFrame, vectors: DataFrame, key: str, q: str,
                    choices: str | None) -> DataFrame:
    cfg = ctx.settings.decontam.embedding
    model = model_name(ctx)
    ref = vectors.select("item_id", "benchmark", "vector", "model").toPandas()  # benchmark-sized: ~25 MB/16k items
    other = sorted(set(ref["model"]) - {model})
    if other:
        raise StageError(f"ref.bench_embeddings holds vectors of {other}, not {model}: delete that table and rerun "
                         "`boostqa run bench_embed` after changing the embedding model")
    matrix = np.stack(ref["vector"].to_numpy()).astype(np.float32) if len(ref) else np.zeros((0, 1), np.float32)
    ids, benches = ref["item_id"].to_numpy(), ref["benchmark"].to_numpy()
    emb_cfg, threshold = embedder_config(ctx), cfg.threshold

    def match(batches):
        embedder = make_embedder(emb_cfg)
        for pdf in batches:
            for start in range(0, len(pdf), 512):
                part = pdf.iloc[start:start + 512]
                opts = part[choices] if choices else pd.Series([None] * len(part))
                best, idx = max_cosine(embedder.encode(embedding_text(part[q], opts)), matrix)
                hit = best >= threshold
                yield pd.DataFrame({key: part[key].values,
                                    "em_benchmark": np.where(hit, benches[idx] if len(ids) else None, None),
                                    "em_item": np.where(hit, ids[idx] if len(ids) else None, None),
                                    "em_cosine": np.where(hit, best, np.nan)})

    schema = T.StructType([T.StructField(key, T.StringType()), T.StructField("em_benchmark", T.StringType()),
                           T.StructField("em_item", T.StringType()), T.StructField("em_cosine", T.DoubleType())])
    cols = [key, q] + ([choices] if choices else [])
    return rows.select(*cols).mapInPandas(match, schema).where(F.col("em_item").isNotNull())


def transform(ctx: StageContext, rows: DataFrame, bench: DataFrame, vectors: DataFrame | None = None, *,
              key: str, question: str, answer: str | None, choices: str | None) -> DataFrame:
    cols = [c for c in (question, choices, answer) if c]
    flagged = _ngram_hits(ctx, rows, bench, key, cols)
    emb = ctx.settings.decontam.embedding
    if emb.enabled:
        if vectors is None:
            raise StageError("decontam.embedding is enabled but ref.bench_embeddings does not exist: "
                             "run `boostqa run bench_embed` (or disable decontam.embedding)")
        flagged = flagged.join(_embedding_hits(ctx, rows, vectors, key, question, choices), key, "full")
    else:
        flagged = flagged.select("*", *[F.lit(None).cast(t).alias(c) for c, t in
                                        (("em_benchmark", "string"), ("em_item", "string"), ("em_cosine", "double"))])
    ng, em = F.col("ng_item").isNotNull(), F.col("em_item").isNotNull()
    out = rows.join(ctx.checkpoint(flagged), key, "left")
    detail = F.concat_ws("; ",
                         F.when(ng, F.concat(F.col("ng_benchmark"), F.lit(" item "), F.col("ng_item"), F.lit(": "),
                                             F.col("ng_shared").cast("string"),
                                             F.lit(f" shared {ctx.settings.decontam.ngram}-grams, e.g. '"),
                                             F.col("ng_text"), F.lit("'"))),
                         F.when(em, F.concat(F.col("em_benchmark"), F.lit(" item "), F.col("em_item"),
                                             F.lit(": cosine "), F.format_number("em_cosine", 3))))
    return out.select(
        *rows.columns,
        F.when(ng, "benchmark_ngram").when(em, "benchmark_embedding").alias("_reason"),
        F.when(ng | em, detail).alias("_detail"),
        F.coalesce("ng_benchmark", "em_benchmark").alias("_benchmark"),
        F.coalesce("ng_item", "em_item").alias("_item_id"),
        F.when(ng & em, "ngram+embedding").when(ng, "ngram").when(em, "embedding").alias("_method"),
        F.col("ng_shared").cast("long").alias("_shared_ngrams"), F.col("ng_text").alias("_ngram"),
        F.col("em_cosine").alias("_cosine"))


def hits(ctx: StageContext, staged: DataFrame) -> None:
    """Hits per benchmark and per method, for MLflow and the CLI."""
    for r in staged.where(F.col("_outcome") == "rejected").groupBy("_benchmark", "_method").count().collect():
        ctx.stats.add(f"hits.{r['_benchmark']}", r["count"])
        ctx.stats.add(f"hits_by_method.{r['_method']}", r["count"])


def make_stage(name: str, source: str, output: str, rejects: str, key: str, question: str = "question",
               answer: str | None = "answer", choices: str | None = "choices", extra_reject_columns=()) -> Stage:
    """A decontamination stage over any table: seeds now, synthesised QA later."""
    return Stage(
        name=name,
        inputs={"rows": source, "bench": "ref.bench_items", "vectors": "ref.bench_embeddings"},
        optional_inputs=("vectors",),
        output=output,
        rejects=rejects,
        key=(key,),
        reject_columns=(key, *extra_reject_columns, question, "_benchmark", "_item_id", "_method", "_shared_ngrams",
                        "_ngram", "_cosine"),
        transform=partial(transform, key=key, question=question, answer=answer, choices=choices),
        summarize=hits,
        sections=("decontam",),
        description=f"drop {source} rows overlapping benchmark items (n-grams + embeddings)",
    )


STAGE = make_stage("decontam", "silver.seeds", "silver.seeds_clean", "quarantine.contaminated", "seed_uid",
                   extra_reject_columns=("seed_id", "source"))

"""bench: benchmark test-set files -> ref.bench_items; bench_embed: items -> ref.bench_embeddings.

Benchmarks are read exactly like seed sources (same file formats, field mapping and quarantine
rules), so a user points each entry of ``benchmarks:`` at their copy of MMLU, CMMLU, GSM8K, ...
Vectors are computed once per item (the slow part) and reused by every decontamination run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from boostqa.stages import ingest
from boostqa.stages.base import BENCHMARK_FILES, Stage, StageContext
from boostqa.text.embed import make_embedder

ITEM_COLUMNS = ["item_id", "record_key", "benchmark", "source_file", "source_row", "source_row_id", "question",
                "answer", "choices", "subject_hint", "lang", "raw", "ingested_at", "run_id"]


def transform(ctx: StageContext, raw: DataFrame, existing: DataFrame | None = None) -> DataFrame:
    prior = existing.withColumnRenamed("item_id", "seed_uid") if existing is not None else None
    out = ingest.transform(ctx, raw, prior)
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
    config=lambda s: {"benchmarks": [b.model_dump() for b in s.benchmarks if b.enabled]},
    description="benchmark test sets -> ref.bench_items (reference data for decontamination)",
)


def embedding_text(question: pd.Series, choices: pd.Series) -> list[str]:
    """Question plus its choices: generic stems ("Which of the following is true?") only match
    when the options match too."""
    out = []
    for q, c in zip(question, choices):
        opts = [str(x) for x in c] if c is not None and not (isinstance(c, float) and np.isnan(c)) else []
        out.append(" ".join([q or "", *opts]).strip())
    return out


def embedder_config(ctx: StageContext) -> dict:
    e = ctx.settings.decontam.embedding
    if e.backend == "openai":
        return {"backend": "openai", "base_url": e.base_url, "model": e.model, "api_key_env": e.api_key_env,
                "batch_size": e.batch_size}
    return {"backend": "local", "batch_size": e.batch_size, "threads": e.threads}


def model_name(ctx: StageContext) -> str:
    e = ctx.settings.decontam.embedding
    return f"openai:{e.model}" if e.backend == "openai" else "local:all-MiniLM-L6-v2"


VECTOR_SCHEMA = T.StructType([T.StructField("item_id", T.StringType()), T.StructField("benchmark", T.StringType()),
                              T.StructField("model", T.StringType()),
                              T.StructField("vector", T.ArrayType(T.FloatType())),
                              T.StructField("_reason", T.StringType()), T.StructField("_detail", T.StringType())])


def embed_transform(ctx: StageContext, items: DataFrame) -> DataFrame:
    cfg, model = embedder_config(ctx), model_name(ctx)

    def embed(batches):  # built per call: Connect UDFs need the session first
        embedder = make_embedder(cfg)
        for pdf in batches:
            for start in range(0, len(pdf), 512):
                part = pdf.iloc[start:start + 512]
                vecs = embedder.encode(embedding_text(part["question"], part["choices"]))
                yield pd.DataFrame({"item_id": part["item_id"].values, "benchmark": part["benchmark"].values,
                                    "model": model, "vector": list(vecs.astype(np.float32)),
                                    "_reason": None, "_detail": None})

    return items.select("item_id", "benchmark", "question", "choices").mapInPandas(embed, VECTOR_SCHEMA)


EMBED_STAGE = Stage(
    name="bench_embed",
    inputs={"items": "ref.bench_items"},
    output="ref.bench_embeddings",
    key=("item_id",),
    chunk_rows=2000,  # ~20 s of CPU embedding per committed chunk: progress and cheap resume
    transform=embed_transform,
    enabled=lambda s: s.decontam.embedding.enabled,
    config=lambda s: {"embedding": s.decontam.embedding.model_dump()},
    description="benchmark item vectors for embedding-based decontamination",
)

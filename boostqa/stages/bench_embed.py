"""bench_embed: ref.bench_items -> ref.bench_embeddings (one vector per benchmark item).

Vectors are computed once per item (the slow part) and reused by every decontamination run,
of the seeds and of the synthesised QA.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from boostqa.stages.base import Stage, StageContext
from boostqa.text.embed import make_embedder


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
    return {"backend": e.backend, "batch_size": e.batch_size, "threads": e.threads}  # onnx | torch


def model_name(ctx: StageContext) -> str:
    e = ctx.settings.decontam.embedding
    # stored with every vector: int8 (onnx) and fp32 (torch) vectors differ slightly, never mix them
    if e.backend == "openai":
        return f"openai:{e.model}"
    return "torch:all-MiniLM-L6-v2" if e.backend == "torch" else "onnx:all-MiniLM-L6-v2-int8"


VECTOR_SCHEMA = T.StructType([T.StructField("item_id", T.StringType()), T.StructField("benchmark", T.StringType()),
                              T.StructField("model", T.StringType()),
                              T.StructField("vector", T.ArrayType(T.FloatType())),
                              T.StructField("_reason", T.StringType()), T.StructField("_detail", T.StringType())])


def transform(ctx: StageContext, items: DataFrame) -> DataFrame:
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


STAGE = Stage(
    name="bench_embed",
    inputs={"items": "ref.bench_items"},
    output="ref.bench_embeddings",
    key=("item_id",),
    chunk_rows=2000,  # ~20 s of CPU embedding per committed chunk: progress and cheap resume
    transform=transform,
    enabled=lambda s: s.decontam.embedding.enabled,
    sections=("decontam",),
    description="benchmark item vectors for embedding-based decontamination",
)

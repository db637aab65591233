"""kp_extract: silver.seeds_annotated (+ bronze.seeds.kps) -> silver.seed_kp_sets + silver.seed_kps (LinkQA KPs).

The annotator endpoint (``linkqa.endpoint``) names the 1-8 knowledge points (KPs) each seed
exercises, within the seed's discipline. Names are canonicalised by ``boostqa.text.kp`` (case,
punctuation, articles, synonyms) and get a stable id per (discipline, name), so the same KP named
by two seeds is one graph node. One row per seed goes to ``silver.seed_kp_sets`` (the stage's
output: the unit of idempotency, a rerun asks nothing again) and one row per (seed, KP) to
``silver.seed_kps`` (seed_uid, kp, kp_id, discipline, difficulty, weight = 1 / KPs of the seed),
which kp_graph reads. A response with no usable name is invalid (re-asked, then quarantined with
the raw text); failed calls stay pending.

Source-supplied KPs: a source that maps ``fields.kps`` (e.g. CHAMP's ``concepts``) has them in
``bronze.seeds.kps`` (validated by ingest: a list of strings, else quarantined). Those seeds are not
asked: their names get the same canonicalisation and ids, ``kp_source = 'source'`` (``'llm'`` for
the asked ones) and no call columns. A seed whose supplied names all canonicalise to nothing is
asked like any other. ``kp_source`` is in both tables.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pandas as pd
from pydantic import BaseModel, Field, StringConstraints, create_model
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import Derived, StageContext
from boostqa.stages.llm import LLMTask, llm_stage
from boostqa.stages.llm import _transform as llm_transform
from boostqa.text import kp

STRINGS = T.ArrayType(T.StringType())


class KnowledgePoints(LLMTask):
    """The knowledge points of a seed question + answer, named within its discipline."""

    sections = ("linkqa",)
    columns = ("question", "answer", "discipline", "subfield")
    outputs = (("kps", STRINGS), ("kp_ids", STRINGS))

    def endpoint_of(self, settings) -> str:
        return settings.linkqa.endpoint

    def prompts_of(self, settings) -> str:
        return settings.linkqa.kp_prompt

    def setup(self, settings) -> None:
        self.max_chars = settings.linkqa.kp_max_chars

    def response_model(self) -> type[BaseModel]:
        name = Annotated[str, StringConstraints(min_length=1, max_length=self.max_chars)]
        return create_model("KnowledgePoints",
                            knowledge_points=(list[name], Field(..., min_length=1, max_length=kp.MAX_KPS)))

    def format_input(self, row) -> dict[str, str]:
        sub = getattr(row, "subfield", None)
        return dict(discipline=f"{row.discipline}/{sub}" if sub else str(row.discipline), question=row.question,
                    answer=row.answer or "(none)", max_chars=str(self.max_chars))

    def format_output(self, parsed: dict, raw: str | None, row) -> dict:
        names = kp.canonical_kps(parsed["knowledge_points"])
        if not names:
            raise ValueError("no usable knowledge point name after canonicalisation")
        return {"kps": names, "kp_ids": [kp.kp_id(row.discipline, n) for n in names]}


def supplied(seeds: DataFrame, bronze: DataFrame | None) -> DataFrame:
    """(seed_uid, kps, kp_ids) of the ``seeds`` whose source supplied KPs (bronze.seeds.kps) with at
    least one usable name: canonicalised and capped as the LLM's names, ids by the seed's discipline."""
    schema = T.StructType([T.StructField("seed_uid", T.StringType()), T.StructField("kps", STRINGS),
                           T.StructField("kp_ids", STRINGS)])
    if bronze is None or "kps" not in bronze.columns:  # a lake ingested before sources could supply KPs
        return seeds.sparkSession.createDataFrame([], schema)
    given = seeds.select("seed_uid", "discipline").join(
        bronze.where(F.col("kps").isNotNull() & (F.size("kps") > 0)).select("seed_uid", F.col("kps").alias("_given")),
        "seed_uid")

    def canon(batches):  # built here, not at import: Connect UDFs need the session first
        for pdf in batches:
            names = [kp.canonical_kps(list(x)) for x in pdf["_given"]]
            yield pd.DataFrame({"seed_uid": pdf["seed_uid"], "kps": names,
                                "kp_ids": [[kp.kp_id(d, n) for n in ns] for d, ns in zip(pdf["discipline"], names)]})

    return given.mapInPandas(canon, schema).where(F.size("kps") > 0)


def asked(ctx: StageContext, seeds: DataFrame, bronze: DataFrame | None = None) -> DataFrame:
    """The seeds the LLM is asked about: those without usable source-supplied KPs."""
    return seeds.join(supplied(seeds, bronze).select("seed_uid"), "seed_uid", "left_anti")


def columns(ctx: StageContext, out: DataFrame) -> list:
    task = KnowledgePoints(ctx.settings)
    return ["seed_uid", "discipline", "difficulty", "kps", "kp_ids", F.size("kps").alias("n_kps"),
            F.lit("llm").alias("kp_source"), F.col("_model").alias("model"),
            F.lit(task.prompt_ids[0]).alias("prompt_version"), "request_key",
            F.col("_simulated").alias("llm_simulated"), F.lit(ctx.run_id).alias("run_id")]


def transform(ctx: StageContext, seeds: DataFrame, bronze: DataFrame | None = None,
              calls: DataFrame | None = None) -> DataFrame:
    """The template's rows for the asked seeds (``asked``), plus one kept row per seed with
    supplied KPs: kp_source 'source', no model, prompt, request or call columns."""
    out = llm_transform(ctx, calls=calls, seeds=seeds, bronze=bronze)
    given = seeds.select("seed_uid", "discipline", "difficulty").join(supplied(seeds, bronze), "seed_uid")
    values = {"seed_uid": F.col("seed_uid"), "discipline": F.col("discipline"), "difficulty": F.col("difficulty"),
              "kps": F.col("kps"), "kp_ids": F.col("kp_ids"), "n_kps": F.size("kps"), "kp_source": F.lit("source"),
              "llm_simulated": F.lit(False), "run_id": F.lit(ctx.run_id), "_outcome": F.lit("kept")}

    def value(f: T.StructField):
        if f.name in values:
            return values[f.name].cast(f.dataType).alias(f.name)
        if isinstance(f.dataType, T.ArrayType):  # _earlier: no attempts
            return F.array().cast(f.dataType).alias(f.name)
        return F.lit(None).cast(f.dataType).alias(f.name)

    return out.unionByName(given.select(*[value(f) for f in out.schema.fields]))


def kp_rows(ctx: StageContext, staged: DataFrame) -> DataFrame:
    """silver.seed_kps: one row per (seed, KP) of the kept seeds."""
    kept = staged.where(F.col("_outcome") == "kept")
    return (kept.select("seed_uid", "discipline", "difficulty", "kp_ids", "kp_source",
                        F.posexplode("kps").alias("pos", "kp"), (F.lit(1.0) / F.size("kps")).alias("weight"))
            .select("seed_uid", "kp", F.get("kp_ids", "pos").alias("kp_id"), "discipline", "difficulty",
                    F.col("pos").alias("rank"), "weight", "kp_source", F.lit(ctx.run_id).alias("run_id")))


def kp_counts(ctx: StageContext, staged: DataFrame) -> None:
    kept = staged.where(F.col("_outcome") == "kept")
    r = kept.groupBy().agg(F.sum("n_kps").alias("kps"), F.count(F.lit(1)).alias("seeds"),
                           F.sum((F.col("kp_source") == "source").cast("int")).alias("source_seeds"),
                           F.sum(F.when(F.col("kp_source") == "source", F.col("n_kps"))).alias("source_kps")).first()
    ctx.stats.add("kp.seed_kps", float(r["kps"] or 0))
    ctx.stats.add("kp.seeds", float(r["seeds"] or 0))
    ctx.stats.add("kp.source_seeds", float(r["source_seeds"] or 0))  # KPs from the source: no call
    ctx.stats.add("kp.source_kps", float(r["source_kps"] or 0))


STAGE = dataclasses.replace(llm_stage(
    name="kp_extract",
    inputs={"seeds": "silver.seeds_annotated", "bronze": "bronze.seeds"},
    optional_inputs=("bronze",),
    output="silver.seed_kp_sets",
    rejects="quarantine.kps",
    key=("seed_uid",),
    tasks=(KnowledgePoints,),
    rows=asked,
    columns=columns,
    reject_columns=("seed_uid", "request_key", "_raw", "_finish_reason"),
    derived=(Derived("silver.seed_kps", ("seed_uid", "kp_id"), kp_rows),),
    summarize=kp_counts,
    enabled=lambda s: s.linkqa.enabled,
    description="LinkQA: knowledge points per seed (supplied by the source, else named by the LLM; canonical ids)",
), transform=transform)

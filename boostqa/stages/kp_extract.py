"""kp_extract: silver.seeds_annotated -> silver.seed_kp_sets + silver.seed_kps (LinkQA knowledge points).

The annotator endpoint (``linkqa.endpoint``) names the 1-8 knowledge points (KPs) each seed
exercises, within the seed's discipline. Names are canonicalised by ``boostqa.text.kp`` (case,
punctuation, articles, synonyms) and get a stable id per (discipline, name), so the same KP named
by two seeds is one graph node. One row per seed goes to ``silver.seed_kp_sets`` (the stage's
output: the unit of idempotency, a rerun asks nothing again) and one row per (seed, KP) to
``silver.seed_kps`` (seed_uid, kp, kp_id, discipline, difficulty, weight = 1 / KPs of the seed),
which kp_graph reads. A response with no usable name is invalid (re-asked, then quarantined with
the raw text); failed calls stay pending.

Sources cannot supply KPs yet: ingest maps no ``concepts``/``kps`` field into the seed tables
(docs/linkqa.md), so every seed is asked.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, create_model
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import Derived, StageContext
from boostqa.stages.llm import LLMTask, llm_stage
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


def columns(ctx: StageContext, out: DataFrame) -> list:
    task = KnowledgePoints(ctx.settings)
    return ["seed_uid", "discipline", "difficulty", "kps", "kp_ids", F.size("kps").alias("n_kps"),
            F.lit("llm").alias("kp_source"), F.col("_model").alias("model"),
            F.lit(task.prompt_ids[0]).alias("prompt_version"), "request_key",
            F.col("_simulated").alias("llm_simulated"), F.lit(ctx.run_id).alias("run_id")]


def kp_rows(ctx: StageContext, staged: DataFrame) -> DataFrame:
    """silver.seed_kps: one row per (seed, KP) of the kept seeds."""
    kept = staged.where(F.col("_outcome") == "kept")
    return (kept.select("seed_uid", "discipline", "difficulty", "kp_ids", F.posexplode("kps").alias("pos", "kp"),
                        (F.lit(1.0) / F.size("kps")).alias("weight"))
            .select("seed_uid", "kp", F.get("kp_ids", "pos").alias("kp_id"), "discipline", "difficulty",
                    F.col("pos").alias("rank"), "weight", F.lit(ctx.run_id).alias("run_id")))


def kp_counts(ctx: StageContext, staged: DataFrame) -> None:
    r = staged.where(F.col("_outcome") == "kept").groupBy().agg(F.sum("n_kps").alias("kps"),
                                                                 F.count(F.lit(1)).alias("seeds")).first()
    ctx.stats.add("kp.seed_kps", float(r["kps"] or 0))
    ctx.stats.add("kp.seeds", float(r["seeds"] or 0))


STAGE = llm_stage(
    name="kp_extract",
    inputs={"seeds": "silver.seeds_annotated"},
    output="silver.seed_kp_sets",
    rejects="quarantine.kps",
    key=("seed_uid",),
    tasks=(KnowledgePoints,),
    columns=columns,
    reject_columns=("seed_uid", "request_key", "_raw", "_finish_reason"),
    derived=(Derived("silver.seed_kps", ("seed_uid", "kp_id"), kp_rows),),
    summarize=kp_counts,
    enabled=lambda s: s.linkqa.enabled,
    description="LinkQA: LLM knowledge points per seed (canonical names, stable ids)",
)

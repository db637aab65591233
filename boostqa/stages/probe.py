"""probe: how well does the model under training answer each discipline x difficulty cell?

probe samples, per (discipline, difficulty) cell, up to ``probe.per_cell`` annotated seeds that
have a gold answer a machine can score (a choice letter, else a final number), asks the
``probe`` endpoint (the base model or a mid-training checkpoint behind any OpenAI-compatible
server) and scores the final answer by exact match. Results are kept per checkpoint, so probing
a new checkpoint adds a new profile instead of replacing the old one. The ``weights`` stage turns
the profile into sampling weights.
"""

from __future__ import annotations

import math
import re

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.annotate import choices_text
from boostqa.stages.base import StageContext
from boostqa.stages.llm import LLMTask, llm_stage

_MC_GOLD = re.compile(r"^\s*\(?([A-Z])[.):]")
_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_NUM_GOLD = re.compile(rf"(?:####\s*({_NUM})\s*$)|(?:({_NUM})\s*\.?\s*\$?\s*$)")
_MC_PRED = re.compile(r"answer is\s*\(?([A-Z])\)?", re.I)
_NUM_PRED = re.compile(rf"answer is\s*\$?({_NUM})", re.I)


def gold(answer: str | None, choices) -> tuple[str | None, str | None]:
    """(kind, gold) a machine can score: 'mc' + letter, or 'numeric' + number, else (None, None)."""
    if not answer:
        return None, None
    if choices is not None and len(choices) >= 2:
        m = _MC_GOLD.match(answer)
        if m and ord(m.group(1)) - 65 < len(choices):
            return "mc", m.group(1)
        return None, None
    m = _NUM_GOLD.search(answer.strip()[-200:])
    if m:
        return "numeric", (m.group(1) or m.group(2)).replace(",", "")
    return None, None


def predicted(kind: str | None, text: str | None) -> str | None:
    if not text or not kind:
        return None
    matches = (_MC_PRED if kind == "mc" else _NUM_PRED).findall(text)
    return matches[-1].upper().replace(",", "") if matches else None


def _same(kind: str, a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    if kind == "numeric":
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        except ValueError:
            return False
    return a == b


def checkpoint(settings) -> str:
    p = settings.probe
    return p.checkpoint or settings.llm.endpoints[p.endpoint].model


GOLD_SCHEMA = T.StructType([T.StructField("seed_uid", T.StringType()), T.StructField("kind", T.StringType()),
                            T.StructField("gold", T.StringType())])


def prepare(ctx: StageContext, seeds: DataFrame) -> DataFrame:
    """The probe set: seeds with a scorable gold answer, up to per_cell per cell, MC first;
    the choice inside a cell is a stable hash order, so reruns and new seeds keep it."""
    def golds(batches):
        for pdf in batches:
            g = [gold(a, c) for a, c in zip(pdf["answer"], pdf["choices"])]
            yield pd.DataFrame({"seed_uid": pdf["seed_uid"], "kind": [k for k, _ in g], "gold": [v for _, v in g]})

    g = seeds.select("seed_uid", "answer", "choices").mapInPandas(golds, GOLD_SCHEMA).where("kind is not null")
    rank = Window.partitionBy("discipline", "difficulty").orderBy(
        F.when(F.col("kind") == "mc", 0).otherwise(1), F.xxhash64("seed_uid", F.lit(ctx.settings.probe.seed)))
    return (seeds.join(g, "seed_uid").withColumn("_rank", F.row_number().over(rank))
            .where(F.col("_rank") <= ctx.settings.probe.per_cell).drop("_rank")
            .withColumn("checkpoint", F.lit(checkpoint(ctx.settings))))


class Probe(LLMTask):
    """The model under training answers a seed in free text; its final answer is scored."""

    sections = ("probe",)
    columns = ("question", "choices", "kind", "gold")
    outputs = (("predicted", T.StringType()), ("correct", T.BooleanType()))

    def endpoint_of(self, settings) -> str:
        return settings.probe.endpoint

    def prompts_of(self, settings) -> str:
        return settings.probe.prompt

    def format_input(self, row) -> dict[str, str]:
        return dict(question=row.question, choices=choices_text(row.choices))

    def format_output(self, parsed: None, raw: str | None, row) -> dict:
        pred = predicted(row.kind, raw)
        return {"predicted": pred, "correct": _same(row.kind, row.gold, pred)}


def columns(ctx: StageContext, out: DataFrame) -> list:
    failed = F.col("_status") == "failed"
    return ["checkpoint", "seed_uid", "discipline", "subfield", "is_stem", "difficulty", "kind", "gold", "predicted",
            F.coalesce("correct", F.lit(False)).alias("correct"), F.col("_model").alias("probe_model"),
            F.col("_prompt_id").alias("prompt_version"), "request_key", F.col("_simulated").alias("llm_simulated"),
            F.lit(ctx.run_id).alias("run_id"), F.when(failed, "deferred").otherwise("kept").alias("_outcome"),
            F.lit(None).cast("string").alias("_reason"), F.when(failed, F.col("_error")).alias("_detail")]


STAGE = llm_stage(
    name="probe",
    inputs={"seeds": "silver.seeds_annotated"},
    output="gold.probe_results",
    key=("checkpoint", "seed_uid"),
    row_key="seed_uid",  # one checkpoint per run
    prepare=prepare,
    tasks=(Probe,),
    columns=columns,
    description="probe the model under training per discipline x difficulty cell",
)

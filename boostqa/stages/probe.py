"""probe: how well does the model under training answer each discipline x difficulty cell?

probe samples, per (discipline, difficulty) cell, up to ``probe.per_cell`` annotated seeds that
have a gold answer a machine can score (a choice letter, else a final number), asks the
``probe`` endpoint (the base model or a mid-training checkpoint behind any OpenAI-compatible
server) and scores its final answer. Two ways to ask (``probe.api``):

- ``chat``: an instruction-tuned checkpoint answers in free text; the final answer is extracted by
  ``text/answers.py`` ("**B**", "The answer is: B", ``\boxed{42}``, "1/2", ...).
- ``completions``: a base checkpoint continues a few-shot prompt (``probe.base_prompt``); a
  multiple-choice item is scored by the log-probabilities of the option letters after "Answer:"
  when the server returns them (``probe.logprobs``), else by the letter it writes.

Results are kept per checkpoint, so probing a new checkpoint adds a new profile instead of
replacing the old one. The ``weights`` stage turns the profile into sampling weights.
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.annotate import choices_text
from boostqa.stages.base import StageContext
from boostqa.stages.llm import LOGPROBS, LLMTask, llm_stage
from boostqa.text.answers import extract_final

_MC_GOLD = re.compile(r"^\s*\(?([A-Z])[.):]")
_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_NUM_GOLD = re.compile(rf"(?:####\s*({_NUM})\s*$)|(?:({_NUM})\s*\.?\s*\$?\s*$)")


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
    """The final answer of a probe response, as a gold of this kind: a letter, or a number."""
    final = extract_final(text) if text and kind else None
    if final is None:
        return None
    if kind == "mc":
        return final.value if final.kind == "choice" else None
    return None if final.number is None else f"{final.number:.10g}"


def by_logprobs(logprobs: str | None, n_choices: int) -> str | None:
    """The option letter the model finds most likely as its first answer token, from the top
    log-probabilities the server returned (None when no offered letter is among them)."""
    if not logprobs:
        return None
    first = next(iter(json.loads(logprobs) or []), None) or {}
    letters = {chr(65 + i) for i in range(n_choices)}
    scored = {}
    for token, lp in first.items():
        letter = str(token).strip().strip("(").rstrip(").:")
        if letter in letters and lp is not None:
            scored[letter] = max(scored.get(letter, -math.inf), lp)
    return max(scored, key=scored.get) if scored else None


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
    """The model under training answers a seed (chat) or continues a few-shot prompt
    (completions); its final answer, or its most likely option letter, is scored."""

    sections = ("probe",)
    columns = ("question", "choices", "kind", "gold", LOGPROBS)
    outputs = (("predicted", T.StringType()), ("correct", T.BooleanType()), ("scored_by", T.StringType()))

    def endpoint_of(self, settings) -> str:
        return settings.probe.endpoint

    def prompts_of(self, settings) -> str:
        return settings.probe.base_prompt if settings.probe.api == "completions" else settings.probe.prompt

    def endpoint_overrides(self, settings) -> dict:
        p = settings.probe
        if p.api != "completions":
            return {}
        return {"api": "completions", "logprobs": p.logprobs or None, "max_tokens": p.base_max_tokens,
                "stop": ("\n\n", "\nQuestion:")}

    def setup(self, settings) -> None:
        self.base = settings.probe.api == "completions"

    def format_input(self, row) -> dict[str, str]:
        choices = choices_text(row.choices)
        if self.base:  # the few-shot layout: option lines, then "Answer:"
            return dict(question=row.question, choices=f"{choices}\n" if choices else "")
        return dict(question=row.question, choices=choices)

    def format_output(self, parsed: None, raw: str | None, row) -> dict:
        n = len(row.choices) if row.kind == "mc" and row.choices is not None else 0
        letter = by_logprobs(getattr(row, LOGPROBS), n) if n else None
        pred = letter or predicted(row.kind, raw)
        return {"predicted": pred, "correct": _same(row.kind, row.gold, pred),
                "scored_by": "logprobs" if letter else "text"}


def columns(ctx: StageContext, out: DataFrame) -> list:
    failed = F.col("_status") == "failed"
    return ["checkpoint", "seed_uid", "discipline", "subfield", "is_stem", "difficulty", "kind", "gold", "predicted",
            F.coalesce("correct", F.lit(False)).alias("correct"), "scored_by", F.col("_model").alias("probe_model"),
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

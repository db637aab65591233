"""annotate: silver.seeds_clean -> silver.seeds_annotated (discipline x difficulty by an LLM).

The annotator labels each seed with a discipline from conf/taxonomy.yaml, a difficulty H1..H5
with written level definitions, and a short rationale. The output schema enumerates the
taxonomy, so an invented label fails validation (and is asked again, then quarantined with the
raw text). ``is_stem`` comes from the taxonomy, not from the model, so it cannot contradict
the discipline. Failed calls leave the seed pending for the next run.
"""

from __future__ import annotations

import json
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field, create_model
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.llm.client import parse_output
from boostqa.llm.prompts import load_prompt, request_key
from boostqa.stages import llm
from boostqa.stages.base import Derived, Stage, StageContext
from boostqa.taxonomy import load_taxonomy

LEVELS = ("H1", "H2", "H3", "H4", "H5")


def annotation_model(labels: list[str]) -> type[BaseModel]:
    """The strict output schema: taxonomy labels and levels as enums."""
    return create_model("SeedAnnotation",
                        discipline=(Literal[tuple(labels)], ...),
                        difficulty=(Literal[LEVELS], ...),
                        rationale=(str, Field(..., min_length=1, max_length=600)))


def _choices_text(choices) -> str:
    if choices is None or (isinstance(choices, float)) or len(choices) == 0:
        return ""
    return "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))


def requests(ctx: StageContext, rows: DataFrame, key: str = "seed_uid", endpoint_name: str | None = None,
             **_: DataFrame) -> DataFrame:
    """(key, request_key, messages) for each row: what would be sent, nothing is called."""
    cfg = ctx.settings.annotate
    ep = llm.endpoint(ctx, endpoint_name or cfg.endpoint, start_simulator=False)
    prompt = load_prompt(cfg.prompt)
    tax = load_taxonomy()
    tax_text, params = tax.prompt_text(), ep.params()

    def render(batches):
        for pdf in batches:
            choices = pdf["choices"] if "choices" in pdf else [None] * len(pdf)
            msgs = [json.dumps(prompt.render(taxonomy=tax_text, question=q, answer=a or "(none)",
                                             choices=_choices_text(c)), ensure_ascii=False)
                    for q, a, c in zip(pdf["question"], pdf["answer"], choices)]
            keys = [request_key(ep.model, prompt, json.loads(m), params) for m in msgs]
            yield pd.DataFrame({key: pdf[key], "request_key": keys, "messages": msgs})

    schema = T.StructType([T.StructField(c, T.StringType()) for c in (key, "request_key", "messages")])
    cols = [key, "question", "answer"] + (["choices"] if "choices" in rows.columns else [])
    return rows.select(*cols).mapInPandas(render, schema)


def annotations(ctx: StageContext, rows: DataFrame, calls: DataFrame | None, key: str = "seed_uid",
                endpoint_name: str | None = None) -> DataFrame:
    """Annotate any rows (key, question, answer[, choices]): key, request_key, messages, the call
    result columns, discipline ("d/s"), difficulty 1..5, rationale, parse_error and _status
    (ok | invalid | failed). Shared by seed annotation and the re-annotation of synthesised QA."""
    ep = llm.endpoint(ctx, endpoint_name or ctx.settings.annotate.endpoint)
    prompt = load_prompt(ctx.settings.annotate.prompt)
    labels = load_taxonomy().labels
    reqs = ctx.checkpoint(requests(ctx, rows, key, endpoint_name))
    results = llm.call(ctx, reqs, ep, lambda: annotation_model(labels), prompt.id, calls)

    def parse(batches):  # the current parser over fresh AND logged responses: a parser fix re-parses for free
        model = annotation_model(labels)
        for pdf in batches:
            out = {"request_key": [], "discipline": [], "difficulty": [], "rationale": [], "parse_error": []}
            for rk, raw in zip(pdf["request_key"], pdf["raw"]):
                try:
                    p = parse_output(raw, model)
                    vals = (p["discipline"], int(p["difficulty"][1]), p["rationale"], None)
                except ValueError as e:
                    vals = (None, None, None, str(e))
                for k, v in zip(("request_key", "discipline", "difficulty", "rationale", "parse_error"),
                                (rk, *vals)):
                    out[k].append(v)
            yield pd.DataFrame(out)

    pschema = T.StructType([T.StructField("request_key", T.StringType()), T.StructField("discipline", T.StringType()),
                            T.StructField("difficulty", T.IntegerType()), T.StructField("rationale", T.StringType()),
                            T.StructField("parse_error", T.StringType())])
    parsed = results.where(F.col("status") != "failed").select("request_key", "raw").mapInPandas(parse, pschema)
    r = results.join(parsed, "request_key", "left")
    status = F.when(F.col("status") == "failed", "failed") \
        .when(F.col("parse_error").isNull() & F.col("discipline").isNotNull(), "ok").otherwise("invalid")
    return reqs.join(r, "request_key").withColumn("_status", status) \
        .withColumn("llm_simulated", F.lit(ep.simulated) | F.coalesce("simulated", F.lit(False)))


def transform(ctx: StageContext, seeds: DataFrame, calls: DataFrame | None = None) -> DataFrame:
    ep = llm.endpoint(ctx, ctx.settings.annotate.endpoint)
    prompt = load_prompt(ctx.settings.annotate.prompt)
    tax = load_taxonomy()
    stem = F.create_map(*[x for d, v in tax.stem.items() for x in (F.lit(d), F.lit(v))])
    out = seeds.join(annotations(ctx, seeds, calls), "seed_uid")
    discipline = F.split("discipline", "/")
    return out.select(
        "seed_uid", "seed_id", "source", "source_row_id", "question", "answer", "choices", "subject_hint", "lang",
        "source_weight", "cluster_id",
        discipline[0].alias("discipline"), discipline[1].alias("subfield"),
        stem[discipline[0]].alias("is_stem"), "difficulty", "rationale",
        F.lit(ep.model).alias("annotator_model"), F.lit(prompt.id).alias("prompt_version"), "request_key",
        "llm_simulated", F.lit(ctx.run_id).alias("run_id"),
        *llm.outcome_columns(), *llm.call_columns())


def _log(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return llm.log_rows(ctx, staged, ctx.settings.annotate.endpoint, load_prompt(ctx.settings.annotate.prompt).id)


def _failures(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return llm.failure_rows(ctx, staged, ctx.settings.annotate.endpoint)


STAGE = Stage(
    name="annotate",
    inputs={"seeds": "silver.seeds_clean", "calls": "ops.llm_calls"},
    optional_inputs=("calls",),
    live_inputs=("calls",),
    output="silver.seeds_annotated",
    rejects="quarantine.annotation",
    key=("seed_uid",),
    reject_columns=("seed_uid", "request_key", "question", "_raw", "_finish_reason"),
    derived=(Derived("ops.llm_calls", ("request_key",), _log),
             Derived("ops.llm_failures", ("request_key", "run_id"), _failures)),
    report=llm.report,
    chunk_rows=lambda s: s.llm.chunk_rows,
    transform=transform,
    config=lambda s: {"annotate": s.annotate.model_dump(),
                      "endpoint": s.llm.endpoints[s.annotate.endpoint].model_dump()
                      if s.annotate.endpoint in s.llm.endpoints else None},
    description="LLM discipline x difficulty (H1-H5) annotation",
    llm=lambda s: (s.annotate.endpoint, load_prompt(s.annotate.prompt).id, requests),
)

"""check: silver.synth_raw -> silver.synth_checked (re-annotate every synthesised question).

The same annotator that labelled the seeds labels each new question + draft answer. A booster
question that comes out below its target level (minus ``synthesis.booster.tolerance``) is
rejected as ``difficulty_degraded`` and, once, planned again with a stronger instruction.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.annotate import Annotation
from boostqa.stages.base import Derived, StageContext
from boostqa.stages.llm import llm_stage
from boostqa.stages.synthesize import SYNTH_REJECTS

STRONGER = ("Your previous attempt came out easier than requested. Make this one clearly harder: at least "
            "four reasoning steps, two interacting concepts, no hints.")


class Reannotation(Annotation):
    """The seed annotator's labels for a synthesised question and its draft answer."""

    sections = ("annotate", "synthesis")
    columns = ("question", "draft_answer")
    outputs = (("achieved_discipline", T.StringType()), ("achieved_difficulty", T.IntegerType()),
               ("achieved_stage", T.StringType()), ("rationale", T.StringType()))

    def endpoint_of(self, settings) -> str:
        return settings.synthesis.reannotate_endpoint

    def format_input(self, row) -> dict[str, str]:
        return dict(taxonomy=self.taxonomy_text, question=row.question, answer=row.draft_answer or "(none)",
                    choices="")


def columns(ctx: StageContext, out: DataFrame) -> list:
    floor = F.col("target_difficulty") - F.lit(ctx.settings.synthesis.booster.tolerance)
    status = F.col("_status")
    degraded = (F.col("mode") == "booster") & (F.col("achieved_difficulty") < floor)
    outcome = F.when(status == "failed", "deferred").when(status.isin("invalid", "truncated"), "rejected") \
        .when(degraded, "rejected").otherwise("kept")
    reason = F.when(status == "invalid", "invalid_output").when(status == "truncated", "truncated") \
        .when((status == "ok") & degraded, "difficulty_degraded")
    detail = F.when(status != "ok", F.coalesce("_parse_error", "_error")).when(
        degraded, F.concat(F.lit("asked for H"), F.col("target_difficulty").cast("string"), F.lit(", re-annotated H"),
                           F.col("achieved_difficulty").cast("string")))
    return ["qa_id", "seed_ids", "mode", "grade_role", "attempt", "seed_difficulty", "target_difficulty",
            "achieved_difficulty", "achieved_discipline", "achieved_stage", "discipline", "subfield", "is_stem",
            "question",
            "draft_answer", "reasoning", F.col("model").alias("generator_model"),
            F.col("prompt_version").alias("generator_prompt"), F.col("run_id").alias("synth_run_id"),
            (F.col("llm_simulated") | F.col("_simulated")).alias("llm_simulated"), "request_key",
            F.lit(ctx.run_id).alias("run_id"), F.col("achieved_difficulty").alias("_achieved_difficulty"),
            outcome.alias("_outcome"), reason.alias("_reason"), detail.alias("_detail"),
            F.col("plan_id").alias("_plan_id")]


def retry_plan(ctx: StageContext, staged: DataFrame) -> DataFrame:
    """Degraded booster tasks are planned once more, with a stronger instruction."""
    b = ctx.settings.synthesis.booster
    rows = staged.where((F.col("_reason") == "difficulty_degraded") & (F.col("attempt") == 0) & F.lit(b.retry_degraded))
    retry_id = F.substring(F.sha2(F.concat_ws("\x1f", "_plan_id", F.lit("retry1")), 256), 1, 32)
    return rows.select(
        retry_id.alias("plan_id"), retry_id.alias("qa_id"), F.col("seed_ids")[0].alias("seed_uid"), "mode",
        "grade_role", F.lit(0).alias("sample"), F.lit(1).alias("attempt"), "seed_difficulty", "target_difficulty",
        "discipline", "subfield", "is_stem", F.lit(1.0).alias("weight"), F.lit(STRONGER).alias("instruction"),
        F.lit(ctx.run_id).alias("run_id"))


STAGE = llm_stage(
    name="check",
    inputs={"qa": "silver.synth_raw"},
    output="silver.synth_checked",
    rejects="quarantine.synth",
    key=("qa_id",),
    tasks=(Reannotation,),
    columns=columns,
    reject_columns=SYNTH_REJECTS,
    derived=(Derived("silver.synth_plan", ("plan_id",), retry_plan),),
    feeds_back="synthesize",  # degraded booster tasks are retried within the same run
    description="re-annotate synthesised QA; reject booster output below its target difficulty",
)

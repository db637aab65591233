"""refine: silver.synth_checked -> silver.synth_refined (solvability + a step-by-step answer).

The refiner checks that each question is solvable and solves it step by step; unsolvable items
are rejected. The refined answer is compared with the draft (final-answer extraction +
normalisation) and the item flagged consistent / inconsistent / undecided; only an undecided pair
goes to an LLM judge (``refine.judge``), whose calls are logged and reused like every other call.
The refined answer is the one kept; a failed judge call leaves the row pending (the refiner's
answer is logged, so it is not paid for again).
"""

from __future__ import annotations

from pydantic import BaseModel, Field, create_model
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import StageContext
from boostqa.stages.llm import LLMTask, ask, llm_stage, no_call_columns
from boostqa.stages.synthesize import SYNTH_REJECTS

JUDGE = "judge_"  # staged columns of the judge call: _judge_request_key, _judge_status, ...


def refine_model() -> type[BaseModel]:
    return create_model("Refinement", solvable=(bool, ...), issues=(str, Field("", max_length=2000)),
                        answer=(str, Field(..., max_length=12000)), final_answer=(str, Field("", max_length=500)))


def judge_model() -> type[BaseModel]:
    return create_model("Judgement", same_final_answer=(bool, ...), reason=(str, Field("", max_length=1000)))


class Refinement(LLMTask):
    """Is the question solvable, and its step-by-step answer; compared with the draft by rules."""

    sections = ("refine",)
    columns = ("question", "draft_answer")
    outputs = (("solvable", T.BooleanType()), ("issues", T.StringType()), ("answer", T.StringType()),
               ("final_answer", T.StringType()), ("rule_verdict", T.StringType()), ("rule_reason", T.StringType()))

    def endpoint_of(self, settings) -> str:
        return settings.refine.endpoint

    def prompts_of(self, settings) -> str:
        return settings.refine.prompt

    def response_model(self) -> type[BaseModel]:
        return refine_model()

    def format_input(self, row) -> dict[str, str]:
        return {"question": row.question}

    def format_output(self, parsed: dict, raw: str | None, row) -> dict:
        from boostqa.text.answers import compare

        refined, final = parsed["answer"].strip(), parsed["final_answer"].strip()
        v = compare(row.draft_answer, refined + (f"\nThe answer is {final}." if final else ""))
        return dict(solvable=parsed["solvable"], issues=parsed["issues"], answer=refined, final_answer=final,
                    rule_verdict=v.verdict, rule_reason=v.reason)


class Judgement(LLMTask):
    """An LLM verdict on a draft/refined answer pair the final-answer rules leave undecided."""

    sections = ("refine",)
    columns = ("question", "draft_answer", "answer")
    outputs = (("judge_same", T.BooleanType()), ("judge_reason", T.StringType()))
    prefix = JUDGE

    def endpoint_of(self, settings) -> str:
        return settings.refine.judge.endpoint

    def prompts_of(self, settings) -> str:
        return settings.refine.judge.prompt

    def response_model(self) -> type[BaseModel]:
        return judge_model()

    def format_input(self, row) -> dict[str, str]:
        return {"question": row.question, "draft": row.draft_answer, "refined": row.answer}

    def format_output(self, parsed: dict, raw: str | None, row) -> dict:
        return {"judge_same": parsed["same_final_answer"], "judge_reason": parsed["reason"].strip()}


def rows(ctx: StageContext, qa: DataFrame) -> DataFrame:
    return qa.drop("request_key", "reasoning")  # the re-annotation key and the generator reasoning


def judged(ctx: StageContext, out: DataFrame, calls: DataFrame | None) -> DataFrame:
    """Ask the judge about the solvable pairs the rules left undecided (when the judge is on)."""
    undecided = (F.col("_status") == "ok") & F.col("solvable") & (F.col("rule_verdict") == "undecided")
    if ctx.settings.refine.judge.enabled:
        verdicts = ask(ctx, out.where(undecided).select("qa_id", "question", "draft_answer", "answer"),
                       Judgement(ctx.settings), calls, "qa_id")
        return out.join(verdicts.drop("question", "draft_answer", "answer"), "qa_id", "left")
    return out.select("*", F.lit(None).cast("boolean").alias("judge_same"),
                      F.lit(None).cast("string").alias("judge_reason"), *no_call_columns(JUDGE))


def _consistency() -> tuple[Column, Column, Column]:
    """(consistency, its reason, who decided): the judge's verdict where it gave one, else the rules'."""
    judged_ok, judge = F.col(f"_{JUDGE}status") == "ok", F.col(f"_{JUDGE}status")  # invalid/truncated: rules
    consistency = F.when(judged_ok, F.when(F.col("judge_same"), "consistent").otherwise("inconsistent")) \
        .otherwise(F.col("rule_verdict"))
    reason = F.when(judged_ok, F.concat(F.lit("judge: "), F.coalesce(F.nullif("judge_reason", F.lit("")),
                                                                    F.lit("(no reason given)")))) \
        .when(judge.isin("invalid", "truncated"),
              F.concat(F.lit("rules: "), F.col("rule_reason"), F.lit("; judge output "), judge, F.lit(": "),
                       F.coalesce(F.col(f"_{JUDGE}parse_error"), F.col(f"_{JUDGE}error")))).otherwise(F.col("rule_reason"))
    by = F.when(judged_ok, "judge").when(F.col("rule_verdict").isNotNull(), "rules")
    return consistency, reason, by


def _outcome() -> list[Column]:
    status = F.col("_status")
    unsolvable = (status == "ok") & ~F.col("solvable")
    judge_failed = F.coalesce(F.col(f"_{JUDGE}status") == "failed", F.lit(False))
    return [F.when((status == "failed") | judge_failed, "deferred")
            .when(status.isin("invalid", "truncated") | unsolvable, "rejected").otherwise("kept").alias("_outcome"),
            F.when(status == "invalid", "invalid_output").when(status == "truncated", "truncated")
            .when(unsolvable, "unsolvable").alias("_reason"),
            F.when(status != "ok", F.coalesce("_parse_error", "_error"))
            .when(unsolvable, F.coalesce(F.nullif(F.trim("issues"), F.lit("")),
                                         F.lit("refiner: not solvable (no reason given)")))
            .when(judge_failed, F.concat(F.lit("judge call failed: "), F.col(f"_{JUDGE}error"))).alias("_detail")]


def columns(ctx: StageContext, out: DataFrame) -> list:
    consistency, reason, by = _consistency()
    simulated = F.col("llm_simulated") | F.col("_simulated") | F.coalesce(f"_{JUDGE}simulated", F.lit(False))
    return ["qa_id", "seed_ids", "mode", "grade_role", "attempt", "seed_difficulty", "target_difficulty",
            "achieved_difficulty", "achieved_discipline", "achieved_stage", "discipline", "subfield", "is_stem",
            "question", "draft_answer", "answer",
            "final_answer", consistency.alias("consistency"), reason.alias("consistency_reason"),
            by.alias("consistency_by"), "generator_model", "generator_prompt", "synth_run_id",
            F.col("run_id").alias("check_run_id"), F.col("_model").alias("refiner_model"),
            F.col("_prompt_id").alias("refiner_prompt"), simulated.alias("llm_simulated"), "request_key",
            F.lit(ctx.run_id).alias("run_id"), F.col("achieved_difficulty").alias("_achieved_difficulty"),
            *_outcome()]


def consistency_counts(ctx: StageContext, staged: DataFrame) -> None:
    for r in staged.groupBy("consistency", "consistency_by").count().collect():
        ctx.stats.add(f"consistency.{r['consistency']}", r["count"])
        if r["consistency_by"] == "judge":
            ctx.stats.add(f"consistency.judge.{r['consistency']}", r["count"])


STAGE = llm_stage(
    name="refine",
    inputs={"qa": "silver.synth_checked"},
    output="silver.synth_refined",
    rejects="quarantine.synth",
    key=("qa_id",),
    tasks=(Refinement, Judgement),
    rows=rows,
    extend=judged,
    columns=columns,
    summarize=consistency_counts,
    reject_columns=SYNTH_REJECTS,
    description="refiner checks solvability and re-solves; draft vs refined answer consistency",
)

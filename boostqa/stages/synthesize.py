"""synthesize: silver.synth_plan -> silver.synth_raw (the generator writes new QA per task).

Multigrade tasks are written as the role's educator at the role's level; booster tasks ask for a
question harder than its H4/H5 seed (with a stronger instruction on a retry planned by check).
One prompt per mode; every call is logged and reused like any other.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, create_model
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import StageContext
from boostqa.stages.llm import LLMTask, llm_stage

LEVEL_TEXT = {1: "H1, basic recall", 2: "H2, routine application of one standard step",
              3: "H3, several standard steps in sequence", 4: "H4, combines concepts and needs insight",
              5: "H5, long expert multi-step reasoning at graduate or olympiad level"}
ROLE_TEXT = {"high_school_teacher": "a high-school teacher", "college_instructor": "a college instructor",
             "graduate_professor": "a graduate-level professor"}
# the columns quarantine.synth keeps of a rejected synthesis row (synthesize, check, refine, gate)
SYNTH_REJECTS = ("qa_id", "mode", "grade_role", "target_difficulty", "_achieved_difficulty", "question", "_raw")


def qa_model() -> type[BaseModel]:
    return create_model("SynthQA", question=(str, Field(..., min_length=10, max_length=6000)),
                        answer=(str, Field(..., min_length=1, max_length=12000)))


class Generation(LLMTask):
    """A new question + worked answer from a seed, as the task's role at its target level."""

    sections = ("synthesis",)
    columns = ("grade_role", "discipline", "subfield", "seed_difficulty", "seed_question", "seed_answer",
               "target_difficulty", "instruction")
    outputs = (("question", T.StringType()), ("draft_answer", T.StringType()))
    prompt_by, sample = "mode", "sample"

    def endpoint_of(self, settings) -> str:
        return settings.synthesis.endpoint

    def prompts_of(self, settings) -> dict[str, str]:
        return dict(settings.synthesis.prompts)

    def response_model(self) -> type[BaseModel]:
        return qa_model()

    def format_input(self, row) -> dict[str, str]:
        return dict(role_description=ROLE_TEXT.get(row.grade_role, row.grade_role.replace("_", " ")),
                    discipline=f"{row.discipline}/{row.subfield}", seed_level=f"H{int(row.seed_difficulty)}",
                    seed_question=row.seed_question, seed_answer=row.seed_answer or "(none)",
                    target_level=f"H{int(row.target_difficulty)}",
                    target_description=LEVEL_TEXT[int(row.target_difficulty)], extra_instruction=row.instruction or "")

    def format_output(self, parsed: dict, raw: str | None, row) -> dict:
        return {"question": parsed["question"].strip(), "draft_answer": parsed["answer"].strip()}


def rows(ctx: StageContext, plan: DataFrame, seeds: DataFrame) -> DataFrame:
    """Each planned task with its seed's question and answer."""
    return plan.join(seeds.select("seed_uid", F.col("question").alias("seed_question"),
                                  F.col("answer").alias("seed_answer")), "seed_uid")


def columns(ctx: StageContext, out: DataFrame) -> list:
    return [F.col("plan_id").alias("qa_id"), "plan_id", F.array("seed_uid").alias("seed_ids"), "mode", "grade_role",
            "attempt", "seed_difficulty", "target_difficulty", "discipline", "subfield", "is_stem", "question",
            "draft_answer", F.col("_reasoning").alias("reasoning"), F.col("_model").alias("model"),
            F.col("_prompt_id").alias("prompt_version"), "request_key", F.col("_simulated").alias("llm_simulated"),
            F.lit(ctx.run_id).alias("run_id"), F.lit(None).cast("int").alias("_achieved_difficulty")]


STAGE = llm_stage(
    name="synthesize",
    inputs={"plan": "silver.synth_plan", "seeds": "silver.seeds_annotated"},
    output="silver.synth_raw",
    rejects="quarantine.synth",
    key=("qa_id",),
    row_key="plan_id",
    tasks=(Generation,),
    rows=rows,
    columns=columns,
    reject_columns=SYNTH_REJECTS,
    description="generator writes new QA per planned task (multigrade roles, booster)",
)

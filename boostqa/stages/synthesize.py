"""synthesize: silver.synth_plan -> silver.synth_raw (the generator writes new QA per task).

Multigrade tasks are written as the role's educator at the role's level; booster tasks ask for a
question harder than its H4/H5 seed (with a stronger instruction on a retry planned by check);
linkqa tasks (planned by kp_walk, plan_id = path_id) give the generator the 2-4 seeds of their
KP-graph path and its KP names, and their output names every seed of the path in ``seed_ids``.
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
    """A new question + worked answer from a seed, as the task's role at its target level (linkqa:
    from the seeds of a KP-graph path, needing their KPs together)."""

    sections = ("synthesis", "linkqa")
    columns = ("grade_role", "discipline", "subfield", "seed_difficulty", "seed_question", "seed_answer",
               "target_difficulty", "instruction", "mode", "linked_seeds", "linked_kps", "linked_n")
    outputs = (("question", T.StringType()), ("draft_answer", T.StringType()))
    prompt_by, sample = "mode", "sample"

    def endpoint_of(self, settings) -> str:
        return settings.synthesis.endpoint

    def prompts_of(self, settings) -> dict[str, str]:
        prompts = dict(settings.synthesis.prompts)
        if settings.linkqa.enabled:
            prompts.setdefault("linkqa", settings.linkqa.prompt)
        return prompts

    def response_model(self) -> type[BaseModel]:
        return qa_model()

    def format_input(self, row) -> dict[str, str]:
        if getattr(row, "mode", None) == "linkqa":
            return dict(discipline=row.discipline, n_seeds=str(int(row.linked_n or 0)), seeds=row.linked_seeds or "",
                        knowledge_points=row.linked_kps or "", target_level=f"H{int(row.target_difficulty)}",
                        target_description=LEVEL_TEXT[int(row.target_difficulty)],
                        extra_instruction=row.instruction or "")
        return dict(role_description=ROLE_TEXT.get(row.grade_role, row.grade_role.replace("_", " ")),
                    discipline=f"{row.discipline}/{row.subfield}", seed_level=f"H{int(row.seed_difficulty)}",
                    seed_question=row.seed_question, seed_answer=row.seed_answer or "(none)",
                    target_level=f"H{int(row.target_difficulty)}",
                    target_description=LEVEL_TEXT[int(row.target_difficulty)], extra_instruction=row.instruction or "")

    def format_output(self, parsed: dict, raw: str | None, row) -> dict:
        return {"question": parsed["question"].strip(), "draft_answer": parsed["answer"].strip()}


def rows(ctx: StageContext, plan: DataFrame, seeds: DataFrame, paths: DataFrame | None = None) -> DataFrame:
    """Each planned task with its seed's question and answer; linkqa tasks also with the seeds of
    their path as one text ("Seed 1 (H3)" ...), its KP names and all its seed ids."""
    out = plan.join(seeds.select("seed_uid", F.col("question").alias("seed_question"),
                                 F.col("answer").alias("seed_answer")), "seed_uid")
    if paths is None:
        return out.select("*", F.lit(None).cast("string").alias("linked_seeds"),
                          F.lit(None).cast("string").alias("linked_kps"), F.lit(None).cast("int").alias("linked_n"),
                          F.lit(None).cast("array<string>").alias("linked_seed_ids"))
    p = paths.select(F.col("path_id").alias("plan_id"), "seed_uids", "kp_names")
    one = p.select("plan_id", F.posexplode("seed_uids").alias("pos", "seed_uid")) \
        .join(seeds.select("seed_uid", "question", "answer", "difficulty"), "seed_uid") \
        .select("plan_id", F.concat(F.lit("Seed "), (F.col("pos") + 1).cast("string"), F.lit(" (difficulty H"),
                                    F.coalesce(F.col("difficulty").cast("string"), F.lit("?")), F.lit(")\nQuestion: "),
                                    "question", F.lit("\nAnswer: "), F.coalesce("answer", F.lit("(none)"))).alias("t"))
    text = one.groupBy("plan_id").agg(F.concat_ws("\n\n", F.sort_array(F.collect_list("t"))).alias("linked_seeds"))
    linked = p.join(text, "plan_id").select(
        "plan_id", "linked_seeds", F.concat_ws("; ", "kp_names").alias("linked_kps"),
        F.size("seed_uids").alias("linked_n"), F.col("seed_uids").alias("linked_seed_ids"))
    return out.join(linked.join(plan.where(F.col("mode") == "linkqa").select("plan_id"), "plan_id"), "plan_id", "left")


def columns(ctx: StageContext, out: DataFrame) -> list:
    return [F.col("plan_id").alias("qa_id"), "plan_id",
            F.coalesce("linked_seed_ids", F.array("seed_uid")).alias("seed_ids"), "mode", "grade_role",
            "attempt", "seed_difficulty", "target_difficulty", "discipline", "subfield", "is_stem", "question",
            "draft_answer", F.col("_reasoning").alias("reasoning"), F.col("_model").alias("model"),
            F.col("_prompt_id").alias("prompt_version"), "request_key", F.col("_simulated").alias("llm_simulated"),
            F.lit(ctx.run_id).alias("run_id"), F.lit(None).cast("int").alias("_achieved_difficulty")]


STAGE = llm_stage(
    name="synthesize",
    inputs={"plan": "silver.synth_plan", "seeds": "silver.seeds_annotated", "paths": "silver.kp_paths"},
    optional_inputs=("paths",),  # LinkQA's paths (linkqa tasks only)
    output="silver.synth_raw",
    rejects="quarantine.synth",
    key=("qa_id",),
    row_key="plan_id",
    tasks=(Generation,),
    rows=rows,
    columns=columns,
    reject_columns=SYNTH_REJECTS,
    description="generator writes new QA per planned task (multigrade roles, booster, linkqa paths)",
)

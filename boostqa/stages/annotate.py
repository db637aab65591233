"""annotate: silver.seeds_clean -> silver.seeds_annotated (discipline x difficulty by an LLM).

The annotator labels each seed with a discipline from conf/taxonomy.yaml, a difficulty H1..H5
with written level definitions, and a short rationale. The output schema enumerates the
taxonomy, so an invented label fails validation (and is asked again, then quarantined with the
raw text). ``is_stem`` comes from the taxonomy, not from the model, so it cannot contradict
the discipline. Failed calls leave the seed pending for the next run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, create_model
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import StageContext
from boostqa.stages.llm import LLMTask, llm_stage
from boostqa.taxonomy import load_taxonomy

LEVELS = ("H1", "H2", "H3", "H4", "H5")
STAGES = ("high_school", "college", "graduate")  # grade stages (the paper's Table A4 columns)


def annotation_model(labels: list[str]) -> type[BaseModel]:
    """The strict output schema: taxonomy labels, levels and grade stages as enums."""
    return create_model("SeedAnnotation",
                        discipline=(Literal[tuple(labels)], ...),
                        difficulty=(Literal[LEVELS], ...),
                        stage=(Literal[STAGES], ...),
                        rationale=(str, Field(..., min_length=1, max_length=600)))


def choices_text(choices) -> str:
    """Choices as "A. ...\\nB. ..." lines (empty when there are none)."""
    if choices is None or isinstance(choices, float) or len(choices) == 0:
        return ""
    return "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))


class Annotation(LLMTask):
    """Discipline/subfield label, difficulty 1..5 and rationale of a question + reference answer."""

    sections = ("annotate",)
    columns = ("question", "answer", "choices")
    outputs = (("discipline", T.StringType()), ("difficulty", T.IntegerType()), ("grade_stage", T.StringType()),
               ("rationale", T.StringType()))

    def endpoint_of(self, settings) -> str:
        return settings.annotate.endpoint

    def prompts_of(self, settings) -> str:
        return settings.annotate.prompt

    def setup(self, settings) -> None:
        tax = load_taxonomy()
        self.labels, self.taxonomy_text = tax.labels, tax.prompt_text()

    def response_model(self) -> type[BaseModel]:
        return annotation_model(self.labels)

    def format_input(self, row) -> dict[str, str]:
        return dict(taxonomy=self.taxonomy_text, question=row.question, answer=row.answer or "(none)",
                    choices=choices_text(getattr(row, "choices", None)))

    def format_output(self, parsed: dict, raw: str | None, row) -> dict:
        return dict(zip((n for n, _ in self.outputs), (parsed["discipline"], int(parsed["difficulty"][1]),
                                                       parsed["stage"], parsed["rationale"])))


def columns(ctx: StageContext, out: DataFrame) -> list:
    task, tax = Annotation(ctx.settings), load_taxonomy()
    stem = F.create_map(*[x for d, v in tax.stem.items() for x in (F.lit(d), F.lit(v))])
    discipline = F.split("discipline", "/")
    return ["seed_uid", "seed_id", "source", "source_row_id", "question", "answer", "choices", "subject_hint", "lang",
            "source_weight", "cluster_id", discipline[0].alias("discipline"), discipline[1].alias("subfield"),
            stem[discipline[0]].alias("is_stem"), "difficulty", "grade_stage", "rationale",
            F.col("_model").alias("annotator_model"), F.lit(task.prompt_ids[0]).alias("prompt_version"),
            "request_key", F.col("_simulated").alias("llm_simulated"), F.lit(ctx.run_id).alias("run_id")]


STAGE = llm_stage(
    name="annotate",
    inputs={"seeds": "silver.seeds_clean"},
    output="silver.seeds_annotated",
    rejects="quarantine.annotation",
    key=("seed_uid",),
    tasks=(Annotation,),
    columns=columns,
    reject_columns=("seed_uid", "request_key", "question", "_raw", "_finish_reason"),
    description="LLM discipline x difficulty (H1-H5) annotation",
)

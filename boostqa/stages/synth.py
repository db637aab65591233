"""BoostQA synthesis: plan -> generate -> re-annotate -> refine.

- sample (silver.seeds_annotated + gold.sampling_weights -> silver.synth_plan): one plan row per
  synthesis task. STEM seeds get one task per educator role x sample (multi-grade synthesis);
  H4/H5 seeds also get booster tasks (harder than the seed). Tasks are drawn without replacement
  with probability proportional to cell weight (probe deficiency) x source weight x booster
  multiplier (Efraimidis-Spirakis keys from a stable hash: same seed + same inputs = same plan),
  up to ``synthesis.budget_qa`` tasks and, if set, ``synthesis.budget_tokens`` expected accepted-QA
  tokens (tasks costed at the observed yield per mode). Tasks over a budget stay pending: raise it
  and rerun; a rerun also tops the plan up when the observed yield came in below the estimate.
- synthesize (plan -> silver.synth_raw): the generator writes a new question + worked answer
  per task (multigrade: as the role's educator at its level; booster: harder than the seed).
- check (silver.synth_raw -> silver.synth_checked): every synthesised question is re-annotated by
  the same annotator; a booster question below its target (minus tolerance) is rejected as
  ``difficulty_degraded`` and, once, planned again with a stronger instruction.
- refine (silver.synth_checked -> silver.synth_refined): the refiner checks solvability and
  solves step by step; unsolvable items are rejected; the refined answer is compared with the
  draft (final-answer extraction + normalisation) and the item flagged consistent /
  inconsistent / undecided; only an undecided pair goes to an LLM judge (``refine.judge``), whose
  calls are logged and reused like every other call. The refined answer is the one kept.
"""

from __future__ import annotations

import json

import pandas as pd
from pydantic import BaseModel, Field, create_model
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.llm.prompts import load_prompt, request_key
from boostqa.stages import annotate, llm
from boostqa.stages.base import Derived, Stage, StageContext

LEVEL_TEXT = {1: "H1, basic recall", 2: "H2, routine application of one standard step",
              3: "H3, several standard steps in sequence", 4: "H4, combines concepts and needs insight",
              5: "H5, long expert multi-step reasoning at graduate or olympiad level"}
ROLE_TEXT = {"high_school_teacher": "a high-school teacher", "college_instructor": "a college instructor",
             "graduate_professor": "a graduate-level professor"}
STRONGER = ("Your previous attempt came out easier than requested. Make this one clearly harder: at least "
            "four reasoning steps, two interacting concepts, no hints.")


def _role_text(role: str) -> str:
    return ROLE_TEXT.get(role, role.replace("_", " "))


# ------------------------------------------------------------------------------------------ sample
def plan_candidates(ctx: StageContext, seeds: DataFrame) -> DataFrame:
    """Every synthesis task the seeds allow (the runner then keeps those not planned yet)."""
    c = ctx.settings.synthesis
    base = seeds.select("seed_uid", "discipline", "subfield", "is_stem", F.col("difficulty").alias("seed_difficulty"),
                        F.coalesce("source_weight", F.lit(1.0)).alias("source_weight"))
    roles = F.array(*[F.struct(F.lit(r).alias("role"), F.lit(int(t)).alias("target")) for r, t in c.roles.items()])
    samples = F.sequence(F.lit(0), F.lit(c.samples_per_role - 1))
    mg = base.where(F.col("is_stem") | F.lit(c.multigrade_non_stem)) \
        .select("*", F.explode(roles).alias("r"), F.explode(samples).alias("sample")) \
        .select(*base.columns, F.lit("multigrade").alias("mode"), F.col("r.role").alias("grade_role"),
                F.col("r.target").alias("target_difficulty"), "sample")
    parts = [mg]
    b = c.booster
    if b.enabled:
        parts.append(base.where(F.col("seed_difficulty") >= b.min_seed_difficulty)
                     .select("*", F.explode(F.sequence(F.lit(0), F.lit(b.samples - 1))).alias("sample"))
                     .select(*base.columns, F.lit("booster").alias("mode"), F.lit("expert_setter").alias("grade_role"),
                             F.least(F.lit(5), F.col("seed_difficulty") + b.target_bump).alias("target_difficulty"),
                             "sample"))
    out = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    plan_id = F.substring(F.sha2(F.concat_ws("\x1f", "seed_uid", "mode", "grade_role", F.col("sample").cast("string"),
                                             F.lit("0")), 256), 1, 32)
    return out.withColumn("attempt", F.lit(0)).withColumn("plan_id", plan_id).withColumn("qa_id", plan_id)


def task_yield(ctx: StageContext, gold: DataFrame | None, rejects: DataFrame | None) -> dict[str, float]:
    """Expected accepted-QA tokens per planned task, per mode: gold tokens / tasks with an outcome
    (in gold or quarantined at any synthesis stage); the configured prior until enough finished."""
    c = ctx.settings.synthesis
    est = {m: float(c.est_tokens_per_task) for m in ("multigrade", "booster")}
    if gold is None:
        return est
    done = gold.groupBy("mode").agg(F.sum("n_tokens").alias("tokens"), F.count(F.lit(1)).alias("kept"))
    if rejects is not None:
        lost = rejects.where(F.col("mode").isNotNull()).groupBy("mode").agg(F.count(F.lit(1)).alias("lost"))
        done = done.join(lost, "mode", "full")
    else:
        done = done.withColumn("lost", F.lit(0))
    for r in done.collect():
        finished = (r["kept"] or 0) + (r["lost"] or 0)
        if r["mode"] in est and finished >= c.min_yield_tasks:
            est[r["mode"]] = float(r["tokens"] or 0) / finished
    return est


def sample_transform(ctx: StageContext, seeds: DataFrame, weights: DataFrame | None = None,
                     gold: DataFrame | None = None, rejects: DataFrame | None = None,
                     existing: DataFrame | None = None) -> DataFrame:
    c = ctx.settings.synthesis
    rows = seeds
    if weights is not None:
        latest = weights.select("checkpoint").distinct().orderBy("checkpoint").limit(1)
        w = weights.join(latest, "checkpoint").select("discipline", "difficulty", F.col("weight").alias("cell_weight"))
        rows = rows.join(w.withColumnRenamed("difficulty", "seed_difficulty"), ["discipline", "seed_difficulty"],
                         "left")
    else:
        rows = rows.withColumn("cell_weight", F.lit(None).cast("double"))
    mult = F.create_map(*[x for k, v in c.booster.weight_multiplier.items()
                          for x in (F.lit(int(k.lstrip("H"))), F.lit(float(v)))])
    boost = F.when(F.col("mode") == "booster", F.coalesce(mult[F.col("seed_difficulty")], F.lit(1.0))).otherwise(1.0)
    weight = F.coalesce("cell_weight", F.lit(1.0)) * F.col("source_weight") * boost
    # Efraimidis-Spirakis: key = u^(1/w); the largest keys form a weighted sample without replacement
    u = (F.abs(F.xxhash64("plan_id", F.lit(c.seed))) % F.lit(2 ** 52) + F.lit(1)).cast("double") / F.lit(2.0 ** 52 + 2)
    rows = rows.withColumn("weight", weight).withColumn("_key", F.log(u) / F.col("weight"))
    # budgets count sampled tasks (attempt 0); check's booster retries come on top of them
    planned = existing.where(F.col("attempt") == 0) if existing is not None else None
    room = max(0, c.budget_qa - (planned.count() if planned is not None else 0))
    # one global ranking over the candidates (small: seeds x roles); an explicit single partition
    order = Window.partitionBy(F.lit(0)).orderBy(F.col("_key").desc(), "plan_id")
    ranked = rows.withColumn("_rank", F.row_number().over(order))
    chosen = F.col("_rank") <= F.lit(room)
    why = f"synthesis.budget_qa={c.budget_qa}"
    if c.budget_tokens is not None:
        est = task_yield(ctx, gold, rejects)
        cost = F.create_map(*[x for m, v in est.items() for x in (F.lit(m), F.lit(v))])
        spent = 0.0
        if planned is not None:
            spent = sum(est.get(r["mode"], c.est_tokens_per_task) * r["count"]
                        for r in planned.groupBy("mode").count().collect())
        ranked = ranked.withColumn("_cum", F.sum(cost[F.col("mode")]).over(
            order.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
        chosen = chosen & (F.col("_cum") <= F.lit(c.budget_tokens - spent))
        ctx.extra.update({f"expected_tokens_per_task.{m}": v for m, v in est.items()})
        why += f" and synthesis.budget_tokens={c.budget_tokens} (about {round(spent)} tokens already planned)"
    return ranked.select(
        "plan_id", "qa_id", "seed_uid", "mode", "grade_role", "sample", "attempt", "seed_difficulty", "target_difficulty",
        "discipline", "subfield", "is_stem", "weight", F.lit(None).cast("string").alias("instruction"),
        F.lit(ctx.run_id).alias("run_id"),
        F.when(chosen, "kept").otherwise("deferred").alias("_outcome"), F.lit(None).cast("string").alias("_reason"),
        F.when(~chosen, F.lit(f"not sampled under {why}")).alias("_detail"))


SAMPLE_STAGE = Stage(
    name="sample",
    inputs={"seeds": "silver.seeds_annotated", "weights": "gold.sampling_weights", "gold": "gold.boostqa",
            "rejects": "quarantine.synth"},
    optional_inputs=("weights", "gold", "rejects"),
    output="silver.synth_plan",
    key=("qa_id",),
    prepare=plan_candidates,
    reads_output=True,
    whole=True,  # a weighted sample is drawn over all candidates at once
    transform=sample_transform,
    config=lambda s: {"synthesis": s.synthesis.model_dump()},
    description="plan synthesis tasks: multi-grade roles + booster, weighted by probe deficiency",
)


# ------------------------------------------------------------------------------------------ synthesize
def qa_model() -> type[BaseModel]:
    return create_model("SynthQA", question=(str, Field(..., min_length=10, max_length=6000)),
                        answer=(str, Field(..., min_length=1, max_length=12000)))


def synth_requests(ctx: StageContext, plan: DataFrame, seeds: DataFrame | None = None) -> DataFrame:
    c = ctx.settings.synthesis
    ep = llm.endpoint(ctx, c.endpoint, start_simulator=False)
    prompts = {m: load_prompt(n) for m, n in c.prompts.items()}
    params = ep.params()
    rows = plan.join(seeds.select("seed_uid", F.col("question").alias("seed_question"),
                                  F.col("answer").alias("seed_answer")), "seed_uid") if seeds is not None else plan

    def render(batches):
        for pdf in batches:
            msgs, keys = [], []
            for r in pdf.itertuples(index=False):
                prompt = prompts[r.mode]
                fields = dict(role_description=_role_text(r.grade_role), discipline=f"{r.discipline}/{r.subfield}",
                              seed_level=LEVEL_TEXT[int(r.seed_difficulty)][:2], seed_question=r.seed_question,
                              seed_answer=r.seed_answer or "(none)", target_level=f"H{int(r.target_difficulty)}",
                              target_description=LEVEL_TEXT[int(r.target_difficulty)],
                              extra_instruction=r.instruction or "")
                m = prompt.render(**fields) if r.mode == "booster" else \
                    prompt.render(**{k: v for k, v in fields.items() if k != "extra_instruction"})
                msgs.append(json.dumps(m, ensure_ascii=False))
                keys.append(request_key(ep.model, prompt, m, params, int(r.sample)))
            yield pd.DataFrame({"plan_id": pdf["plan_id"], "request_key": keys, "messages": msgs,
                                "sample": pdf["sample"].astype("int64")})

    cols = ["plan_id", "mode", "grade_role", "discipline", "subfield", "seed_difficulty", "target_difficulty", "sample",
            "instruction", "seed_question", "seed_answer"]
    schema = T.StructType([*[T.StructField(c, T.StringType()) for c in ("plan_id", "request_key", "messages")],
                           T.StructField("sample", T.LongType())])
    return rows.select(*cols).mapInPandas(render, schema)


def _prompt_ids(ctx: StageContext) -> dict[str, str]:
    return {m: load_prompt(n).id for m, n in ctx.settings.synthesis.prompts.items()}


def synthesize_transform(ctx: StageContext, plan: DataFrame, seeds: DataFrame,
                         calls: DataFrame | None = None) -> DataFrame:
    c = ctx.settings.synthesis
    ep = llm.endpoint(ctx, c.endpoint)
    reqs = ctx.checkpoint(synth_requests(ctx, plan, seeds))
    ids = _prompt_ids(ctx)
    # one prompt id per mode; calls are logged and reused per id
    results = None
    for mode, pid in ids.items():
        part = reqs.join(plan.where(F.col("mode") == mode).select("plan_id"), "plan_id")
        r = llm.call(ctx, part, ep, qa_model, pid, calls)
        results = r if results is None else results.unionByName(r)

    def parse(batches):
        model = qa_model()
        from boostqa.llm.client import parse_output

        for pdf in batches:
            q, a, err = [], [], []
            for raw in pdf["raw"]:
                try:
                    p = parse_output(raw, model)
                    q.append(p["question"].strip()), a.append(p["answer"].strip()), err.append(None)
                except ValueError as e:
                    q.append(None), a.append(None), err.append(str(e))
            yield pd.DataFrame({"request_key": pdf["request_key"], "question": q, "draft_answer": a,
                                "parse_error": err})

    pschema = T.StructType([T.StructField(n, T.StringType())
                            for n in ("request_key", "question", "draft_answer", "parse_error")])
    parsed = results.where(F.col("status") != "failed").select("request_key", "raw").mapInPandas(parse, pschema)
    r = results.join(parsed, "request_key", "left")
    status = F.when(F.col("status") == "failed", "failed") \
        .when(F.col("parse_error").isNull() & F.col("question").isNotNull(), "ok").otherwise("invalid")
    out = plan.drop("qa_id").join(reqs, "plan_id").join(r, "request_key").withColumn("_status", status)
    pid = F.create_map(*[x for m, p in ids.items() for x in (F.lit(m), F.lit(p))])
    return out.select(
        F.col("plan_id").alias("qa_id"), "plan_id", F.array("seed_uid").alias("seed_ids"), "mode", "grade_role",
        "attempt", "seed_difficulty", "target_difficulty", "discipline", "subfield", "is_stem", "question",
        "draft_answer", "reasoning", F.lit(ep.model).alias("model"), pid[F.col("mode")].alias("prompt_version"),
        "request_key", (F.lit(ep.simulated) | F.coalesce("simulated", F.lit(False))).alias("llm_simulated"),
        F.lit(ctx.run_id).alias("run_id"), F.lit(None).cast("int").alias("_achieved_difficulty"),
        *llm.outcome_columns(), *llm.call_columns())


def _synth_log(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return llm.log_rows(ctx, staged, ctx.settings.synthesis.endpoint, F.col("prompt_version"))


def _llm_derived(endpoint_of, log=None) -> tuple[Derived, ...]:
    """ops.llm_calls (reusable responses) and ops.llm_failures for a stage's staged rows."""
    return (Derived("ops.llm_calls", ("request_key",), log),
            Derived("ops.llm_failures", ("request_key", "run_id"),
                    lambda ctx, st: llm.failure_rows(ctx, st, endpoint_of(ctx.settings))))


SYNTH_REJECTS = ("qa_id", "mode", "grade_role", "target_difficulty", "_achieved_difficulty", "question", "_raw")

SYNTHESIZE_STAGE = Stage(
    name="synthesize",
    inputs={"plan": "silver.synth_plan", "seeds": "silver.seeds_annotated", "calls": "ops.llm_calls"},
    optional_inputs=("calls",),
    live_inputs=("calls",),
    output="silver.synth_raw",
    rejects="quarantine.synth",
    key=("qa_id",),
    reject_columns=SYNTH_REJECTS,
    derived=_llm_derived(lambda s: s.synthesis.endpoint, _synth_log),
    report=llm.report,
    chunk_rows=lambda s: s.llm.chunk_rows,
    transform=synthesize_transform,
    config=lambda s: {"synthesis": s.synthesis.model_dump()},
    description="generator writes new QA per planned task (multigrade roles, booster)",
    llm=lambda s: (s.synthesis.endpoint, load_prompt(s.synthesis.prompts["multigrade"]).id,
                   lambda ctx, plan, seeds=None, **_: synth_requests(ctx, plan, seeds)),
)


# ------------------------------------------------------------------------------------------ check
def check_transform(ctx: StageContext, qa: DataFrame, calls: DataFrame | None = None) -> DataFrame:
    c = ctx.settings.synthesis
    ann = annotate.annotations(ctx, qa.select("qa_id", "question", F.col("draft_answer").alias("answer")), calls,
                               key="qa_id", endpoint_name=c.reannotate_endpoint)
    qa = qa.select("qa_id", "plan_id", "seed_ids", "mode", "grade_role", "attempt", "seed_difficulty",
                   "target_difficulty", "discipline", "subfield", "is_stem", "question", "draft_answer",
                   F.col("reasoning").alias("gen_reasoning"), "model", "prompt_version", "llm_simulated",
                   F.col("run_id").alias("synth_run_id"))
    out = qa.join(ann.withColumnRenamed("difficulty", "achieved_difficulty")
                  .withColumnRenamed("discipline", "achieved_discipline").drop("llm_simulated", "rationale"), "qa_id")
    floor = F.col("target_difficulty") - F.lit(c.booster.tolerance)
    degraded = (F.col("mode") == "booster") & (F.col("achieved_difficulty") < floor)
    outcome = F.when(F.col("_status") == "failed", "deferred").when(F.col("_status") == "invalid", "rejected") \
        .when(degraded, "rejected").otherwise("kept")
    reason = F.when(F.col("_status") == "invalid", "invalid_output").when(
        (F.col("_status") == "ok") & degraded, "difficulty_degraded")
    detail = F.when(F.col("_status") != "ok", F.coalesce("parse_error", "error")).when(
        degraded, F.concat(F.lit("asked for H"), F.col("target_difficulty").cast("string"), F.lit(", re-annotated H"),
                           F.col("achieved_difficulty").cast("string")))
    return out.select(
        "qa_id", "seed_ids", "mode", "grade_role", "attempt", "seed_difficulty", "target_difficulty",
        "achieved_difficulty", "achieved_discipline", "discipline", "subfield", "is_stem", "question", "draft_answer",
        F.col("gen_reasoning").alias("reasoning"), F.col("model").alias("generator_model"),
        F.col("prompt_version").alias("generator_prompt"), "synth_run_id",
        (F.col("llm_simulated") | F.coalesce("simulated", F.lit(False))).alias("llm_simulated"),
        "request_key", F.lit(ctx.run_id).alias("run_id"), F.col("achieved_difficulty").alias("_achieved_difficulty"),
        outcome.alias("_outcome"), reason.alias("_reason"), detail.alias("_detail"),
        F.col("plan_id").alias("_plan_id"), *llm.call_columns())


def _retry_plan(ctx: StageContext, staged: DataFrame) -> DataFrame:
    """Degraded booster tasks are planned once more, with a stronger instruction."""
    b = ctx.settings.synthesis.booster
    rows = staged.where((F.col("_reason") == "difficulty_degraded") & (F.col("attempt") == 0) & F.lit(b.retry_degraded))
    retry_id = F.substring(F.sha2(F.concat_ws("\x1f", "_plan_id", F.lit("retry1")), 256), 1, 32)
    return rows.select(
        retry_id.alias("plan_id"), retry_id.alias("qa_id"), F.col("seed_ids")[0].alias("seed_uid"), "mode", "grade_role", F.lit(0).alias("sample"),
        F.lit(1).alias("attempt"), "seed_difficulty", "target_difficulty", "discipline", "subfield", "is_stem",
        F.lit(1.0).alias("weight"), F.lit(STRONGER).alias("instruction"), F.lit(ctx.run_id).alias("run_id"))


def _check_log(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return llm.log_rows(ctx, staged, ctx.settings.synthesis.reannotate_endpoint,
                        load_prompt(ctx.settings.annotate.prompt).id)


CHECK_STAGE = Stage(
    name="check",
    inputs={"qa": "silver.synth_raw", "calls": "ops.llm_calls"},
    optional_inputs=("calls",),
    live_inputs=("calls",),
    output="silver.synth_checked",
    rejects="quarantine.synth",
    key=("qa_id",),
    reject_columns=SYNTH_REJECTS,
    derived=(*_llm_derived(lambda s: s.synthesis.reannotate_endpoint, _check_log),
             Derived("silver.synth_plan", ("plan_id",), _retry_plan)),
    report=llm.report,
    chunk_rows=lambda s: s.llm.chunk_rows,
    transform=check_transform,
    config=lambda s: {"booster": s.synthesis.booster.model_dump()},
    description="re-annotate synthesised QA; reject booster output below its target difficulty",
)


# ------------------------------------------------------------------------------------------ refine
def refine_model() -> type[BaseModel]:
    return create_model("Refinement", solvable=(bool, ...), issues=(str, Field("", max_length=2000)),
                        answer=(str, Field(..., max_length=12000)), final_answer=(str, Field("", max_length=500)))


def refine_requests(ctx: StageContext, qa: DataFrame, **_: DataFrame) -> DataFrame:
    c = ctx.settings.refine
    ep = llm.endpoint(ctx, c.endpoint, start_simulator=False)
    return llm.render_requests(qa, "qa_id", ep, load_prompt(c.prompt), {"question": "question"})


def judge_model() -> type[BaseModel]:
    return create_model("Judgement", same_final_answer=(bool, ...), reason=(str, Field("", max_length=1000)))


JUDGE = "judge_"  # staged columns of the judge call: _judge_request_key, _judge_status, ...


def _judge(ctx: StageContext, undecided: DataFrame, calls: DataFrame | None) -> DataFrame:
    """An LLM verdict for draft/refined pairs the final-answer rules leave undecided: qa_id ->
    judge_same, judge_reason + the judge call's staged columns. Calls are logged and reused."""
    from boostqa.llm.client import parse_output

    j = ctx.settings.refine.judge
    ep, prompt = llm.endpoint(ctx, j.endpoint), load_prompt(j.prompt)
    reqs = ctx.checkpoint(llm.render_requests(undecided, "qa_id", ep, prompt,
                                              {"question": "question", "draft": "draft_answer", "refined": "answer"}))
    results = llm.call(ctx, reqs, ep, judge_model, prompt.id, calls)

    def parse(batches):
        model = judge_model()
        for pdf in batches:
            rows = []
            for rk, raw in zip(pdf["request_key"], pdf["raw"]):
                try:
                    p = parse_output(raw, model)
                    rows.append((rk, p["same_final_answer"], p["reason"].strip(), None))
                except ValueError as e:
                    rows.append((rk, None, None, str(e)))
            yield pd.DataFrame(rows, columns=["request_key", "judge_same", "judge_reason", "parse_error"])

    pschema = T.StructType([T.StructField("request_key", T.StringType()), T.StructField("judge_same", T.BooleanType()),
                            T.StructField("judge_reason", T.StringType()), T.StructField("parse_error", T.StringType())])
    parsed = results.where(F.col("status") != "failed").select("request_key", "raw").mapInPandas(parse, pschema)
    r = reqs.join(results, "request_key").join(parsed, "request_key", "left")
    status = F.when(F.col("status") == "failed", "failed").when(F.col("judge_same").isNotNull(), "ok") \
        .otherwise("invalid")
    return r.withColumn("_status", status).select(
        "qa_id", "judge_same", "judge_reason", F.col("parse_error").alias("judge_parse_error"),
        *llm.call_columns(JUDGE))


def refine_transform(ctx: StageContext, qa: DataFrame, calls: DataFrame | None = None) -> DataFrame:
    from boostqa.llm.client import parse_output
    from boostqa.text.answers import compare

    c = ctx.settings.refine
    ep = llm.endpoint(ctx, c.endpoint)
    prompt = load_prompt(c.prompt)
    qa = qa.drop("request_key", "reasoning")  # the re-annotation key and the generator reasoning
    reqs = ctx.checkpoint(refine_requests(ctx, qa))
    results = llm.call(ctx, reqs, ep, refine_model, prompt.id, calls)

    def parse(batches):
        model = refine_model()
        for pdf in batches:
            rows = []
            for rk, raw, draft in zip(pdf["request_key"], pdf["raw"], pdf["draft_answer"]):
                try:
                    p = parse_output(raw, model)
                    refined = p["answer"].strip()
                    final = p["final_answer"].strip()
                    v = compare(draft, refined + (f"\nThe answer is {final}." if final else ""))
                    rows.append((rk, p["solvable"], p["issues"], refined, final, v.verdict, v.reason, None))
                except ValueError as e:
                    rows.append((rk, None, None, None, None, None, None, str(e)))
            yield pd.DataFrame(rows, columns=["request_key", "solvable", "issues", "answer", "final_answer",
                                              "rule_verdict", "rule_reason", "parse_error"])

    pschema = T.StructType([T.StructField("request_key", T.StringType()), T.StructField("solvable", T.BooleanType()),
                            *[T.StructField(n, T.StringType()) for n in ("issues", "answer", "final_answer",
                                                                           "rule_verdict", "rule_reason",
                                                                           "parse_error")]])
    with_draft = results.join(reqs.select("request_key", "qa_id"), "request_key") \
        .join(qa.select("qa_id", "draft_answer"), "qa_id")
    parsed = ctx.checkpoint(with_draft.where(F.col("status") != "failed").select("request_key", "raw", "draft_answer")
                            .dropDuplicates(["request_key"]).mapInPandas(parse, pschema))
    r = results.join(parsed, "request_key", "left")
    status = F.when(F.col("status") == "failed", "failed") \
        .when(F.col("parse_error").isNull() & F.col("solvable").isNotNull(), "ok").otherwise("invalid")
    out = qa.join(reqs, "qa_id").join(r, "request_key").withColumn("_status", status)
    unsolvable = (F.col("_status") == "ok") & ~F.col("solvable")
    ask_judge = (F.col("_status") == "ok") & F.col("solvable") & (F.col("rule_verdict") == "undecided")
    if c.judge.enabled:
        judged = _judge(ctx, out.where(ask_judge).select("qa_id", "question", "draft_answer", "answer"), calls)
        out = out.join(judged, "qa_id", "left")
    else:
        out = out.select("*", F.lit(None).cast("boolean").alias("judge_same"),
                         F.lit(None).cast("string").alias("judge_reason"),
                         F.lit(None).cast("string").alias("judge_parse_error"), *llm.no_call_columns(JUDGE))
    judged_ok = F.col(f"_{JUDGE}status") == "ok"
    consistency = F.when(judged_ok, F.when(F.col("judge_same"), "consistent").otherwise("inconsistent")) \
        .otherwise(F.col("rule_verdict"))
    consistency_reason = F.when(judged_ok, F.concat(F.lit("judge: "), F.coalesce(F.nullif("judge_reason", F.lit("")),
                                                                                 F.lit("(no reason given)")))) \
        .when(F.col(f"_{JUDGE}status") == "invalid",
              F.concat(F.lit("rules: "), F.col("rule_reason"), F.lit("; judge output invalid: "),
                       F.col("judge_parse_error"))).otherwise(F.col("rule_reason"))
    judge_failed = F.coalesce(F.col(f"_{JUDGE}status") == "failed", F.lit(False))
    return out.select(
        "qa_id", "seed_ids", "mode", "grade_role", "attempt", "seed_difficulty", "target_difficulty",
        "achieved_difficulty", "discipline", "subfield", "is_stem", "question", "draft_answer", "answer",
        "final_answer", consistency.alias("consistency"), consistency_reason.alias("consistency_reason"),
        F.when(judged_ok, "judge").when(F.col("rule_verdict").isNotNull(), "rules").alias("consistency_by"),
        "generator_model", "generator_prompt", "synth_run_id",
        F.col("run_id").alias("check_run_id"), F.lit(ep.model).alias("refiner_model"),
        F.lit(prompt.id).alias("refiner_prompt"),
        (F.col("llm_simulated") | F.lit(ep.simulated) | F.coalesce("simulated", F.lit(False))
         | F.coalesce(f"_{JUDGE}simulated", F.lit(False))).alias("llm_simulated"),
        "request_key", F.lit(ctx.run_id).alias("run_id"), F.col("achieved_difficulty").alias("_achieved_difficulty"),
        # a failed judge call leaves the row pending: the refiner's answer is logged and reused next run
        F.when((F.col("_status") == "failed") | judge_failed, "deferred")
        .when((F.col("_status") == "invalid") | unsolvable, "rejected").otherwise("kept").alias("_outcome"),
        F.when(F.col("_status") == "invalid", "invalid_output").when(unsolvable, "unsolvable").alias("_reason"),
        F.when(F.col("_status") != "ok", F.coalesce("parse_error", "error"))
        .when(unsolvable, F.coalesce(F.nullif(F.trim("issues"), F.lit("")), F.lit("refiner: not solvable (no reason given)")))
        .when(judge_failed, F.concat(F.lit("judge call failed: "), F.col(f"_{JUDGE}error")))
        .alias("_detail"),
        *llm.call_columns(), *[c for c in out.columns if c.startswith(f"_{JUDGE}")])


def _refine_log(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return llm.log_rows(ctx, staged, ctx.settings.refine.endpoint, load_prompt(ctx.settings.refine.prompt).id)


def _judge_log(ctx: StageContext, staged: DataFrame) -> DataFrame:
    j = ctx.settings.refine.judge
    return llm.log_rows(ctx, staged, j.endpoint, load_prompt(j.prompt).id, prefix=JUDGE)


def refine_report(staged: DataFrame) -> dict[str, float]:
    out = llm.report(staged)
    out.update({k: v for k, v in llm.report(staged, prefix=JUDGE).items() if k != "llm.judge_simulated_rows"})
    for r in staged.groupBy("consistency", "consistency_by").count().collect():
        out[f"consistency.{r['consistency']}"] = out.get(f"consistency.{r['consistency']}", 0.0) + float(r["count"])
        if r["consistency_by"] == "judge":
            out[f"consistency.judge.{r['consistency']}"] = float(r["count"])
    return out


REFINE_STAGE = Stage(
    name="refine",
    inputs={"qa": "silver.synth_checked", "calls": "ops.llm_calls"},
    optional_inputs=("calls",),
    live_inputs=("calls",),
    output="silver.synth_refined",
    rejects="quarantine.synth",
    key=("qa_id",),
    reject_columns=SYNTH_REJECTS,
    derived=(*_llm_derived(lambda s: s.refine.endpoint, _refine_log),
             Derived("ops.llm_calls", ("request_key",), _judge_log),
             Derived("ops.llm_failures", ("request_key", "run_id"),
                     lambda ctx, st: llm.failure_rows(ctx, st, ctx.settings.refine.judge.endpoint, prefix=JUDGE))),
    report=refine_report,
    chunk_rows=lambda s: s.llm.chunk_rows,
    transform=refine_transform,
    config=lambda s: {"refine": s.refine.model_dump()},
    description="refiner checks solvability and re-solves; draft vs refined answer consistency",
    llm=lambda s: (s.refine.endpoint, load_prompt(s.refine.prompt).id, refine_requests),
)

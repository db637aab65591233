"""sample: silver.seeds_annotated + gold.sampling_weights -> silver.synth_plan (synthesis tasks).

One plan row per synthesis task. STEM seeds get one task per educator role x sample (multi-grade
synthesis); H4/H5 seeds also get booster tasks (harder than the seed). Tasks are drawn without
replacement with probability proportional to cell weight (probe deficiency) x source weight x
booster multiplier (Efraimidis-Spirakis keys from a stable hash: same seed + same inputs = same
plan), up to ``synthesis.budget_qa`` tasks and, if set, ``synthesis.budget_tokens`` expected
accepted-QA tokens (tasks costed at the observed yield per mode). Tasks over a budget stay
pending: raise it and rerun; a rerun also tops the plan up when the observed yield came in below
the estimate.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from boostqa.stages.base import Stage, StageContext

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


def _weighted(ctx: StageContext, candidates: DataFrame, weights: DataFrame | None) -> DataFrame:
    """Candidates with their sampling weight (cell weight x source weight x booster multiplier)
    and Efraimidis-Spirakis key: key = log(u) / w; the largest keys form a weighted sample without
    replacement, with u from a stable hash of the task."""
    c = ctx.settings.synthesis
    rows = candidates
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
    u = (F.abs(F.xxhash64("plan_id", F.lit(c.seed))) % F.lit(2 ** 52) + F.lit(1)).cast("double") / F.lit(2.0 ** 52 + 2)
    return rows.withColumn("weight", weight).withColumn("_key", F.log(u) / F.col("weight"))


def transform(ctx: StageContext, seeds: DataFrame, weights: DataFrame | None = None,
              gold: DataFrame | None = None, rejects: DataFrame | None = None) -> DataFrame:
    c = ctx.settings.synthesis
    rows = _weighted(ctx, seeds, weights)
    # budgets count sampled tasks (attempt 0); check's booster retries come on top of them
    planned = ctx.existing.where(F.col("attempt") == 0) if ctx.existing is not None else None
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
        for m, v in est.items():
            ctx.stats.set(f"expected_tokens_per_task.{m}", v)
        why += f" and synthesis.budget_tokens={c.budget_tokens} (about {round(spent)} tokens already planned)"
    return ranked.select(
        "plan_id", "qa_id", "seed_uid", "mode", "grade_role", "sample", "attempt", "seed_difficulty", "target_difficulty",
        "discipline", "subfield", "is_stem", "weight", F.lit(None).cast("string").alias("instruction"),
        F.lit(ctx.run_id).alias("run_id"),
        F.when(chosen, "kept").otherwise("deferred").alias("_outcome"), F.lit(None).cast("string").alias("_reason"),
        F.when(~chosen, F.lit(f"not sampled under {why}")).alias("_detail"))


STAGE = Stage(
    name="sample",
    inputs={"seeds": "silver.seeds_annotated", "weights": "gold.sampling_weights", "gold": "gold.boostqa",
            "rejects": "quarantine.synth"},
    optional_inputs=("weights", "gold", "rejects"),
    output="silver.synth_plan",
    key=("qa_id",),
    prepare=plan_candidates,
    reads_output=True,
    whole=True,  # a weighted sample is drawn over all candidates at once
    deferral_is_failure=False,  # tasks over the budget wait for a larger one: by design
    transform=transform,
    sections=("synthesis",),
    description="plan synthesis tasks: multi-grade roles + booster, weighted by probe deficiency",
)



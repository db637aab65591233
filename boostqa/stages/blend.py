"""blend: components (gold.boostqa, the general corpus, ...) -> gold.mix, by tokens.

A component gets ``ratio`` of ``blend.target_tokens`` (ratios normalised), optionally split by a
column (``by`` + ``shares``; unnamed groups share the rest in proportion to what they hold).
A group holding fewer tokens than its target is repeated: whole epochs, then a partial one;
a larger group is down-sampled. The partial epoch takes rows in a seeded hash order up to the
target, then perhaps the one other row that best fills the gap, decided across the component's
groups with error diffusion: a component lands within half a document of its target, each group
within one document. Rows carry a seeded shuffle key (the export order). Same seed + same
input versions = the same mix. A snapshot stage: each run overwrites gold.mix, so a mix is a
Delta version (the dataset version MLflow logs and the export is named by); a rerun over
unchanged inputs and config finds the blend already there and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import reduce

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from boostqa.stages.base import Stage, StageContext, StageError
from boostqa.stages.training import count_column, format_id, text_column, tokenizer_id

META = {"discipline": "string", "difficulty": "int", "mode": "string"}


def _inputs(settings) -> dict[str, str]:
    return {c.name: c.table for c in settings.blend.components}


def targets(settings, available: dict[tuple[str, str], int]) -> dict[tuple[str, str], float]:
    """(component, group) -> target tokens, from the ratios, the shares and what each group holds."""
    b = settings.blend
    total_ratio = sum(c.ratio for c in b.components)
    out = {}
    for c in b.components:
        want = b.target_tokens * c.ratio / total_ratio
        groups = {g: a for (name, g), a in available.items() if name == c.name}
        named = c.shares
        if sum(named.values()) > 1 + 1e-9:
            raise StageError(f"blend component {c.name}: shares sum to {sum(named.values())} > 1")
        missing = [g for g in named if g not in groups]
        if missing:
            raise StageError(f"blend component {c.name}: no rows with {c.by} in {missing} (have {sorted(groups)})")
        rest = {g: a for g, a in groups.items() if g not in named}
        rest_share, rest_tokens = 1 - sum(named.values()), sum(rest.values())
        for g in groups:
            out[(c.name, g)] = want * (named[g] if g in named else
                                       rest_share * groups[g] / rest_tokens if rest_tokens else 0.0)
    return out


def _rows(ctx: StageContext, name: str, df: DataFrame) -> DataFrame:
    c = next(x for x in ctx.settings.blend.components if x.name == name)
    if c.where:
        df = df.where(F.expr(c.where))
    if c.id_column not in df.columns:
        raise StageError(f"blend component {name}: no id column {c.id_column!r} in {c.table} ({df.columns})")
    what = f"blend component {name} ({c.table})"
    rows = df.select(F.col(c.id_column).cast("string").alias("doc_id"),
                     text_column(ctx.settings, df, c.template, what).alias("text"),
                     *[(F.col(m) if m in df.columns else F.lit(None)).cast(t).alias(m) for m, t in META.items()],
                     (F.expr(c.by).cast("string") if c.by else F.lit("all")).alias("grp"),
                     # simulator output stays labelled all the way into the training files
                     (F.coalesce(F.col("llm_simulated"), F.lit(False)) if "llm_simulated" in df.columns
                      else F.lit(False)).alias("llm_simulated"))
    return rows.select(F.lit(name).alias("component"), F.lit(c.table).alias("source_table"),
                       F.lit(ctx.versions[name]).cast("long").alias("source_version"), "*")


def fill_decisions(plan: list[tuple], fills: dict[tuple[str, str], tuple[float, int]]) -> list[tuple[str, str]]:
    """Groups whose gap-filling row is taken: walk each component's groups in order, carrying the
    rounding error, and take the row when that brings the running total closer to the running
    target. plan rows: (component, group, full epochs, remainder, target, available)."""
    take, error = [], {}
    for comp, grp, _full, _rem, _target, _have in sorted(plan):
        if (comp, grp) not in fills:
            continue
        gap, n = fills[(comp, grp)]
        carried = error.get(comp, 0.0)  # achieved - target so far (prefix rounding included)
        without, with_row = carried - gap, carried - gap + n
        if abs(with_row) < abs(without):
            take.append((comp, grp))
            error[comp] = with_row
        else:
            error[comp] = without
    return take


def blend_id(ctx: StageContext) -> str:
    body = json.dumps({"blend": ctx.settings.blend.model_dump(), "versions": ctx.versions,
                       "tokenizer": tokenizer_id(ctx.settings),
                       "formats": {c.name: format_id(ctx.settings, c.template) for c in ctx.settings.blend.components}},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def prepare(ctx: StageContext, driving: DataFrame) -> DataFrame:
    """Nothing to do when gold.mix already holds this blend (same config, input versions, tokenizer
    and formats): a rerun then writes no new mix version, so nothing downstream is redone."""
    if ctx.existing is not None and ctx.existing.where(F.col("blend_id") == blend_id(ctx)).limit(1).count():
        return driving.limit(0)
    return driving


def epoch_plan(ctx: StageContext, available: dict[tuple[str, str], int]) -> list[tuple]:
    """Per (component, group): (component, group, whole epochs, tokens of the partial epoch, target,
    available); a target needing more than blend.max_epochs fails with the numbers."""
    plan = []
    for (comp, grp), t in sorted(targets(ctx.settings, available).items()):
        have = available[(comp, grp)]
        if t > 0 and have == 0:
            raise StageError(f"blend component {comp} group {grp}: target {t:.0f} tokens but no tokens available")
        epochs = t / have if have else 0.0
        if epochs > ctx.settings.blend.max_epochs:
            raise StageError(f"blend component {comp} group {grp}: {epochs:.2f} epochs needed for {t:.0f} tokens "
                             f"of {have} available, over blend.max_epochs={ctx.settings.blend.max_epochs}")
        full = math.floor(epochs) if have else 0
        plan.append((comp, grp, full, float(t - full * have), float(t), int(have)))
    for comp in sorted({p[0] for p in plan}):  # what the summary compares the mix with
        ctx.stats.set(f"blend.{comp}.target_tokens", sum(p[4] for p in plan if p[0] == comp))
        ctx.stats.set(f"blend.{comp}.available_tokens", sum(p[5] for p in plan if p[0] == comp))
    return plan


def transform(ctx: StageContext, **tables: DataFrame) -> DataFrame:
    b = ctx.settings.blend
    rows = reduce(DataFrame.unionByName, [_rows(ctx, n, tables[n]) for n in _inputs(ctx.settings)])
    rows = ctx.checkpoint(rows.withColumn("n_tokens", count_column(ctx.settings, F.col("text"))))  # tokenise once
    available = {(r["component"], r["grp"]): int(r["t"])
                 for r in rows.groupBy("component", "grp").agg(F.sum("n_tokens").alias("t")).collect()}
    plan = epoch_plan(ctx, available)
    p = ctx.spark.createDataFrame(plan, "component string, grp string, full_epochs int, remainder double, "
                                        "target double, available long")
    order = F.xxhash64(F.lit(b.seed), "component", "doc_id")
    group = Window.partitionBy("component", "grp")
    r = rows.join(F.broadcast(p), ["component", "grp"]) \
        .withColumn("_cum", F.sum("n_tokens").over(group.orderBy(order, "doc_id")
                                                   .rowsBetween(Window.unboundedPreceding, Window.currentRow)))
    # the partial epoch: the longest prefix in hash order that fits, plus perhaps the one other
    # row that best fills the gap; whether to add it is decided across the component's groups
    # (error diffusion), so the component lands within half a row of its target, each group
    # within one row of its own
    prefix = F.col("_cum") <= F.col("remainder")
    r = r.withColumn("_prefix", prefix) \
        .withColumn("_gap", F.col("remainder") - F.coalesce(F.sum(F.when(prefix, F.col("n_tokens"))).over(group),
                                                            F.lit(0)))
    fit = F.abs(F.col("n_tokens") - F.col("_gap"))
    r = ctx.checkpoint(r.withColumn("_fit", F.row_number().over(group.orderBy("_prefix", fit, order, "doc_id"))))
    fills = {(x["component"], x["grp"]): (x["_gap"], x["n_tokens"])
             for x in r.where(~F.col("_prefix") & (F.col("_fit") == 1))
             .select("component", "grp", "_gap", "n_tokens").collect()}
    chosen = ctx.spark.createDataFrame(fill_decisions(plan, fills), "component string, grp string") \
        .withColumn("_fill", F.lit(True))
    r = r.join(F.broadcast(chosen), ["component", "grp"], "left")
    partial = F.col("_prefix") | (~F.col("_prefix") & (F.col("_fit") == 1) & F.coalesce("_fill", F.lit(False)))
    epochs = F.concat(F.when(F.col("full_epochs") > 0, F.sequence(F.lit(0), F.col("full_epochs") - 1))
                      .otherwise(F.array().cast("array<int>")),
                      F.when(partial, F.array(F.col("full_epochs"))).otherwise(F.array().cast("array<int>")))
    mixed = r.select("*", F.explode(epochs).alias("epoch"))
    mix_id = F.substring(F.sha2(F.concat_ws("\x1f", "component", "doc_id", F.col("epoch").cast("string")), 256), 1, 32)
    return mixed.select(
        mix_id.alias("mix_id"), "component", "source_table", "source_version", "doc_id", "epoch", "text", "n_tokens",
        *META, "llm_simulated", F.xxhash64(F.lit(b.seed), mix_id).alias("shuffle_key"), F.lit(blend_id(ctx)).alias("blend_id"),
        F.lit(ctx.run_id).alias("run_id"), F.lit(None).cast("string").alias("_reason"),
        F.lit(None).cast("string").alias("_detail"))


def summary(staged: DataFrame, planned: dict[str, tuple[float, float]]) -> list[dict]:
    """Per component: target, available, achieved tokens, rows, epochs (``planned``: component ->
    (target tokens, available tokens))."""
    got = {}
    for r in staged.groupBy("component").agg(F.sum("n_tokens").alias("tokens"), F.count(F.lit(1)).alias("rows"),
                                              F.countDistinct("doc_id").alias("docs")).collect():
        got[r["component"]] = r
    out = []
    total = sum(int(r["tokens"] or 0) for r in got.values()) or 1
    for comp, (target, available) in sorted(planned.items()):
        r = got.get(comp)
        tokens = int(r["tokens"] or 0) if r else 0
        out.append({"component": comp, "target_tokens": round(target), "available_tokens": int(available),
                    "tokens": tokens, "rows": int(r["rows"]) if r else 0, "documents": int(r["docs"]) if r else 0,
                    "share": tokens / total, "epochs": tokens / available if available else 0.0,
                    "error_pct": 100 * (tokens - target) / target if target else 0.0})
    return out


def report(ctx: StageContext, staged: DataFrame) -> None:
    """blend.json (per component: target vs achieved tokens, what was available, the epochs) and
    the metrics blend.<component>.tokens / .epochs / .error_pct."""
    planned = {c.name: (ctx.stats.get(f"blend.{c.name}.target_tokens"), ctx.stats.get(f"blend.{c.name}.available_tokens"))
               for c in ctx.settings.blend.components if ctx.stats.get(f"blend.{c.name}.target_tokens") is not None}
    rows = summary(staged, planned)
    for r in rows:
        for k in ("tokens", "epochs", "error_pct"):
            ctx.stats.set(f"blend.{r['component']}.{k}", float(r[k]))
    ctx.stats.artifact("blend.json", json.dumps({"target_tokens": ctx.settings.blend.target_tokens,
                                                 "components": rows}, indent=2))


STAGE = Stage(
    name="blend",
    inputs=_inputs,
    output="gold.mix",
    key=("mix_id",),
    mode="overwrite",  # a mix is a snapshot of its inputs: a new blend is written whole, as a new version
    prepare=prepare,
    reads_output=True,
    one_to_one=False,  # rows repeat (epochs) or drop (down-sampling)
    transform=transform,
    summarize=report,
    enabled=lambda s: bool(s.blend.components),
    sections=("blend", "tokens"),
    description="token-budget blend of the components (ratios by tokens, epochs for small ones) -> gold.mix",
)

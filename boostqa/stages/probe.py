"""probe: how well does the model under training answer each discipline x difficulty cell?
weights: turn that deficiency profile into sampling weights for synthesis.

probe samples, per (discipline, difficulty) cell, up to ``probe.per_cell`` annotated seeds that
have a gold answer a machine can score (a choice letter, else a final number), asks the
``probe`` endpoint (the base model or a mid-training checkpoint behind any OpenAI-compatible
server) and scores the final answer by exact match. Results are kept per checkpoint, so probing
a new checkpoint adds a new profile instead of replacing the old one.

weights recomputes, for the latest checkpoint, the accuracy matrix with Wilson 95 % intervals
and a weight per cell: max(floor, 1 - accuracy) x STEM emphasis x difficulty emphasis, where the
accuracy of a thin cell is shrunk towards the checkpoint's overall accuracy.
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.llm.prompts import load_prompt, request_key
from boostqa.stages import llm
from boostqa.stages.base import Derived, Stage, StageContext

_MC_GOLD = re.compile(r"^\s*\(?([A-Z])[.):]")
_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_NUM_GOLD = re.compile(rf"(?:####\s*({_NUM})\s*$)|(?:({_NUM})\s*\.?\s*\$?\s*$)")
_MC_PRED = re.compile(r"answer is\s*\(?([A-Z])\)?", re.I)
_NUM_PRED = re.compile(rf"answer is\s*\$?({_NUM})", re.I)


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
    if not text or not kind:
        return None
    matches = (_MC_PRED if kind == "mc" else _NUM_PRED).findall(text)
    return matches[-1].upper().replace(",", "") if matches else None


def _same(kind: str, a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    if kind == "numeric":
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        except ValueError:
            return False
    return a == b


def checkpoint(ctx: StageContext) -> str:
    p = ctx.settings.probe
    return p.checkpoint or ctx.settings.llm.endpoints[p.endpoint].model


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
            .withColumn("checkpoint", F.lit(checkpoint(ctx))))


def requests(ctx: StageContext, rows: DataFrame, **_: DataFrame) -> DataFrame:
    p = ctx.settings.probe
    ep = llm.endpoint(ctx, p.endpoint, start_simulator=False)
    prompt, params = load_prompt(p.prompt), ep.params()

    def render(batches):
        for pdf in batches:
            msgs, keys = [], []
            for q, c in zip(pdf["question"], pdf["choices"]):
                opts = "" if c is None or isinstance(c, float) or len(c) == 0 else \
                    "\n".join(f"{chr(65 + i)}. {x}" for i, x in enumerate(c))
                m = prompt.render(question=q, choices=opts)
                msgs.append(json.dumps(m, ensure_ascii=False))
                keys.append(request_key(ep.model, prompt, m, params))
            yield pd.DataFrame({"seed_uid": pdf["seed_uid"], "request_key": keys, "messages": msgs})

    schema = T.StructType([T.StructField(c, T.StringType()) for c in ("seed_uid", "request_key", "messages")])
    return rows.select("seed_uid", "question", "choices").mapInPandas(render, schema)


def transform(ctx: StageContext, seeds: DataFrame, calls: DataFrame | None = None) -> DataFrame:
    p = ctx.settings.probe
    ep = llm.endpoint(ctx, p.endpoint)
    prompt = load_prompt(p.prompt)
    seeds = seeds.select("checkpoint", "seed_uid", "discipline", "subfield", "is_stem", "difficulty", "question",
                         "choices", "kind", "gold")
    reqs = ctx.checkpoint(requests(ctx, seeds))
    results = llm.call(ctx, reqs, ep, lambda: None, prompt.id, calls)

    def score(batches):
        for pdf in batches:
            pred = [predicted(k, t) for k, t in zip(pdf["kind"], pdf["raw"])]
            yield pd.DataFrame({"seed_uid": pdf["seed_uid"], "predicted": pred,
                                "correct": [_same(k, g, x) for k, g, x in zip(pdf["kind"], pdf["gold"], pred)]})

    sschema = T.StructType([T.StructField("seed_uid", T.StringType()), T.StructField("predicted", T.StringType()),
                            T.StructField("correct", T.BooleanType())])
    out = seeds.join(reqs, "seed_uid").join(results, "request_key")
    scored = out.where(F.col("status") == "ok").select("seed_uid", "kind", "gold", "raw").mapInPandas(score, sschema)
    out = out.join(scored, "seed_uid", "left").withColumn("_status", F.col("status"))
    return out.select(
        "checkpoint", "seed_uid", "discipline", "subfield", "is_stem", "difficulty", "kind", "gold", "predicted",
        F.coalesce("correct", F.lit(False)).alias("correct"), F.lit(ep.model).alias("probe_model"),
        F.lit(prompt.id).alias("prompt_version"), "request_key", (F.lit(ep.simulated) | F.coalesce("simulated", F.lit(False))).alias("llm_simulated"),
        F.lit(ctx.run_id).alias("run_id"),
        F.when(F.col("_status") == "failed", "deferred").otherwise("kept").alias("_outcome"),
        F.lit(None).cast("string").alias("_reason"),
        F.when(F.col("_status") == "failed", F.col("error")).alias("_detail"),
        *llm.call_columns())


def _log(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return llm.log_rows(ctx, staged, ctx.settings.probe.endpoint, load_prompt(ctx.settings.probe.prompt).id)


STAGE = Stage(
    name="probe",
    inputs={"seeds": "silver.seeds_annotated", "calls": "ops.llm_calls"},
    optional_inputs=("calls",),
    live_inputs=("calls",),
    output="gold.probe_results",
    key=("checkpoint", "seed_uid"),
    prepare=prepare,
    derived=(Derived("ops.llm_calls", ("request_key",), _log),
             Derived("ops.llm_failures", ("request_key", "run_id"),
                     lambda ctx, st: llm.failure_rows(ctx, st, ctx.settings.probe.endpoint))),
    report=llm.report,
    chunk_rows=lambda s: s.llm.chunk_rows,
    transform=transform,
    config=lambda s: {"probe": s.probe.model_dump()},
    description="probe the model under training per discipline x difficulty cell",
    llm=lambda s: (s.probe.endpoint, load_prompt(s.probe.prompt).id, requests),
)


# ---------------------------------------------------------------------------------------------- weights
def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def weights_transform(ctx: StageContext, probes: DataFrame, seeds: DataFrame) -> DataFrame:
    """One row per annotated (discipline, difficulty) cell of the latest probed checkpoint."""
    w = ctx.settings.probe
    latest = probes.orderBy(F.col("run_id").desc()).select("checkpoint").limit(1)
    probes = probes.join(latest, "checkpoint")
    cells = seeds.groupBy("discipline", "difficulty", "is_stem").agg(F.count("*").alias("seeds"))
    acc = probes.groupBy("checkpoint", "discipline", "difficulty").agg(
        F.count("*").alias("probes"), F.sum(F.col("correct").cast("int")).alias("correct"))
    joined = cells.join(acc, ["discipline", "difficulty"], "left").crossJoin(
        latest.withColumnRenamed("checkpoint", "_ckpt"))
    boosts = w.difficulty_boost
    schema = T.StructType([T.StructField(n, t) for n, t in (
        ("checkpoint", T.StringType()), ("discipline", T.StringType()), ("difficulty", T.IntegerType()),
        ("is_stem", T.BooleanType()), ("seeds", T.LongType()), ("probes", T.LongType()), ("correct", T.LongType()),
        ("accuracy", T.DoubleType()), ("ci_low", T.DoubleType()), ("ci_high", T.DoubleType()),
        ("accuracy_smoothed", T.DoubleType()), ("weight", T.DoubleType()), ("share", T.DoubleType()),
        ("_reason", T.StringType()), ("_detail", T.StringType()))])

    def compute(batches):
        pdf = pd.concat(list(batches), ignore_index=True)
        if pdf.empty:
            return
        pdf["probes"] = pdf["probes"].fillna(0).astype("int64")
        pdf["correct"] = pdf["correct"].fillna(0).astype("int64")
        total_n, total_k = pdf["probes"].sum(), pdf["correct"].sum()
        prior = total_k / total_n if total_n else 0.5
        rows = []
        for r in pdf.itertuples():
            n, k = int(r.probes), int(r.correct)
            lo, hi = wilson(k, n)
            smooth = (k + w.shrinkage * prior) / (n + w.shrinkage)
            weight = max(w.floor, 1.0 - smooth) * (w.stem_boost if r.is_stem else 1.0) \
                * boosts.get(f"H{int(r.difficulty)}", 1.0)
            rows.append((r.checkpoint, r.discipline, int(r.difficulty),
                         bool(r.is_stem), int(r.seeds), n, k, k / n if n else None, lo, hi, smooth, weight))
        out = pd.DataFrame(rows, columns=["checkpoint", "discipline", "difficulty", "is_stem", "seeds", "probes",
                                          "correct", "accuracy", "ci_low", "ci_high", "accuracy_smoothed", "weight"])
        mass = out["weight"] * out["seeds"]
        out["share"] = mass / mass.sum() if mass.sum() else 0.0
        out["_reason"], out["_detail"] = None, None
        yield out

    base = joined.select(F.col("_ckpt").alias("checkpoint"), "discipline", "difficulty", "is_stem", "seeds",
                         "probes", "correct")
    return base.coalesce(1).mapInPandas(compute, schema)


def heatmap_svg(cells: pd.DataFrame, value: str, title: str) -> str:
    """A dependency-free SVG heatmap (discipline rows x H1..H5 columns) for MLflow and notebooks."""
    disciplines = sorted(cells["discipline"].unique())
    cw, ch, left, top = 70, 22, 150, 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + 5 * cw + 10}" '
             f'height="{top + ch * len(disciplines) + 10}" font-family="sans-serif" font-size="11">',
             f'<text x="4" y="16" font-size="13">{title}</text>']
    for j in range(5):
        parts.append(f'<text x="{left + j * cw + cw / 2}" y="{top - 6}" text-anchor="middle">H{j + 1}</text>')
    lookup = {(r.discipline, int(r.difficulty)): getattr(r, value) for r in cells.itertuples()}
    for i, d in enumerate(disciplines):
        y = top + i * ch
        parts.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{d}</text>')
        for j in range(5):
            v = lookup.get((d, j + 1))
            if v is None or (isinstance(v, float) and math.isnan(v)):
                color, label = "#eeeeee", ""
            else:
                t = max(0.0, min(1.0, float(v)))
                color, label = f"rgb({int(255 * (1 - t))},{int(120 + 100 * t)},{int(255 * (1 - t))})", f"{v:.2f}"
            parts.append(f'<rect x="{left + j * cw}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="{color}"/>'
                         f'<text x="{left + j * cw + cw / 2}" y="{y + 15}" text-anchor="middle">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _artifacts(ctx: StageContext, staged: DataFrame) -> dict[str, str]:
    cells = staged.toPandas()
    if cells.empty:
        return {}
    cells["share_scaled"] = cells["share"] / cells["share"].max()
    return {"probe_accuracy.svg": heatmap_svg(cells, "accuracy", f"probe accuracy, {cells['checkpoint'][0]}"),
            "sampling_weights.svg": heatmap_svg(cells, "share_scaled", "sampling share (scaled to max)"),
            "sampling_weights.json": cells.drop(columns=[c for c in cells.columns if c.startswith("_")])
            .to_json(orient="records")}


WEIGHTS_STAGE = Stage(
    name="weights",
    inputs={"probes": "gold.probe_results", "seeds": "silver.seeds_annotated"},
    output="gold.sampling_weights",
    key=("checkpoint", "discipline", "difficulty"),
    mode="overwrite",
    one_to_one=False,
    transform=weights_transform,
    artifacts=_artifacts,
    config=lambda s: {"probe": s.probe.model_dump()},
    description="accuracy matrix (Wilson CIs) -> synthesis sampling weights per cell",
)

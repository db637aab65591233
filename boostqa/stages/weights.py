"""weights: the probe's deficiency profile -> sampling weights for synthesis.

For the latest probed checkpoint: the accuracy matrix with Wilson 95 % intervals and a weight per
cell: max(floor, 1 - accuracy) x STEM emphasis x difficulty emphasis, where the accuracy of a thin
cell is shrunk towards the checkpoint's overall accuracy. A snapshot stage: each run rewrites
gold.sampling_weights (a new Delta version).
"""

from __future__ import annotations

import math

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import Stage, StageContext


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def transform(ctx: StageContext, probes: DataFrame, seeds: DataFrame) -> DataFrame:
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


def heatmaps(ctx: StageContext, staged: DataFrame) -> None:
    """The accuracy and sampling-share heatmaps and the weights as JSON, logged with the run."""
    cells = staged.toPandas()
    if cells.empty:
        return
    cells["share_scaled"] = cells["share"] / cells["share"].max()
    ctx.stats.artifact("probe_accuracy.svg", heatmap_svg(cells, "accuracy", f"probe accuracy, {cells['checkpoint'][0]}"))
    ctx.stats.artifact("sampling_weights.svg", heatmap_svg(cells, "share_scaled", "sampling share (scaled to max)"))
    ctx.stats.artifact("sampling_weights.json", cells.drop(columns=[c for c in cells.columns if c.startswith("_")])
                       .to_json(orient="records"))


STAGE = Stage(
    name="weights",
    inputs={"probes": "gold.probe_results", "seeds": "silver.seeds_annotated"},
    output="gold.sampling_weights",
    key=("checkpoint", "discipline", "difficulty"),
    mode="overwrite",
    one_to_one=False,
    transform=transform,
    summarize=heatmaps,
    sections=("probe",),
    description="accuracy matrix (Wilson CIs) -> synthesis sampling weights per cell",
)

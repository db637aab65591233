"""weights: the probe's deficiency profile -> sampling weights for synthesis.

For the latest probed checkpoint: the accuracy matrix with Wilson 95 % intervals and a weight per
cell: max(floor, 1 - accuracy) x STEM emphasis x difficulty emphasis, where the accuracy of a thin
cell is shrunk towards the checkpoint's overall accuracy. A snapshot stage: each run rewrites
gold.sampling_weights (a new Delta version).

The emphases follow the probe (``probe.boosts: measured``): the STEM boost is the ratio of the
STEM error rate to the non-STEM one, each boosted level's (``probe.difficulty_boost`` keys) the
ratio of its error rate to the overall one, clamped to [1, ``probe.max_boost``]; a group with
fewer than ``probe.min_boost_probes`` probes keeps the configured value. Each cell records the
boosts and where they came from, and the decision is logged to the stage's MLflow run.
"""

from __future__ import annotations

import json
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


def _error_ratio(num: tuple[int, int], den: tuple[int, int], fallback: float, cfg) -> tuple[float, str]:
    """(boost, how): error rate of ``num`` over that of ``den`` (each a (correct, probes) pair)."""
    (k1, n1), (k2, n2) = num, den
    if min(n1, n2) < cfg.min_boost_probes:
        return fallback, f"configured {fallback:g} (only {min(n1, n2)} probes < {cfg.min_boost_probes})"
    e1, e2 = 1 - k1 / n1, 1 - k2 / n2
    ratio = cfg.max_boost if e2 == 0 and e1 > 0 else 1.0 if e2 == 0 else e1 / e2
    boost = min(cfg.max_boost, max(1.0, ratio))
    return boost, f"measured {boost:.3g}: error {e1:.3f} vs {e2:.3f} ({n1} / {n2} probes)"


def boosts(cells: pd.DataFrame, cfg) -> tuple[float, dict[int, float], dict[str, str]]:
    """(STEM boost, {level: boost}, {"stem" | "H4"...: how it was decided}) from per-cell probe
    counts (columns is_stem, difficulty, probes, correct)."""
    levels = {int(h.removeprefix("H")): v for h, v in cfg.difficulty_boost.items()}
    if cfg.boosts == "config":
        return cfg.stem_boost, levels, {"stem": f"configured {cfg.stem_boost:g}",
                                        **{f"H{h}": f"configured {v:g}" for h, v in levels.items()}}

    def tally(mask) -> tuple[int, int]:
        return int(cells.loc[mask, "correct"].sum()), int(cells.loc[mask, "probes"].sum())

    stem = cells["is_stem"].astype(bool)
    everything = tally(cells["probes"] >= 0)
    stem_boost, how = _error_ratio(tally(stem), tally(~stem), cfg.stem_boost, cfg)
    decided, out = {"stem": how}, {}
    for h, fallback in levels.items():
        out[h], decided[f"H{h}"] = _error_ratio(tally(cells["difficulty"] == h), everything, fallback, cfg)
    return stem_boost, out, decided


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
    schema = T.StructType([T.StructField(n, t) for n, t in (
        ("checkpoint", T.StringType()), ("discipline", T.StringType()), ("difficulty", T.IntegerType()),
        ("is_stem", T.BooleanType()), ("seeds", T.LongType()), ("probes", T.LongType()), ("correct", T.LongType()),
        ("accuracy", T.DoubleType()), ("ci_low", T.DoubleType()), ("ci_high", T.DoubleType()),
        ("accuracy_smoothed", T.DoubleType()), ("stem_boost", T.DoubleType()), ("difficulty_boost", T.DoubleType()),
        ("boost_decision", T.StringType()), ("weight", T.DoubleType()), ("share", T.DoubleType()),
        ("_reason", T.StringType()), ("_detail", T.StringType()))])

    def compute(batches):
        pdf = pd.concat(list(batches), ignore_index=True)
        if pdf.empty:
            return
        pdf["probes"] = pdf["probes"].fillna(0).astype("int64")
        pdf["correct"] = pdf["correct"].fillna(0).astype("int64")
        total_n, total_k = pdf["probes"].sum(), pdf["correct"].sum()
        prior = total_k / total_n if total_n else 0.5
        stem_boost, level_boost, decided = boosts(pdf, w)
        decision = json.dumps(decided, sort_keys=True)
        rows = []
        for r in pdf.itertuples():
            n, k = int(r.probes), int(r.correct)
            lo, hi = wilson(k, n)
            smooth = (k + w.shrinkage * prior) / (n + w.shrinkage)
            sb, db = stem_boost if r.is_stem else 1.0, level_boost.get(int(r.difficulty), 1.0)
            weight = max(w.floor, 1.0 - smooth) * sb * db
            rows.append((r.checkpoint, r.discipline, int(r.difficulty), bool(r.is_stem), int(r.seeds), n, k,
                         k / n if n else None, lo, hi, smooth, sb, db, decision, weight))
        out = pd.DataFrame(rows, columns=["checkpoint", "discipline", "difficulty", "is_stem", "seeds", "probes",
                                          "correct", "accuracy", "ci_low", "ci_high", "accuracy_smoothed",
                                          "stem_boost", "difficulty_boost", "boost_decision", "weight"])
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
    for group, how in json.loads(cells["boost_decision"][0]).items():  # the boosts and why
        ctx.stats.tag(f"weights.boost.{group}", how)
    ctx.stats.set("weights.stem_boost", float(cells.loc[cells["is_stem"], "stem_boost"].max())
                  if cells["is_stem"].any() else 1.0)
    for h, v in cells.groupby("difficulty")["difficulty_boost"].max().items():
        ctx.stats.set(f"weights.boost_H{int(h)}", float(v))
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

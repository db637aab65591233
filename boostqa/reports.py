"""Synthesis reports (BoostQA's numbers): degradation matrix, booster effect, refinement, rejections.

Read from the tables, so they describe the lake as it is (every run so far), and are printed by
`boostqa report`; a stage that names a report in ``Stage.reports`` gets it logged to MLflow with
its run (the gate names ``synthesis``: ``synthesis_report.json``).
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import functions as F

from boostqa.lake import Lake


def _exists(lake: Lake, *names: str) -> bool:
    return all(lake.exists(n) for n in names)


def degradation_matrix(lake: Lake) -> pd.DataFrame:
    """Requested (mode, role, target level) x achieved (re-annotated) level: counts and % per row."""
    if not lake.exists("silver.synth_checked"):
        return pd.DataFrame()
    cols = ["mode", "grade_role", "target_difficulty", F.col("achieved_difficulty").alias("achieved")]
    df = lake.read("silver.synth_checked").select(*cols)
    if lake.exists("quarantine.synth"):
        q = lake.read("quarantine.synth").where("stage = 'check' and reason = 'difficulty_degraded'")
        df = df.unionByName(q.select(*cols))
    pdf = df.groupBy("mode", "grade_role", "target_difficulty", "achieved").count().toPandas()
    if pdf.empty:
        return pdf
    m = pdf.pivot_table(index=["mode", "grade_role", "target_difficulty"], columns="achieved", values="count",
                        fill_value=0, aggfunc="sum")
    m.columns = [f"H{int(c)}" for c in m.columns]
    out = m.copy()
    out["n"] = m.sum(axis=1)
    out["below_target_%"] = [round(100 * sum(row.get(f"H{h}", 0) for h in range(1, int(target))) / n, 1)
                             for (_, _, target), row, n in zip(m.index, m.to_dict("records"), out["n"])]
    return out.reset_index()


def booster_effect(lake: Lake) -> dict:
    """H4/H5 share of accepted QA with the booster (all modes) vs without it (multigrade only)."""
    if not lake.exists("gold.boostqa"):
        return {}
    r = lake.read("gold.boostqa").groupBy().agg(
        F.count("*").alias("all"), F.sum((F.col("difficulty") >= 4).cast("int")).alias("hard_all"),
        F.sum((F.col("mode") == "multigrade").cast("int")).alias("mg"),
        F.sum(((F.col("mode") == "multigrade") & (F.col("difficulty") >= 4)).cast("int")).alias("hard_mg")).first()
    with_b = (r["hard_all"] or 0) / r["all"] if r["all"] else 0.0
    without = (r["hard_mg"] or 0) / r["mg"] if r["mg"] else 0.0
    return {"accepted_qa": int(r["all"]), "h4_h5_share_with_booster": round(with_b, 4),
            "h4_h5_share_without_booster": round(without, 4),
            "booster_ratio": round(with_b / without, 3) if without else None}


def refinement(lake: Lake) -> dict:
    if not lake.exists("silver.synth_refined"):
        return {}
    refined = lake.read("silver.synth_refined").groupBy("consistency", "consistency_by").count().toPandas()
    counts = refined.groupby("consistency")["count"].sum().to_dict()
    by_judge = int(refined.loc[refined["consistency_by"] == "judge", "count"].sum())
    unsolvable = lake.read("quarantine.synth").where("stage = 'refine' and reason = 'unsolvable'").count() \
        if lake.exists("quarantine.synth") else 0
    judged = counts.get("consistent", 0) + counts.get("inconsistent", 0)
    processed = sum(counts.values()) + unsolvable
    return {"refined": int(sum(counts.values())), "unsolvable": int(unsolvable),
            "unsolvable_%": round(100 * unsolvable / processed, 2) if processed else None,
            "consistent": int(counts.get("consistent", 0)), "inconsistent": int(counts.get("inconsistent", 0)),
            "undecided": int(counts.get("undecided", 0)), "decided_by_judge": by_judge,
            "inconsistent_%": round(100 * counts.get("inconsistent", 0) / judged, 2) if judged else None}


def rejections(lake: Lake) -> pd.DataFrame:
    if not lake.exists("quarantine.synth"):
        return pd.DataFrame()
    return lake.read("quarantine.synth").groupBy("stage", "reason").count().orderBy("stage", "reason").toPandas()


def usage(lake: Lake) -> pd.DataFrame:
    """Calls and tokens per stage from the call log; accepted QA and tokens per mode from gold."""
    if not lake.exists("ops.llm_calls"):
        return pd.DataFrame()
    return lake.read("ops.llm_calls").groupBy("stage", "prompt_id", "model").agg(
        F.count("*").alias("calls"), F.sum("prompt_tokens").alias("prompt_tokens"),
        F.sum("completion_tokens").alias("completion_tokens"),
        F.max(F.col("simulated").cast("int")).alias("simulated")).orderBy("stage", "prompt_id").toPandas()


def gold_by_mode(lake: Lake) -> pd.DataFrame:
    if not lake.exists("gold.boostqa"):
        return pd.DataFrame()
    return lake.read("gold.boostqa").groupBy("mode", "grade_role").agg(
        F.count("*").alias("qa"), F.sum("n_tokens").alias("tokens"),
        F.round(F.avg("difficulty"), 2).alias("avg_difficulty")).orderBy("mode", "grade_role").toPandas()


def synthesis_report(lake: Lake) -> dict:
    return {"degradation_matrix": degradation_matrix(lake), "booster": booster_effect(lake),
            "refinement": refinement(lake), "rejections": rejections(lake), "usage": usage(lake),
            "gold_by_mode": gold_by_mode(lake)}


REPORTS = {"synthesis": synthesis_report}  # name -> lake -> report (Stage.reports)


def as_jsonable(report: dict) -> dict:
    return {k: (v.to_dict(orient="records") if isinstance(v, pd.DataFrame) else v) for k, v in report.items()}


SYNTH_STAGES = ("synthesize", "check", "refine")


def ledger(lake: Lake) -> pd.DataFrame:
    """Each table's newest counted version: records and tokens per mode and source."""
    if not lake.exists("gold.token_ledger"):
        return pd.DataFrame()
    led = lake.read("gold.token_ledger")
    newest = led.groupBy("table_name", "tokenizer", "format").agg(F.max("table_version").alias("table_version"))
    return (led.join(newest, ["table_name", "tokenizer", "format", "table_version"])
            .groupBy("table_name", "table_version", "mode", "source")
            .agg(F.sum("records").alias("records"), F.sum("tokens").alias("tokens"))
            .orderBy("table_name", "mode", "source").toPandas())


def token_progress(lake: Lake, target: int, table: str = "gold.boostqa") -> dict:
    """Progress of accepted synthetic QA toward a token budget, and what the rest will take at the
    yield seen so far: seeds (each seed yields several QA) and LLM calls (synthesis, re-annotation,
    refinement, judge) per accepted QA."""
    if not lake.exists("gold.token_ledger") or not lake.exists(table):
        return {}
    led = lake.read("gold.token_ledger").where(F.col("table_name") == table)
    counted = led.agg(F.max("table_version").alias("v")).first()["v"]
    if counted is None:
        return {}
    r = led.where(F.col("table_version") == counted).agg(F.sum("tokens").alias("t"), F.sum("records").alias("n")).first()
    tokens, rows = int(r["t"] or 0), int(r["n"] or 0)
    gold = lake.read(table, counted)
    seeds_used = gold.select(F.explode("seed_ids").alias("s")).distinct().count()
    seeds_total = lake.read("silver.seeds_annotated").count() if lake.exists("silver.seeds_annotated") else None
    calls = 0
    if lake.exists("ops.llm_calls"):
        calls = lake.read("ops.llm_calls").where(F.col("stage").isin(*SYNTH_STAGES)).count()
    remaining = max(0, target - tokens)
    per_seed = tokens / seeds_used if seeds_used else None
    per_qa = tokens / rows if rows else None
    calls_per_qa = calls / rows if rows else None
    return {"table": table, "version": counted, "current_version": lake.version(table), "target_tokens": target,
            "tokens": tokens, "share_done": tokens / target, "remaining_tokens": remaining, "accepted_qa": rows,
            "tokens_per_qa": per_qa, "seeds_used": seeds_used, "seeds_available": seeds_total,
            "tokens_per_seed": per_seed,
            "seeds_needed": int(-(-remaining // per_seed)) if per_seed else None,
            "llm_calls": calls, "calls_per_accepted_qa": calls_per_qa,
            "calls_needed": int(round(remaining / per_qa * calls_per_qa)) if per_qa else None}

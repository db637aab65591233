"""Synthesis reports (BoostQA's numbers): degradation matrices (Table A4 and by level), booster effect,
truncation, discipline drift, refinement, rejections, usage.

Read from the tables, so they describe the lake as it is (every run so far), and are printed by
`boostqa report`; a stage that names a report in ``Stage.reports`` gets it logged to MLflow with
its run (the gate names ``synthesis``: ``synthesis_report.json``).
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import functions as F

from boostqa.lake import Lake
from boostqa.stages.annotate import STAGES  # the grade stages, in order (Table A4's columns)

LEVELS = (1, 2, 3, 4, 5)
ROLE_STAGE = {"high_school_teacher": "high_school", "college_instructor": "college",
              "graduate_professor": "graduate"}  # multigrade role -> the grade stage it asks for
SYNTH_STAGES = ("synthesize", "check", "refine")  # the LLM stages of synthesis


def _exists(lake: Lake, *names: str) -> bool:
    return all(lake.exists(n) for n in names)


def _frame(lake: Lake, name: str, *columns: str):
    """The table, or None while it does not exist or lacks a column (a lake written by an older boostqa)."""
    if not lake.exists(name):
        return None
    df = lake.read(name)
    return df if set(columns) <= set(df.columns) else None


def _pct(part, whole, digits: int = 1):
    return round(100 * part / whole, digits) if whole else None


def _rate(part, whole, digits: int = 4):
    return round(part / whole, digits) if whole else None


def degradation_matrix(lake: Lake) -> pd.DataFrame:
    """Table A4: requested educator role (multigrade) x re-annotated grade stage, counts and % of the
    row; ``on_stage_%`` = share whose achieved stage is the role's own (the paper's per-row accuracy)."""
    df = _frame(lake, "silver.synth_checked", "mode", "grade_role", "achieved_stage")
    if df is None:
        return pd.DataFrame()
    stage = F.coalesce("achieved_stage", F.lit("unlabelled")).alias("stage")
    pdf = df.where(F.col("mode") == "multigrade").groupBy("grade_role", stage).count().toPandas()
    if pdf.empty:
        return pd.DataFrame()
    m = pdf.pivot_table(index="grade_role", columns="stage", values="count", fill_value=0, aggfunc="sum")
    m = m.reindex(columns=[*STAGES, *sorted(set(m.columns) - set(STAGES))], fill_value=0).astype(int)
    order = sorted(m.index, key=lambda r: (list(ROLE_STAGE).index(r) if r in ROLE_STAGE else len(ROLE_STAGE), r))
    m = m.loc[order]
    out = m.copy()
    out.insert(0, "n", m.sum(axis=1))
    for s in m.columns:
        out[f"{s}_%"] = [_pct(c, n) for c, n in zip(m[s], out["n"])]
    out["on_stage_%"] = [_pct(m.at[r, ROLE_STAGE[r]], n) if r in ROLE_STAGE else None
                         for r, n in zip(m.index, out["n"])]
    out.columns.name = None
    return out.reset_index()


def level_matrix(lake: Lake) -> pd.DataFrame:
    """Requested (mode, role, target level) x re-annotated level H1..H5 (every re-annotated row:
    synth_checked + check's difficulty_degraded rejects): counts, n, % of the row below target."""
    if not lake.exists("silver.synth_checked"):
        return pd.DataFrame()
    cols = ["mode", "grade_role", "target_difficulty", F.col("achieved_difficulty").alias("achieved")]
    df = lake.read("silver.synth_checked").select(*cols)
    if lake.exists("quarantine.synth"):
        q = lake.read("quarantine.synth").where("stage = 'check' and reason = 'difficulty_degraded'")
        df = df.unionByName(q.select(*cols))
    pdf = df.groupBy("mode", "grade_role", "target_difficulty", "achieved").count().toPandas()
    if pdf.empty:
        return pd.DataFrame()
    m = pdf.pivot_table(index=["mode", "grade_role", "target_difficulty"], columns="achieved", values="count",
                        fill_value=0, aggfunc="sum")
    m.columns = [f"H{int(c)}" for c in m.columns]
    m = m.reindex(columns=[f"H{h}" for h in LEVELS], fill_value=0).astype(int)
    out = m.copy()
    out["n"] = m.sum(axis=1)
    out["below_target_%"] = [_pct(sum(row[f"H{h}"] for h in LEVELS if h < target), n)
                             for (_, _, target), row, n in zip(m.index, m.to_dict("records"), out["n"])]
    return out.reset_index()


BOOSTER_MEANING = {
    "planned_tasks": "synthesis tasks of the mode in silver.synth_plan, booster retries included (each is one "
                     "generation); tasks not run yet count as not accepted",
    "finished_tasks": "tasks of the mode with an outcome: in gold.boostqa or quarantined at any synthesis stage",
    "reannotated": "generated QA of the mode the re-annotator gave a level, BEFORE any filter: silver.synth_checked "
                   "+ check's rejects (booster output below target)",
    "pre_filter_h4_h5_share": "H4/H5 share of 'reannotated': how hard the generator's output was, not what the "
                              "filter let through",
    "accepted": "rows of the mode in gold.boostqa",
    "accepted_h4_h5": "gold rows of the mode re-annotated H4/H5",
    "acceptance_rate": "accepted / planned_tasks",
    "equal_budget": "only seeds that have both booster and multigrade tasks: accepted H4/H5 QA per planned task, "
                    "booster vs multigrade (the same seeds, the same cost unit: one planned task); "
                    "booster_vs_multigrade = their ratio (the paper reports a 1.96x H4/H5 proportion)",
}


def _by_mode(plan, reannotated, gold, rejects) -> dict:
    """Per mode: planned/finished tasks, pre-filter H4/H5 share, accepted (H4/H5) and acceptance rate."""
    def counts(df, hard=None):
        agg = [F.count(F.lit(1)).alias("n")] + ([F.sum((F.col(hard) >= 4).cast("int")).alias("hard")] if hard else [])
        return {r["mode"]: r for r in df.groupBy("mode").agg(*agg).collect()} if df is not None else {}

    planned, labelled = counts(plan), counts(reannotated, "achieved_difficulty")
    accepted, lost = counts(gold, "difficulty"), counts(rejects)
    out = {}
    for mode in sorted(planned):
        p, a = planned[mode]["n"], accepted.get(mode)
        lab = labelled.get(mode)
        n_acc = a["n"] if a else 0
        out[mode] = {"planned_tasks": int(p),
                     "finished_tasks": int(n_acc + (lost[mode]["n"] if mode in lost else 0)),
                     "reannotated": int(lab["n"]) if lab else 0,
                     "pre_filter_h4_h5_share": _rate(lab["hard"] or 0, lab["n"]) if lab else None,
                     "accepted": int(n_acc), "accepted_h4_h5": int((a["hard"] or 0) if a else 0),
                     "acceptance_rate": _rate(n_acc, p)}
    return out


def _equal_budget(plan, gold) -> dict:
    """Seeds with both booster and multigrade tasks: accepted H4/H5 QA per planned task, per mode."""
    per_seed = plan.groupBy("seed_uid").agg(
        F.sum((F.col("mode") == "booster").cast("int")).alias("b"),
        F.sum((F.col("mode") == "multigrade").cast("int")).alias("m"))
    shared = per_seed.where((F.col("b") > 0) & (F.col("m") > 0)).select("seed_uid")
    tasks = plan.where(F.col("mode").isin("booster", "multigrade")).join(shared, "seed_uid")
    if gold is not None:
        tasks = tasks.join(gold.select("qa_id", (F.col("difficulty") >= 4).cast("int").alias("hard")), "qa_id", "left")
    else:
        tasks = tasks.withColumn("hard", F.lit(None).cast("int"))
    got = {r["mode"]: r for r in tasks.groupBy("mode").agg(
        F.count(F.lit(1)).alias("tasks"), F.sum(F.coalesce("hard", F.lit(0))).alias("hard")).collect()}
    out = {"seeds": shared.count()}
    for mode in ("booster", "multigrade"):
        n, hard = (int(got[mode]["tasks"]), int(got[mode]["hard"] or 0)) if mode in got else (0, 0)
        out |= {f"{mode}_tasks": n, f"{mode}_h4_h5_accepted": hard, f"{mode}_h4_h5_per_task": _rate(hard, n)}
    b, m = out["booster_h4_h5_per_task"], out["multigrade_h4_h5_per_task"]
    out["booster_vs_multigrade"] = round(b / m, 3) if b is not None and m else None
    return out


def _reannotated(lake: Lake, rejects):
    """(mode, achieved_difficulty) of every re-annotated QA, before any filter: silver.synth_checked +
    check's rejects that got a level (booster output below target)."""
    checked = _frame(lake, "silver.synth_checked", "mode", "achieved_difficulty")
    parts = [df.select("mode", "achieved_difficulty") for df in
             (checked, rejects.where(F.col("stage") == "check") if rejects is not None else None) if df is not None]
    if not parts:
        return None
    df = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    return df.where(F.col("achieved_difficulty").isNotNull())


def booster_effect(lake: Lake) -> dict:
    """Honest booster numbers (see ``meaning``): per mode the pre-filter H4/H5 share of what was
    generated and the acceptance rate; and accepted H4/H5 per planned task, booster vs multigrade,
    over the seeds that have both (equal budget). Not the H4/H5 share of gold, which the booster's
    own filter makes high by construction."""
    plan = _frame(lake, "silver.synth_plan", "qa_id", "seed_uid", "mode")
    if plan is None:
        return {}
    plan = plan.select("qa_id", "seed_uid", "mode")
    gold = _frame(lake, "gold.boostqa", "qa_id", "mode", "difficulty")
    rejects = _frame(lake, "quarantine.synth", "mode", "stage", "achieved_difficulty")
    return {"by_mode": _by_mode(plan, _reannotated(lake, rejects), gold, rejects),
            "equal_budget": _equal_budget(plan, gold), "meaning": dict(BOOSTER_MEANING)}


def truncation(lake: Lake) -> pd.DataFrame:
    """Per requested level: tasks with an outcome (gold + quarantine.synth), those quarantined as
    ``truncated`` (the model hit max_tokens after its re-asks), their %, and where (per LLM stage)."""
    parts = []
    if lake.exists("gold.boostqa"):
        parts.append(lake.read("gold.boostqa").select(
            "target_difficulty", F.lit(None).cast("string").alias("reason"), F.lit(None).cast("string").alias("stage")))
    if lake.exists("quarantine.synth"):
        parts.append(lake.read("quarantine.synth").select("target_difficulty", "reason", "stage"))
    if not parts:
        return pd.DataFrame()
    df = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    cut = F.col("reason") == "truncated"
    pdf = df.groupBy("target_difficulty").agg(
        F.count(F.lit(1)).alias("outcomes"), F.sum(F.coalesce(cut.cast("int"), F.lit(0))).alias("truncated"),
        *[F.sum(F.coalesce((cut & (F.col("stage") == s)).cast("int"), F.lit(0))).alias(f"truncated_at_{s}")
          for s in SYNTH_STAGES]).orderBy("target_difficulty").toPandas()
    if pdf.empty:
        return pdf
    pdf.insert(3, "truncated_%", [_pct(t, n) for t, n in zip(pdf["truncated"], pdf["outcomes"])])
    return pdf


def discipline_drift(lake: Lake, top: int = 10) -> dict:
    """gold.boostqa rows whose re-annotated top-level discipline differs from their seed's: overall,
    per seed discipline (``unlabelled`` = no re-annotated discipline) and the top seed -> achieved pairs."""
    gold = _frame(lake, "gold.boostqa", "discipline", "achieved_discipline", "discipline_drift")
    if gold is None:
        return {}
    drift = F.col("discipline_drift")
    by = gold.groupBy("discipline").agg(
        F.count(F.lit(1)).alias("qa"), F.sum(F.coalesce(drift.cast("int"), F.lit(0))).alias("drifted"),
        F.sum(drift.isNull().cast("int")).alias("unlabelled")).orderBy("discipline").toPandas()
    by["drift_%"] = [_pct(d, n) for d, n in zip(by["drifted"], by["qa"])]
    pairs = gold.where(drift).groupBy(
        F.col("discipline").alias("seed_discipline"),
        F.split("achieved_discipline", "/")[0].alias("achieved_discipline")).count() \
        .orderBy(F.col("count").desc(), "seed_discipline", "achieved_discipline").limit(top).toPandas()
    qa, drifted = int(by["qa"].sum()), int(by["drifted"].sum())
    return {"qa": qa, "drifted": drifted, "drift_%": _pct(drifted, qa), "by_discipline": by, "top_pairs": pairs}


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
    return {"degradation_matrix": degradation_matrix(lake), "level_matrix": level_matrix(lake),
            "booster": booster_effect(lake), "truncation": truncation(lake),
            "discipline_drift": discipline_drift(lake), "refinement": refinement(lake),
            "rejections": rejections(lake), "usage": usage(lake), "gold_by_mode": gold_by_mode(lake)}


REPORTS = {"synthesis": synthesis_report}  # name -> lake -> report (Stage.reports)


def as_jsonable(report: dict) -> dict:
    """DataFrames (also inside nested dicts) as lists of records."""
    def convert(v):
        if isinstance(v, pd.DataFrame):
            return v.to_dict(orient="records")
        return {k: convert(x) for k, x in v.items()} if isinstance(v, dict) else v

    return convert(report)


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

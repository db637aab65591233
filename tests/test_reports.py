"""Every synthesis report on small hand-built tables, numbers checked by hand.

One lake per module (``full``) holds a tiny synthesis history, written straight as Delta tables:
three seeds, 13 planned tasks, their re-annotations, rejections, refinements and gold rows. The
comments next to each assertion work the number out from the rows below.

Seeds: s1 (math, H4: multigrade + booster tasks), s2 (physics: multigrade only), s3 (chemistry:
booster only).

    task  seed mode  role   target  outcome
    m1    s1   mg    hs     2       checked H2 high_school  -> gold (math/algebra)
    m2    s1   mg    col    3       checked H2 high_school  -> gold (physics/mechanics: drift)
    m3    s1   mg    grad   4       checked H4 college      -> gold (physics/optics: drift)
    m9    s1   mg    col    3       checked H3 college      -> refine: truncated
    b1    s1   bo    exp    5       check: difficulty_degraded (H3)   (attempt 0)
    b1r   s1   bo    exp    5       checked H5 graduate     -> gold (math/geometry)   (retry of b1)
    b2    s1   bo    exp    5       checked H4 graduate     -> gold (no achieved discipline)
    m4    s2   mg    hs     2       checked H1 high_school  -> refine: unsolvable
    m5    s2   mg    col    3       checked H3 college      -> gold (physics/mechanics)
    m6    s2   mg    grad   4       checked H5 graduate     -> gold (math/calculus: drift)
    m7    s2   mg    grad   4       checked H3 college      -> gate: duplicate_synth
    m8    s2   mg    hs     2       check: truncated (no labels)
    b3    s3   bo    exp    5       synthesize: truncated
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from boostqa import engine
from boostqa.config import LakeConfig
from boostqa.lake import Lake
from boostqa.reports import (REPORTS, as_jsonable, booster_effect, degradation_matrix, discipline_drift,
                             gold_by_mode, ledger, level_matrix, refinement, rejections, synthesis_report,
                             token_progress, truncation, usage)

HS, COL, GRAD, EXP = "high_school_teacher", "college_instructor", "graduate_professor", "expert_setter"
MG, BO = "multigrade", "booster"

PLAN = "qa_id string, seed_uid string, mode string, grade_role string, attempt int, target_difficulty int"
PLAN_ROWS = [("m1", "s1", MG, HS, 0, 2), ("m2", "s1", MG, COL, 0, 3), ("m3", "s1", MG, GRAD, 0, 4),
             ("m9", "s1", MG, COL, 0, 3), ("b1", "s1", BO, EXP, 0, 5), ("b1r", "s1", BO, EXP, 1, 5),
             ("b2", "s1", BO, EXP, 0, 5), ("m4", "s2", MG, HS, 0, 2), ("m5", "s2", MG, COL, 0, 3),
             ("m6", "s2", MG, GRAD, 0, 4), ("m7", "s2", MG, GRAD, 0, 4), ("m8", "s2", MG, HS, 0, 2),
             ("b3", "s3", BO, EXP, 0, 5)]

CHECKED = ("qa_id string, mode string, grade_role string, attempt int, target_difficulty int, "
           "achieved_difficulty int, achieved_discipline string, achieved_stage string")
CHECKED_ROWS = [("m1", MG, HS, 0, 2, 2, "math/algebra", "high_school"),
                ("m2", MG, COL, 0, 3, 2, "physics/mechanics", "high_school"),
                ("m3", MG, GRAD, 0, 4, 4, "physics/optics", "college"),
                ("m9", MG, COL, 0, 3, 3, "math/algebra", "college"),
                ("b1r", BO, EXP, 1, 5, 5, "math/geometry", "graduate"),
                ("b2", BO, EXP, 0, 5, 4, None, "graduate"),
                ("m4", MG, HS, 0, 2, 1, "physics/mechanics", "high_school"),
                ("m5", MG, COL, 0, 3, 3, "physics/mechanics", "college"),
                ("m6", MG, GRAD, 0, 4, 5, "math/calculus", "graduate"),
                ("m7", MG, GRAD, 0, 4, 3, "physics/optics", "college")]

QUAR = ("qa_id string, mode string, grade_role string, target_difficulty int, achieved_difficulty int, "
        "reason string, stage string")
QUAR_ROWS = [("b3", BO, EXP, 5, None, "truncated", "synthesize"),
             ("b1", BO, EXP, 5, 3, "difficulty_degraded", "check"),
             ("m8", MG, HS, 2, None, "truncated", "check"),
             ("m4", MG, HS, 2, 1, "unsolvable", "refine"),
             ("m9", MG, COL, 3, 3, "truncated", "refine"),
             ("m7", MG, GRAD, 4, 3, "duplicate_synth", "gate")]

REFINED = ("qa_id string, mode string, grade_role string, achieved_difficulty int, consistency string, "
           "consistency_by string")
REFINED_ROWS = [("m1", MG, HS, 2, "consistent", "rules"), ("m2", MG, COL, 2, "inconsistent", "judge"),
                ("m3", MG, GRAD, 4, "consistent", "judge"), ("m5", MG, COL, 3, "undecided", "rules"),
                ("m6", MG, GRAD, 5, "consistent", "rules"), ("m7", MG, GRAD, 3, "inconsistent", "rules"),
                ("b1r", BO, EXP, 5, "consistent", "rules"), ("b2", BO, EXP, 4, "consistent", "rules")]

GOLD = ("qa_id string, mode string, grade_role string, difficulty int, target_difficulty int, discipline string, "
        "achieved_discipline string, discipline_drift boolean, grade_stage string, attempt int, n_tokens long, "
        "seed_ids array<string>")
GOLD_ROWS = [("m1", MG, HS, 2, 2, "math", "math/algebra", False, "high_school", 0, 10, ["s1"]),
             ("m2", MG, COL, 2, 3, "math", "physics/mechanics", True, "high_school", 0, 20, ["s1"]),
             ("m3", MG, GRAD, 4, 4, "math", "physics/optics", True, "college", 0, 30, ["s1"]),
             ("b1r", BO, EXP, 5, 5, "math", "math/geometry", False, "graduate", 1, 100, ["s1"]),
             ("b2", BO, EXP, 4, 5, "math", None, None, "graduate", 0, 60, ["s1"]),
             ("m5", MG, COL, 3, 3, "physics", "physics/mechanics", False, "college", 0, 40, ["s2"]),
             ("m6", MG, GRAD, 5, 4, "physics", "math/calculus", True, "graduate", 0, 50, ["s2"])]

CALLS = "stage string, prompt_id string, model string, prompt_tokens long, completion_tokens long, simulated boolean"
CALLS_ROWS = [("synthesize", "p1", "gen", 100, 50, False), ("synthesize", "p1", "gen", 200, 70, True),
              ("check", "p2", "ann", 10, 5, False), ("annotate", "p3", "ann", 7, 1, False)]

LEDGER = ("table_name string, table_version long, tokenizer string, format string, mode string, source string, "
          "records long, tokens long")
LEDGER_ROWS = [("gold.boostqa", 0, "tok", "chat", MG, "synth", 5, 150),
               ("gold.boostqa", 0, "tok", "chat", BO, "synth", 2, 160),
               ("gold.blend", 0, "tok", "chat", MG, "synth", 1, 999),  # an older count of gold.blend: not shown
               ("gold.blend", 1, "tok", "chat", MG, "synth", 3, 300),
               ("gold.blend", 1, "tok", "chat", MG, "synth", 2, 200)]


def _lake(root) -> Lake:
    return Lake(engine.get_spark(), LakeConfig(root=str(root)))


def _write(lake: Lake, name: str, schema: str, rows: list) -> None:
    lake.overwrite(lake.spark.createDataFrame(rows, schema), name)


@pytest.fixture(scope="module")
def full(_engine, tmp_path_factory) -> Lake:
    lake = _lake(tmp_path_factory.mktemp("reports") / "lake")
    for name, schema, rows in (("silver.synth_plan", PLAN, PLAN_ROWS), ("silver.synth_checked", CHECKED, CHECKED_ROWS),
                               ("quarantine.synth", QUAR, QUAR_ROWS), ("silver.synth_refined", REFINED, REFINED_ROWS),
                               ("gold.boostqa", GOLD, GOLD_ROWS), ("ops.llm_calls", CALLS, CALLS_ROWS),
                               ("gold.token_ledger", LEDGER, LEDGER_ROWS),
                               ("silver.seeds_annotated", "seed_uid string", [("s1",), ("s2",), ("s3",)])):
        _write(lake, name, schema, rows)
    return lake


@pytest.fixture
def empty(_engine, tmp_path) -> Lake:
    return _lake(tmp_path / "lake")


def records(df: pd.DataFrame) -> list[dict]:
    return df.to_dict(orient="records")


# ---------------------------------------------------------------------------------- degradation
def test_degradation_matrix_is_role_x_stage(full):
    got = records(degradation_matrix(full))
    # multigrade rows of synth_checked only (booster b1r/b2 are not a Table A4 role; m8 was never labelled):
    # high_school_teacher: m1 high_school, m4 high_school        -> 2 | 2 0 0 | 100, 0, 0 | on stage 2/2
    # college_instructor:  m2 high_school, m9 college, m5 college -> 3 | 1 2 0 | 33.3, 66.7, 0 | on stage 2/3
    # graduate_professor:  m3 college, m6 graduate, m7 college   -> 3 | 0 2 1 | 0, 66.7, 33.3 | on stage 1/3
    assert got == [
        {"grade_role": HS, "n": 2, "high_school": 2, "college": 0, "graduate": 0,
         "high_school_%": 100.0, "college_%": 0.0, "graduate_%": 0.0, "on_stage_%": 100.0},
        {"grade_role": COL, "n": 3, "high_school": 1, "college": 2, "graduate": 0,
         "high_school_%": 33.3, "college_%": 66.7, "graduate_%": 0.0, "on_stage_%": 66.7},
        {"grade_role": GRAD, "n": 3, "high_school": 0, "college": 2, "graduate": 1,
         "high_school_%": 0.0, "college_%": 66.7, "graduate_%": 33.3, "on_stage_%": 33.3}]


def test_degradation_matrix_custom_roles_and_unlabelled(empty):
    _write(empty, "silver.synth_checked", "mode string, grade_role string, achieved_stage string",
           [(MG, "tutor", "college"), (MG, "tutor", None), (MG, "tutor", None), (MG, "tutor", "college"),
            (MG, GRAD, "graduate"), (BO, EXP, "graduate")])
    got = records(degradation_matrix(empty))
    # tutor (no stage of its own: on_stage None): 4 rows, college 2, unlabelled 2 -> 50 / 50
    # graduate_professor: 1 row, graduate -> 100, on its stage; custom roles after the known ones
    assert [r["grade_role"] for r in got] == [GRAD, "tutor"]
    g, t = got
    assert (g["n"], g["graduate"], g["unlabelled"], g["graduate_%"], g["on_stage_%"]) == (1, 1, 0, 100.0, 100.0)
    assert (t["n"], t["college"], t["unlabelled"], t["college_%"], t["unlabelled_%"]) == (4, 2, 2, 50.0, 50.0)
    assert (t["high_school"], t["graduate"]) == (0, 0) and pd.isna(t["on_stage_%"])


def test_level_matrix_keeps_requested_level_x_achieved_level(full):
    got = records(level_matrix(full))
    # synth_checked + check's difficulty_degraded rejects (b1, H3); not m8 (check, truncated), nor other stages
    # booster/expert 5: b1 H3, b1r H5, b2 H4 -> n 3, below H5: 2/3 = 66.7
    # multigrade/college 3: m2 H2, m9 H3, m5 H3 -> n 3, below H3: 1/3 = 33.3
    # multigrade/graduate 4: m3 H4, m6 H5, m7 H3 -> n 3, below H4: 1/3 = 33.3
    # multigrade/high school 2: m1 H2, m4 H1 -> n 2, below H2: 1/2 = 50.0
    h = lambda *c: dict(zip(["H1", "H2", "H3", "H4", "H5"], c))  # noqa: E731
    assert got == [
        {"mode": BO, "grade_role": EXP, "target_difficulty": 5, **h(0, 0, 1, 1, 1), "n": 3, "below_target_%": 66.7},
        {"mode": MG, "grade_role": COL, "target_difficulty": 3, **h(0, 1, 2, 0, 0), "n": 3, "below_target_%": 33.3},
        {"mode": MG, "grade_role": GRAD, "target_difficulty": 4, **h(0, 0, 1, 1, 1), "n": 3, "below_target_%": 33.3},
        {"mode": MG, "grade_role": HS, "target_difficulty": 2, **h(1, 1, 0, 0, 0), "n": 2, "below_target_%": 50.0}]


# ---------------------------------------------------------------------------------- booster
def test_booster_effect_pre_filter_share_and_acceptance(full):
    b = booster_effect(full)
    # multigrade: planned m1 m2 m3 m9 m4 m5 m6 m7 m8 = 9; finished = gold 5 (m1 m2 m3 m5 m6) + quarantined 4
    #   (m8 m4 m9 m7) = 9; re-annotated = 8 checked rows (m8 has no level), H4/H5 = m3, m6 -> 2/8 = 0.25;
    #   accepted 5 of 9 planned = 0.5556; accepted H4/H5 = m3, m6 = 2
    # booster: planned b1 b1r b2 b3 = 4; finished = gold 2 (b1r b2) + quarantined 2 (b3 b1) = 4;
    #   re-annotated = b1r H5, b2 H4 + the check reject b1 H3 = 3, H4/H5 2/3 = 0.6667 (the filter's gold share
    #   would be 2/2); accepted 2 of 4 = 0.5, both H4/H5
    assert b["by_mode"] == {
        BO: {"planned_tasks": 4, "finished_tasks": 4, "reannotated": 3, "pre_filter_h4_h5_share": 0.6667,
             "accepted": 2, "accepted_h4_h5": 2, "acceptance_rate": 0.5},
        MG: {"planned_tasks": 9, "finished_tasks": 9, "reannotated": 8, "pre_filter_h4_h5_share": 0.25,
             "accepted": 5, "accepted_h4_h5": 2, "acceptance_rate": 0.5556}}
    assert set(b["meaning"]) == {*b["by_mode"][MG], "equal_budget"}


def test_booster_effect_at_equal_budget(full):
    e = booster_effect(full)["equal_budget"]
    # only s1 has both modes (s2 multigrade only, s3 booster only)
    # booster on s1: b1, b1r, b2 = 3 tasks; accepted H4/H5: b1r (H5), b2 (H4) = 2 -> 2/3 = 0.6667
    # multigrade on s1: m1, m2, m3, m9 = 4 tasks; accepted H4/H5: m3 (H4) = 1 -> 1/4 = 0.25
    # ratio (2/3) / (1/4) = 8/3 = 2.667
    assert e == {"seeds": 1, "booster_tasks": 3, "booster_h4_h5_accepted": 2, "booster_h4_h5_per_task": 0.6667,
                 "multigrade_tasks": 4, "multigrade_h4_h5_accepted": 1, "multigrade_h4_h5_per_task": 0.25,
                 "booster_vs_multigrade": 2.667}


def test_booster_effect_before_anything_finished(empty):
    _write(empty, "silver.synth_plan", "qa_id string, seed_uid string, mode string",
           [("a", "s1", MG), ("b", "s1", BO), ("c", "s2", MG)])
    b = booster_effect(empty)
    # 2 multigrade + 1 booster planned, nothing re-annotated or accepted yet; s1 has both modes
    assert b["by_mode"] == {
        BO: {"planned_tasks": 1, "finished_tasks": 0, "reannotated": 0, "pre_filter_h4_h5_share": None,
             "accepted": 0, "accepted_h4_h5": 0, "acceptance_rate": 0.0},
        MG: {"planned_tasks": 2, "finished_tasks": 0, "reannotated": 0, "pre_filter_h4_h5_share": None,
             "accepted": 0, "accepted_h4_h5": 0, "acceptance_rate": 0.0}}
    assert b["equal_budget"] == {"seeds": 1, "booster_tasks": 1, "booster_h4_h5_accepted": 0,
                                 "booster_h4_h5_per_task": 0.0, "multigrade_tasks": 1,
                                 "multigrade_h4_h5_accepted": 0, "multigrade_h4_h5_per_task": 0.0,
                                 "booster_vs_multigrade": None}  # 0/0: no ratio


def test_booster_effect_without_booster(empty):
    _write(empty, "silver.synth_plan", "qa_id string, seed_uid string, mode string", [("a", "s1", MG)])
    _write(empty, "gold.boostqa", "qa_id string, mode string, difficulty int", [("a", MG, 4)])
    b = booster_effect(empty)
    # booster off: no booster mode, no seed with both modes
    assert list(b["by_mode"]) == [MG] and b["by_mode"][MG]["acceptance_rate"] == 1.0
    assert b["by_mode"][MG]["accepted_h4_h5"] == 1 and b["by_mode"][MG]["pre_filter_h4_h5_share"] is None
    assert b["equal_budget"] == {"seeds": 0, "booster_tasks": 0, "booster_h4_h5_accepted": 0,
                                 "booster_h4_h5_per_task": None, "multigrade_tasks": 0,
                                 "multigrade_h4_h5_accepted": 0, "multigrade_h4_h5_per_task": None,
                                 "booster_vs_multigrade": None}


# ---------------------------------------------------------------------------------- truncation, drift
def test_truncation_per_requested_level(full):
    got = records(truncation(full))
    # outcomes = gold + quarantine.synth rows of the level; truncated = reason 'truncated'
    # H2: gold m1 + quarantined m8 (check, truncated), m4 (unsolvable) -> 1/3 = 33.3
    # H3: gold m2, m5 + quarantined m9 (refine, truncated)             -> 1/3 = 33.3
    # H4: gold m3, m6 + quarantined m7 (duplicate)                     -> 0/3 = 0.0
    # H5: gold b1r, b2 + quarantined b3 (synthesize, truncated), b1    -> 1/4 = 25.0
    def row(level, n, t, pct, s=0, c=0, r=0):
        return {"target_difficulty": level, "outcomes": n, "truncated": t, "truncated_%": pct,
                "truncated_at_synthesize": s, "truncated_at_check": c, "truncated_at_refine": r}

    assert got == [row(2, 3, 1, 33.3, c=1), row(3, 3, 1, 33.3, r=1), row(4, 3, 0, 0.0), row(5, 4, 1, 25.0, s=1)]


def test_truncation_with_quarantine_only(empty):
    _write(empty, "quarantine.synth", "target_difficulty int, reason string, stage string",
           [(4, "truncated", "synthesize"), (4, "invalid_output", "synthesize")])
    # nothing accepted yet: H4 has 2 outcomes, 1 truncated -> 50.0
    assert records(truncation(empty)) == [
        {"target_difficulty": 4, "outcomes": 2, "truncated": 1, "truncated_%": 50.0, "truncated_at_synthesize": 1,
         "truncated_at_check": 0, "truncated_at_refine": 0}]


def test_discipline_drift(full):
    d = discipline_drift(full)
    # math seeds: m1 no, m2 -> physics, m3 -> physics, b1r no, b2 no label -> 5 rows, 2 drifted (40.0), 1 unlabelled
    # physics seeds: m5 no, m6 -> math -> 2 rows, 1 drifted (50.0); overall 3 of 7 = 42.9
    assert (d["qa"], d["drifted"], d["drift_%"]) == (7, 3, 42.9)
    assert records(d["by_discipline"]) == [
        {"discipline": "math", "qa": 5, "drifted": 2, "unlabelled": 1, "drift_%": 40.0},
        {"discipline": "physics", "qa": 2, "drifted": 1, "unlabelled": 0, "drift_%": 50.0}]
    # pairs by top-level achieved discipline: math -> physics (m2 mechanics, m3 optics) 2, physics -> math 1
    assert records(d["top_pairs"]) == [
        {"seed_discipline": "math", "achieved_discipline": "physics", "count": 2},
        {"seed_discipline": "physics", "achieved_discipline": "math", "count": 1}]
    assert records(discipline_drift(full, top=1)["top_pairs"]) == [
        {"seed_discipline": "math", "achieved_discipline": "physics", "count": 2}]


def test_discipline_drift_on_an_older_gold_table(empty):
    # a gold.boostqa written before achieved discipline was carried: no report rather than a wrong one
    _write(empty, "gold.boostqa", "qa_id string, discipline string", [("a", "math")])
    assert discipline_drift(empty) == {}
    _write(empty, "silver.synth_checked", "mode string, grade_role string", [(MG, HS)])
    assert degradation_matrix(empty).empty


# ---------------------------------------------------------------------------------- kept reports
def test_refinement(full):
    # refined 8: consistent m1 m3 m6 b1r b2 = 5, inconsistent m2 m7 = 2, undecided m5 = 1; by judge m2 m3 = 2
    # unsolvable m4 = 1 of 8 + 1 processed = 11.11 %; inconsistent 2 of 7 judged (5 + 2) = 28.57 %
    assert refinement(full) == {"refined": 8, "unsolvable": 1, "unsolvable_%": 11.11, "consistent": 5,
                                "inconsistent": 2, "undecided": 1, "decided_by_judge": 2, "inconsistent_%": 28.57}


def test_rejections(full):
    # one quarantine row per (stage, reason) here, ordered by stage then reason
    assert records(rejections(full)) == [{"stage": s, "reason": r, "count": 1} for s, r in (
        ("check", "difficulty_degraded"), ("check", "truncated"), ("gate", "duplicate_synth"),
        ("refine", "truncated"), ("refine", "unsolvable"), ("synthesize", "truncated"))]


def test_usage(full):
    # annotate p3: 1 call 7/1; check p2: 1 call 10/5; synthesize p1: 2 calls 100+200 / 50+70, one simulated
    assert records(usage(full)) == [
        {"stage": "annotate", "prompt_id": "p3", "model": "ann", "calls": 1, "prompt_tokens": 7,
         "completion_tokens": 1, "simulated": 0},
        {"stage": "check", "prompt_id": "p2", "model": "ann", "calls": 1, "prompt_tokens": 10,
         "completion_tokens": 5, "simulated": 0},
        {"stage": "synthesize", "prompt_id": "p1", "model": "gen", "calls": 2, "prompt_tokens": 300,
         "completion_tokens": 120, "simulated": 1}]


def test_gold_by_mode(full):
    # booster/expert: b1r H5 100 tok, b2 H4 60 -> 2, 160, 4.5; college: m2 H2 20, m5 H3 40 -> 2, 60, 2.5
    # graduate: m3 H4 30, m6 H5 50 -> 2, 80, 4.5; high school: m1 H2 10 -> 1, 10, 2.0
    assert records(gold_by_mode(full)) == [
        {"mode": BO, "grade_role": EXP, "qa": 2, "tokens": 160, "avg_difficulty": 4.5},
        {"mode": MG, "grade_role": COL, "qa": 2, "tokens": 60, "avg_difficulty": 2.5},
        {"mode": MG, "grade_role": GRAD, "qa": 2, "tokens": 80, "avg_difficulty": 4.5},
        {"mode": MG, "grade_role": HS, "qa": 1, "tokens": 10, "avg_difficulty": 2.0}]


def test_ledger_and_token_progress(full):
    # newest version per table: gold.blend v1 (3 + 2 records, 300 + 200 tokens; v0 ignored), gold.boostqa v0
    assert records(ledger(full)) == [
        {"table_name": "gold.blend", "table_version": 1, "mode": MG, "source": "synth", "records": 5, "tokens": 500},
        {"table_name": "gold.boostqa", "table_version": 0, "mode": BO, "source": "synth", "records": 2, "tokens": 160},
        {"table_name": "gold.boostqa", "table_version": 0, "mode": MG, "source": "synth", "records": 5, "tokens": 150}]
    p = token_progress(full, 1000)
    # 310 tokens of 1000 in 7 QA from 2 seeds (s1, s2) of 3; 3 synthesis-stage calls (not the annotate one)
    # remaining 690: seeds ceil(690 / 155) = 5; calls 690 / (310/7) * (3/7) = 6.68 -> 7
    assert p == {"table": "gold.boostqa", "version": 0, "current_version": 0, "target_tokens": 1000, "tokens": 310,
                 "share_done": 0.31, "remaining_tokens": 690, "accepted_qa": 7, "tokens_per_qa": pytest.approx(310 / 7),
                 "seeds_used": 2, "seeds_available": 3, "tokens_per_seed": 155.0, "seeds_needed": 5, "llm_calls": 3,
                 "calls_per_accepted_qa": pytest.approx(3 / 7), "calls_needed": 7}


# ---------------------------------------------------------------------------------- the whole report
def test_synthesis_report_as_json(full):
    rep = REPORTS["synthesis"](full)
    assert list(rep) == ["degradation_matrix", "level_matrix", "booster", "truncation", "discipline_drift",
                         "refinement", "rejections", "usage", "gold_by_mode"]
    doc = json.loads(json.dumps(as_jsonable(rep)))  # what MLflow gets: plain JSON all the way down
    assert doc["degradation_matrix"][2]["on_stage_%"] == 33.3
    assert doc["booster"]["equal_budget"]["booster_vs_multigrade"] == 2.667
    assert doc["discipline_drift"]["top_pairs"][0] == {"seed_discipline": "math", "achieved_discipline": "physics",
                                                       "count": 2}
    assert doc["truncation"][3]["truncated_%"] == 25.0 and doc["refinement"]["inconsistent_%"] == 28.57


def test_every_report_on_an_empty_lake(empty):
    rep = synthesis_report(empty)
    for name in ("degradation_matrix", "level_matrix", "truncation", "rejections", "usage", "gold_by_mode"):
        assert isinstance(rep[name], pd.DataFrame) and rep[name].empty, name
    assert rep["booster"] == rep["discipline_drift"] == rep["refinement"] == {}
    assert as_jsonable(rep)["level_matrix"] == []
    assert ledger(empty).empty and token_progress(empty, 100) == {}


def test_reports_on_empty_tables(empty):
    """Tables that exist but hold no rows yet."""
    _write(empty, "silver.synth_checked", CHECKED, [])
    _write(empty, "gold.boostqa", GOLD, [])
    _write(empty, "silver.synth_plan", PLAN, [])
    assert degradation_matrix(empty).empty and level_matrix(empty).empty and truncation(empty).empty
    d = discipline_drift(empty)
    assert (d["qa"], d["drifted"], d["drift_%"]) == (0, 0, None) and d["by_discipline"].empty and d["top_pairs"].empty
    b = booster_effect(empty)
    assert b["by_mode"] == {} and b["equal_budget"]["seeds"] == 0 and b["equal_budget"]["booster_vs_multigrade"] is None


# ---------------------------------------------------------------------------------- the command
def test_report_command_prints_every_section(full, monkeypatch, tmp_path):
    import os

    from rich.console import Console
    from typer.testing import CliRunner

    from boostqa import cli

    for name in list(os.environ):
        if name.startswith("BOOSTQA"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BOOSTQA__LAKE__ROOT", full.cfg.root)
    monkeypatch.setenv("BOOSTQA__RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(cli, "console", Console(width=250, color_system=None))
    r = CliRunner().invoke(cli.app, ["report"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    for title in ("degradation (Table A4): requested multigrade role x re-annotated grade stage",
                  "degradation: requested level x re-annotated level",
                  "booster vs multigrade: pre-filter H4/H5 share and acceptance",
                  "truncated (max_tokens hit after re-asks) per requested level",
                  "discipline drift per seed discipline", "top drifts: seed -> re-annotated discipline",
                  "rejections by stage and reason", "gold.boostqa by mode and role"):
        assert title in out, title
    assert ("equal budget (1 seeds with both modes): accepted H4/H5 per planned task 0.6667 booster (2/3) vs "
            "0.25 multigrade (1/4) -> x2.667") in out
    assert "discipline drift: 3 of 7 accepted QA (42.9%)" in out
    assert "inconsistent 28.57% of judged" in out

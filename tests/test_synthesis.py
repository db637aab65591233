"""BoostQA synthesis end to end on the embedded engine: sample -> synthesize -> check -> refine -> gate
over real Delta tables, with the LLM simulator (a real HTTP server) as generator, re-annotator and
refiner. Expectations are recomputed independently from the config, the seeds and the simulator's
raw responses (as logged in ops.llm_calls / kept in quarantine.synth).

silver.seeds_annotated + gold.sampling_weights are built once per module (ingest -> ... -> weights
over 40 small seeds) and copied into each test's lake. One more module lake runs the synthesis
stages twice (the second pass works off the booster retries the first pass planned); read-only
tests share it, tests that write copy it.

Workaround: the embedded engine (Sail 0.7) cannot time-travel to a Delta version older than the
table's last checkpoint (written every 10 commits). LLM stages pin ops.llm_calls at the start and
also write it after every chunk, so a stage with many chunks fails once the log crosses a
checkpoint. Copies get ``delta.checkpointInterval`` raised on ops.llm_calls; the one test without
it documents the bug (xfail).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from boostqa import engine
from boostqa.config import deep_merge, load_settings
from boostqa.llm.sim import SimConfig, SimulatorServer
from boostqa.runner import Runner
from boostqa.stages import check, llm, refine, sample, synthesize
from boostqa.stages.base import StageContext
from boostqa.text.tokens import count_tokens
from boostqa.tracking import SIMULATED_TAG, STAGE_TAG
from tests.conftest import sim_requests, write_jsonl

N_SEEDS = 40
PREP = ["ingest", "bench", "dedup", "decontam", "annotate", "probe", "weights"]
SYNTH = ["sample", "synthesize", "check", "refine", "gate"]
PLAN, RAW, CHECKED, REFINED, GOLD = ("silver.synth_plan", "silver.synth_raw", "silver.synth_checked",
                                     "silver.synth_refined", "gold.boostqa")
QUAR, CALLS, FAILURES, SEEDS = "quarantine.synth", "ops.llm_calls", "ops.llm_failures", "silver.seeds_annotated"
FIELDS = {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}
LINEAGE_KEYS = {"synthesize_run", "check_run", "refine_run", "gate_run", "generator_model", "generator_prompt",
                "refiner_model", "refiner_prompt"}
TRANSPORT_FAULTS = ("rate_limit", "server_error", "unavailable", "timeout")
CHUNK_ROWS = 25  # synthesis LLM stages: ~100 tasks -> 4 chunks, each committed on its own


# ------------------------------------------------------------------------------------------ inputs
def _records() -> list[dict]:
    """40 distinct seeds: physics/chemistry/maths-like and history/literature-like, every 4th multiple
    choice (gold letter), the others ending in a number (probe-scorable). Every 5-word window holds
    a number specific to the seed, so dedup and decontam keep them all."""
    out = []
    for i in range(N_SEEDS):
        a, b, c = i + 2, 3 * i + 1, i + 5
        kind = i % 5
        if kind == 0:
            q = f"Problem {i}: a cart of mass {a} kg speeds up by {b} m/s in {c} s; find the net force on cart {i}."
            ans = f"Force is {a} times {b} over {c}. The answer is {round(a * b / c, 2)}."
        elif kind == 1:
            q = f"Exercise {i}: solve {a}x + {b} = {c + b} for x, then add {i} to the root {i} times."
            ans = f"x = {c}/{a}, then add {i * i}. The answer is {round(c / a + i * i, 3)}."
        elif kind == 2:
            q = f"Lab {i}: {a} mol of gas at {c * 100} K in {b} litres; what pressure in kPa does sample {i} exert?"
            ans = f"Use pV = nRT with n = {a}. The answer is {round(a * 8.314 * c * 100 / b, 1)}."
        elif kind == 3:
            q = f"Essay {i}: why did the treaty of {1600 + 7 * i} reshape trade among {a} northern ports by {1700 + i}?"
            ans = f"It lowered tolls on {b} goods across {a} ports. The answer is {a}."
        else:
            q = f"Reading {i}: in act {a} of play number {b}, why does the heir of house {c} refuse the crown {i}?"
            ans = f"Out of duty to {c} elders and grief. The answer is {c}."
        rec = {"id": f"s{i:02d}", "question": q, "answer": ans}
        if i % 4 == 0:
            rec["choices"] = [f"{a} units", f"{b} units", f"{c} units", f"{i} units"]
            rec["answer"] = f"B. {b} units"
        out.append(rec)
    return out


BENCH = [{"question": "Which river flows through the capital city of Egypt towards the sea?", "answer": "Nile"},
         {"question": "Name the author of a famous play about a Danish prince and his ghostly father.",
          "answer": "Shakespeare"}]


def _settings(lake_root: Path, src: Path, *, tracking: bool = False, **overrides):
    """Settings for a lake at <lake_root>/lake reading the module's source files."""
    base = {"sources": [{"name": "toy", "path": str(src / "seeds.jsonl"), "fields": FIELDS}],
            "benchmarks": [{"name": "tiny", "path": str(src / "bench.jsonl")}],
            "decontam": {"embedding": {"enabled": False}},
            "probe": {"per_cell": 3},
            "llm": {"chunk_rows": CHUNK_ROWS},
            "lake": {"root": str(lake_root / "lake")}, "runs_dir": str(lake_root / "runs"),
            "tracking": {"enabled": tracking},
            # two runs, as the tests below read them: run 1 plans the booster retries, run 2 does
            # them (test_one_run_converges_with_feedback_passes covers the default: one run does both)
            "runner": {"max_feedback_passes": 0}}
    return load_settings("local", environ={}, overrides=deep_merge(base, overrides))


def _no_checkpoints(lake_root: Path) -> None:
    """Raise ops.llm_calls' checkpoint interval (see the module docstring)."""
    from deltalake import DeltaTable

    DeltaTable(str(lake_root / "lake" / "ops" / "llm_calls")).alter.set_table_properties(
        {"delta.checkpointInterval": "1000000"})


def _copy(src_root: Path, dest: Path, workaround: bool = True) -> Path:
    shutil.copytree(src_root / "lake", dest / "lake")
    if workaround:
        _no_checkpoints(dest)
    return dest


@pytest.fixture(scope="module")
def template(_engine, tmp_path_factory) -> Path:
    """A lake with silver.seeds_annotated and gold.sampling_weights, nothing of synthesis."""
    root = tmp_path_factory.mktemp("synth_template")
    write_jsonl(root / "src" / "seeds.jsonl", _records())
    write_jsonl(root / "src" / "bench.jsonl", BENCH)
    # prep with one chunk per stage (llm.chunk_rows 500): small chunks are for the synthesis stages
    settings = _settings(root, root / "src", llm={"chunk_rows": 500})
    llm.stop_simulator()
    runner = Runner(settings, spark=engine.get_spark())
    _, results = runner.run(PREP)
    llm.stop_simulator()
    assert [(r.stage, r.complete) for r in results] == [(s, True) for s in PREP]
    seeds = [r.asDict() for r in runner.lake.read(SEEDS).collect()]
    assert len(seeds) == N_SEEDS and runner.lake.read("silver.seeds_clean").count() == N_SEEDS
    # the simulator's (deterministic) labels give every case the tests need
    stem = {s["is_stem"] for s in seeds}
    hard = Counter((s["is_stem"], s["difficulty"] >= 4) for s in seeds)
    assert stem == {True, False} and all(hard[k] >= 2 for k in [(True, True), (True, False), (False, True)]), hard
    assert runner.lake.read("gold.sampling_weights").count() > 0
    assert not runner.lake.exists(PLAN)
    return root


def _src(template: Path) -> Path:
    return template / "src"


@pytest.fixture(scope="module")
def synthesized(template, tmp_path_factory):
    """The synthesis stages run twice (tracking on) on a copy of the template: pass 1 plans and
    runs everything, pass 2 runs the booster retries pass 1's check planned."""
    root = _copy(template, tmp_path_factory.mktemp("synth_shared"))
    settings = _settings(root, _src(template), tracking=True)
    llm.stop_simulator()
    runner = Runner(settings, spark=engine.get_spark())
    run1, res1 = runner.run(SYNTH)
    run2, res2 = runner.run(SYNTH)
    llm.stop_simulator()
    for res in (res1, res2):
        assert [(r.stage, r.complete) for r in res] == [(s, True) for s in SYNTH]
    return {"root": root, "settings": settings, "runner": runner, "runs": (run1, run2),
            "res": ({r.stage: r for r in res1}, {r.stage: r for r in res2})}


@pytest.fixture
def builtin_sim():
    llm.stop_simulator()
    yield
    llm.stop_simulator()


# ------------------------------------------------------------------------------------------ helpers
def _rows(runner: Runner, name: str, key: str = "qa_id", where: str | None = None) -> dict:
    if not runner.lake.exists(name):
        return {}
    df = runner.lake.read(name)
    if where:
        df = df.where(where)
    rows = [r.asDict(recursive=True) for r in df.collect()]
    out = {r[key]: r for r in rows}
    assert len(out) == len(rows), f"duplicate {key} in {name}"
    return out


def _quarantine(runner: Runner, stage: str) -> dict:
    return {k: r for k, r in _rows(runner, QUAR).items() if r["stage"] == stage}


def _expected_tasks(seeds: dict, cfg) -> set[tuple]:
    """(seed_uid, mode, grade_role, sample, target_difficulty) every attempt-0 task, from the config."""
    out = set()
    for uid, s in seeds.items():
        if s["is_stem"] or cfg.multigrade_non_stem:
            out |= {(uid, "multigrade", role, k, level) for role, level in cfg.roles.items()
                    for k in range(cfg.samples_per_role)}
        b = cfg.booster
        if b.enabled and s["difficulty"] >= b.min_seed_difficulty:
            out |= {(uid, "booster", "expert_setter", k, min(5, s["difficulty"] + b.target_bump))
                    for k in range(b.samples)}
    return out


def _tasks(plan: dict) -> set[tuple]:
    return {(p["seed_uid"], p["mode"], p["grade_role"], p["sample"], p["target_difficulty"])
            for p in plan.values() if p["attempt"] == 0}


def _retry_id(plan_id: str) -> str:
    return hashlib.sha256(f"{plan_id}\x1fretry1".encode()).hexdigest()[:32]


def _accounting(runner: Runner) -> dict[str, set]:
    """Each row of a level sits in exactly one of: next level / quarantine.synth at this stage /
    pending. Returns the pending keys per stage."""
    quar = _rows(runner, QUAR)  # unique qa_id over all stages
    by_stage = {s: {k for k, r in quar.items() if r["stage"] == s} for s in ("synthesize", "check", "refine", "gate")}
    assert set().union(*by_stage.values()) == set(quar), Counter(r["stage"] for r in quar.values())
    plan = set(_rows(runner, PLAN, "plan_id"))
    assert plan == set(_rows(runner, PLAN))  # qa_id = plan_id
    pending = {}
    for stage, src, dst in (("synthesize", plan, RAW), ("check", RAW, CHECKED), ("refine", CHECKED, REFINED),
                            ("gate", REFINED, GOLD)):
        src = src if isinstance(src, set) else set(_rows(runner, src))
        out = set(_rows(runner, dst))
        assert not out & by_stage[stage], f"{stage}: kept and quarantined"
        assert out | by_stage[stage] <= src, f"{stage}: rows from nowhere"
        pending[stage] = src - out - by_stage[stage]
    return pending


def _ctx(runner: Runner, stage, **inputs) -> StageContext:
    return StageContext(runner.spark, stage.settings_view(runner.settings), "keys", stage, inputs=inputs)


def _keys(runner: Runner, stage, **inputs) -> dict[str, str]:
    """row key -> the request key the stage sends for it (its own request builder, no calls)."""
    rows = llm.pending_requests(_ctx(runner, stage, **inputs), next(iter(inputs.values())))
    return {r[stage.llm.row_key]: r.request_key for r in rows.collect()}


def _request_keys(runner: Runner) -> dict[str, dict[str, str]]:
    """stage -> qa_id -> the request key the stage sends for it (its own request builders, no calls)."""
    lake = runner.lake
    out = {"synthesize": _keys(runner, synthesize.STAGE, plan=lake.read(PLAN), seeds=lake.read(SEEDS))}
    if lake.exists(RAW):
        out["check"] = _keys(runner, check.STAGE, qa=lake.read(RAW))
    if lake.exists(CHECKED):
        out["refine"] = _keys(runner, refine.STAGE, qa=lake.read(CHECKED))
    return out



def _all_endpoints(url: str, **ep) -> dict:
    """generator, re-annotator and refiner on one simulator URL (models as in base.yaml)."""
    models = {"generator": "deepseek-reasoner", "annotator": "deepseek-chat", "refiner": "deepseek-chat"}
    return {"llm": {"endpoints": {n: {"base_url": url, "model": m, "api_key_env": None, **ep} for n, m in models.items()}}}


# ------------------------------------------------------------------------------------------ 1. modes
def test_plan_has_multigrade_for_stem_and_booster_for_hard_seeds(synthesized):
    runner, cfg = synthesized["runner"], synthesized["settings"].synthesis
    seeds, plan = _rows(runner, SEEDS, "seed_uid"), _rows(runner, PLAN)
    expected = _expected_tasks(seeds, cfg)
    assert _tasks(plan) == expected and len(expected) == sum(1 for p in plan.values() if p["attempt"] == 0)
    modes = Counter(t[1] for t in expected)
    n_stem = sum(s["is_stem"] for s in seeds.values())
    assert modes["multigrade"] == n_stem * len(cfg.roles) and 0 < n_stem < N_SEEDS
    assert modes["booster"] == sum(s["difficulty"] >= 4 for s in seeds.values()) > 0
    assert not {p["seed_uid"] for p in plan.values() if p["mode"] == "multigrade"} & \
        {u for u, s in seeds.items() if not s["is_stem"]}  # no multigrade for non-STEM seeds

    # weight = probe cell weight x source weight x booster multiplier; seed attributes carried over
    cells = {(w["discipline"], w["difficulty"]): w["weight"]
             for w in (r.asDict() for r in runner.lake.read("gold.sampling_weights").collect())}
    for p in plan.values():
        s = seeds[p["seed_uid"]]
        assert (p["seed_difficulty"], p["discipline"], p["subfield"], p["is_stem"]) == \
            (s["difficulty"], s["discipline"], s["subfield"], s["is_stem"])
        if p["attempt"] == 0:
            mult = cfg.booster.weight_multiplier.get(f"H{s['difficulty']}", 1.0) if p["mode"] == "booster" else 1.0
            want = cells.get((s["discipline"], s["difficulty"]), 1.0) * s["source_weight"] * mult
            assert p["weight"] == pytest.approx(want, rel=1e-12), p
            assert p["instruction"] is None and p["plan_id"] == p["qa_id"]

    # both modes were synthesised, each with its own prompt, carrying the seed and the target level
    raw, calls = _rows(runner, RAW), _rows(runner, CALLS, "request_key")
    assert {r["mode"] for r in raw.values()} == {"multigrade", "booster"}
    for r in raw.values():
        p = plan[r["qa_id"]]
        assert (r["mode"], r["grade_role"], r["target_difficulty"], r["seed_ids"]) == \
            (p["mode"], p["grade_role"], p["target_difficulty"], [p["seed_uid"]])
        c = calls[r["request_key"]]
        assert (c["stage"], c["endpoint"], c["model"], c["prompt_id"]) == \
            ("synthesize", "generator", "deepseek-reasoner", f"synth_{r['mode']}@v2")
        user = json.loads(c["messages"])[-1]["content"]
        assert seeds[p["seed_uid"]]["question"] in user and f"at difficulty H{p['target_difficulty']}" in user
        assert r["reasoning"].startswith("[simulated reasoning]")  # the reasoner's trace, kept apart


@pytest.mark.parametrize("synthesis", [
    pytest.param({"booster": {"enabled": False}, "roles": {"tutor": 1, "olympiad_coach": 5}, "samples_per_role": 2},
                 id="booster-off-custom-roles"),
    pytest.param({"booster": {"min_seed_difficulty": 3, "target_bump": 2, "samples": 2}}, id="booster-bump-2"),
])
def test_plan_follows_the_configured_roles_samples_and_booster(template, tmp_path, synthesis):
    root = _copy(template, tmp_path)
    runner = Runner(_settings(root, _src(template), synthesis=synthesis), spark=engine.get_spark())
    _, [res] = runner.run(["sample"])
    cfg = runner.settings.synthesis
    seeds, plan = _rows(runner, SEEDS, "seed_uid"), _rows(runner, PLAN)
    expected = _expected_tasks(seeds, cfg)
    assert _tasks(plan) == expected and (res.kept, res.deferred) == (len(expected), 0)
    if not cfg.booster.enabled:
        assert {p["mode"] for p in plan.values()} == {"multigrade"}
        per_seed = Counter(p["seed_uid"] for p in plan.values())
        assert set(per_seed.values()) == {len(cfg.roles) * cfg.samples_per_role}
        assert {(p["grade_role"], p["target_difficulty"]) for p in plan.values()} == set(cfg.roles.items())
    else:
        booster = [p for p in plan.values() if p["mode"] == "booster"]
        assert {p["seed_difficulty"] for p in booster} <= {3, 4, 5} and 3 in {p["seed_difficulty"] for p in booster}
        assert all(p["target_difficulty"] == min(5, p["seed_difficulty"] + 2) for p in booster)
        assert set(Counter(p["seed_uid"] for p in booster).values()) == {2}  # booster.samples


# ------------------------------------------------------------------------------------------ 2. sampling
def test_sampling_is_deterministic_and_respects_the_budget(template, tmp_path):
    def sample(name: str, seed: int, budget: int):
        root = _copy(template, tmp_path / name)
        runner = Runner(_settings(root, _src(template), synthesis={"seed": seed, "budget_qa": budget}),
                        spark=engine.get_spark())
        _, [res] = runner.run(["sample"])
        return runner, res

    a, res_a = sample("a", 7, 30)
    candidates = len(_expected_tasks(_rows(a, SEEDS, "seed_uid"), a.settings.synthesis))
    assert candidates > 60
    plan_a = _rows(a, PLAN)
    assert (res_a.pending, res_a.kept, res_a.deferred, res_a.rejected) == (candidates, 30, candidates - 30, 0)

    b, _ = sample("b", 7, 30)  # a fresh lake, same inputs, same seed: the same plan
    plan_b = _rows(b, PLAN)
    assert {k: p["weight"] for k, p in plan_b.items()} == {k: p["weight"] for k, p in plan_a.items()}
    strip = ("run_id",)
    assert [{k: v for k, v in plan_b[q].items() if k not in strip} for q in sorted(plan_b)] == \
        [{k: v for k, v in plan_a[q].items() if k not in strip} for q in sorted(plan_a)]

    c, _ = sample("c", 8, 30)  # another seed: another selection
    assert set(_rows(c, PLAN)) != set(plan_a) and len(_rows(c, PLAN)) == 30

    # synthesise and check the 30: booster retries join the plan, outside the sampling budget
    _, done = a.run(["synthesize", "check"])
    assert all(r.complete for r in done)
    retries = {k: p for k, p in _rows(a, PLAN).items() if p["attempt"] == 1}
    assert retries and set(retries) == {_retry_id(k) for k, r in _quarantine(a, "check").items()
                                        if r["reason"] == "difficulty_degraded"}
    plan_a = _rows(a, PLAN)

    # raising the budget adds exactly the difference; the plan drawn so far is untouched, and the
    # result equals a one-shot draw under the larger budget (a prefix of the same weighted ranking)
    a2 = Runner(_settings(tmp_path / "a", _src(template), synthesis={"seed": 7, "budget_qa": 50}),
                spark=engine.get_spark())
    _, [more] = a2.run(["sample"])
    plan_a2 = _rows(a2, PLAN)
    assert (more.pending, more.kept, more.deferred) == (candidates - 30, 20, candidates - 50)
    assert len(plan_a2) == 50 + len(retries) and {k: plan_a2[k] for k in plan_a} == plan_a
    assert len({p["run_id"] for k, p in plan_a2.items() if k not in plan_a}) == 1
    d, _ = sample("d", 7, 50)
    assert set(_rows(d, PLAN)) == set(plan_a2) - set(retries)

    _, [again] = a2.run(["sample"])  # at the budget: nothing more
    assert (again.kept, again.deferred) == (0, candidates - 50) and len(_rows(a2, PLAN)) == 50 + len(retries)


def test_token_budget_plans_at_the_prior_then_at_the_observed_yield(template, tmp_path):
    """budget_tokens: tasks are costed at est_tokens_per_task until enough have an outcome, then at
    the observed gold tokens per finished task, per mode; a rerun tops the plan up to the budget."""
    root = _copy(template, tmp_path)
    syn = {"budget_qa": 10_000, "budget_tokens": 9_000, "est_tokens_per_task": 300, "min_yield_tasks": 5}
    runner = Runner(_settings(root, _src(template), synthesis=syn), spark=engine.get_spark())
    _, [res] = runner.run(["sample"])
    assert res.kept == 30  # 9,000 / 300 tokens per task
    assert res.stats["expected_tokens_per_task.multigrade"] == 300
    assert runner.lake.read(PLAN).count() == 30
    runner.run(["synthesize", "check", "refine", "gate"])
    gold, quar = runner.lake.read(GOLD).toPandas(), runner.lake.read(QUAR).toPandas()
    finished = {m: (gold["mode"] == m).sum() + (quar["mode"] == m).sum() for m in ("multigrade", "booster")}
    observed = {m: gold.loc[gold["mode"] == m, "n_tokens"].sum() / finished[m] for m in finished}
    ctx = _ctx(runner, sample.STAGE)
    est = sample.task_yield(ctx, runner.lake.read(GOLD), runner.lake.read(QUAR))
    for m in finished:
        assert est[m] == (observed[m] if finished[m] >= 5 else 300)
    plan = runner.lake.read(PLAN).where("attempt = 0").toPandas()
    spent = sum(est[m] for m in plan["mode"])
    # costed at the observed yield, 200 more tokens of budget buy tasks worth at most 200 tokens
    budget = int(spent) + 200
    runner2 = Runner(_settings(root, _src(template), synthesis={**syn, "budget_tokens": budget}),
                     spark=engine.get_spark())
    _, [more] = runner2.run(["sample"])
    added = runner2.lake.read(PLAN).where("attempt = 0").toPandas().merge(plan, how="left", on="plan_id",
                                                                          indicator=True)
    added = added[added["_merge"] == "left_only"]
    cost = sum(est[m] for m in added["mode_x"])
    assert more.kept == len(added) > 0
    assert spent + cost <= budget < spent + cost + max(est.values())  # filled up to the budget, not past it


# ------------------------------------------------------------------------------------------ 3. rejections
def test_degraded_boosters_are_quarantined_and_retried_once(synthesized):
    runner, cfg = synthesized["runner"], synthesized["settings"].synthesis
    run1, run2 = synthesized["runs"]
    plan, checked = _rows(runner, PLAN), _rows(runner, CHECKED)
    q = _quarantine(runner, "check")
    assert q and {r["reason"] for r in q.values()} == {"difficulty_degraded"}
    for k, r in q.items():  # the logged re-annotation says below target
        want = int(json.loads(r["raw"])["difficulty"].removeprefix("H"))
        assert r["mode"] == plan[k]["mode"] == "booster" and r["achieved_difficulty"] == want
        assert want < r["target_difficulty"] - cfg.booster.tolerance
        assert r["detail"] == f"asked for H{r['target_difficulty']}, re-annotated H{want}"
    for r in checked.values():  # what passed is at target (booster) or not judged (multigrade)
        assert r["mode"] == "multigrade" or r["achieved_difficulty"] >= r["target_difficulty"] - cfg.booster.tolerance

    first = {k for k in q if plan[k]["attempt"] == 0}
    second = {k for k in q if plan[k]["attempt"] == 1}
    assert first and second, "both an original and a retried booster task came out too easy"
    retries = {k: p for k, p in plan.items() if p["attempt"] > 0}
    assert set(retries) == {_retry_id(k) for k in first}  # one retry per degraded original, none for retries
    assert {p["attempt"] for p in retries.values()} == {1}
    for k in first:
        orig, retry = plan[k], plan[_retry_id(k)]
        assert retry["instruction"] == check.STRONGER and retry["run_id"] == run1 and q[k]["run_id"] == run1
        for f in ("seed_uid", "mode", "grade_role", "seed_difficulty", "target_difficulty", "discipline"):
            assert retry[f] == orig[f]
    assert all(q[k]["run_id"] == run2 for k in second)
    res1, res2 = synthesized["res"]
    assert res2["synthesize"].pending == len(retries) and res1["check"].rejected_by_reason == \
        {"difficulty_degraded": len(first)}
    # the retry prompt carries the stronger instruction; the original one did not
    raw, calls = _rows(runner, RAW), _rows(runner, CALLS, "request_key")
    for k in first:
        assert check.STRONGER in calls[raw[_retry_id(k)]["request_key"]]["messages"]
        assert check.STRONGER not in calls[raw[k]["request_key"]]["messages"]


def test_unsolvable_items_are_quarantined_by_refine(synthesized):
    runner = synthesized["runner"]
    q, refined = _quarantine(runner, "refine"), _rows(runner, REFINED)
    calls = _rows(runner, CALLS, "request_key")
    assert q and {r["reason"] for r in q.values()} == {"unsolvable"}
    for r in q.values():
        verdict = json.loads(r["raw"])
        assert verdict["solvable"] is False
        assert r["detail"] == verdict["issues"] if verdict.get("issues") else True  # the refiner's reason, if any
    for r in refined.values():  # kept: the refiner said solvable, and its answer is the one kept
        verdict = json.loads(calls[r["request_key"]]["raw"])
        assert verdict["solvable"] is True and r["answer"] == verdict["answer"].strip()
        assert r["consistency"] in ("consistent", "inconsistent", "undecided") and r["consistency_reason"]


def test_undecided_answer_pairs_go_to_the_llm_judge_and_only_those(synthesized):
    """Rules decide first (final-answer extraction + normalisation); the judge is asked only when
    they cannot, its verdict is the flag, and its calls are logged like any other."""
    from boostqa.llm.prompts import load_prompt
    from boostqa.text.answers import compare

    runner = synthesized["runner"]
    refined, calls = _rows(runner, REFINED), _rows(runner, CALLS, "request_key")
    judge_id = load_prompt("judge").id
    judge_calls = [c for c in calls.values() if c["prompt_id"] == judge_id]
    by = Counter(r["consistency_by"] for r in refined.values())
    assert by["judge"] > 0 and by["rules"] > 0, by
    assert len(judge_calls) == by["judge"]  # one logged call per judged pair, none for rule-decided ones
    for r in refined.values():
        verdict = json.loads(calls[r["request_key"]]["raw"])
        final = verdict.get("final_answer", "").strip()
        rule = compare(r["draft_answer"], r["answer"] + (f"\nThe answer is {final}." if final else ""))
        if r["consistency_by"] == "rules":
            assert rule.verdict != "undecided" and r["consistency"] == rule.verdict
        else:
            assert rule.verdict == "undecided" and r["consistency_reason"].startswith("judge: ")
            assert r["consistency"] in ("consistent", "inconsistent")
    judged = {json.loads(c["messages"])[1]["content"] for c in judge_calls}
    assert all(any(r["question"] in m for m in judged) for r in refined.values() if r["consistency_by"] == "judge")


def test_judge_off_leaves_undecided_pairs_flagged_undecided(template, tmp_path):
    root = _copy(template, tmp_path)
    runner = Runner(_settings(root, _src(template), refine={"judge": {"enabled": False}}), spark=engine.get_spark())
    runner.run(SYNTH)
    refined = _rows(runner, REFINED)
    assert {r["consistency_by"] for r in refined.values()} == {"rules"}
    assert "undecided" in {r["consistency"] for r in refined.values()}
    from boostqa.llm.prompts import load_prompt

    assert not [c for c in _rows(runner, CALLS, "request_key").values() if c["prompt_id"] == load_prompt("judge").id]


def test_gate_rejects_planted_copies_short_and_contaminated_rows(template, synthesized, tmp_path):
    root = _copy(synthesized["root"], tmp_path, workaround=False)
    runner = Runner(_settings(root, _src(template)), spark=engine.get_spark())
    gold_before = _rows(runner, GOLD)
    refined = runner.lake.read(REFINED)
    proto = _rows(runner, REFINED)[sorted(gold_before)[0]]
    seed = next(s for s in (r.asDict() for r in runner.lake.read("silver.seeds").orderBy("seed_uid").collect())
                if not s["choices"])
    gold_row = gold_before[sorted(gold_before)[-1]]
    novel_q = "Which planted prism keeps orbit ledger lantern quartz tunnel balanced tonight?"
    planted = {  # qa_id -> (question, answer, expected reason or None = kept)
        "zz-seed-copy": (seed["question"], seed["answer"], "duplicate_of_seed"),
        "zz-seed-near": (seed["question"], seed["answer"] + " indeed", "near_duplicate_of_seed"),
        "zz-short": ("Why so?", "Because it is.", "too_short"),
        "zz-gold-copy": (gold_row["question"], gold_row["answer"], "duplicate_synth"),
        "zz-bench": (BENCH[0]["question"], BENCH[0]["answer"], "benchmark_ngram"),
        "zz-pair-a": (novel_q, "Granite quarry beacon summit.", None),
        "zz-pair-b": (novel_q, "Granite quarry beacon summit.", "duplicate_synth"),
        "zz-novel": ("How does a planted question about a glacier harbor stay unique here?",
                     "Velvet thistle crane.", None),
    }
    rows = [dict(proto, qa_id=k, question=qq, answer=a) for k, (qq, a, _) in planted.items()]
    runner.lake.append(runner.spark.createDataFrame(rows, refined.schema), REFINED)
    _, [res] = runner.run(["gate"])
    q, gold = _quarantine(runner, "gate"), _rows(runner, GOLD)
    assert res.pending == len(planted)
    for k, (_, _, reason) in planted.items():
        if reason is None:
            assert k in gold and k not in q
        else:
            assert k not in gold and q[k]["reason"] == reason, (k, q.get(k))
    assert seed["seed_uid"] in q["zz-seed-copy"]["detail"] and seed["seed_uid"] in q["zz-seed-near"]["detail"]
    assert gold_row["qa_id"] in q["zz-gold-copy"]["detail"] and "zz-pair-a" in q["zz-pair-b"]["detail"]
    assert q["zz-short"]["detail"] == "question 7 chars, answer 14 chars"
    assert {k: gold[k] for k in gold_before} == gold_before  # earlier gold untouched
    for k in ("zz-pair-a", "zz-novel"):
        text = f"Question: {gold[k]['question']}\nAnswer: {gold[k]['answer']}"
        assert gold[k]["n_tokens"] == count_tokens([text])[0] + 1 > 1  # + EOS (tokens.eos)


# ------------------------------------------------------------------------------------------ 4. + 5.
def test_every_row_ends_in_exactly_one_place(synthesized):
    runner = synthesized["runner"]
    pending = _accounting(runner)
    assert pending == {s: set() for s in ("synthesize", "check", "refine", "gate")}
    q = _rows(runner, QUAR)
    res1, res2 = synthesized["res"]
    for stage, out in (("synthesize", RAW), ("check", CHECKED), ("refine", REFINED), ("gate", GOLD)):
        kept = res1[stage].kept + res2[stage].kept
        rejected = res1[stage].rejected + res2[stage].rejected
        assert (len(_rows(runner, out)), sum(r["stage"] == stage for r in q.values())) == (kept, rejected), stage
    assert _rows(runner, GOLD) and not _rows(runner, FAILURES)
    assert len(_rows(runner, PLAN)) == res1["sample"].kept + res1["check"].rejected_by_reason["difficulty_degraded"]


def test_gold_rows_carry_complete_lineage(synthesized):
    runner, settings = synthesized["runner"], synthesized["settings"]
    gold, seeds = _rows(runner, GOLD), _rows(runner, SEEDS, "seed_uid")
    raw, checked, refined = _rows(runner, RAW), _rows(runner, CHECKED), _rows(runner, REFINED)
    assert len(gold) > 10 and {g["mode"] for g in gold.values()} == {"multigrade", "booster"}
    texts = {k: f"Question: {g['question']}\nAnswer: {g['answer']}" for k, g in gold.items()}
    tokens = dict(zip(texts, count_tokens(list(texts.values()))))
    roles = set(settings.synthesis.roles)
    for k, g in gold.items():
        assert g["seed_ids"] and set(g["seed_ids"]) <= set(seeds)
        assert g["grade_role"] in (roles if g["mode"] == "multigrade" else {"expert_setter"})
        assert 1 <= g["difficulty"] <= 5 and g["difficulty"] == checked[k]["achieved_difficulty"]
        assert g["n_tokens"] > 0 and g["n_tokens"] == tokens[k] + 1  # + EOS (tokens.eos)
        assert (g["question"], g["answer"]) == (refined[k]["question"], refined[k]["answer"])
        assert g["consistency"] in ("consistent", "inconsistent", "undecided") and g["llm_simulated"] is True
        assert set(g["lineage"]) == LINEAGE_KEYS
        assert g["lineage"] == {
            "synthesize_run": raw[k]["run_id"], "check_run": checked[k]["run_id"],
            "refine_run": refined[k]["run_id"], "gate_run": g["run_id"],
            "generator_model": "deepseek-reasoner", "generator_prompt": f"synth_{g['mode']}@v2",
            "refiner_model": "deepseek-chat", "refiner_prompt": "refine@v2"}, g["lineage"]
        assert g["lineage"]["gate_run"] in synthesized["runs"]
    # gate metrics match the rows, in MLflow too; every stage run is tagged simulated
    res1, res2 = synthesized["res"]
    assert res1["gate"].stats["gold_tokens"] + res2["gate"].stats["gold_tokens"] == sum(tokens.values()) + len(gold)
    client = MlflowClient(settings.tracking_uri())
    run = client.get_run(res1["gate"].mlflow_run_id)
    assert run.data.tags[STAGE_TAG] == "gate" and run.data.metrics["gold_rows"] == res1["gate"].kept
    for stage in ("synthesize", "check", "refine"):
        run = client.get_run(res1[stage].mlflow_run_id)
        assert run.data.tags[SIMULATED_TAG] == "true" and run.data.metrics["llm.calls"] == res1[stage].pending


# ------------------------------------------------------------------------------------------ 6. resume
def test_synthesize_resumes_mid_stage_without_calling_twice(template, tmp_path):
    root = _copy(template, tmp_path)
    with SimulatorServer(SimConfig(latency_ms=5)) as sim:
        ep = {"llm": {"endpoints": {"generator": {"base_url": sim.base_url, "model": "sim-reasoner", "api_key_env": None}}}}
        runner = Runner(_settings(root, _src(template), **ep), spark=engine.get_spark())
        runner.run(["sample"])
        plan = _rows(runner, PLAN)
        _, [part] = runner.run(["synthesize"], max_chunks=1)
        first = _rows(runner, RAW)
        assert not part.complete and part.chunks_done == 1 and part.chunks_total >= 3
        assert 0 < len(first) == part.kept < len(plan) and sim_requests(sim) == len(first)
        assert part.stats["llm.calls"] == len(first)

        _, [rest] = runner.run(["synthesize"])
        raw = _rows(runner, RAW)  # unique qa_id, asserted by _rows
        assert rest.complete and rest.pending == len(plan) - len(first)
        assert (rest.stats["llm.calls"], rest.stats["llm.reused"]) == (rest.pending, 0)
        assert set(raw) == set(plan) and sim_requests(sim) == len(plan)  # nothing asked twice
        assert {k: raw[k] for k in first} == first

        # the output of committed rows lost: the call log answers, the simulator is not asked again
        lost = sorted(raw)[:7]
        runner.lake.delete_where(RAW, "qa_id IN (%s)" % ",".join(f"'{k}'" for k in lost))
        _, [redo] = runner.run(["synthesize"])
        assert (redo.pending, redo.kept, redo.stats["llm.calls"], redo.stats["llm.reused"]) == (7, 7, 0, 7)
        assert sim_requests(sim) == len(plan)
        again = _rows(runner, RAW)
        assert {k: (r["question"], r["draft_answer"]) for k, r in again.items()} == \
            {k: (r["question"], r["draft_answer"]) for k, r in raw.items()}


# ------------------------------------------------------------------------------------------ 7. faults
def test_transport_faults_leave_every_task_accounted_for_and_a_rerun_finishes(template, tmp_path):
    root = _copy(template, tmp_path)
    ep = {"max_retries": 0, "timeout": 0.4, "backoff_base": 0.01, "max_concurrency": 8}
    faults = {k: 0.075 for k in TRANSPORT_FAULTS}  # 30 % of requests fail, none is retried
    with SimulatorServer(SimConfig(faults=faults, retry_after_s=0.02, timeout_hold_s=1.0, latency_ms=5)) as bad:
        runner = Runner(_settings(root, _src(template), **_all_endpoints(bad.base_url, **ep)),
                        spark=engine.get_spark())
        run1, res = runner.run(SYNTH)
        stats = bad.stats()
    assert [(r.stage, r.complete) for r in res] == [(s, True) for s in SYNTH]
    assert all(stats["faults"][k] > 0 for k in TRANSPORT_FAULTS), stats["faults"]
    pending = _accounting(runner)
    keys, fails = _request_keys(runner), _rows(runner, FAILURES, "request_key")
    # booster retries the check just planned are pending too, not yet tried
    plan, degraded = _rows(runner, PLAN), _quarantine(runner, "check")
    retries = {k for k in pending["synthesize"] if plan[k]["attempt"] == 1}
    assert retries == {_retry_id(k) for k, r in degraded.items() if r["reason"] == "difficulty_degraded"}
    pending["synthesize"] -= retries
    answered = _rows(runner, CALLS, "request_key")
    refine_keys = set(keys["refine"].values())
    judge_fails = {rk: f for rk, f in fails.items() if f["stage"] == "refine" and rk not in refine_keys}
    for stage in ("synthesize", "check", "refine"):
        assert pending[stage], f"no {stage} call failed"
        waiting_on_judge = 0
        for k in pending[stage]:  # pending with a reason: a failure row of this run for its request
            rk = keys[stage][k]
            if stage == "refine" and rk not in fails:  # the refiner answered (logged), its judge call failed
                assert answered[rk]["status"] == "ok", answered[rk]
                waiting_on_judge += 1
                continue
            f = fails[rk]
            assert (f["stage"], f["run_id"], f["attempts"]) == (stage, run1, 1), f
            assert f["http_status"] in (429, 500, 503) or "Timeout" in f["error"], f
        if stage == "refine":
            assert waiting_on_judge == len(judge_fails)
            for f in judge_fails.values():
                assert (f["endpoint"], f["run_id"], f["attempts"]) == ("refiner", run1, 1), f
                assert f["http_status"] in (429, 500, 503) or "Timeout" in f["error"], f
    assert not pending["gate"] and not _quarantine(runner, "synthesize")  # transport faults only
    assert {r.stage: r.deferred for r in res} == {"sample": 0, "synthesize": len(pending["synthesize"]),
                                                   "check": len(pending["check"]),
                                                   "refine": len(pending["refine"]), "gate": 0}
    calls_before = _rows(runner, CALLS, "request_key")
    gold_before = _rows(runner, GOLD)

    # a healthy endpoint: reruns finish everything (the second only for retries the first planned)
    with SimulatorServer(SimConfig(latency_ms=5)) as good:
        runner2 = Runner(_settings(root, _src(template), **_all_endpoints(good.base_url, max_retries=0, timeout=30)),
                         spark=engine.get_spark())
        for _ in range(2):
            _, res2 = runner2.run(SYNTH)
            assert all(r.complete and r.deferred == 0 for r in res2)
        sent = sim_requests(good)
    assert _accounting(runner2) == {s: set() for s in ("synthesize", "check", "refine", "gate")}
    calls = _rows(runner2, CALLS, "request_key")
    assert {k: calls[k] for k in calls_before} == calls_before  # nothing answered before was asked again
    assert sent == len(calls) - len(calls_before)
    assert {k: v for k, v in _rows(runner2, GOLD).items() if k in gold_before} == gold_before
    assert _rows(runner2, FAILURES, "request_key") == fails  # the history of run 1, nothing new failed


# ------------------------------------------------------------------------------------------ known bugs
def test_multigrade_prompt_names_the_educator_role(synthesized):
    """synth_multigrade's system prompt is "You are {role_description}. ..." but Prompt.render only
    formats the user template, so the role never reaches the generator."""
    runner = synthesized["runner"]
    raw, calls = _rows(runner, RAW), _rows(runner, CALLS, "request_key")
    systems = {r["grade_role"]: json.loads(calls[r["request_key"]]["messages"])[0]["content"]
               for r in raw.values() if r["mode"] == "multigrade"}
    assert set(systems) == set(synthesized["settings"].synthesis.roles)
    assert not any("{role_description}" in s for s in systems.values())
    for role, system in systems.items():
        assert synthesize.ROLE_TEXT[role] in system


def test_many_chunk_llm_stage_survives_a_call_log_checkpoint(template, tmp_path):
    """12 one-row chunks: ops.llm_calls gets >= 10 commits while the stage runs, so Delta writes a
    checkpoint newer than the version the runner pinned for the stage's `calls` input."""
    root = _copy(template, tmp_path, workaround=False)
    runner = Runner(_settings(root, _src(template), synthesis={"budget_qa": 12}, llm={"chunk_rows": 1}),
                    spark=engine.get_spark())
    llm.stop_simulator()
    try:
        runner.run(["sample"])
        _, [res] = runner.run(["synthesize"])  # the call log is read live; tables never checkpoint on Sail
    finally:
        llm.stop_simulator()
    assert res.complete and res.kept == 12 and res.chunks_done >= 5  # non-empty hash buckets of 12 rows
    assert runner.lake.version("ops.llm_calls") >= 10  # the log passed the old checkpoint interval


def test_one_run_converges_with_feedback_passes(template, tmp_path, builtin_sim):
    """By default check feeds back into synthesize within the run: the booster retries check
    plans are generated, checked, refined and gated by the same run, and a second run has nothing
    left to do."""
    from boostqa.stages import STAGES

    root = _copy(template, tmp_path)
    runner = Runner(_settings(root, _src(template), runner={"max_feedback_passes": 3}), spark=engine.get_spark())
    _, res = runner.run(SYNTH)
    stages = [r.stage for r in res]
    assert stages[:4] == ["sample", "synthesize", "check", "synthesize"] and stages.count("synthesize") >= 2
    assert all(r.complete for r in res)
    retries = [r for r in _rows(runner, PLAN).values() if r["attempt"] == 1]
    assert retries and set(_rows(runner, RAW)) >= {r["qa_id"] for r in retries}
    assert not runner.pending(STAGES["synthesize"]).count()
    _, again = runner.run(SYNTH)
    assert [r.stage for r in again] == SYNTH and all(r.pending == 0 for r in again)

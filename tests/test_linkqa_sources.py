"""LinkQA with source-supplied knowledge points (CHAMP's concept labels), and the walk's budget rules.

One lake, built once: the real CHAMP set (``fields.kps: concepts``) plus a small source whose
records supply KPs, supply none, or supply a bad ``kps`` value. Then:

- kp_extract takes CHAMP's concepts as the KPs of those seeds (canonicalised, the LLM path's ids)
  without a call, asks the LLM for the rest only, and a rerun asks nothing;
- bad ``kps`` values are quarantined at ingest with a reason, like any bad field;
- raising ``linkqa.paths`` between runs walks and synthesises only the new paths;
- a graph above ``linkqa.max_walk_edges`` stops kp_walk with a clear error, and only when a walk is
  needed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from boostqa import engine
from boostqa.config import deep_merge, load_settings
from boostqa.runner import Runner
from boostqa.stages import kp_extract, llm
from boostqa.stages.base import StageError
from boostqa.text import kp
from tests.conftest import sim_requests, write_jsonl

CHAMP_FIELDS = {"id": "id", "question": "problem", "answer": "solution", "subject": "category", "kps": "concepts"}
TOY_FIELDS = {"id": "id", "question": "question", "answer": "answer", "kps": "kps"}
LINKQA = ["kp_graph", "kp_walk", "sample", "synthesize", "check", "refine", "gate"]
PATHS = 8


def _toy() -> list[dict]:
    """Ten good records (six supply KPs, two supply none, two supply only blank or punctuation
    names) and four bad kps values."""
    topics = ["gas pressure", "free fall", "titration", "lens focus", "orbital period", "heat flow",
              "circuit current", "wave speed", "buoyancy", "friction"]
    out = []
    for i, t in enumerate(topics):
        rec = {"id": f"t{i}", "question": f"Toy question {i} about {t}: what quantity of {t} follows when "
                                          f"the {i + 2} given values are combined as in exercise {i * 7 + 3}?",
               "answer": f"Combine the values. The answer is {i + 11}."}
        if i < 6:
            rec["kps"] = ["  The Ideal-Gas Law ", "Newton's second law", f"{t} basics"]
        elif i < 8:
            rec["kps"] = None if i == 6 else []
        else:
            rec["kps"] = ["?!", "   "]  # nothing usable: asked like a seed without KPs
        out.append(rec)
    bad = {"b0": "ideal gas law", "b1": [1, 2], "b2": [["nested"]], "b3": {"a": "b"}}
    for k, v in bad.items():
        out.append({"id": k, "question": f"Bad-kps record {k}: which value does the {k} sensor report today?",
                    "answer": "The answer is 3.", "kps": v})
    return out


def _settings(root: Path, cache: Path, **overrides):
    base = {"data_cache": str(cache),
            "sources": [{"name": "champ", "path": "cache://champ/champ.jsonl", "fields": CHAMP_FIELDS},
                        {"name": "toy", "path": str(root / "src" / "toy.jsonl"), "fields": TOY_FIELDS}],
            "benchmarks": [{"name": "tiny", "path": str(root / "src" / "bench.jsonl")}],
            "decontam": {"embedding": {"enabled": False}},
            "lake": {"root": str(root / "lake")}, "runs_dir": str(root / "runs"), "tracking": {"enabled": False},
            "synthesis": {"budget_qa": 0},  # only the linkqa tasks
            "linkqa": {"enabled": True, "paths": PATHS, "rounds": 2}}
    return load_settings("local", environ={}, overrides=deep_merge(base, overrides))


@pytest.fixture(scope="module")
def lake_run(_engine, tmp_path_factory, champ_cache):
    root = tmp_path_factory.mktemp("linkqa_sources")
    write_jsonl(root / "src" / "toy.jsonl", _toy())
    write_jsonl(root / "src" / "bench.jsonl", [{"question": "Which river flows through the capital of Egypt?",
                                                "answer": "Nile"}])
    settings = _settings(root, champ_cache)
    llm.stop_simulator()
    runner = Runner(settings, spark=engine.get_spark())
    _, prep = runner.run(["ingest", "bench", "dedup", "decontam", "annotate"])
    assert all(r.complete for r in prep)
    # a real annotator files CHAMP under mathematics; the simulator labels at random, which would
    # split each concept over many disciplines (kp_id is per discipline)
    seeds = runner.lake.read("silver.seeds_annotated")
    runner.lake.overwrite(seeds.withColumn("discipline", F.when(F.col("source") == "champ", "mathematics")
                                           .otherwise(F.col("discipline"))), "silver.seeds_annotated")
    before = sim_requests(llm.running_simulator())
    _, first = runner.run(["kp_extract"])
    after_first = sim_requests(llm.running_simulator())
    _, second = runner.run(["kp_extract"])
    after_second = sim_requests(llm.running_simulator())
    return {"root": root, "cache": champ_cache, "runner": runner, "first": first[0], "second": second[0],
            "requests": (before, after_first, after_second)}


def test_kps_from_champ_concepts_without_calls(lake_run):
    runner, first = lake_run["runner"], lake_run["first"]
    lake = runner.lake
    champ = {r["id"]: r["concepts"] for r in map(json.loads, (lake_run["cache"] / "champ" / "champ.jsonl")
                                                  .read_text(encoding="utf-8").splitlines())}
    seeds = {r["seed_uid"]: r for r in lake.read("silver.seeds_annotated").collect()}
    sets = {r["seed_uid"]: r for r in lake.read("silver.seed_kp_sets").collect()}
    assert set(sets) == set(seeds) and first.complete
    champ_seeds = {u: s for u, s in seeds.items() if s["source"] == "champ"}
    assert len(champ_seeds) > 200
    supplied = 0
    for uid, s in champ_seeds.items():
        want = kp.canonical_kps(champ[s["source_row_id"]])
        row = sets[uid]
        if want:  # the seed's KPs are its canonicalised concepts, with the LLM path's ids, and no call
            supplied += 1
            assert list(row["kps"]) == want
            assert list(row["kp_ids"]) == [kp.kp_id("mathematics", n) for n in want]
            assert row["kp_source"] == "source" and row["request_key"] is None and row["model"] is None
            assert row["llm_simulated"] is False and row["n_kps"] == len(want)
        else:  # CHAMP problems without concepts are asked
            assert row["kp_source"] == "llm" and row["request_key"] is not None
    assert supplied == sum(1 for s in champ_seeds.values() if champ[s["source_row_id"]])
    # the toy source: supplied names canonicalised, none / empty / unusable names asked
    toy = {s["source_row_id"]: sets[u] for u, s in seeds.items() if s["source"] == "toy"}
    for i in range(6):
        assert toy[f"t{i}"]["kp_source"] == "source"
        assert list(toy[f"t{i}"]["kps"])[:2] == ["ideal gas law", "newtons second law of motion"]
    assert all(toy[f"t{i}"]["kp_source"] == "llm" for i in range(6, 10))
    # ops.llm_calls: one logged call per asked seed (plus re-asks), none for a seed with supplied KPs
    asked = {u for u, r in sets.items() if r["kp_source"] == "llm"}
    calls = lake.read("ops.llm_calls").where(F.col("stage") == "kp_extract").collect()
    keys = {sets[u]["request_key"] for u in asked}
    assert keys <= {c["request_key"] for c in calls}
    assert len(calls) == len(asked) + int(first.stats.get("llm.reasks", 0))
    task = kp_extract.KnowledgePoints(runner.settings)
    logged = {c["request_key"] for c in calls}
    for uid, s in seeds.items():  # the request a seed with supplied KPs would have made was never sent
        assert (task.render(s)[1] in logged) == (uid in asked)
    before, after_first, _ = lake_run["requests"]
    assert after_first - before == len(calls)  # HTTP requests to the simulator: the asked seeds only
    assert first.stats["kp.source_seeds"] == supplied + 6 and first.stats["llm.calls"] == len(calls)
    # silver.seed_kps carries where each KP came from
    kps = lake.read("silver.seed_kps").collect()
    assert Counter(r["kp_source"] for r in kps) == Counter(
        {"source": sum(len(r["kps"]) for r in sets.values() if r["kp_source"] == "source"),
         "llm": sum(len(r["kps"]) for r in sets.values() if r["kp_source"] == "llm")})
    for r in kps:
        assert r["kp_id"] == kp.kp_id(r["discipline"], r["kp"])
        assert list(sets[r["seed_uid"]]["kps"])[r["rank"]] == r["kp"]


def test_bad_kps_values_are_quarantined_at_ingest(lake_run):
    lake = lake_run["runner"].lake
    q = {r["source_row_id"] or r["raw"]: r for r in lake.read("quarantine.seeds").where(F.col("source") == "toy")
         .collect()}
    reasons = {json.loads(r["raw"])["id"]: (r["reason"], r["detail"]) for r in q.values()}
    assert set(reasons) == {"b0", "b1", "b2", "b3"}
    assert all(reason == "wrong_type" for reason, _ in reasons.values())
    assert "field 'kps' (from 'kps') is str, expected a list of strings" in reasons["b0"][1]
    assert "field 'kps[0]' (from 'kps') is int, expected string" in reasons["b1"][1]
    assert "field 'kps[0]' (from 'kps') is list" in reasons["b2"][1]
    assert "is dict, expected a list of strings" in reasons["b3"][1]
    bronze = {r["source_row_id"]: r for r in lake.read("bronze.seeds").where(F.col("source") == "toy").collect()}
    assert len(bronze) == 10
    assert list(bronze["t0"]["kps"]) == ["The Ideal-Gas Law", "Newton's second law", "gas pressure basics"]
    assert bronze["t6"]["kps"] is None and bronze["t7"]["kps"] is None  # null, [] -> no KPs supplied
    assert list(bronze["t8"]["kps"]) == ["?!"]  # kept as text; nothing usable after canonicalisation


def test_kp_extract_rerun_asks_nothing(lake_run):
    second = lake_run["second"]
    _, after_first, after_second = lake_run["requests"]
    assert after_second == after_first
    assert (second.pending, second.kept, second.rejected) == (0, 0, 0)


def _runner(lake_run, **linkqa) -> Runner:
    settings = _settings(lake_run["root"], lake_run["cache"], linkqa=linkqa)
    return Runner(settings, spark=engine.get_spark())


def test_raising_paths_tops_up_only_the_new_paths(lake_run):
    runner = lake_run["runner"]
    lake = runner.lake
    _, first = runner.run(LINKQA)
    assert all(r.complete for r in first)
    paths1 = {r["path_id"]: r for r in lake.read("silver.kp_paths").collect()}
    assert len(paths1) == PATHS
    raw1 = {r["qa_id"] for r in lake.read("silver.synth_raw").collect()}
    assert raw1 == set(paths1)
    calls1 = sim_requests(llm.running_simulator())

    more = _runner(lake_run, paths=PATHS + 5)
    _, second = more.run(LINKQA)
    by = {r.stage: r for r in second}
    assert all(r.complete for r in second)
    paths2 = {r["path_id"]: r for r in lake.read("silver.kp_paths").collect()}
    new = set(paths2) - set(paths1)
    assert set(paths1) <= set(paths2) and len(paths2) == PATHS + 5 and len(new) == 5
    assert lake.read("silver.kp_paths").count() == len(paths2)  # no path twice
    assert by["kp_walk"].kept == 5 and by["synthesize"].pending == 5  # only the new paths are synthesised
    assert min(paths2[p]["round"] for p in new) > max(r["round"] for r in paths1.values())  # rounds continue
    assert {paths2[p]["budget"] for p in new} == {PATHS + 5} and {r["budget"] for r in paths1.values()} == {PATHS}
    plan = lake.read("silver.synth_plan").where(F.col("mode") == "linkqa")
    assert plan.count() == plan.select("plan_id").distinct().count() == PATHS + 5
    raw = lake.read("silver.synth_raw")
    assert raw.count() == raw.select("qa_id").distinct().count() == PATHS + 5
    gold = lake.read("gold.boostqa")
    assert gold.count() == gold.select("qa_id").distinct().count()
    # the generator was asked for the 5 new tasks only
    assert by["synthesize"].stats["llm.calls"] == 5 + by["synthesize"].stats.get("llm.reasks", 0)
    assert sim_requests(llm.running_simulator()) > calls1
    # the measurements: one set per number of paths walked so far, equal to the logged metrics
    cov = {(r["paths"], r["strategy"]): r for r in lake.read("gold.kp_walk_coverage").collect()}
    assert set(cov) == {(n, s) for n in (PATHS, PATHS + 5) for s in ("value", "popularity", "uniform")}
    for s in ("value", "popularity", "uniform"):
        assert cov[(PATHS + 5, s)]["coverage"] == pytest.approx(by["kp_walk"].stats[f"linkqa.coverage.{s}"])
        assert cov[(PATHS + 5, s)]["strategy_paths"] == PATHS + 5
    mix = lake.read("gold.kp_walk_mix").where(F.col("paths") == PATHS + 5).collect()
    assert sum(r["achieved"] for r in mix) == pytest.approx(1.0, abs=1e-3)  # shares rounded to 4 places
    assert sum(r["target"] for r in mix) == pytest.approx(1.0, abs=1e-3)
    assert all(r["tvd"] == pytest.approx(by["kp_walk"].stats["linkqa.mix_tvd"]) for r in mix)
    # the same budget again: nothing walked, nothing asked
    calls2 = sim_requests(llm.running_simulator())
    _, third = more.run(LINKQA)
    assert {r.stage: r.kept for r in third}["kp_walk"] == 0 and sim_requests(llm.running_simulator()) == calls2
    assert lake.read("silver.kp_paths").count() == PATHS + 5 and lake.read("gold.kp_walk_coverage").count() == 6


def test_max_walk_edges_refuses_a_graph_too_big_for_the_in_memory_walk(lake_run):
    lake = lake_run["runner"].lake
    n_paths = lake.read("silver.kp_paths").count()
    gid = lake.read("gold.kp_nodes").select("graph_id").first()["graph_id"]
    n_edges = lake.read("gold.kp_edges").where(F.col("graph_id") == gid).count()
    assert n_edges > 1
    small = _runner(lake_run, paths=n_paths + 4, max_walk_edges=1)
    with pytest.raises(StageError, match=rf"graph {gid} has {n_edges} edges, more than linkqa.max_walk_edges=1"):
        small.run(["kp_walk"])
    assert lake.read("silver.kp_paths").count() == n_paths  # nothing written
    # the limit only matters when a walk is needed: with the budget already met, kp_walk has nothing to do
    _, done = _runner(lake_run, paths=n_paths, max_walk_edges=1).run(["kp_walk"])
    assert done[0].complete and done[0].kept == 0

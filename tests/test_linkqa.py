"""LinkQA: KP names, the KP graph, value-guided walks and their measurements (Spark-free kernels in
boostqa.text.kp), and the stages end to end on the embedded engine with the LLM simulator:
kp_extract -> kp_graph -> kp_walk -> sample -> synthesize -> check -> refine -> gate."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from boostqa import engine
from boostqa.config import deep_merge, load_settings
from boostqa.runner import Runner
from boostqa.stages import kp_graph, llm
from boostqa.text import kp
from tests.conftest import sim_requests, write_jsonl


# ------------------------------------------------------------------------------------------ names
def test_canonical_names():
    assert kp.canonical_kp("  The  Ideal-Gas   Law! ") == "ideal gas law"
    assert kp.canonical_kp("Newton's Second Law") == "newtons second law of motion"  # synonym map
    assert kp.canonical_kp("F = ma") == "newtons second law of motion"
    assert kp.canonical_kp("Pythagoras' theorem") == "pythagorean theorem"
    assert kp.canonical_kp("ｄｅｒｉｖａｔｉｖｅｓ") == "derivative"  # NFKC full-width, then synonyms
    assert kp.canonical_kp("an_orbit") == "orbit"
    assert kp.canonical_kp("?!") == "" and kp.canonical_kp(None) == ""
    assert kp.canonical_kps(["Derivatives", "derivative", "", "Integration", "chain rule"]) == \
        ["derivative", "integral", "chain rule"]
    assert len(kp.canonical_kps([f"kp {i}" for i in range(20)])) == kp.MAX_KPS
    # ids: stable, per discipline
    assert kp.kp_id("physics", "ideal gas law") == kp.kp_id("physics", kp.canonical_kp("Ideal gas law."))
    assert kp.kp_id("physics", "ideal gas law") != kp.kp_id("chemistry", "ideal gas law")
    assert len(kp.kp_id("physics", "x")) == 16


# ------------------------------------------------------------------------------------------ graph counts
# 5 seeds, hand-counted: a in s1,s2,s3 (3); b in s1,s2 (2); c in s2,s4 (2); d in s5 (1)
SMALL = [("s1", "a"), ("s1", "b"), ("s2", "a"), ("s2", "b"), ("s2", "c"), ("s3", "a"), ("s4", "c"), ("s5", "d")]
LEVEL = {"s1": 2, "s2": 4, "s3": 3, "s4": 5, "s5": 1}


def test_graph_counts_on_a_hand_built_corpus(spark):
    rows = [(s, k, "physics", LEVEL[s]) for s, k in SMALL]
    g = kp.Graph.from_memberships(rows)
    assert g.popularity == {"a": 3, "b": 2, "c": 2, "d": 1}
    co = {(a, b) for a in g.neighbors for b, _ in g.neighbors[a] if a < b}
    assert co == {("a", "b"), ("a", "c"), ("b", "c")} and g.n_edges == 3

    # the Spark stage computes the same numbers (DataFrame API, self-join on seed_uid)
    kps = spark.createDataFrame([(s, k, k.upper(), "physics") for s, k in SMALL],
                                "seed_uid string, kp_id string, kp string, discipline string")
    seeds = spark.createDataFrame(list(LEVEL.items()), "seed_uid string, difficulty int")
    nodes = {r["kp_id"]: r for r in kp_graph.nodes(kps, seeds).collect()}
    assert {k: r["popularity"] for k, r in nodes.items()} == {"a": 3, "b": 2, "c": 2, "d": 1}
    assert nodes["a"]["mean_difficulty"] == pytest.approx(3.0) and nodes["c"]["mean_difficulty"] == 4.5
    assert nodes["a"]["name"] == "A"
    edges = {(r["kp_a"], r["kp_b"]): r for r in kp_graph.edges(kps, seeds, kp_graph.nodes(kps, seeds)).collect()}
    assert {e: r["cooccurrence"] for e, r in edges.items()} == {("a", "b"): 2, ("a", "c"): 1, ("b", "c"): 1}
    n = 5  # seeds with KPs
    assert edges[("a", "b")]["pmi"] == pytest.approx(math.log(2 * n / (3 * 2)))
    assert edges[("a", "c")]["pmi"] == pytest.approx(math.log(1 * n / (3 * 2)))  # negative: a is everywhere
    assert edges[("b", "c")]["npmi"] == pytest.approx(math.log(1 * n / 4) / -math.log(1 / n))
    for e, r in edges.items():
        assert r["strength"] == pytest.approx(kp.edge_strength(r["cooccurrence"], g.popularity[e[0]],
                                                               g.popularity[e[1]], n)[2])
        assert 0 < r["strength"] <= 1


# ------------------------------------------------------------------------------------------ walks
def skewed_graph(n_seeds: int = 120, n_kps: int = 60, per: int = 3, seed: int = 1,
                 disciplines: tuple[str, ...] = ("math",)) -> kp.Graph:
    """Zipf-popular KPs (exponent 1.2), 3 per seed, levels H1..H5 at random."""
    rng = np.random.default_rng(seed)
    w = 1 / np.arange(1, n_kps + 1) ** 1.2
    w /= w.sum()
    rows = []
    for s in range(n_seeds):
        d = disciplines[s % len(disciplines)]
        for k in rng.choice(n_kps, size=per, replace=False, p=w):
            rows.append((f"s{s:03d}", f"{d}:k{k:02d}", d, int(rng.integers(1, 6))))
    return kp.Graph.from_memberships(rows)


def test_walk_is_deterministic_and_paths_are_well_formed():
    g = skewed_graph()
    cfg = kp.WalkConfig(paths=40, rounds=4, seed=3)
    a, counters = kp.walk(g, cfg)
    b, _ = kp.walk(kp.Graph.from_memberships(  # the same graph from rows in another order
        [(s, k, g.discipline[k], h) for k in reversed(g.kps) for s, h in g.seeds[k]]), cfg)
    assert a == b and len(a) == 40 and counters["unfilled"] == 0
    assert kp.walk(g, kp.WalkConfig(paths=40, rounds=4, seed=4))[0] != a  # another seed, other walks
    nb = {k: {j for j, _ in v} for k, v in g.neighbors.items()}
    for p in a:
        assert 2 <= len(p.seed_uids) <= 4 and len(set(p.seed_uids)) == len(p.seed_uids)  # no seed twice
        assert len(p.kp_ids) == len(p.seed_uids) and len(set(p.kp_ids)) == len(p.kp_ids)
        for s, k in zip(p.seed_uids, p.kp_ids):
            assert k in g.seed_kps[s]  # each seed holds the KP it joined at
        for x, y in zip(p.kp_ids, p.kp_ids[1:]):
            assert y in nb[x]  # each step follows an edge
    assert [p.round for p in a] == sorted(p.round for p in a) and {p.round for p in a} == {0, 1, 2, 3}
    assert len({p.path_id for p in a}) == 40


def test_value_function_beats_popularity_on_coverage_and_keeps_popular_kps():
    g = skewed_graph()
    cfg = kp.WalkConfig(paths=60, rounds=6, alpha=1.0, beta=1.0, seed=0)
    value_paths, _ = kp.walk(g, cfg)
    pop_paths, _ = kp.walk(g, kp.popularity_walk_config(cfg))
    assert len(value_paths) == len(pop_paths) == 60
    cov_v, cov_p = kp.coverage(value_paths, g), kp.coverage(pop_paths, g)
    assert cov_v > cov_p, (cov_v, cov_p)
    gini_v = kp.gini(kp.visit_counts(value_paths, g).values())
    gini_p = kp.gini(kp.visit_counts(pop_paths, g).values())
    assert gini_v < gini_p
    # the most popular KPs are still walked through
    top = sorted(g.kps, key=lambda k: -g.popularity[k])[:3]
    visits = kp.visit_counts(value_paths, g)
    assert all(visits[k] > 0 for k in top)
    assert max(visits, key=visits.get) in sorted(g.kps, key=lambda k: -g.popularity[k])[:10]
    report = kp.compare_strategies(g, cfg, value_paths)
    assert report["value"]["coverage"] == pytest.approx(cov_v, abs=1e-4)
    assert report["uniform"]["paths"] == report["popularity"]["paths"] == 60


def test_gini_and_coverage_by_hand():
    assert kp.gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert kp.gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert kp.gini([]) == 0.0
    g = kp.Graph.from_memberships([(s, k, "physics", LEVEL[s]) for s, k in SMALL])
    p = kp.Path("x", ("a", "b"), ("s1", "s2"), (2, 4), "physics", 3, 0)
    assert kp.coverage([p], g) == 0.5
    assert kp.item_stats([p], g) == {"seeds_per_item": 2.0, "kp_links_per_item": 1.0, "kps_per_item": 3.0}


def test_target_mix_is_met():
    g = skewed_graph(n_seeds=200, disciplines=("math", "physics"))
    target = {("math", 4): 3.0, ("math", 5): 1.0, ("physics", 2): 2.0, ("physics", 3): 2.0}
    cfg = kp.WalkConfig(paths=80, rounds=4, target_mix=target, seed=1)
    paths, counters = kp.walk(g, cfg)
    assert len(paths) == 80 and counters["unfilled"] == 0
    got = Counter((p.discipline, p.target_difficulty) for p in paths)
    assert got == {("math", 4): 30, ("math", 5): 10, ("physics", 2): 20, ("physics", 3): 20}
    report = kp.mix_report(paths, target)
    assert report["tvd"] == 0.0
    # the start seed has the target level when one exists: seed levels follow the target too
    for p in paths:
        assert p.difficulties[0] == p.target_difficulty
    assert all(p.discipline == g.discipline[k] for p in paths for k in p.kp_ids)  # walks stay in their discipline
    assert kp.allocate(7, {("a", 1): 1, ("b", 1): 1}) == [("a", 1)] * 4 + [("b", 1)] * 3


# ------------------------------------------------------------------------------------------ end to end
N_SEEDS = 48
CHUNK = 500
FIELDS = {"id": "id", "question": "question", "answer": "answer"}


def _records() -> list[dict]:
    out = []
    for i in range(N_SEEDS):
        a, b, c = i + 2, 3 * i + 1, i + 5
        if i % 2:
            q = f"Problem {i}: a cart of mass {a} kg speeds up by {b} m/s in {c} s; find the net force on cart {i}."
            ans = f"Force is {a} times {b} over {c}. The answer is {round(a * b / c, 2)}."
        else:
            q = f"Lab {i}: {a} mol of gas at {c * 100} K in {b} litres; what pressure in kPa does sample {i} exert?"
            ans = f"Use pV = nRT with n = {a}. The answer is {round(a * 8.314 * c * 100 / b, 1)}."
        out.append({"id": f"s{i:02d}", "question": q, "answer": ans})
    return out


def _settings(root: Path, **overrides):
    base = {"sources": [{"name": "toy", "path": str(root / "src" / "seeds.jsonl"), "fields": FIELDS}],
            "benchmarks": [{"name": "tiny", "path": str(root / "src" / "bench.jsonl")}],
            "decontam": {"embedding": {"enabled": False}},
            "llm": {"chunk_rows": CHUNK,
                    # KP names from the simulator: a JSON-schema endpoint (guided decoding honours
                    # maxLength) and short names make it answer single words of its small vocabulary,
                    # so KPs recur across seeds as real ones do; with free sentences each KP would be
                    # unique and the graph a set of disjoint cliques
                    "endpoints": {"kp_annotator": {"provider": "vllm", "base_url": "simulator", "model": "sim-kp"}}},
            "lake": {"root": str(root / "lake")}, "runs_dir": str(root / "runs"), "tracking": {"enabled": False},
            "synthesis": {"budget_qa": 0},  # only the linkqa tasks (they are planned by kp_walk, not sampled)
            "linkqa": {"enabled": True, "endpoint": "kp_annotator", "kp_max_chars": 12, "paths": 12, "rounds": 3}}
    return load_settings("local", environ={}, overrides=deep_merge(base, overrides))


LINKQA = ["kp_extract", "kp_graph", "kp_walk", "sample", "synthesize", "check", "refine", "gate"]


@pytest.fixture(scope="module")
def linkqa_run(_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("linkqa")
    write_jsonl(root / "src" / "seeds.jsonl", _records())
    write_jsonl(root / "src" / "bench.jsonl", [{"question": "Which river flows through the capital of Egypt?",
                                                "answer": "Nile"}])
    settings = _settings(root)
    llm.stop_simulator()
    runner = Runner(settings, spark=engine.get_spark())
    _, prep = runner.run(["ingest", "bench", "dedup", "decontam", "annotate"])
    assert all(r.complete for r in prep)
    # two disciplines (the simulator labels at random over the whole taxonomy: a graph per discipline
    # of a few seeds would have few links)
    seeds = runner.lake.read("silver.seeds_annotated")
    parity = F.substring("seed_uid", 1, 1).isin(*"02468ace")
    runner.lake.overwrite(seeds.withColumn("discipline", F.when(parity, "physics").otherwise("chemistry"))
                          .withColumn("is_stem", F.lit(True)), "silver.seeds_annotated")
    _, first = runner.run(LINKQA)
    sim = llm.running_simulator()
    calls_after_first = sim_requests(sim)
    nodes_version = runner.lake.version("gold.kp_nodes")
    _, second = runner.run(LINKQA)
    calls_after_second = sim_requests(llm.running_simulator())
    llm.stop_simulator()
    return {"runner": runner, "first": {r.stage: r for r in first}, "second": {r.stage: r for r in second},
            "calls": (calls_after_first, calls_after_second),
            "kp_nodes_versions": (nodes_version, runner.lake.version("gold.kp_nodes"))}


def test_linkqa_end_to_end(linkqa_run):
    runner, first = linkqa_run["runner"], linkqa_run["first"]
    lake = runner.lake
    assert all(r.complete for r in first.values()), {s: r.complete for s, r in first.items()}
    seeds = {r["seed_uid"]: r for r in lake.read("silver.seeds_annotated").collect()}
    # kp_extract: one KP set per seed, one row per (seed, KP); canonical names, stable ids
    sets = {r["seed_uid"]: r for r in lake.read("silver.seed_kp_sets").collect()}
    assert set(sets) == set(seeds)
    rows = lake.read("silver.seed_kps").collect()
    assert len(rows) == sum(len(s["kps"]) for s in sets.values())
    for r in rows:
        assert r["kp"] == kp.canonical_kp(r["kp"]) and r["kp_id"] == kp.kp_id(r["discipline"], r["kp"])
        assert r["weight"] == pytest.approx(1 / len(sets[r["seed_uid"]]["kps"]))
    # kp_graph: the Spark counts equal the kernel's on the same memberships
    g = kp.Graph.from_memberships([(r["seed_uid"], r["kp_id"], r["discipline"], seeds[r["seed_uid"]]["difficulty"])
                                   for r in rows])
    nodes = {r["kp_id"]: r for r in lake.read("gold.kp_nodes").collect()}
    assert {k: r["popularity"] for k, r in nodes.items()} == g.popularity
    gid = {r["graph_id"] for r in nodes.values()}
    assert len(gid) == 1
    edges = lake.read("gold.kp_edges").where(F.col("graph_id") == gid.pop()).collect()
    assert {(e["kp_a"], e["kp_b"]) for e in edges} == {(a, b) for a in g.neighbors for b, _ in g.neighbors[a] if a < b}
    assert g.n_edges > 10
    # kp_walk: the configured number of paths, in linkqa tasks one to one
    paths = {r["path_id"]: r for r in lake.read("silver.kp_paths").collect()}
    assert len(paths) == 12
    for p in paths.values():
        assert 2 <= len(p["seed_uids"]) <= 4 and len(set(p["seed_uids"])) == len(p["seed_uids"])
        assert all(seeds[s]["discipline"] == p["discipline"] for s in p["seed_uids"])
    plan = {r["plan_id"]: r for r in lake.read("silver.synth_plan").collect()}
    linkqa_plan = {k: r for k, r in plan.items() if r["mode"] == "linkqa"}
    assert set(linkqa_plan) == set(paths) and all(r["qa_id"] == r["plan_id"] for r in linkqa_plan.values())
    assert all(r["seed_uid"] == paths[k]["seed_uids"][0] for k, r in linkqa_plan.items())
    assert {r["mode"] for r in plan.values()} == {"linkqa"}  # budget_qa 0: nothing else was sampled
    # the generator saw every seed of the path, as tagged data
    raw = {r["qa_id"]: r for r in lake.read("silver.synth_raw").collect()}
    calls = {c["request_key"]: c for c in lake.read("ops.llm_calls").where("stage = 'synthesize'").collect()}
    for qa_id, r in raw.items():
        assert list(r["seed_ids"]) == list(paths[qa_id]["seed_uids"])
        assert r["prompt_version"] == "synth_linkqa@v1"
        text = calls[r["request_key"]]["messages"]
        assert "<seeds>" in text and "<knowledge_points>" in text
        for s in r["seed_ids"]:
            assert seeds[s]["question"][:40] in text
    # gold: every linkqa item names its path (qa_id = path_id) and all its seeds
    gold = {r["qa_id"]: r for r in lake.read("gold.boostqa").collect()}
    assert gold and {r["mode"] for r in gold.values()} == {"linkqa"}
    for qa_id, r in gold.items():
        assert qa_id in paths and list(r["seed_ids"]) == list(paths[qa_id]["seed_uids"])
        assert r["lineage"]["kp_path"] == qa_id  # the path, in the lineage map too
        assert r["grade_role"] == "kp_linker" and r["target_difficulty"] == paths[qa_id]["target_difficulty"]
    # measurements logged by kp_walk
    st = first["kp_walk"].stats
    for name in ("value", "popularity", "uniform"):
        assert 0 < st[f"linkqa.coverage.{name}"] <= 1
    assert st["linkqa.paths"] == 12 and 2 <= st["linkqa.seeds_per_item"] <= 4 and st["linkqa.kp_links_per_item"] >= 1


def test_linkqa_rerun_makes_no_new_calls(linkqa_run):
    second = linkqa_run["second"]
    before, after = linkqa_run["calls"]
    assert before > 0 and after == before
    # kp_graph is a snapshot (rebuilt whole: the same graph id) and sample's pending rows are the tasks
    # over synthesis.budget_qa (deferred by design); everything else has nothing left to do
    assert {s: r.pending for s, r in second.items() if s not in ("kp_graph", "sample")} == \
        {s: 0 for s in LINKQA if s not in ("kp_graph", "sample")}
    assert second["sample"].kept == 0 and second["kp_walk"].kept == 0
    lake = linkqa_run["runner"].lake
    assert lake.read("silver.kp_paths").count() == 12 and lake.read("silver.synth_plan").count() == 12
    assert lake.read("gold.kp_nodes").select("graph_id").distinct().count() == 1
    # the rebuilt snapshot equals the stored one: no new Delta version of it
    before_v, after_v = linkqa_run["kp_nodes_versions"]
    assert before_v is not None and after_v == before_v


def test_linkqa_off_by_default(make_settings):
    s = make_settings()
    assert not s.linkqa.enabled
    from boostqa.stages import STAGES
    assert all(not STAGES[n].enabled(s) for n in ("kp_extract", "kp_graph", "kp_walk"))
    assert set(STAGES) >= {"kp_extract", "kp_graph", "kp_walk"}
    names = list(STAGES)
    assert names.index("annotate") < names.index("kp_extract") < names.index("kp_graph") < names.index("kp_walk") \
        < names.index("sample")

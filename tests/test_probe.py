"""Probe scoring, the probe + weights stages end to end against the simulator, and `plan`."""

from __future__ import annotations

import json
import math

import numpy as np

import pytest

from boostqa.runner import Runner
import pandas as pd

from boostqa.config import ProbeConfig
from boostqa.stages.probe import by_logprobs, gold, predicted
from boostqa.stages.weights import boosts, wilson
from tests.conftest import write_jsonl


@pytest.mark.parametrize("answer,choices,expected", [
    ("B. 12 m/s", ["a", "b", "c", "d"], ("mc", "B")),
    ("(C) none", ["a", "b", "c"], ("mc", "C")),
    ("E. out of range", ["a", "b"], (None, None)),
    ("Thus x = 4.", None, ("numeric", "4")),
    ("She makes 9 * 2 = 18 dollars.\n#### 1,800", None, ("numeric", "1800")),
    ("It depends on the context.", None, (None, None)),
    (None, None, (None, None)),
])
def test_gold(answer, choices, expected):
    assert gold(answer, choices) == expected


def test_predicted_takes_the_last_final_answer():
    assert predicted("mc", "Maybe the answer is (A)... no. The answer is (c).") == "C"
    assert predicted("numeric", "The answer is 1,250.") == "1250"
    assert predicted("numeric", "no final line") is None


@pytest.mark.parametrize("kind,text,expected", [
    ("mc", "**B**", "B"), ("mc", "The answer is: B", "B"), ("mc", "The answer is clearly B", "B"),
    ("mc", "Answer: (C) because it is inert.", "C"), ("mc", " D", "D"), ("mc", "I would say 42.", None),
    ("numeric", "so the result is \\boxed{42}", "42"), ("numeric", "Hence x = 1/2", "0.5"),
    ("numeric", "The final answer is $\\frac{3}{4}$.", "0.75"), ("numeric", "#### 1,800", "1800"),
    ("numeric", " 15\n", "15"), ("numeric", "The answer is B", None),
])
def test_predicted_reads_real_answer_formats(kind, text, expected):
    assert predicted(kind, text) == expected


def test_option_letter_by_logprobs():
    top = '[{" A": -2.3, " B": -0.2, " C": -3.1, "B": -0.9}]'
    assert by_logprobs(top, 4) == "B"
    assert by_logprobs('[{" C": -0.1, " A": -0.5}]', 2) == "A"  # C is not an offered option
    assert by_logprobs('[{" the": -0.1}]', 4) is None and by_logprobs(None, 4) is None


def _cells(rows):
    return pd.DataFrame(rows, columns=["is_stem", "difficulty", "probes", "correct"])


def test_boosts_follow_the_measured_error_rates():
    cfg = ProbeConfig(min_boost_probes=20, max_boost=3.0)
    # STEM: 40 probes, 16 right (error 0.6); non-STEM: 40 probes, 28 right (error 0.3) -> 2.0
    # H4: 20 probes, 6 right (error 0.7) vs overall 80/44 (error 0.45) -> 1.556; H5: 10 probes -> configured 2.0
    cells = _cells([(True, 2, 20, 10), (True, 4, 20, 6), (False, 1, 30, 24), (False, 5, 10, 4)])
    stem, levels, how = boosts(cells, cfg)
    assert math.isclose(stem, 2.0) and math.isclose(levels[4], 0.7 / 0.45) and levels[5] == 2.0
    assert how["stem"].startswith("measured 2") and how["H5"].startswith("configured 2 (only 10 probes")
    # a model better at STEM gets no STEM boost (clamped at 1); a perfect easy side caps at max_boost
    assert boosts(_cells([(True, 1, 30, 30), (False, 1, 30, 15)]), cfg)[0] == 1.0
    assert boosts(_cells([(True, 1, 30, 15), (False, 1, 30, 30)]), cfg)[0] == 3.0
    fixed = ProbeConfig(boosts="config")
    assert boosts(cells, fixed)[:2] == (1.5, {4: 1.5, 5: 2.0})


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi and math.isclose(lo, 0.2366, abs_tol=1e-3) and math.isclose(hi, 0.7634, abs_tol=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def _seeds(tmp_path):
    rows = []
    for i in range(40):
        if i % 2:
            rows.append({"id": f"mc{i}", "question": f"Which option is right number {i} of forty? Pick one.",
                         "choices": ["alpha", "beta", "gamma", "delta"], "answer": "B. beta"})
        else:
            rows.append({"id": f"n{i}", "question": f"Compute {i} plus {i} for item {i} of the forty.",
                         "answer": f"Adding gives {2 * i}."})
    write_jsonl(tmp_path / "s.jsonl", rows)
    (tmp_path / "b.jsonl").write_text('{"question": "What is the capital city of a fictional land?", "answer": "x"}\n')
    return ({"name": "s", "path": str(tmp_path / "s.jsonl"),
             "fields": {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}},
            {"name": "tiny", "path": str(tmp_path / "b.jsonl")})


def test_probe_and_weights_end_to_end(spark, make_settings, tmp_path):
    src, bench = _seeds(tmp_path)
    settings = make_settings(sources=[src], benchmarks=[bench], decontam={"embedding": {"enabled": False}},
                             probe={"per_cell": 3})
    runner = Runner(settings, spark=spark)
    _, results = runner.run()
    by = {r.stage: r for r in results}
    assert by["annotate"].kept == 40 and by["probe"].kept == by["probe"].pending > 0
    probes = runner.lake.read("gold.probe_results").toPandas()
    cells = probes.groupby(["discipline", "difficulty"]).size()
    assert cells.max() <= 3  # per_cell
    assert set(probes["kind"]) <= {"mc", "numeric"} and probes["llm_simulated"].all()
    mc = probes[probes["kind"] == "mc"]
    assert (mc["gold"] == "B").all() and mc["predicted"].isin(list("ABCD")).all()
    assert (probes["correct"] == (probes["gold"] == probes["predicted"])).all()
    w = runner.lake.read("gold.sampling_weights").toPandas()
    assert math.isclose(w["share"].sum(), 1.0, rel_tol=1e-9)
    assert (w["weight"] >= settings.probe.floor).all()
    probed = w[w["probes"] > 0]
    assert ((probed["ci_low"] <= probed["accuracy"]) & (probed["accuracy"] <= probed["ci_high"])).all()
    # H5 STEM cells are boosted over an H1 cell with the same accuracy
    assert set(w["difficulty"]) <= {1, 2, 3, 4, 5}
    # a rerun probes nothing new and recomputes the same numbers; an unchanged snapshot is not
    # rewritten, so a new version appears only if a value differs (float summation order)
    v = runner.lake.version("gold.sampling_weights")
    _, again = runner.run(["probe", "weights"])
    assert again[0].pending == 0
    key = ["checkpoint", "discipline", "difficulty"]
    w2 = runner.lake.read("gold.sampling_weights").toPandas().sort_values(key).reset_index(drop=True)
    w1 = w.sort_values(key).reset_index(drop=True)
    assert len(w2) == len(w1) and (w2[key] == w1[key]).all().all()
    for col in ("probes", "correct", "accuracy", "weight", "share"):
        assert np.allclose(w2[col].astype(float), w1[col].astype(float), rtol=1e-12, equal_nan=True), col
    v2 = runner.lake.version("gold.sampling_weights")
    exact = all((w2[c].astype(float).fillna(-1) == w1[c].astype(float).fillna(-1)).all()
                for c in w1.columns if c not in key + ["run_id"] and w1[c].dtype.kind in "fiu")
    assert v2 == v if exact else v2 == v + 1


def test_plan_counts_without_calling(spark, make_settings, tmp_path):
    from boostqa.planning import plan_stages

    src, bench = _seeds(tmp_path)
    settings = make_settings(sources=[src], benchmarks=[bench], decontam={"embedding": {"enabled": False}},
                             llm={"endpoints": {"annotator": {"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                                              "rpm": 60, "price_input_per_mtok": 1.0}}})
    runner = Runner(settings, spark=spark)
    runner.run(["ingest", "bench", "dedup", "decontam"])
    [row] = [r for r in plan_stages(runner, ["annotate"])]
    assert (row["pending"], row["calls"], row["reused"]) == (40, 40, 0)
    assert row["prompt_tokens"] > 40 * 100 and row["limited_by"] == "rpm" and row["time"] == "40 s"
    ep = settings.llm.endpoints["annotator"]
    assert row["completion_tokens"] == 40 * ep.est_completion_tokens
    assert math.isclose(row["cost_usd"], row["prompt_tokens"] / 1e6 * 1.0
                        + row["completion_tokens"] / 1e6 * ep.price_output_per_mtok)
    assert not runner.lake.exists("ops.llm_calls")  # nothing was called (port 9 would refuse anyway)


def test_base_checkpoint_probed_through_completions(spark, make_settings, tmp_path):
    """probe.api completions: a few-shot prompt on the legacy API; multiple choice scored by the
    option letters' log-probabilities (legacy shape from a vLLM-like server, chat shape from
    llama-server), numbers by the text. Two checkpoints, two profiles."""
    src, bench = _seeds(tmp_path)
    base = dict(sources=[src], benchmarks=[bench], decontam={"embedding": {"enabled": False}},
                probe={"per_cell": 3, "api": "completions"})
    profiles = {}
    for provider in ("vllm", "llamacpp"):
        settings = make_settings(**base, llm={"endpoints": {"probe": {"provider": provider,
                                                                      "model": f"base-{provider}"}}})
        runner = Runner(settings, spark=spark)
        _, results = runner.run(["ingest", "bench", "dedup", "decontam", "annotate", "probe"])
        by = {r.stage: r for r in results}
        assert by["probe"].kept == by["probe"].pending > 0 and by["probe"].deferred == 0
        profiles[provider] = runner.lake.read("gold.probe_results").where(
            f"checkpoint = 'base-{provider}'").toPandas()
    calls = runner.lake.read("ops.llm_calls").where("stage = 'probe'").toPandas()
    assert set(calls["prompt_id"]) == {"probe_base@v1"} and calls["logprobs"].notna().all()
    prompt = json.loads(calls["messages"][0])[-1]["content"]
    assert prompt.startswith("The following are questions with answers.") and prompt.endswith("Answer:")
    for p in profiles.values():
        mc, num = p[p["kind"] == "mc"], p[p["kind"] == "numeric"]
        assert len(mc) and len(num) and (mc["scored_by"] == "logprobs").all() and (num["scored_by"] == "text").all()
        assert mc["predicted"].isin(list("ABCD")).all() and num["predicted"].notna().all()
        assert (p["correct"] == (p["gold"] == p["predicted"])).all()

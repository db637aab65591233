"""Probe scoring, the probe + weights stages end to end against the simulator, and `plan`."""

from __future__ import annotations

import math

import pytest

from boostqa.runner import Runner
from boostqa.stages.probe import gold, predicted
from boostqa.stages.weights import wilson
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
    # a rerun probes nothing new and rewrites the weights as a new version of the same numbers
    v = runner.lake.version("gold.sampling_weights")
    _, again = runner.run(["probe", "weights"])
    assert again[0].pending == 0 and runner.lake.version("gold.sampling_weights") == v + 1
    assert runner.lake.read("gold.sampling_weights").count() == len(w)


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

"""annotate end to end on the embedded engine: real Delta tables, a real MLflow store and the LLM
simulator (a real HTTP server) behind the official SDK. Faults are injected by the simulator;
expectations come from the simulator's raw responses and the taxonomy file, read independently.

silver.seeds_clean is built once per module (ingest -> bench -> dedup -> decontam over a small
jsonl source) and copied into each test's lake, so each test only pays for the annotate stage.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from boostqa import engine
from boostqa.config import deep_merge, load_settings
from boostqa.llm.output import extract_json
from boostqa.llm.sim import SimConfig, SimulatorServer
from boostqa.runner import Runner
from boostqa.stages.base import StageError
from boostqa.stages import llm
from boostqa.taxonomy import load_taxonomy
from boostqa.tracking import SIMULATED_TAG, STAGE_TAG
from tests.conftest import sim_requests, write_jsonl

N_SEEDS = 30
OUT, REJ = "silver.seeds_annotated", "quarantine.annotation"
CALLS, FAILURES = "ops.llm_calls", "ops.llm_failures"
FIELDS = {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}
TRANSPORT_FAULTS = ("rate_limit", "server_error", "unavailable", "timeout")


def _records() -> list[dict]:
    """30 distinct seeds (every 4th multiple choice); no two share 10 words with each other or the
    benchmark, so dedup and decontam keep all of them."""
    topics = ["alpha", "beta", "gamma", "delta", "sigma"]
    out = []
    for i in range(N_SEEDS):
        rec = {"id": f"q{i:02d}", "question": f"Seed {i}: compute {i} plus {3 * i} with the {topics[i % 5]} "
                                             f"method number {i * 7}", "answer": str(4 * i)}
        if i % 4 == 0:
            rec["choices"] = [str(4 * i), str(4 * i + 1), str(4 * i + 2)]
        out.append(rec)
    return out


def _base(root: Path) -> dict:
    return {"sources": [{"name": "toy", "path": str(root / "src" / "seeds.jsonl"), "fields": FIELDS}],
            "benchmarks": [{"name": "tiny", "path": str(root / "src" / "bench.jsonl")}],
            "decontam": {"embedding": {"enabled": False}}}


@pytest.fixture(scope="module")
def template(_engine, tmp_path_factory) -> Path:
    """A lake holding silver.seeds_clean (30 seeds) and nothing of annotate."""
    root = tmp_path_factory.mktemp("annotate_template")
    write_jsonl(root / "src" / "seeds.jsonl", _records())
    write_jsonl(root / "src" / "bench.jsonl", [
        {"question": "Which river flows through the capital city of Egypt towards the sea?", "answer": "Nile"},
        {"question": "Name the author of a famous play about a Danish prince and his ghostly father.",
         "answer": "Shakespeare"}])
    settings = load_settings("local", environ={}, overrides=deep_merge(_base(root), {
        "lake": {"root": str(root / "lake")}, "runs_dir": str(root / "runs"), "tracking": {"enabled": False}}))
    runner = Runner(settings, spark=engine.get_spark())
    _, results = runner.run(["ingest", "bench", "dedup", "decontam"])
    assert [(r.stage, r.complete) for r in results] == [(s, True) for s in ("ingest", "bench", "dedup", "decontam")]
    assert runner.lake.read("silver.seeds_clean").count() == N_SEEDS
    assert not runner.lake.exists(OUT) and not runner.lake.exists(CALLS)
    return root


@pytest.fixture
def lake_copy(template, tmp_path) -> Path:
    shutil.copytree(template / "lake", tmp_path / "lake")
    return tmp_path


@pytest.fixture
def builtin_sim():
    """base_url "simulator": the stage starts one per process; start fresh and stop it after."""
    llm.stop_simulator()
    yield
    llm.stop_simulator()


def _settings(make_settings, root: Path, endpoint: dict, **overrides):
    ep = {"base_url": "simulator", "model": "sim-annotator", "api_key_env": None, **endpoint}
    return make_settings(**deep_merge(_base(root), deep_merge({"llm": {"endpoints": {"annotator": ep}}}, overrides)))


def _annotate(runner: Runner):
    run_id, [res] = runner.run(["annotate"])
    assert res.stage == "annotate" and res.complete
    return run_id, res


def _rows(runner: Runner, name: str, key: str = "seed_uid") -> dict:
    if not runner.lake.exists(name):
        return {}
    rows = [r.asDict() for r in runner.lake.read(name).collect()]
    out = {r[key]: r for r in rows}
    assert len(out) == len(rows), f"duplicate {key} in {name}"
    return out


def _seed_keys(runner: Runner) -> dict[str, str]:
    """seed_uid -> the request key the stage sends for it (its own request builder, no calls)."""
    from boostqa.stages.annotate import STAGE
    from boostqa.stages.base import StageContext

    seeds = runner.lake.read("silver.seeds_clean")
    ctx = StageContext(runner.spark, STAGE.settings_view(runner.settings), "keys", STAGE, inputs={"seeds": seeds})
    return {r.seed_uid: r.request_key for r in llm.pending_requests(ctx, seeds).collect()}



def _stage_run(settings, mlflow_run_id: str):
    client = MlflowClient(settings.tracking_uri())
    run = client.get_run(mlflow_run_id)
    assert run.data.tags[STAGE_TAG] == "annotate"
    return run


def _check_annotation(row: dict, raw: str, tax) -> None:
    """A kept row matches the simulator's raw JSON and the taxonomy."""
    want = json.loads(extract_json(raw))  # the object the parser read (a fenced one too)
    assert f"{row['discipline']}/{row['subfield']}" == want["discipline"] and want["discipline"] in tax.labels
    assert row["is_stem"] is tax.stem[row["discipline"]]
    assert row["difficulty"] == int(want["difficulty"].removeprefix("H")) and 1 <= row["difficulty"] <= 5
    assert row["rationale"] == want["rationale"] and row["rationale"].strip()
    assert (row["annotator_model"], row["prompt_version"]) == ("sim-annotator", "annotate@v2")


# ---------------------------------------------------------------- 1. happy path

def test_every_seed_annotated_logged_and_tracked(spark, make_settings, lake_copy, builtin_sim):
    settings = _settings(make_settings, lake_copy, {})
    runner = Runner(settings, spark=spark)
    run_id, res = _annotate(runner)
    sim = llm.running_simulator()
    seeds = _rows(runner, "silver.seeds_clean")
    out, calls = _rows(runner, OUT), _rows(runner, CALLS, "request_key")
    keys = _seed_keys(runner)
    tax = load_taxonomy()

    assert (res.pending, res.kept, res.rejected, res.deferred) == (N_SEEDS, N_SEEDS, 0, 0)
    assert set(out) == set(seeds) and not _rows(runner, REJ) and not _rows(runner, FAILURES)
    assert len(set(keys.values())) == N_SEEDS and set(calls) == set(keys.values())
    assert sim_requests(sim) == N_SEEDS  # one HTTP request per distinct request, no retries
    for uid, row in out.items():
        assert row["request_key"] == keys[uid] and row["llm_simulated"] is True and row["run_id"] == run_id
        for c in ("seed_id", "source", "question", "answer", "choices", "cluster_id"):
            assert row[c] == seeds[uid][c]
        _check_annotation(row, calls[row["request_key"]]["raw"], tax)
    # some spread: the simulator draws labels from the schema's enums
    assert len({r["discipline"] for r in out.values()}) > 3 and len({r["difficulty"] for r in out.values()}) > 2
    assert {r["is_stem"] for r in out.values()} == {True, False}

    # the prompt carried the seed: question, lettered choices, reference answer, the taxonomy
    mc = next(r for r in out.values() if r["choices"])
    user = json.loads(calls[mc["request_key"]]["messages"])[-1]["content"]
    assert mc["question"] in user and f"B. {mc['choices'][1]}" in user and mc["answer"] in user
    assert all(label in user for label in tax.labels)

    for c in calls.values():
        assert (c["status"], c["endpoint"], c["model"], c["prompt_id"], c["stage"]) == \
            ("ok", "annotator", "sim-annotator", "annotate@v2", "annotate")
        assert c["raw"] and c["finish_reason"] == "stop" and c["http_status"] == 200 and c["error"] is None
        assert c["prompt_tokens"] > 100 and c["completion_tokens"] > 0 and c["latency_ms"] > 0
        assert c["attempts"] == 1 and c["simulated"] is True and c["run_id"] == run_id
    stats = sim.stats()
    spent = {k: stats["tokens"][k] - stats["preflight_tokens"][k] for k in ("prompt", "completion")}
    assert spent["prompt"] == sum(c["prompt_tokens"] for c in calls.values())
    assert spent["completion"] == sum(c["completion_tokens"] for c in calls.values())

    run = _stage_run(settings, res.mlflow_run_id)
    m = run.data.metrics
    assert run.data.tags[SIMULATED_TAG] == "true" and run.data.tags["boostqa.complete"] == "true"
    assert (m["llm.calls"], m["llm.reused"], m["llm.failed"], m["llm.invalid"], m["llm.attempts"]) == \
        (N_SEEDS, 0, 0, 0, N_SEEDS)
    assert m["llm.prompt_tokens"] == spent["prompt"]
    assert m["llm.completion_tokens"] == spent["completion"]
    assert m["llm.latency_ms_total"] > 0 and m["rows_kept"] == N_SEEDS
    assert run.data.params["config.llm.endpoints.annotator.base_url"] == "simulator"
    # the parent run carries the run's totals; every input names its Delta version and row count
    client = MlflowClient(settings.tracking_uri())
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["annotate.kept"] == N_SEEDS and parent.data.metrics["total.llm.calls"] == N_SEEDS
    assert parent.data.params["stages"] == "annotate"
    seeds_input = next(i for i in run.inputs.dataset_inputs if i.dataset.name == "silver.seeds_clean")
    tags = {t.key: t.value for t in seeds_input.tags}
    assert tags["rows"] == str(N_SEEDS) and tags["delta_version"].isdigit()


# ---------------------------------------------------------------- 2. resume without paying twice

def test_rerun_and_reannotation_reuse_logged_calls(spark, make_settings, lake_copy, builtin_sim):
    settings = _settings(make_settings, lake_copy, {})
    runner = Runner(settings, spark=spark)
    _annotate(runner)
    sim = llm.running_simulator()
    first, calls = _rows(runner, OUT), _rows(runner, CALLS, "request_key")
    assert len(first) == N_SEEDS and sim_requests(sim) == N_SEEDS

    _, again = _annotate(runner)  # nothing pending: nothing called
    assert (again.pending, again.kept) == (0, 0) and sim_requests(sim) == N_SEEDS

    runner.lake.delete_where(OUT, "true")  # lose the output: the call log still holds every response
    assert not _rows(runner, OUT)
    run3, redo = _annotate(runner)
    assert (redo.pending, redo.kept, redo.rejected, redo.deferred) == (N_SEEDS,) * 2 + (0, 0)
    assert sim_requests(sim) == N_SEEDS  # no new HTTP request
    assert (redo.stats["llm.calls"], redo.stats["llm.reused"], redo.stats["llm.prompt_tokens"]) == (0, N_SEEDS, 0)
    second = _rows(runner, OUT)
    same = ("discipline", "subfield", "is_stem", "difficulty", "rationale", "request_key", "question", "seed_id")
    assert {u: {c: r[c] for c in same} for u, r in second.items()} == \
        {u: {c: r[c] for c in same} for u, r in first.items()}
    assert {r["run_id"] for r in second.values()} == {run3}
    assert _rows(runner, CALLS, "request_key") == calls  # the log is not rewritten
    run = _stage_run(settings, redo.mlflow_run_id)
    assert run.data.metrics["llm.calls"] == 0 and run.data.metrics["llm.reused"] == N_SEEDS
    assert run.data.tags[SIMULATED_TAG] == "true"


# ---------------------------------------------------------------- 3. faults: nothing lost, nothing twice

def test_faults_leave_every_seed_accounted_for_and_a_rerun_finishes(spark, make_settings, lake_copy):
    faults = {k: 0.09 for k in TRANSPORT_FAULTS} | {"malformed": 0.09}  # 45 % of attempts
    ep = {"max_retries": 1, "invalid_retries": 0, "timeout": 0.4, "backoff_base": 0.01, "backoff_max": 0.05,
          "max_concurrency": 8}
    with SimulatorServer(SimConfig(faults=faults, retry_after_s=0.02, timeout_hold_s=1.0, latency_ms=5)) as bad:
        settings = _settings(make_settings, lake_copy, dict(ep, base_url=bad.base_url),
                             llm={"chunk_rows": 12, "reasks": 0})  # three chunks, each committed on its own
        runner = Runner(settings, spark=spark)
        run1, res = _annotate(runner)
        bad_stats = bad.stats()
    assert res.chunks_total == 3 and bad_stats["faults_total"] > 0
    assert all(bad_stats["faults"][k] > 0 for k in (*TRANSPORT_FAULTS, "malformed")), bad_stats["faults"]

    seeds, keys = _rows(runner, "silver.seeds_clean"), _seed_keys(runner)
    out, rej = _rows(runner, OUT), _rows(runner, REJ)
    calls, fails = _rows(runner, CALLS, "request_key"), _rows(runner, FAILURES, "request_key")
    pending = set(seeds) - set(out) - set(rej)
    assert not set(out) & set(rej)  # exactly one of kept / quarantined / pending
    assert out and rej and pending, (len(out), len(rej), len(pending))  # all three outcomes happen
    assert (res.kept, res.rejected, res.deferred) == (len(out), len(rej), len(pending))
    assert res.rejected_by_reason == {"invalid_output": len(rej)}

    tax = load_taxonomy()
    for uid, row in out.items():  # kept: an ok response, logged
        assert calls[keys[uid]]["status"] == "ok"
        _check_annotation(row, calls[keys[uid]]["raw"], tax)
    for uid, q in rej.items():  # quarantined: the invalid raw text, logged too
        c = calls[keys[uid]]
        assert (q["reason"], q["request_key"], q["stage"], q["run_id"]) == \
            ("invalid_output", keys[uid], "annotate", run1)
        assert c["status"] == "invalid" and q["raw"] == c["raw"] and q["raw"] and q["detail"]
        with pytest.raises(ValueError):
            json.loads(q["raw"])
    assert set(calls) == {keys[u] for u in set(out) | set(rej)}  # failed requests are not logged as responses
    assert set(fails) == {keys[u] for u in pending}  # every pending seed says why
    for f in fails.values():
        assert f["run_id"] == run1 and f["endpoint"] == "annotator" and f["attempts"] == 2  # max_retries=1
        assert f["http_status"] in (429, 500, 503) or "Timeout" in f["error"], f
        assert f["error"] and (f["http_status"] is None or str(f["http_status"]) in f["error"])
    assert res.stats["llm.failed"] == len(pending) and res.stats["llm.invalid"] == len(rej)

    # rerun against a healthy endpoint: only the pending seeds are requested, once each
    with SimulatorServer(SimConfig(latency_ms=5)) as good:
        runner2 = Runner(_settings(make_settings, lake_copy, dict(ep, base_url=good.base_url)), spark=spark)
        run2, res2 = _annotate(runner2)
        assert sim_requests(good) == len(pending)
    assert (res2.pending, res2.kept, res2.rejected, res2.deferred) == (len(pending), len(pending), 0, 0)
    out2, rej2 = _rows(runner2, OUT), _rows(runner2, REJ)
    assert set(out2) == set(out) | pending and rej2 == rej
    assert {u: out2[u] for u in out} == out  # committed rows untouched
    calls2 = _rows(runner2, CALLS, "request_key")
    assert {k: calls2[k] for k in calls} == calls and set(calls2) - set(calls) == {keys[u] for u in pending}
    for uid in pending:
        assert out2[uid]["run_id"] == run2
        _check_annotation(out2[uid], calls2[keys[uid]]["raw"], tax)
    assert _rows(runner2, FAILURES, "request_key") == fails  # history of run 1 kept, nothing new failed


# ---------------------------------------------------------------- 4. invalid output

def test_malformed_output_is_quarantined_with_raw_text(spark, make_settings, lake_copy):
    ep = {"invalid_retries": 1, "max_concurrency": 8}
    with SimulatorServer(SimConfig(faults={"malformed": 1.0}, latency_ms=5)) as sim:
        runner = Runner(_settings(make_settings, lake_copy, dict(ep, base_url=sim.base_url), llm={"reasks": 0}),
                        spark=spark)
        run_id, res = _annotate(runner)
        sent = sim_requests(sim)
    keys = _seed_keys(runner)
    out, rej = _rows(runner, OUT), _rows(runner, REJ)
    calls = _rows(runner, CALLS, "request_key")
    assert set(out) | set(rej) == set(keys) and not set(out) & set(rej) and not _rows(runner, FAILURES)
    # the simulator breaks JSON three ways; one of them wraps valid JSON in chatter and a code fence,
    # which the parser recovers: those seeds are kept, the others quarantined
    assert len(rej) >= N_SEEDS // 3 and res.rejected_by_reason == {"invalid_output": len(rej)}
    tax = load_taxonomy()
    for uid, row in out.items():
        raw = calls[keys[uid]]["raw"]
        assert "```json" in raw and calls[keys[uid]]["attempts"] == 1
        _check_annotation(row, raw.split("```json", 1)[1].split("```", 1)[0], tax)
    for uid, q in rej.items():
        c = calls[keys[uid]]
        assert q["reason"] == "invalid_output" and q["run_id"] == run_id and q["raw"] == c["raw"]
        assert "```" not in q["raw"]
        with pytest.raises(ValueError):
            json.loads(q["raw"])
        assert q["detail"].startswith("json_invalid at root: Invalid JSON"), q["detail"]  # says why
        assert q["finish_reason"] == "stop"
        assert c["status"] == "invalid" and c["attempts"] == 2  # asked again once (invalid_retries=1)
        assert c["error"].startswith("invalid output")
    assert sent == len(out) + 2 * len(rej)

    # the quarantine is final for these responses: a rerun after clearing it re-parses the logged
    # raw text (no call) and quarantines the same seeds again
    runner.lake.delete_where(REJ, "true")
    with SimulatorServer(SimConfig(latency_ms=5)) as good:
        runner2 = Runner(_settings(make_settings, lake_copy, dict(ep, base_url=good.base_url), llm={"reasks": 0}),
                         spark=spark)
        _, res2 = _annotate(runner2)
        assert sim_requests(good) == 0
    assert (res2.pending, res2.rejected, res2.stats["llm.reused"]) == (len(rej),) * 3
    assert {u: (r["raw"], r["detail"]) for u, r in _rows(runner2, REJ).items()} == \
        {u: (r["raw"], r["detail"]) for u, r in rej.items()}


# ---------------------------------------------------------------- 5. the API key never lands anywhere

def _files_containing(root: Path, needle: str) -> list[str]:
    """Files under root whose bytes, or (parquet) decoded values, contain needle."""
    hits = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if needle.encode() in p.read_bytes():
            hits.append(str(p))
        elif p.suffix == ".parquet":  # values may be compressed or dictionary-encoded on disk
            if needle in json.dumps(pq.read_table(p).to_pylist(), default=str, ensure_ascii=False):
                hits.append(str(p))
    return hits


def test_api_key_is_used_but_never_stored(spark, make_settings, lake_copy, monkeypatch):
    secret = "sk-test-" + os.urandom(12).hex()
    monkeypatch.delenv("MY_TEST_KEY", raising=False)
    with SimulatorServer(SimConfig(api_key=secret, latency_ms=5)) as sim:
        settings = _settings(make_settings, lake_copy, {"base_url": sim.base_url, "api_key_env": "MY_TEST_KEY"})
        runner = Runner(settings, spark=spark)
        # the variable is not set: the stage stops before it spends, naming the variable; nothing is sent
        with pytest.raises(StageError, match=r"endpoint 'annotator' \(http://127\.0\.0\.1:\d+/v1.*MY_TEST_KEY"):
            _annotate(runner)
        assert sim.stats()["requests"] == 0 and not _rows(runner, OUT) and not _rows(runner, FAILURES)

        monkeypatch.setenv("MY_TEST_KEY", secret)
        _, res = _annotate(runner)
        stats = sim.stats()
    assert res.kept == N_SEEDS and stats["auth_failures"] == 0
    assert stats["requests_by_endpoint"]["/chat/completions"] == N_SEEDS + stats["preflights"]

    lake, runs = lake_copy / "lake", lake_copy / "runs"
    assert (runs / "mlflow.db").is_file() and any((runs / "artifacts").rglob("settings.json"))
    for name in runner.lake.tables():  # every table, read through the engine
        for row in runner.lake.read(name).collect():
            assert secret not in json.dumps(row.asDict(recursive=True), default=str), name
    assert _files_containing(lake, secret) == [] and _files_containing(runs, secret) == []
    # the scan does find what is stored: the variable's name in MLflow, a question in the lake
    assert _files_containing(runs, "MY_TEST_KEY")
    assert _files_containing(lake / "silver" / "seeds_annotated", _records()[7]["question"])


# ---------------------------------------------------------------- 6. rate limit

def test_requests_per_minute_limit_holds_end_to_end(spark, make_settings, lake_copy):
    rpm, tasks = 300.0, 2
    with SimulatorServer(SimConfig(latency="none")) as sim:
        runner = Runner(_settings(make_settings, lake_copy, {"base_url": sim.base_url, "rpm": rpm},
                                  llm={"parallel_tasks": tasks}, tracking={"enabled": False}), spark=spark)
        t0 = time.monotonic()
        _, res = _annotate(runner)
        elapsed = time.monotonic() - t0
        assert sim_requests(sim) == N_SEEDS
    assert res.kept == N_SEEDS
    # each task gets rpm/tasks with a burst of one second's worth: all tasks together can send at most
    # `rate` requests per second after a burst of `rate` requests
    rate = rpm / 60.0
    burst = tasks * max(1.0, rate / tasks)
    floor = (N_SEEDS - burst) / rate
    assert floor >= 4.0 and elapsed >= floor * 0.95, (elapsed, floor)

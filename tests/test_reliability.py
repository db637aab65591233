"""The reliability suite: real `boostqa run` processes killed with SIGKILL mid-stage, two runs of
one stage at once, a fault storm of thousands of calls, a canary API key and path traversal.
Each checks the promise, not that something printed: the final tables equal an uninterrupted
run's, no answered row lacks its logged call, no call is paid twice beyond one journal
sub-batch (plus the requests in flight) per kill, no row is lost or duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boostqa import engine
from boostqa.config import deep_merge, load_settings
from boostqa.llm.sim import SimConfig, SimulatorServer
from boostqa.runner import Runner
from boostqa.stages import llm
from tests.conftest import sim_requests, write_jsonl

N = 120  # seeds: three chunks of 40, several journal sub-batches each
FIELDS = {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}
OUT, CALLS = "silver.seeds_annotated", "ops.llm_calls"
JOURNAL_ROWS, CONCURRENCY = 10, 4
BOOSTQA = str(Path(sys.executable).with_name("boostqa"))


def _records(n: int) -> list[dict]:
    words = ["amber", "basil", "cobalt", "dune", "ember", "fjord", "garnet", "heron", "indigo", "juniper"]
    return [{"id": f"r{i:05d}", "question": f"Item {i}: what is {i} times {i % 13 + 2} for the "
             f"{words[i % 10]} {words[(i // 10) % 10]} {words[(i // 100) % 10]} case {i * 31}?",
             "answer": str(i * (i % 13 + 2))} for i in range(n)]


def _prepared(root: Path, n: int) -> Path:
    """A lake holding silver.seeds_clean (n seeds), nothing of annotate."""
    write_jsonl(root / "src" / "seeds.jsonl", _records(n))
    write_jsonl(root / "src" / "bench.jsonl", [{"question": "Which river flows through Cairo to the sea?",
                                                "answer": "Nile"}])
    runner = Runner(load_settings("local", environ={}, overrides=_overrides(root, None)), spark=engine.get_spark())
    _, results = runner.run(["ingest", "bench", "dedup", "decontam"])
    assert all(r.complete for r in results) and runner.lake.read("silver.seeds_clean").count() == n
    return root


def _overrides(root: Path, sim_url: str | None, **extra) -> dict:
    base = {"sources": [{"name": "toy", "path": str(root / "src" / "seeds.jsonl"), "fields": FIELDS}],
            "benchmarks": [{"name": "tiny", "path": str(root / "src" / "bench.jsonl")}],
            "decontam": {"embedding": {"enabled": False}}, "lake": {"root": str(root / "lake")},
            "runs_dir": str(root / "runs"), "tracking": {"enabled": False},
            "llm": {"chunk_rows": 40, "journal_rows": JOURNAL_ROWS, "parallel_tasks": 1}}
    if sim_url:
        base["llm"]["endpoints"] = {"annotator": {"base_url": sim_url, "api_key_env": None,
                                                  "max_concurrency": CONCURRENCY}}
    return deep_merge(base, extra)


def _env(overrides: dict, **extra: str) -> dict[str, str]:
    """BOOSTQA__* variables that carry the overrides into a `boostqa` subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOSTQA")}

    def flat(prefix: str, node: dict) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                flat(f"{prefix}{k.upper()}__", v)
            else:
                env[f"{prefix}{k.upper()}"] = json.dumps(v)

    flat("BOOSTQA__", overrides)
    env.update(extra, BOOSTQA_PROFILE="local")
    return env


def _boostqa(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([BOOSTQA, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _table(root: Path, name: str, key: str) -> dict:
    from deltalake import DeltaTable

    path = root / "lake" / name.replace(".", "/")
    if not path.exists():
        return {}
    rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    out = {r[key]: r for r in rows}
    assert len(out) == len(rows), f"duplicate {key} in {name}"
    return out


SAME = ("discipline", "subfield", "difficulty", "grade_stage", "rationale", "request_key", "question")


@pytest.fixture(scope="module")
def prepared(_engine, tmp_path_factory) -> Path:
    return _prepared(tmp_path_factory.mktemp("reliability_template"), N)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src / "lake", dest / "lake")
    shutil.copytree(src / "src", dest / "src")
    return dest


def test_kill_9_at_three_points_loses_nothing_and_repays_little(prepared, tmp_path):
    sim_cfg = SimConfig(latency_ms=5, seed=3)
    with SimulatorServer(sim_cfg) as sim:  # the uninterrupted run, for comparison
        ref = _copy(prepared, tmp_path / "ref")
        runner = Runner(load_settings("local", environ={}, overrides=_overrides(ref, sim.base_url)),
                        spark=engine.get_spark())
        _, [res] = runner.run(["annotate"])
        assert res.complete and res.kept + res.rejected == N
        llm.stop_simulator()
    want_out, want_calls = _table(ref, OUT, "seed_uid"), _table(ref, CALLS, "request_key")

    root = _copy(prepared, tmp_path / "killed")
    with SimulatorServer(sim_cfg) as sim:
        env = _env(_overrides(root, sim.base_url))
        kills = ["journal_flush:2", "call_log_committed:2", "call_log_write:2"]
        for point in kills:
            before = sim_requests(sim)
            proc = _boostqa(["run", "annotate"], {**env, "BOOSTQA_CRASH_AT": point})
            assert proc.returncode == -9, (point, proc.returncode, proc.stderr[-2000:])
            assert sim_requests(sim) > before, point  # it was killed while working
            out, calls = _table(root, OUT, "seed_uid"), _table(root, CALLS, "request_key")
            assert {r["request_key"] for r in out.values()} <= set(calls), point  # no answer without its log
        done = _boostqa(["run", "annotate"], env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        sent = sim_requests(sim)
    out, calls = _table(root, OUT, "seed_uid"), _table(root, CALLS, "request_key")
    assert {u: {c: r[c] for c in SAME} for u, r in out.items()} == \
        {u: {c: r[c] for c in SAME} for u, r in want_out.items()}
    assert set(calls) == set(want_calls)
    assert {k: calls[k]["raw"] for k in calls} == {k: want_calls[k]["raw"] for k in want_calls}
    repaid = sent - len(want_calls)
    print(f"\nRELIABILITY kill -9 x{len(kills)}: {N} seeds, {sent} requests for {len(want_calls)} answers, "
          f"{repaid} re-paid (bound {len(kills) * (JOURNAL_ROWS + CONCURRENCY)})")
    assert 0 <= repaid <= len(kills) * (JOURNAL_ROWS + CONCURRENCY)  # a sub-batch + the requests in flight


def test_two_concurrent_runs_pay_once(prepared, tmp_path):
    root = _copy(prepared, tmp_path / "both")
    with SimulatorServer(SimConfig(latency_ms=20)) as sim:
        env = _env(_overrides(root, sim.base_url, runner={"lease_wait_seconds": 240}))
        procs = [subprocess.Popen([BOOSTQA, "run", "annotate"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=400) for p in procs]
        sent = sim_requests(sim)
    assert [p.returncode for p in procs] == [0, 0], outs
    out, calls = _table(root, OUT, "seed_uid"), _table(root, CALLS, "request_key")
    assert len(out) == N and sent == len(calls) == N  # every call paid once


def test_fault_storm_of_thousands_of_calls(_engine, tmp_path):
    """~45 % of attempts fail (429 with Retry-After, 500, 503, timeouts, broken bodies, malformed or
    truncated content): no row lost or duplicated, all kept after at most two runs."""
    n = 3000
    root = _prepared(tmp_path, n)
    faults = SimConfig.with_fault_rate(0.45, retry_after_s=0.01, timeout_hold_s=0.5, latency_ms=2)
    ep = {"max_retries": 4, "timeout": 0.3, "backoff_base": 0.01, "backoff_max": 0.05, "max_concurrency": 32,
          "invalid_retries": 1}
    with SimulatorServer(faults) as storm:
        over = _overrides(root, storm.base_url, llm={"chunk_rows": 1000, "endpoints": {"annotator": ep}})
        runner = Runner(load_settings("local", environ={}, overrides=over), spark=engine.get_spark())
        t0 = time.monotonic()
        outcomes = []
        for _ in range(2):
            _, [res] = runner.run(["annotate"])
            outcomes.append((res.kept, res.rejected, res.deferred))
            if not res.deferred and not res.rejected:
                break
        stats = storm.stats()
    out = _table(root, OUT, "seed_uid")  # unique keys asserted
    print(f"\nRELIABILITY fault storm: {stats['requests']} requests, {stats['faults_total']} faults "
          f"{stats['faults']}, runs {outcomes}, {time.monotonic() - t0:.0f} s")
    assert stats["requests"] >= 5000 and stats["faults_total"] > 1500
    assert len(out) == n and sum(k for k, _, _ in outcomes) == n  # all kept, each once


def test_canary_key_appears_nowhere(prepared, tmp_path):
    canary = "sk-canary-" + os.urandom(10).hex()
    root = _copy(prepared, tmp_path / "canary")
    with SimulatorServer(SimConfig(api_key=canary, latency_ms=5)) as sim:
        over = _overrides(root, sim.base_url, llm={"endpoints": {"annotator": {"api_key_env": "CANARY_KEY"}}},
                          tracking={"enabled": True})
        wrong = _boostqa(["run", "annotate"], _env(over, CANARY_KEY="sk-wrong-" + canary[::-1]))
        good = _boostqa(["run", "annotate"], _env(over, CANARY_KEY=canary))
    assert wrong.returncode != 0 and "annotator" in wrong.stderr and "401" in wrong.stderr, wrong.stderr[-2000:]
    assert good.returncode == 0, good.stderr[-2000:]
    for proc in (wrong, good):
        assert canary not in proc.stdout + proc.stderr and canary[::-1] not in proc.stdout + proc.stderr
    hits = [p for p in tmp_path.rglob("*") if p.is_file() and canary.encode() in p.read_bytes()]
    assert hits == []
    assert any(b"CANARY_KEY" in p.read_bytes() for p in (root / "runs").rglob("*") if p.is_file())


def test_path_traversal_writes_and_deletes_nothing_outside(prepared, tmp_path):
    root = _copy(prepared, tmp_path / "lake_home")
    bait = tmp_path / "bait.txt"
    bait.write_text("keep me")
    env = _env(_overrides(root, None))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for run_id in ("../../..", "../bait", "/tmp", "a/../../b"):
        proc = _boostqa(["run", "ingest", "--run-id", run_id], env)
        assert proc.returncode == 2 and "bad run id" in proc.stderr, proc.stderr[-1000:]
    bad_source = _env(deep_merge(_overrides(root, None), {"sources": [{"name": "../../evil", "path": str(bait)}]}))
    proc = _boostqa(["run", "ingest"], bad_source)
    assert proc.returncode == 2 and "sources" in proc.stderr
    assert bait.read_text() == "keep me"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

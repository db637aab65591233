"""Engine parity: the whole pipeline on three engines, each on its own lake, and every table must
match by key and content (run ids, timestamps and latencies aside):

- embedded: LakeSail in this process (the reference);
- JVM Spark through Spark Connect: Apache Spark 4 + Delta as a Connect server (`boostqa.jvm`) on
  ``local-cluster[2,1,1024]``, so executors are separate JVMs and Python UDFs really ship;
- classic JVM Spark: ``engine.kind: spark`` (py4j, ``local[2]``, Delta jars from the project's
  cache as ``spark.jars``), run by ``tests/jvm_classic_leg.py`` in the private virtualenv with full
  pyspark, since this environment's pyspark-client cannot start a JVM.

The LLM stages' workers call the simulator over loopback. The first run on a machine fetches
pyspark and the Delta jars (~400 MB) into the cache.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest

from boostqa import jvm
from boostqa.config import load_settings
from boostqa.runner import Runner
from boostqa.stages import STAGES as ALL_STAGES
from boostqa.stages import llm
from tests.conftest import write_jsonl

pytestmark = pytest.mark.skipif(jvm.problem() is not None, reason=f"JVM Spark: {jvm.problem()}")

STAGES = list(ALL_STAGES)  # the whole pipeline, LinkQA included
VOLATILE = {"run_id", "ingested_at", "rejected_at", "created_at", "failed_at", "latency_ms", "source_file",
            "acquired_at", "expires_at",
            "synth_run_id", "check_run_id", "counted_at", "exported_at",
            # hashes over the input versions' data file names (random UUIDs): differ between any two runs,
            # on one engine too (kp_graph's graph id, the ledger's table digest and the row id made from it)
            "graph_id", "table_digest", "ledger_id",
            # hashes of the export settings and manifest, which name each engine's own export directory
            "export_id", "manifest_sha256"}
# compared by key (a difference names the row); every other table the stages write, as a multiset of rows
KEYS = {"ref.bench_embeddings": "item_id", "bronze.seeds": "record_key", "quarantine.seeds": "record_key",
        "silver.seeds": "seed_uid", "quarantine.duplicates": "seed_uid", "silver.seeds_clean": "seed_uid",
        "quarantine.contaminated": "seed_uid", "silver.seeds_annotated": "seed_uid", "ops.llm_calls": "request_key"}


@pytest.fixture(scope="module")
def jvm_root(request) -> Path:
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        return jvm.fetch()


@pytest.fixture
def connect_server(jvm_root):
    # two workers of one core each: executors are separate JVMs, so Python UDFs and the Delta jars ship
    srv = jvm.ConnectServer(jvm_root, master="local-cluster[2,1,1024]").launch()  # starts while embedded runs
    try:
        yield srv
    finally:
        srv.stop()


def _seeds(root: Path) -> dict:
    rows = [{"id": f"p{i}", "question": f"Parity seed {i}: how many {['apples', 'moles', 'volts'][i % 3]} are "
             f"in {i} boxes of {i + 4} each, counted twice?", "answer": str(2 * i * (i + 4))} for i in range(24)]
    rows += [{"id": "dup", "question": rows[3]["question"], "answer": rows[3]["answer"]},  # an exact duplicate
             {"id": "leak", "question": "Which river flows through Cairo on its way to the Mediterranean Sea "
              "according to the atlas?", "answer": "Nile"},
             {"id": "bad", "question": "", "answer": "x"}, "{not json"]
    write_jsonl(root / "seeds.jsonl", rows)
    write_jsonl(root / "bench.jsonl", [{"question": "Which river flows through Cairo on its way to the "
                                                    "Mediterranean Sea according to the atlas?", "answer": "Nile"}])
    return {"sources": [{"name": "p", "path": str(root / "seeds.jsonl"),
                         "fields": {"id": "id", "question": "question", "answer": "answer"}}],
            "benchmarks": [{"name": "b", "path": str(root / "bench.jsonl")}],
            "corpus": [{"name": "python_reference", "path": "package://data/general/python_reference.jsonl",
                        "text_field": "text", "id_field": "id"}],
            "linkqa": {"enabled": True, "paths": 4}, "synthesis": {"budget_qa": 24},
            "blend": {"target_tokens": 2000}, "export": {"shard_tokens": 800},
            "tracking": {"enabled": False}, "llm": {"simulator": {"latency_ms": 1}}}


def _norm(row: dict) -> dict:
    """A row without its volatile columns; gold lineage without the run ids of its stages."""
    out = {k: v for k, v in row.items() if k not in VOLATILE}
    if isinstance(out.get("lineage"), list):
        out["lineage"] = [(k, v) for k, v in out["lineage"] if not k.endswith("_run")]
    return out


def _run(root: Path, base: dict, engine_cfg: dict) -> dict[str, dict]:
    """Run STAGES with the settings' engine (what `boostqa run` does) and read every table back."""
    settings = load_settings("local", environ={}, overrides={
        **base, "lake": {"root": str(root / "lake")}, "runs_dir": str(root / "runs"), "engine": engine_cfg,
        "export": {**base["export"], "dir": str(root / "exports")}})  # each engine writes its own shards
    llm.stop_simulator()
    _, results = Runner(settings).run(STAGES)
    llm.stop_simulator()
    assert all(r.complete for r in results), [(r.stage, r.chunks_done, r.chunks_total) for r in results]
    from deltalake import DeltaTable

    out = {}
    for log in sorted((root / "lake").glob("*/*/_delta_log")):
        name = f"{log.parent.parent.name}.{log.parent.name}"
        rows = [_norm(r) for r in DeltaTable(str(log.parent)).to_pyarrow_table().to_pylist()]
        for r in rows:  # ops.exports names the engine's own export directory
            if isinstance(r.get("path"), str):
                r["path"] = r["path"].replace(str(root), "<root>")
        if name in KEYS:
            out[name] = {r[KEYS[name]]: r for r in rows}
            assert len(out[name]) == len(rows), f"duplicate keys in {name}"
        else:
            out[name] = sorted(rows, key=repr)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, _engine):
    """The seeds, settings and tables of the embedded run, which the JVM legs must reproduce."""
    root = tmp_path_factory.mktemp("parity")
    base = _seeds(root)
    want = _run(root / "embedded", base, {"kind": "embedded"})
    assert len(want["silver.seeds_annotated"]) == 24 and want["quarantine.contaminated"]
    assert want["quarantine.seeds"] and want["quarantine.duplicates"] and want["silver.seed_clusters"]
    for name in ("gold.boostqa", "gold.mix", "gold.token_ledger", "ops.exports", "silver.kp_paths", "quarantine.synth"):
        assert want[name], name  # the later stages really produced rows
    assert set(KEYS) <= want.keys()
    return root, base, want


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        if name in KEYS:
            assert got[name].keys() == want[name].keys(), name
            for k in want[name]:
                assert got[name][k] == want[name][k], (name, k)
        else:
            assert got[name] == want[name], name


def test_jvm_spark_through_connect_writes_the_same_tables(connect_server, reference):
    from boostqa import engine
    from boostqa.config import EngineConfig

    root, base, want = reference
    embedded = engine.get_spark()
    remote_cfg = {"kind": "remote", "remote": connect_server.wait_ready().url}
    remote = engine.get_spark(EngineConfig(**remote_cfg))  # the session the runner gets too
    try:
        assert remote is not embedded and remote.version.startswith("4.0") and embedded.version != remote.version
        assert engine.get_spark() is embedded  # a remote session does not shadow the embedded one
        # pyspark-client 4.2 asks a 4.0 server for settings it lacks before sending local rows
        assert remote.createDataFrame([(1, "a")], "n int, s string").collect()[0]["s"] == "a"
        got = _run(root / "jvm", base, remote_cfg)
    finally:
        remote.stop()
    assert engine.get_spark() is embedded
    # shards written by each engine (ops.exports' shard, row and token counts are compared)
    assert list((root / "jvm" / "exports").glob("mix-v*/manifest.json"))
    _assert_same(got, want)


def test_classic_jvm_spark_writes_the_same_tables(jvm_root, reference):
    """``engine.kind: spark`` in a child process of the private virtualenv; it pickles the tables
    it read back, in the same normal form."""
    root, base, want = reference
    python = jvm_root / "venv" / "bin" / "python"
    (root / "classic").mkdir()
    (root / "classic" / "base.json").write_text(json.dumps(base))
    # no Spark settings of this process, except the marker its Connect sessions leave: kind spark must
    # still start a classic session (the engine drops the marker)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("SPARK_", "PYSPARK_"))}
    env["SPARK_CONNECT_MODE_ENABLED"] = "1"
    log = root / "classic" / "leg.log"
    with open(log, "w") as out:
        proc = subprocess.run([str(python), str(Path(__file__).with_name("jvm_classic_leg.py")), str(root / "classic")],
                              env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    assert proc.returncode == 0, log.read_text()[-4000:]
    leg = pickle.loads((root / "classic" / "tables.pkl").read_bytes())
    assert leg["pyspark"].startswith("4.0") and leg["classic"]  # a py4j session, not pyspark-client
    assert list((root / "classic" / "exports").glob("mix-v*/manifest.json"))
    _assert_same(leg["tables"], want)

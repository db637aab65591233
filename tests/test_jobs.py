"""The job entry point (boostqa.jobs): argument forms, overrides, and real `--stage ingest` runs through
the console script `boostqa-job` and through the module file as spark-submit runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from deltalake import DeltaTable

from boostqa import jobs
from boostqa.jobs import overrides, parse
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parent.parent


def test_overrides_nest_and_parse_yaml_values():
    assert overrides(["lake.catalog=dev", "runner.chunk_rows=5000"]) == \
        {"lake": {"catalog": "dev"}, "runner": {"chunk_rows": 5000}}
    assert overrides(["tracking.enabled=false", "lake.root=s3://b/p=1"]) == \
        {"tracking": {"enabled": False}, "lake": {"root": "s3://b/p=1"}}
    assert overrides([]) == {}


@pytest.mark.parametrize("bad", ["lake.catalog", "=dev", ""])
def test_malformed_set_raises_system_exit(bad):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        overrides([bad])


def test_positional_and_named_forms_parse_alike():
    """`parameters` arrive as `--key value`, `named_parameters` and job parameters as `--key=value`."""
    spaced = parse(["--stage", "ingest", "--profile", "p", "--run-id", "r", "--max-chunks", "2",
                    "--set", "a=1", "--set", "b.c=2"])
    named = parse(["--stage=ingest", "--profile=p", "--run-id=r", "--max-chunks=2", "--set=a=1", "--set.b.c=2"])
    for args in (spaced, named):
        assert (args.stages, args.profile, args.run_id, args.max_chunks, args.set) == \
            (["ingest"], "p", "r", 2, ["a=1", "b.c=2"])
    assert parse(["--set.lake.root", "s3://b/p=1"]).set == ["lake.root=s3://b/p=1"]


def test_stages_repeat_or_comma_list_and_default_to_the_pipeline():
    assert parse(["--stage", "dedup,decontam", "--stage", "ingest"]).stages == ["dedup", "decontam", "ingest"]
    assert parse([]).stages == []  # the runner runs the whole pipeline in order
    with pytest.raises(SystemExit) as e:
        parse(["--stage", "ingest,nosuch"])
    assert e.value.code == 2
    for bad in (["--stages", "ingest"], ["--set.lake.root"], ["--bogus=1"]):
        with pytest.raises(SystemExit):
            parse(bad)


def test_console_script_is_boostqa_jobs_main():
    (ep,) = entry_points(group="console_scripts", name="boostqa-job")  # `pip install -e .` after pyproject changes
    assert ep.value == "boostqa.jobs:main" and ep.load() is jobs.main


def test_ingest_through_console_script_then_module_file(tmp_path):
    """Run 1: `boostqa-job` with spaced arguments and --set; run 2: `python <boostqa/jobs.py>` (what
    spark-submit runs) with Databricks' --key=value arguments, the lake from BOOSTQA__LAKE__ROOT and one
    new seed row: it ingests only that row."""
    conf, data, lake, runs = tmp_path / "conf", tmp_path / "data", tmp_path / "lake", tmp_path / "runs"
    shutil.copytree(REPO / "conf", conf)
    write_jsonl(data / "a.jsonl", [{"id": "a1", "question": "2+2?", "answer": "4"},
                                   {"id": "a2", "question": "3+3?", "answer": "6"},
                                   "{not json",
                                   {"id": "a4", "question": "", "answer": "x"}])
    b_rows = [{"id": "b1", "question": "Capital of France?", "answer": "Paris"}]
    write_jsonl(data / "b.jsonl", b_rows)
    (conf / "jobtest.yaml").write_text(
        "sources:\n"
        f"  - {{name: alpha, path: '{data / 'a.jsonl'}', fields: {{id: id}}}}\n"
        f"  - {{name: beta, path: '{data / 'b.jsonl'}', fields: {{id: id}}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOSTQA")}
    env["BOOSTQA_CONF_DIR"] = str(conf)

    script = Path(sys.executable).with_name("boostqa-job")
    assert script.is_file(), f"{script} missing: pip install -e . --no-deps"
    p = subprocess.run([str(script), "--stage", "ingest", "--profile", "jobtest", "--run-id", "job-test-1",
                        "--set", f"lake.root={lake}", "--set", f"runs_dir={runs}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[ingest] pending 5 kept 3 rejected 2 deferred 0 chunks 1/1" in p.stdout, p.stdout
    quarantine = DeltaTable(str(lake / "quarantine" / "seeds")).to_pyarrow_table()
    assert sorted(quarantine.column("reason").to_pylist()) == ["empty_question", "unparseable"]
    assert (runs / "mlflow.db").is_file()  # --set runs_dir reached the tracker

    write_jsonl(data / "b.jsonl", b_rows + [{"id": "b2", "question": "Capital of Italy?", "answer": "Rome"}])
    p = subprocess.run([sys.executable, jobs.__file__, "--stage=ingest", "--profile=jobtest", "--run-id=job-test-2",
                        f"--set.runs_dir={runs}"],
                       cwd=tmp_path, env={**env, "BOOSTQA__LAKE__ROOT": str(lake)},
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[ingest] pending 1 kept 1 rejected 0 deferred 0 chunks 1/1" in p.stdout, p.stdout

    bronze = DeltaTable(str(lake / "bronze" / "seeds")).to_pyarrow_table()
    assert sorted(zip(bronze.column("source_row_id").to_pylist(), bronze.column("run_id").to_pylist())) == \
        [("a1", "job-test-1"), ("a2", "job-test-1"), ("b1", "job-test-1"), ("b2", "job-test-2")]


def test_an_unquoted_secret_reference_in_set_is_a_clear_error():
    """YAML reads an unquoted {{secrets/...}} as a mapping: the override names the key and says to
    quote it (it used to end in a YAML traceback); quoted, the reference arrives as a string."""
    from boostqa.jobs import overrides

    with pytest.raises(SystemExit, match=r"--set llm\.endpoints\.a\.api_key_secret: the value is not valid YAML.*quote it"):
        overrides(["llm.endpoints.a.api_key_secret={{secrets/boostqa/k}}"])
    assert overrides(["llm.endpoints.a.api_key_secret='{{secrets/boostqa/k}}'"]) == \
        {"llm": {"endpoints": {"a": {"api_key_secret": "{{secrets/boostqa/k}}"}}}}

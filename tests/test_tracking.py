"""MLflow: parent + nested runs, tables as datasets with Delta versions and digests, lineage, no secrets."""

from __future__ import annotations

import json

import mlflow
from mlflow.tracking import MlflowClient

from boostqa.runner import Runner
from boostqa.tracking import PIPELINE_TAG, lineage
from tests.conftest import write_jsonl


def _inputs(run):
    out = []
    for d in run.inputs.dataset_inputs:
        ctx = {t.key: t.value for t in d.tags}.get("mlflow.data.context")
        out.append((ctx, d.dataset.name, json.loads(d.dataset.source), d.dataset.digest))
    return out


def test_pipeline_run_logs_tables_with_versions(spark, make_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-never-logged")
    write_jsonl(tmp_path / "s.jsonl", [{"question": "q?", "answer": "a"}, {"question": ""}])
    settings = make_settings(sources=[{"name": "s", "path": str(tmp_path / "s.jsonl")}])
    runner = Runner(settings, spark=spark)
    run_id, [res] = runner.run(["ingest"], run_id="track-1")

    client = MlflowClient(settings.tracking_uri())
    exp = client.get_experiment_by_name("boostqa")
    [parent] = client.search_runs([exp.experiment_id], f"tags.`{PIPELINE_TAG}` = 'track-1'")
    [child] = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert child.info.run_id == res.mlflow_run_id and child.data.tags["boostqa.stage"] == "ingest"
    assert child.data.metrics["rows_kept"] == 1 and child.data.metrics["rejected.empty_question"] == 1
    assert child.data.params["chunk_rows"] == str(settings.runner.chunk_rows)

    logged = _inputs(child)
    outputs = {name: (src, digest) for ctx, name, src, digest in logged if ctx in ("output", "rejects")}
    bronze_src, bronze_digest = outputs["bronze.seeds"]
    assert bronze_src["path"] == runner.lake.location("bronze.seeds")
    assert bronze_src["delta_table_version"] == runner.lake.version("bronze.seeds")
    assert bronze_digest == runner.lake.digest("bronze.seeds", runner.lake.version("bronze.seeds"))
    assert "quarantine.seeds" in outputs
    assert any(ctx == "input" and name == "s/s.jsonl" for ctx, name, _, _ in logged)  # the source file

    # lineage from MLflow alone
    rows = lineage(settings.tracking_uri(), "boostqa", "track-1")
    assert {(r["stage"], r["context"], r["table"], r["version"]) for r in rows if r["context"] == "output"} == \
        {("ingest", "output", "bronze.seeds", runner.lake.version("bronze.seeds"))}

    # the same run id resumes under the same parent run
    runner.run(["ingest"], run_id="track-1")
    assert len(client.search_runs([exp.experiment_id], f"tags.`{PIPELINE_TAG}` = 'track-1'")) == 1

    # no secret anywhere in the store
    mlflow.set_tracking_uri(settings.tracking_uri())
    db = settings.tracking_uri()[len("sqlite:///"):]
    assert b"sk-test-secret" not in open(db, "rb").read()
    settings_json = client.download_artifacts(parent.info.run_id, "settings.json", str(tmp_path))
    assert "sk-test-secret" not in open(settings_json).read()


def test_tracking_disabled_is_a_no_op(spark, make_settings, tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [{"question": "q?", "answer": "a"}])
    settings = make_settings(sources=[{"name": "s", "path": str(tmp_path / "s.jsonl")}], tracking={"enabled": False})
    _, [res] = Runner(settings, spark=spark).run(["ingest"])
    assert res.kept == 1 and res.mlflow_run_id is None
    assert not (tmp_path / "runs" / "mlflow.db").exists()

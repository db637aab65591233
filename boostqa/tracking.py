"""MLflow: one parent run per pipeline run, one nested run per stage, tables as datasets.

Every input and output table is logged as an MLflow dataset whose source is the Delta table
(path or catalog name) at an exact version, with a content digest, so a pipeline run's lineage
can be rebuilt from MLflow alone. MLflow 3 has dataset *outputs* only for models, so output
tables are logged as dataset inputs with context ``output`` (or ``rejects``).
``mlflow.data.from_spark`` is avoided: it needs ``semanticHash``/``DESCRIBE DETAIL``, which
Sail lacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIPELINE_TAG = "boostqa.pipeline_run_id"
STAGE_TAG = "boostqa.stage"
SIMULATED_TAG = "boostqa.llm_simulated"


@dataclass(frozen=True)
class TableRef:
    """A table at one version, as logged to MLflow."""

    name: str
    location: str
    version: int | None
    digest: str | None
    catalog: bool = False
    rows: int | None = None  # from the Delta log's file statistics (no scan)


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    text = json.dumps(d, default=str) if not isinstance(d, str) else d
    return {prefix.rstrip("."): text[:5000]}  # MLflow param values are size-limited


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive advisory lock on a local file, held for the block."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Tracker:
    """Thin layer over mlflow; disabled tracking makes every call a no-op."""

    def __init__(self, uri: str, experiment: str, enabled: bool = True):
        self.enabled = enabled
        self.uri = uri
        self.experiment = experiment
        self.parent_id: str | None = None
        if enabled:
            import logging

            import mlflow

            logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO chatter on every db open
            artifacts, lock = None, contextlib.nullcontext()
            if uri.startswith("sqlite:///"):  # artifacts beside the db, not in ./mlruns of the cwd
                runs_dir = os.path.dirname(uri[len("sqlite:///"):]) or "."
                os.makedirs(runs_dir, exist_ok=True)
                artifacts = Path(runs_dir, "artifacts").resolve().as_uri()
                lock = file_lock(os.path.join(runs_dir, ".mlflow-init.lock"))
            mlflow.set_tracking_uri(uri)
            with lock:  # two processes creating one sqlite store race on its schema ("table ... already exists")
                if mlflow.get_experiment_by_name(experiment) is None:
                    try:
                        mlflow.create_experiment(experiment, artifact_location=artifacts)
                    except Exception:  # created meanwhile by a concurrent task
                        if mlflow.get_experiment_by_name(experiment) is None:
                            raise
                mlflow.set_experiment(experiment)
            self._mlflow = mlflow

    @contextlib.contextmanager
    def pipeline(self, run_id: str, tags: dict[str, str] | None = None) -> Iterator[str | None]:
        """The parent run for pipeline run ``run_id``: reused when it exists (Databricks tasks and
        resumed runs share one parent), created otherwise."""
        if not self.enabled:
            yield None
            return
        mlflow = self._mlflow
        found = mlflow.search_runs(filter_string=f"tags.`{PIPELINE_TAG}` = '{run_id}'", output_format="list",
                                   max_results=1)
        kwargs = {"run_id": found[0].info.run_id} if found else {"run_name": run_id}
        with mlflow.start_run(**kwargs, tags={PIPELINE_TAG: run_id, **(tags or {})}) as run:
            self.parent_id = run.info.run_id
            try:
                yield run.info.run_id
            finally:
                self.parent_id = None

    @contextlib.contextmanager
    def stage(self, name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> Iterator[str | None]:
        if not self.enabled:
            yield None
            return
        with self._mlflow.start_run(run_name=name, nested=True, tags={STAGE_TAG: name, **(tags or {})}) as run:
            self._mlflow.log_params(_flatten(params))
            yield run.info.run_id

    def log_table(self, ref: TableRef, context: str) -> None:
        if not self.enabled or ref.version is None:
            return
        from mlflow.data.delta_dataset_source import DeltaDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        source = (DeltaDatasetSource(delta_table_name=ref.location, delta_table_version=ref.version) if ref.catalog
                  else DeltaDatasetSource(path=ref.location, delta_table_version=ref.version))
        ds = MetaDataset(source, name=ref.name, digest=ref.digest)
        # the version as a tag too: MLflow's Delta source drops a version 0 (falsy) from the UI
        tags = {"delta_version": str(ref.version), "location": ref.location}
        if ref.rows is not None:
            tags["rows"] = str(ref.rows)
        self._mlflow.log_input(ds, context=context, tags=tags)

    def log_summary(self, metrics: dict[str, float], params: dict[str, str]) -> None:
        """Totals of a pipeline run on its parent run (the active run between stages)."""
        if not self.enabled or self.parent_id is None:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        for k, v in metrics.items():
            client.log_metric(self.parent_id, k, float(v))
        for k, v in params.items():
            try:
                client.log_param(self.parent_id, k, v)
            except Exception:  # a resumed parent keeps the params of its first run
                client.set_tag(self.parent_id, f"boostqa.last_{k}", v)

    def log_file(self, name: str, path: str, digest: str, context: str = "input") -> None:
        if not self.enabled:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore", UserWarning)
            try:
                source = resolve_dataset_source(path)
            except Exception:  # a URI scheme MLflow cannot resolve: keep the record, as a tag
                self._mlflow.set_tag(f"boostqa.input_file.{name}"[:250], f"{path} sha256:{digest}")
                return
        self._mlflow.log_input(MetaDataset(source, name=name, digest=digest), context=context)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if self.enabled and metrics:  # names may carry data (benchmark, method): keep MLflow's charset
            self._mlflow.log_metrics({re.sub(r"[^\w\-. :/]", "_", k): float(v) for k, v in metrics.items()})

    def log_dict(self, data: dict, artifact: str) -> None:
        if self.enabled:
            self._mlflow.log_dict(data, artifact)

    def log_text(self, text: str, artifact: str) -> None:
        if self.enabled:
            self._mlflow.log_text(text, artifact)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            self._mlflow.set_tags(tags)


def lineage(uri: str, experiment: str, run_id: str) -> list[dict]:
    """Stage by stage, the table versions a pipeline run read and wrote, from MLflow alone."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {uri}")
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{run_id}'")
    if not parents:
        raise LookupError(f"no pipeline run {run_id!r} in experiment {experiment!r}")
    parent = parents[0]
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    out = []
    for child in children:
        for ds_input in child.inputs.dataset_inputs:
            ctx = next((t.value for t in ds_input.tags if t.key == "mlflow.data.context"), "")
            src = json.loads(ds_input.dataset.source)
            out.append({"stage": child.data.tags.get(STAGE_TAG, child.info.run_name), "context": ctx,
                        "table": ds_input.dataset.name, "digest": ds_input.dataset.digest,
                        "location": src.get("path") or src.get("delta_table_name") or src.get("uri"),
                        # MLflow's DeltaDatasetSource drops a falsy version: version 0 comes back
                        # missing. log_table never logs a Delta table without its version, so
                        # missing means 0 (files logged by log_file are not Delta sources)
                        "version": src.get("delta_table_version", 0) if ds_input.dataset.source_type == "delta_table"
                        else None, "mlflow_run": child.info.run_id,
                        "status": child.info.status})
    return out


def recent_runs(uri: str, experiment: str, limit: int = 10) -> list[dict]:
    """Pipeline (parent) runs, newest first, with their stages."""
    from datetime import datetime, timezone

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` != ''",
                                 order_by=["attributes.start_time DESC"], max_results=limit)
    out = []
    for p in parents:
        children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{p.info.run_id}'")
        out.append({"pipeline_run": p.data.tags[PIPELINE_TAG],
                    "started (UTC)": datetime.fromtimestamp(p.info.start_time / 1000, timezone.utc)
                    .strftime("%Y-%m-%d %H:%M:%S"),
                    "status": p.info.status, "stages": ",".join(sorted({c.data.tags.get(STAGE_TAG, "") for c in children})),
                    "mlflow_run_id": p.info.run_id})
    return out

"""notebooks/*.ipynb: committed stripped and valid, and run headlessly against a demo lake.

A module fixture runs the demo pipeline in-process (embedding detector off, MLflow off, to save
time; LinkQA on, as the demo profile has it) into a temporary lake; each notebook then runs in its
own kernel (which starts its own embedded engine) with the lake's location in BOOSTQA__* environment variables, and the numbers it
prints must match the tables.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from pyspark.sql import functions as F

from boostqa import engine, explore
from boostqa.config import load_settings
from boostqa.lake import Lake, LakeError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("01_mix", "02_contamination_dedup", "03_tokens_blend", "04_kp_graph")


def _read(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=nbformat.NO_CONVERT)


# ---------------------------------------------------------------- committed form (no engine)
@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_is_stripped_valid_v4(path: Path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4 and nb.nbformat_minor >= 5  # cell ids exist from 4.5
    nbformat.validate(nb)
    ids = [c.get("id") for c in nb.cells]
    assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: missing or repeated cell ids {ids}"
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, \
                f"{path.name}: cell {c.id} has outputs: python -m boostqa.explore {path}"
        assert "seaborn" not in c.source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'PROFILE = parameter("profile", "demo")' in params[0].source
    assert 'CATALOG = parameter("catalog", "")' in params[0].source
    assert nb.metadata.kernelspec.name == "python3"


def test_expected_notebooks_exist():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} >= set(EXPECTED)


# ---------------------------------------------------------------- a demo lake
def _cache() -> str:
    """The data cache holding the demo's public assets (fetched when `make` has not)."""
    from boostqa import assets

    names = ["champ", "mmlu", "gsm8k", "gpqa_diamond"]
    cache = assets.default_cache_dir()
    try:
        for n in names:
            assets.asset_path(n, cache)
    except assets.AssetMissing:
        cache = Path(os.environ.get("TMPDIR", "/tmp")) / "boostqa-nb-cache"
        assets.fetch(names, cache)
    return str(cache)


@pytest.fixture(scope="module")
def demo(_engine, tmp_path_factory):
    """(settings, lake, env): the whole demo pipeline run once into a temporary lake."""
    from boostqa.runner import Runner

    root = tmp_path_factory.mktemp("notebooks")
    env = {"BOOSTQA_PROFILE": "demo", "BOOSTQA__LAKE__ROOT": str(root / "lake"),
           "BOOSTQA__RUNS_DIR": str(root / "runs"), "BOOSTQA__EXPORT__DIR": str(root / "exports"),
           "BOOSTQA__DATA_CACHE": _cache(), "BOOSTQA__DECONTAM__EMBEDDING__ENABLED": "false",
           "BOOSTQA__TRACKING__ENABLED": "false"}
    settings = load_settings("demo", environ=env)
    runner = Runner(settings, spark=engine.get_spark(settings.engine))
    _, results = runner.run()
    assert all(r.complete and not r.skipped for r in results), [(r.stage, r.skipped) for r in results]
    return settings, runner.lake, env


def _execute(name: str, env: dict[str, str]):
    """Run a notebook in a fresh python3 kernel (this venv); any cell error raises."""
    from nbclient import NotebookClient

    nb = _read(name)
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env={**os.environ, **env})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return text, figures


def _n(df) -> str:
    return f"{df.count():,}"


# ---------------------------------------------------------------- the notebooks run
def test_01_mix(demo):
    settings, lake, env = demo
    text, figures = _execute("01_mix", env)
    assert figures == 4
    gold = lake.read("gold.boostqa")
    gold_tokens = gold.agg(F.sum("n_tokens")).first()[0]
    assert f"silver.seeds_annotated: {_n(lake.read('silver.seeds_annotated'))} seeds" in text
    assert f"gold.boostqa: {_n(gold)} accepted QA, {gold_tokens:,} tokens" in text
    assert f"gold.probe_results: {_n(lake.read('gold.probe_results'))} probes" in text
    assert f"gold.sampling_weights: {lake.read('gold.sampling_weights').count()} cells" in text
    assert "cells whose probe count differs from gold.probe_results: 0" in text
    assert text.count("SIMULATED LLM output") >= 3  # annotations, synthesis, probes: never shown as a model's


def test_02_contamination_dedup(demo):
    settings, lake, env = demo
    text, figures = _execute("02_contamination_dedup", env)
    cont, dups = lake.read("quarantine.contaminated").count(), lake.read("quarantine.duplicates").count()
    assert cont > 0 and dups > 0  # demo_leaks plants both
    clusters = lake.read("silver.seed_clusters")
    assert f"quarantine.contaminated: {cont:,} seeds removed" in text
    assert f"quarantine.duplicates: {dups:,} seeds removed" in text
    assert (f"silver.seed_clusters: {clusters.select('cluster_id').distinct().count():,} multi-member clusters, "
            f"{clusters.count():,} member seeds") in text
    assert (f"bronze.seeds {_n(lake.read('bronze.seeds'))} -> dedup -> silver.seeds {_n(lake.read('silver.seeds'))}"
            f" -> decontam -> silver.seeds_clean {_n(lake.read('silver.seeds_clean'))}") in text
    assert figures == 3


def test_03_tokens_blend(demo):
    from boostqa.reports import token_progress

    settings, lake, env = demo
    text, figures = _execute("03_tokens_blend", env)
    assert figures == 5
    mix = lake.read("gold.mix")
    mix_tokens = mix.agg(F.sum("n_tokens")).first()[0]
    assert f"gold.mix v{lake.version('gold.mix')}: {mix_tokens:,} tokens in {_n(mix)} rows" in text
    p = token_progress(lake, settings.tokens.target_tokens)
    assert f"{p['tokens']:,} of {p['target_tokens']:,} tokens" in text
    assert re.search(r"export of gold\.mix v\d+ at .+: manifest sha256 verified, \d+ shards", text)
    assert "SIMULATED LLM output" in text


def test_04_kp_graph(demo):
    settings, lake, env = demo
    text, figures = _execute("04_kp_graph", env)
    assert figures == 4
    nodes = lake.read("gold.kp_nodes")
    gid = nodes.select("graph_id").first()["graph_id"]
    edges = lake.read("gold.kp_edges").where(F.col("graph_id") == gid)
    degree0 = nodes.where(F.col("degree") == 0).count()
    assert (f"gold.kp_nodes: {_n(nodes)} KPs in graph {gid}, gold.kp_edges: {_n(edges)} edges, "
            f"{degree0:,} KPs of degree 0") in text
    # the demo's CHAMP source supplies KPs (its concept labels); the annotator names the rest
    supplied = lake.read("silver.seed_kps").where(F.col("kp_source") == "source").select("kp_id").distinct().count()
    assert supplied > 0 and f"{supplied:,} KPs were supplied by a source" in text
    cov = lake.read("gold.kp_walk_coverage").where(F.col("graph_id") == gid)
    n_paths = cov.agg(F.max("paths")).first()[0]
    assert n_paths == lake.read("silver.kp_paths").count() == settings.linkqa.paths
    for r in cov.where(F.col("paths") == n_paths).collect():
        assert f"  {r['strategy']}: coverage {r['coverage']:.4f}, gini {r['gini']:.4f}" in text
    assert f"recomputed coverage at {n_paths} paths matches gold.kp_walk_coverage: True" in text
    mix = lake.read("gold.kp_walk_mix").where((F.col("graph_id") == gid) & (F.col("paths") == n_paths))
    assert f"total variation distance target vs achieved {mix.first()['tvd']:.4f}" in text
    items = lake.read("gold.boostqa").where(F.col("mode") == "linkqa")
    assert f"gold.boostqa: {_n(items)} accepted linkqa items" in text
    assert "SIMULATED" in text


def test_notebook_fails_loudly_on_a_missing_table(tmp_path):
    from nbclient.exceptions import CellExecutionError

    env = {"BOOSTQA_PROFILE": "demo", "BOOSTQA__LAKE__ROOT": str(tmp_path / "empty"),
           "BOOSTQA__RUNS_DIR": str(tmp_path / "runs"), "BOOSTQA__TRACKING__ENABLED": "false"}
    with pytest.raises(CellExecutionError, match="missing table"):
        _execute("02_contamination_dedup", env)


def test_explore_raises_on_missing_or_empty(spark, tmp_path):
    from pyspark.sql.types import LongType, StructField, StructType

    lake = Lake(spark, load_settings("local", overrides={"lake": {"root": str(tmp_path / "lake")}}, environ={}).lake)
    with pytest.raises(LakeError, match="gold.mix"):
        explore.require(lake, "gold.mix")
    lake.create("ops.exports", StructType([StructField("rows", LongType())]))
    with pytest.raises(LakeError, match="empty"):
        explore.read(lake, "ops.exports")
    assert explore.read(lake, "ops.exports", nonempty=False).count() == 0


def test_parameters_come_from_databricks_widgets_when_present(monkeypatch):
    """On Databricks a notebook's parameters are widgets (a bundle task's base_parameters fill
    them); elsewhere the environment."""
    import __main__

    from boostqa.explore import parameter

    monkeypatch.setenv("BOOSTQA_PROFILE", "local")
    assert parameter("profile", "demo") == "local" and parameter("catalog", "") == ""

    class Widgets:
        def __init__(self):
            self.values = {"profile": "databricks"}

        def text(self, name, default):
            self.values.setdefault(name, default)

        def get(self, name):
            return self.values[name]

    dbutils = type("DBUtils", (), {"widgets": Widgets()})()
    monkeypatch.setattr(__main__, "dbutils", dbutils, raising=False)
    assert parameter("profile", "demo") == "databricks" and parameter("catalog", "main") == "main"

"""kp_walk: gold.kp_nodes + gold.kp_edges -> silver.kp_paths (+ linkqa tasks in silver.synth_plan).

Value-guided walks over the KP graph (``boostqa.text.kp.walk``): each path is 2-4 seeds linked by
KPs, for a discipline x difficulty cell drawn to meet ``linkqa.target_mix``; a step moves along
an edge with probability ~ strength x value(next), value = popularity^alpha x (1 + visits)^-beta,
visits updated between ``linkqa.rounds`` rounds (and carried over from the paths of earlier runs).

How it runs: the graph of the current graph_id (nodes, edges, seed memberships) is collected and
the walk runs as one Spark-free kernel inside a single mapInPandas task. That is for graphs of at
most ``linkqa.max_walk_edges`` edges (default 2M: about 100 MB of adjacency in the task); a larger
graph stops the stage with that message (a distributed walk is not implemented).

Idempotency: the walk is deterministic (same graph, config and earlier paths = same paths and
ids). Paths record the graph and the ``linkqa.paths`` budget they were walked for; a run walks
only up to that budget, and not again for a graph and budget already walked, so a rerun adds
nothing. Each new path is also one synthesis task (mode ``linkqa``) in silver.synth_plan:
plan_id = qa_id = path_id, seed_uid = the path's first seed; synthesize joins the path for the
other seeds and the KP names. These tasks count towards ``synthesis.budget_qa`` as planned.

Measurements (over every path so far, on the current graph, once per run that walked): KP coverage,
Gini of visits and KP links per item of the value walk against the popularity-only walk and
uniform seed sampling at the same number of paths -> gold.kp_walk_coverage; target vs achieved
discipline x difficulty mix of the paths -> gold.kp_walk_mix; both also as ``linkqa.*`` metrics
and the MLflow artifact ``linkqa_report.json``.
"""

from __future__ import annotations

import json

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import Derived, Stage, StageContext, StageError
from boostqa.text import kp

PATH_SCHEMA = T.StructType([
    T.StructField("path_id", T.StringType()), T.StructField("graph_id", T.StringType()),
    T.StructField("round", T.IntegerType()), T.StructField("discipline", T.StringType()),
    T.StructField("target_difficulty", T.IntegerType()), T.StructField("kp_ids", T.ArrayType(T.StringType())),
    T.StructField("kp_names", T.ArrayType(T.StringType())), T.StructField("seed_uids", T.ArrayType(T.StringType())),
    T.StructField("seed_difficulties", T.ArrayType(T.IntegerType())), T.StructField("n_seeds", T.IntegerType()),
    T.StructField("budget", T.IntegerType())])
LINKQA_ROLE = "kp_linker"  # grade_role of linkqa tasks


def current_graph(nodes: DataFrame) -> str | None:
    r = nodes.select("graph_id").limit(1).collect()
    return r[0]["graph_id"] if r else None


def collect_graph(ctx: StageContext, gid: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(nodes, edges, memberships) of graph ``gid`` as pandas frames, refusing graphs above the limit."""
    nodes, edges = ctx.inputs["nodes"], ctx.inputs["edges"].where(F.col("graph_id") == gid)
    n_edges = edges.count()
    limit = ctx.settings.linkqa.max_walk_edges
    if n_edges > limit:
        raise StageError(f"stage kp_walk: graph {gid} has {n_edges} edges, more than linkqa.max_walk_edges={limit} "
                         "the in-memory walk accepts (docs/linkqa.md)")
    members = ctx.inputs["kps"].select("seed_uid", "kp_id").dropDuplicates() \
        .join(ctx.inputs["seeds"].select("seed_uid", "difficulty"), "seed_uid")
    return (nodes.select("kp_id", "name", "discipline", "popularity").toPandas(),
            edges.select("kp_a", "kp_b", "strength").toPandas(), members.toPandas())


def prior_state(existing: DataFrame | None) -> tuple[dict, dict, int]:
    """(KP visits, seed uses, next round) from the paths of earlier runs."""
    if existing is None:
        return {}, {}, 0
    visits = {r["k"]: r["n"] for r in existing.select(F.explode("kp_ids").alias("k")).groupBy("k")
              .agg(F.count(F.lit(1)).alias("n")).collect()}
    uses = {r["s"]: r["n"] for r in existing.select(F.explode("seed_uids").alias("s")).groupBy("s")
            .agg(F.count(F.lit(1)).alias("n")).collect()}
    top = existing.agg(F.max("round").alias("r")).first()["r"]
    return visits, uses, (int(top) + 1) if top is not None else 0


def walk_paths(ctx: StageContext, nodes: DataFrame) -> DataFrame:
    """The new paths of this run (prepare: the runner keeps those not written yet)."""
    c, spark = ctx.settings.linkqa, ctx.spark
    empty = spark.createDataFrame([], PATH_SCHEMA)
    gid = current_graph(nodes)
    existing = ctx.existing
    done = existing.count() if existing is not None else 0
    if gid is None or done >= c.paths:
        return empty
    same = (F.col("graph_id") == gid) & (F.col("budget") >= c.paths)
    if existing is not None and existing.where(same).limit(1).count():
        return empty  # this graph was walked for this budget: what it could not fill stays unfilled
    node_pdf, edge_pdf, member_pdf = collect_graph(ctx, gid)
    visits, uses, start = prior_state(existing)
    cfg = kp.WalkConfig.from_settings(c, c.paths - done, start)
    budget = c.paths

    def run(batches):  # one task: the partition of a one-row frame
        if not sum(len(b) for b in batches):
            return
        graph = kp.Graph.from_frames(node_pdf, edge_pdf, member_pdf)
        paths, _ = kp.walk(graph, cfg, visits, uses)
        yield pd.DataFrame({
            "path_id": [p.path_id for p in paths], "graph_id": [gid] * len(paths),
            "round": pd.array([p.round for p in paths], dtype="int32"), "discipline": [p.discipline for p in paths],
            "target_difficulty": pd.array([p.target_difficulty for p in paths], dtype="int32"),
            "kp_ids": [list(p.kp_ids) for p in paths], "kp_names": [[graph.names[k] for k in p.kp_ids] for p in paths],
            "seed_uids": [list(p.seed_uids) for p in paths], "seed_difficulties": [list(p.difficulties) for p in paths],
            "n_seeds": pd.array([len(p.seed_uids) for p in paths], dtype="int32"),
            "budget": pd.array([budget] * len(paths), dtype="int32")})

    return ctx.checkpoint(spark.range(0, 1, 1, 1).mapInPandas(run, PATH_SCHEMA))


def transform(ctx: StageContext, nodes: DataFrame, edges: DataFrame, kps: DataFrame, seeds: DataFrame) -> DataFrame:
    """The new paths (``nodes`` holds this chunk of them) with the first seed's subfield and STEM
    flag for their synthesis task."""
    first = seeds.select(F.col("seed_uid").alias("_first"), F.col("subfield").alias("_subfield"),
                         F.col("is_stem").alias("_is_stem"))
    return (nodes.withColumn("_first", F.col("seed_uids")[0]).join(first, "_first", "left")
            .select(*PATH_SCHEMA.fieldNames(), F.lit(ctx.run_id).alias("run_id"), "_first", "_subfield", "_is_stem",
                    F.lit(None).cast("string").alias("_reason"), F.lit(None).cast("string").alias("_detail")))


def plan_rows(ctx: StageContext, staged: DataFrame) -> DataFrame:
    """One silver.synth_plan task per new path (the plan's columns and types, as stage sample writes them)."""
    return staged.where(F.col("_outcome") == "kept").select(
        F.col("path_id").alias("plan_id"), F.col("path_id").alias("qa_id"), F.col("_first").alias("seed_uid"),
        F.lit("linkqa").alias("mode"), F.lit(LINKQA_ROLE).alias("grade_role"), F.lit(0).alias("sample"),
        F.lit(0).alias("attempt"), F.array_max("seed_difficulties").cast("int").alias("seed_difficulty"),
        F.col("target_difficulty").cast("int").alias("target_difficulty"), "discipline",
        F.col("_subfield").alias("subfield"), F.col("_is_stem").cast("boolean").alias("is_stem"),
        F.lit(1.0).alias("weight"), F.lit(None).cast("string").alias("instruction"), F.lit(ctx.run_id).alias("run_id"))


def to_paths(rows) -> list[kp.Path]:
    return [kp.Path(r["path_id"], tuple(r["kp_ids"]), tuple(r["seed_uids"]),
                    tuple(int(h) for h in r["seed_difficulties"]), r["discipline"], int(r["target_difficulty"]),
                    int(r["round"])) for r in rows]


REPORT = "linkqa_report.json"
COVERAGE_SCHEMA = T.StructType([
    T.StructField("graph_id", T.StringType()), T.StructField("paths", T.LongType()),
    T.StructField("strategy", T.StringType()), T.StructField("strategy_paths", T.LongType()),
    T.StructField("coverage", T.DoubleType()), T.StructField("gini", T.DoubleType()),
    T.StructField("kp_links_per_item", T.DoubleType()), T.StructField("graph_kps", T.LongType()),
    T.StructField("linked_kps", T.LongType()), T.StructField("graph_edges", T.LongType()),
    T.StructField("run_id", T.StringType())])
MIX_SCHEMA = T.StructType([
    T.StructField("graph_id", T.StringType()), T.StructField("paths", T.LongType()),
    T.StructField("discipline", T.StringType()), T.StructField("difficulty", T.IntegerType()),
    T.StructField("target", T.DoubleType()), T.StructField("achieved", T.DoubleType()),
    T.StructField("seed_level", T.DoubleType()), T.StructField("tvd", T.DoubleType()),
    T.StructField("run_id", T.StringType())])


def report(ctx: StageContext, staged: DataFrame) -> dict | None:
    """``kp.walk_report`` over every path so far on the current graph (+ ``graph_id``, ``paths``),
    computed once per chunk: kept as the chunk's artifact ``linkqa_report.json``, which the report
    tables and the metrics read. None without a graph."""
    if REPORT in ctx.stats.artifacts:
        return json.loads(ctx.stats.artifacts[REPORT])
    gid = current_graph(ctx.inputs["nodes"])
    if gid is None:
        return None
    cols = ["path_id", "kp_ids", "seed_uids", "seed_difficulties", "discipline", "target_difficulty", "round"]
    new = staged.where(F.col("_outcome") == "kept").select(*cols)
    every = new if ctx.existing is None else ctx.existing.select(*cols).unionByName(new).dropDuplicates(["path_id"])
    paths = sorted(to_paths(every.collect()), key=lambda p: (p.round, p.path_id))
    graph = kp.Graph.from_frames(*collect_graph(ctx, gid))
    c = ctx.settings.linkqa
    out = {"graph_id": gid, "paths": len(paths),
           **kp.walk_report(graph, paths, kp.WalkConfig.from_settings(c, len(paths)))}
    ctx.stats.artifact(REPORT, json.dumps(out, indent=1))
    return out


def coverage_rows(ctx: StageContext, staged: DataFrame) -> DataFrame:
    """gold.kp_walk_coverage: per strategy (value walk, popularity-only walk, uniform seeds) at the
    same number of paths, KP coverage, Gini of visits and KP links per item (key: graph, paths so
    far, strategy: a top-up adds rows, a rerun none)."""
    r = report(ctx, staged)
    g = (r or {}).get("graph", {})
    rows = [(r["graph_id"], r["paths"], name, m["paths"], float(m["coverage"]), float(m["gini"]),
             float(m["kp_links_per_item"]), g["kps"], g["linked_kps"], g["edges"], ctx.run_id)
            for name, m in r["strategies"].items()] if r else []
    return ctx.spark.createDataFrame(rows, COVERAGE_SCHEMA)


def mix_rows(ctx: StageContext, staged: DataFrame) -> DataFrame:
    """gold.kp_walk_mix: target vs achieved share of the paths per (discipline, target difficulty),
    and the share whose seeds' mean level is that cell (``seed_level``)."""
    r = report(ctx, staged)
    rows = [(r["graph_id"], r["paths"], m["discipline"], int(m["difficulty"]), float(m["target"]),
             float(m["achieved"]), float(m["seed_level"]), float(r["mix"]["tvd"]), ctx.run_id)
            for m in r["mix"]["cells"]] if r else []
    return ctx.spark.createDataFrame(rows, MIX_SCHEMA)


def measure(ctx: StageContext, staged: DataFrame) -> None:
    """Coverage / Gini of KP visits against popularity-proportional walks and uniform seed sampling
    at the same number of paths, target vs achieved mix, seeds and KP links per item: every path
    so far, on the current graph. Metrics ``linkqa.*`` and the artifact ``linkqa_report.json``
    (the same numbers as gold.kp_walk_coverage and gold.kp_walk_mix)."""
    r = report(ctx, staged)
    if r is None:
        return
    for name, m in r["strategies"].items():
        ctx.stats.set(f"linkqa.coverage.{name}", m["coverage"])
        ctx.stats.set(f"linkqa.gini.{name}", m["gini"])
        ctx.stats.set(f"linkqa.kp_links_per_item.{name}", m["kp_links_per_item"])
    ctx.stats.set("linkqa.paths", float(r["paths"]))
    ctx.stats.set("linkqa.mix_tvd", r["mix"]["tvd"])
    ctx.stats.set("linkqa.mix_tvd_seed_level", r["mix"]["tvd_seed_level"])
    for k, v in r["items"].items():
        ctx.stats.set(f"linkqa.{k}", v)
    ctx.stats.tag("linkqa.graph_id", r["graph_id"])


STAGE = Stage(
    name="kp_walk",
    inputs={"nodes": "gold.kp_nodes", "edges": "gold.kp_edges", "kps": "silver.seed_kps",
            "seeds": "silver.seeds_annotated"},
    output="silver.kp_paths",
    key=("path_id",),
    prepare=walk_paths,
    reads_output=True,
    whole=True,  # one walk over the whole graph
    transform=transform,
    derived=(Derived("silver.synth_plan", ("plan_id",), plan_rows),
             Derived("gold.kp_walk_coverage", ("graph_id", "paths", "strategy"), coverage_rows),
             Derived("gold.kp_walk_mix", ("graph_id", "paths", "discipline", "difficulty"), mix_rows)),
    summarize=measure,
    sections=("linkqa",),
    enabled=lambda s: s.linkqa.enabled,
    description="LinkQA: value-guided KP graph walks -> paths of 2-4 seeds -> linkqa synthesis tasks",
)

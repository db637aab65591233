"""kp_graph: silver.seed_kps -> gold.kp_nodes (snapshot) + gold.kp_edges (per graph id).

The LinkQA knowledge-point graph, built with the DataFrame API only (nothing is collected):

- nodes: one per KP: kp_id, name, discipline, popularity = seeds containing it, mean difficulty
  of those seeds, degree;
- edges: KP pairs (kp_a < kp_b) that co-occur in a seed, by a self-join of silver.seed_kps on
  seed_uid: cooccurrence = seeds holding both, pmi = ln(c_ab N / (c_a c_b)) over the N seeds with
  KPs, npmi = pmi / -ln(c_ab / N), strength = (1 + npmi) / 2 in (0, 1] (the walk's edge weight,
  ``boostqa.text.kp.edge_strength``).

Every build has a ``graph_id`` (hash of the content digests of its input versions). gold.kp_nodes
is the stage's snapshot output (overwritten each run: a new Delta version); gold.kp_edges is
written next to it keyed on (graph_id, kp_a, kp_b): a stage has one overwritten output, so edges
of earlier graphs stay and readers take those of the graph_id in gold.kp_nodes (kp_walk does).
"""

from __future__ import annotations

import hashlib

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from boostqa.stages.base import Derived, Stage, StageContext


def graph_id(ctx: StageContext) -> str:
    parts = [f"{a}={ctx.digests.get(a) or ctx.versions.get(a)}" for a in ("kps", "seeds")]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _members(kps: DataFrame, seeds: DataFrame) -> DataFrame:
    """(seed_uid, kp_id, kp, discipline, difficulty): one row per seed and KP."""
    return (kps.select("seed_uid", "kp_id", "kp", "discipline").dropDuplicates(["seed_uid", "kp_id"])
            .join(seeds.select("seed_uid", F.col("difficulty").alias("_h")), "seed_uid", "left")
            .withColumnRenamed("_h", "difficulty"))


def nodes(kps: DataFrame, seeds: DataFrame) -> DataFrame:
    m = _members(kps, seeds)
    return m.groupBy("kp_id").agg(F.min("kp").alias("name"), F.min("discipline").alias("discipline"),
                                  F.countDistinct("seed_uid").alias("popularity"),
                                  F.avg("difficulty").alias("mean_difficulty"))


def edges(kps: DataFrame, seeds: DataFrame, node_rows: DataFrame) -> DataFrame:
    """Co-occurring KP pairs with count, PMI and strength (a self-join on seed_uid; N = seeds with KPs)."""
    m = _members(kps, seeds).select("seed_uid", "kp_id", "discipline")
    a = m.select("seed_uid", F.col("kp_id").alias("kp_a"), "discipline")
    b = m.select("seed_uid", F.col("kp_id").alias("kp_b"))
    n = m.select(F.countDistinct("seed_uid").alias("n"))
    pairs = a.join(b, "seed_uid").where(F.col("kp_a") < F.col("kp_b")) \
        .groupBy("kp_a", "kp_b").agg(F.min("discipline").alias("discipline"),
                                     F.countDistinct("seed_uid").alias("cooccurrence"))
    pop = node_rows.select("kp_id", "popularity")
    e = (pairs.join(pop.select(F.col("kp_id").alias("kp_a"), F.col("popularity").alias("_pa")), "kp_a")
         .join(pop.select(F.col("kp_id").alias("kp_b"), F.col("popularity").alias("_pb")), "kp_b")
         .crossJoin(F.broadcast(n)))
    c, big_n = F.col("cooccurrence").cast("double"), F.col("n").cast("double")
    pmi = F.log(c * big_n / (F.col("_pa").cast("double") * F.col("_pb").cast("double")))
    npmi = F.when(c >= big_n, F.lit(1.0)).otherwise(pmi / -F.log(c / big_n))
    return e.select("kp_a", "kp_b", "discipline", "cooccurrence", pmi.alias("pmi"), npmi.alias("npmi"),
                    ((F.lit(1.0) + npmi) / F.lit(2.0)).alias("strength"))


def transform(ctx: StageContext, kps: DataFrame, seeds: DataFrame) -> DataFrame:
    gid = graph_id(ctx)
    node_rows = nodes(kps, seeds)
    e = edges(kps, seeds, node_rows)
    degree = e.select(F.col("kp_a").alias("kp_id")).unionByName(e.select(F.col("kp_b").alias("kp_id"))) \
        .groupBy("kp_id").agg(F.count(F.lit(1)).alias("degree"))
    return (node_rows.join(degree, "kp_id", "left")
            .select(F.lit(gid).alias("graph_id"), "kp_id", "name", "discipline", "popularity", "mean_difficulty",
                    F.coalesce("degree", F.lit(0)).cast("long").alias("degree"), F.lit(ctx.run_id).alias("run_id"),
                    F.lit(None).cast("string").alias("_reason"), F.lit(None).cast("string").alias("_detail")))


def edge_rows(ctx: StageContext, staged: DataFrame) -> DataFrame:
    """gold.kp_edges rows of this graph (recomputed from the pinned inputs, never collected)."""
    kps, seeds = ctx.inputs["kps"], ctx.inputs["seeds"]
    return edges(kps, seeds, nodes(kps, seeds)).select(
        F.lit(graph_id(ctx)).alias("graph_id"), "kp_a", "kp_b", "discipline", "cooccurrence", "pmi", "npmi",
        "strength", F.lit(ctx.run_id).alias("run_id"))


def graph_stats(ctx: StageContext, staged: DataFrame) -> None:
    r = staged.groupBy().agg(F.count(F.lit(1)).alias("kps"), F.sum("degree").alias("deg"),
                             F.sum((F.col("degree") == 0).cast("int")).alias("isolated")).first()
    ctx.stats.set("kp_graph.nodes", float(r["kps"] or 0))
    ctx.stats.set("kp_graph.edges", float((r["deg"] or 0) / 2))
    ctx.stats.set("kp_graph.isolated_nodes", float(r["isolated"] or 0))
    ctx.stats.tag("kp_graph.graph_id", graph_id(ctx))


STAGE = Stage(
    name="kp_graph",
    inputs={"kps": "silver.seed_kps", "seeds": "silver.seeds_annotated"},
    output="gold.kp_nodes",
    key=("kp_id",),
    mode="overwrite",  # a snapshot of the KP memberships: rebuilt whole, a new Delta version per run
    one_to_one=False,  # (seed, KP) rows in, KPs out
    transform=transform,
    derived=(Derived("gold.kp_edges", ("graph_id", "kp_a", "kp_b"), edge_rows),),
    summarize=graph_stats,
    sections=("linkqa",),
    enabled=lambda s: s.linkqa.enabled,
    description="LinkQA: KP graph (nodes: popularity, difficulty; edges: co-occurrence, PMI)",
)

"""dedup: bronze.seeds -> silver.seeds (+ quarantine.duplicates, silver.seed_clusters, LSH index).

Exact duplicates share ``seed_id`` (hash of normalised question + answer); near duplicates share
a MinHash LSH band (word-shingle MinHash, bands x rows from datasketch's optimiser) and, with
``verify``, an estimated Jaccard at or above the threshold. Pairs become clusters through
connected components computed in the DataFrame API (min-label propagation, checkpointed each
round), so no pair is ever collected to the driver. One member per cluster is kept by policy;
every other member is rejected with its representative and similarity, so each removal is
auditable.

Incremental: kept seeds are indexed in ``silver.seed_bands`` / ``silver.seed_signatures``. A run
sketches only the new seeds and matches them against that index; a seed kept by an earlier
run is never removed by a later one (it becomes the representative of its cluster).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from boostqa.stages import lsh
from boostqa.stages.base import Derived, Stage, StageContext

SEED_COLUMNS = ["seed_id", "seed_uid", "record_key", "source", "source_row_id", "question", "answer", "choices",
                "subject_hint", "lang", "source_weight"]


def connected_components(ctx: StageContext, edges: DataFrame, max_iterations: int) -> tuple[DataFrame, int]:
    """(node, cluster_id = smallest node id in its component) by min-label propagation.

    Each round every node takes the smallest label among itself and its neighbours; labels only
    decrease, so it stops when nothing changes (at most the component diameter + 1 rounds).
    Each round is checkpointed, so the plan never grows with the number of rounds.
    """
    both = edges.select(F.col("a").alias("u"), F.col("b").alias("v")).unionByName(
        edges.select(F.col("b").alias("u"), F.col("a").alias("v"))).distinct()
    both = ctx.checkpoint(both)
    labels = ctx.checkpoint(both.select(F.col("u").alias("node")).distinct().withColumn("label", F.col("node")))
    for i in range(1, max_iterations + 1):
        best = (both.join(labels.withColumnRenamed("node", "v"), "v")
                .groupBy(F.col("u").alias("node")).agg(F.min("label").alias("m")))
        new = ctx.checkpoint(labels.join(best, "node", "left")
                             .select("node", F.least("label", F.coalesce("m", "label")).alias("label")))
        changed = new.join(labels.withColumnRenamed("label", "old"), "node").where("label != old").limit(1).count()
        labels = new
        if not changed:
            return labels.withColumnRenamed("label", "cluster_id"), i
    raise RuntimeError(f"connected components did not converge in {max_iterations} rounds "
                       "(raise dedup.max_iterations)")


def _policy_order(ctx: StageContext) -> list:
    c = ctx.settings.dedup
    if c.keep == "source_priority":
        prio = F.create_map(*[x for i, s in enumerate(c.source_priority) for x in (F.lit(s), F.lit(i))])
        return [F.coalesce(prio[F.col("source")], F.lit(len(c.source_priority))).asc(), F.col("seed_uid").asc()]
    if c.keep == "longest_answer":
        return [F.coalesce(F.length("answer"), F.lit(0)).desc(), F.col("seed_uid").asc()]
    return [F.col("seed_uid").asc()]


def _edges(ctx: StageContext, sk: DataFrame, ex: DataFrame | None, bands: DataFrame | None,
           sigs: DataFrame) -> DataFrame:
    """Duplicate pairs (a = new seed, b = new or already-kept seed): same seed_id, or sharing an LSH
    band (and, with ``verify``, an estimated Jaccard at or above the threshold)."""
    cfg = ctx.settings.dedup
    w = Window.partitionBy("seed_id").orderBy("seed_uid")
    exact = (sk.withColumn("b", F.first("seed_uid").over(w)).where(F.col("b") != F.col("seed_uid"))
             .select(F.col("seed_uid").alias("a"), "b"))
    if ex is not None:
        exact = exact.unionByName(sk.join(ex.select("seed_id", F.col("seed_uid").alias("b")), "seed_id")
                                  .select(F.col("seed_uid").alias("a"), "b"))
    near = lsh.band_pairs(sk, bands).select(F.least("a", "b").alias("a"), F.greatest("a", "b").alias("b")).distinct()
    if cfg.verify:
        near = lsh.similarities(near, sigs).where(F.col("similarity") >= cfg.threshold).select("a", "b")
    return ctx.checkpoint(exact.unionByName(near).distinct())


def _clustered(ctx: StageContext, comps: DataFrame, new: DataFrame, ex: DataFrame | None,
               sigs: DataFrame) -> DataFrame:
    """Each clustered seed with its representative: a seed kept earlier wins, then the configured
    policy. A cluster whose representative was kept earlier keeps that seed's stored cluster_id,
    so members removed in different runs share one cluster_id with their representative."""
    members = comps.withColumnRenamed("node", "seed_uid")
    info = new.select("seed_uid", "source", "answer").withColumn("_earlier", F.lit(1)) \
        .withColumn("_old_cluster", F.lit(None).cast("string"))
    if ex is not None:
        info = info.unionByName(ex.select("seed_uid", "source", "answer", F.col("cluster_id").alias("_old_cluster"))
                                .withColumn("_earlier", F.lit(0)))
    rank = Window.partitionBy("cluster_id").orderBy(F.col("_earlier").asc(), *_policy_order(ctx))
    ranked = members.join(info, "seed_uid") \
        .withColumn("_rep", F.first("seed_uid").over(rank)) \
        .withColumn("_rep_source", F.first("source").over(rank)) \
        .withColumn("_rep_earlier", F.first("_earlier").over(rank) == 0) \
        .withColumn("cluster_size", F.count("*").over(Window.partitionBy("cluster_id"))) \
        .withColumn("cluster_id", F.coalesce(F.first("_old_cluster").over(rank), "cluster_id"))
    sims = lsh.similarities(ranked.where("seed_uid != _rep").select(F.col("seed_uid").alias("a"),
                                                                    F.col("_rep").alias("b")), sigs) \
        .select(F.col("a").alias("seed_uid"), "similarity")
    return ranked.select("seed_uid", "cluster_id", "cluster_size", "_rep", "_rep_source", "_rep_earlier") \
        .join(sims, "seed_uid", "left")


def transform(ctx: StageContext, seeds: DataFrame, bands: DataFrame | None = None,
              signatures: DataFrame | None = None) -> DataFrame:
    new = seeds.select(*[c for c in SEED_COLUMNS if c != "seed_id"])
    sk = ctx.checkpoint(lsh.sketches(new, ctx.settings.dedup))
    ex = ctx.existing.select("seed_uid", "seed_id", "source", "answer", "cluster_id") \
        if ctx.existing is not None else None
    sigs = lsh.signatures(sk, signatures)
    comps, rounds = connected_components(ctx, _edges(ctx, sk, ex, bands, sigs), ctx.settings.dedup.max_iterations)
    ctx.stats.set("cc_rounds", rounds)
    bands_n, rows_n = lsh.lsh_shape(ctx.settings.dedup)  # datasketch's choice for the threshold
    ctx.stats.set("lsh.bands", bands_n)
    ctx.stats.set("lsh.rows_per_band", rows_n)
    rep_ids = sk.select(F.col("seed_uid").alias("_rep"), F.col("seed_id").alias("_rep_seed_id"))
    if ex is not None:
        rep_ids = rep_ids.unionByName(ex.select(F.col("seed_uid").alias("_rep"), F.col("seed_id").alias("_rep_seed_id")))
    out = (new.join(sk, "seed_uid").join(_clustered(ctx, comps, new, ex, sigs), "seed_uid", "left")
           .join(rep_ids, "_rep", "left")
           .withColumn("cluster_id", F.coalesce("cluster_id", "seed_uid"))
           .withColumn("cluster_size", F.coalesce("cluster_size", F.lit(1)).cast("long")))
    removed = F.col("_rep").isNotNull() & (F.col("_rep") != F.col("seed_uid"))
    reason = F.when(removed & (F.col("_rep_seed_id") == F.col("seed_id")), "exact_duplicate") \
        .when(removed, "near_duplicate")
    sim = F.when(F.col("_rep_seed_id") == F.col("seed_id"), F.lit(1.0)).otherwise(F.col("similarity"))
    detail = F.when(removed, F.concat(F.lit("duplicate of seed "), F.col("_rep"), F.lit(" in cluster "),
                                      F.col("cluster_id"), F.lit(" (estimated Jaccard "),
                                      F.format_number(sim, 3), F.lit(")")))
    return out.select(*SEED_COLUMNS, "cluster_id", "cluster_size", F.lit(ctx.run_id).alias("run_id"),
                      F.col("minhash").alias("_minhash"), F.col("bands").alias("_bands"),
                      F.when(F.col("_rep").isNull(), F.col("seed_uid")).otherwise(F.col("_rep")).alias("_representative"),
                      F.when(F.col("_rep").isNull(), F.lit(1.0)).otherwise(sim).cast("double").alias("_similarity"),
                      reason.alias("_reason"), detail.alias("_detail"),
                      "_rep_seed_id", "_rep_source", F.coalesce("_rep_earlier", F.lit(False)).alias("_rep_earlier"))


def _clusters(ctx: StageContext, staged: DataFrame) -> DataFrame:
    rows = staged.where("cluster_size > 1").select(
        "cluster_id", "seed_uid", "seed_id", "source", F.col("_representative").alias("representative"),
        (F.col("_representative") == F.col("seed_uid")).alias("is_representative"),
        F.col("_similarity").alias("similarity"), F.col("_reason").alias("reason"), "run_id")
    # a representative kept by an earlier run is not in this batch: add its row (insert-only on
    # seed_uid, so a row it already has from an earlier cluster of the same id stays)
    earlier = staged.where("_rep_earlier").select(
        "cluster_id", F.col("_representative").alias("seed_uid"), F.col("_rep_seed_id").alias("seed_id"),
        F.col("_rep_source").alias("source"), F.col("_representative").alias("representative"),
        F.lit(True).alias("is_representative"), F.lit(1.0).alias("similarity"),
        F.lit(None).cast("string").alias("reason"), "run_id").distinct()
    return rows.unionByName(earlier)


STAGE = Stage(
    name="dedup",
    inputs={"seeds": "bronze.seeds", "bands": "silver.seed_bands", "signatures": "silver.seed_signatures"},
    optional_inputs=("bands", "signatures"),
    output="silver.seeds",
    rejects="quarantine.duplicates",
    key=("seed_uid",),
    reject_columns=("seed_uid", "seed_id", "source", "source_row_id", "cluster_id", "_representative",
                    "_similarity"),
    reads_output=True,
    whole=True,  # clusters span the whole batch: judge all pending seeds together
    derived=(Derived("silver.seed_clusters", ("seed_uid",), _clusters),
             Derived("silver.seed_bands", ("band", "band_hash", "seed_uid"),
                     lambda ctx, st: lsh.band_index(st, "seed_uid")),
             Derived("silver.seed_signatures", ("seed_uid",), lambda ctx, st: lsh.signature_index(st, "seed_uid"))),
    transform=transform,
    sections=("dedup",),
    description="exact + MinHash-LSH near-duplicate removal; clusters kept for audit",
)

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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import Derived, Stage, StageContext
from boostqa.text.minhash import MinHasher, band_hash_lists, lsh_params, signature_list_array, \
    signatures_from_list_array
from boostqa.text.ngrams import ngram_hashes
from boostqa.text.normalize import NormalizeOptions, content_hash_array, words_array

SKETCH_SCHEMA = T.StructType([T.StructField("seed_uid", T.StringType()), T.StructField("seed_id", T.StringType()),
                              T.StructField("minhash", T.ArrayType(T.IntegerType())),
                              T.StructField("bands", T.ArrayType(T.LongType()))])
SIM_SCHEMA = T.StructType([T.StructField("a", T.StringType()), T.StructField("b", T.StringType()),
                           T.StructField("similarity", T.DoubleType())])
_BATCH_ROWS = 4096
SEED_COLUMNS = ["seed_id", "seed_uid", "record_key", "source", "source_row_id", "question", "answer", "choices",
                "subject_hint", "lang", "source_weight"]


def lsh_shape(ctx: StageContext) -> tuple[int, int]:
    c = ctx.settings.dedup
    return lsh_params(c.threshold, c.num_perm, c.false_positive_weight, 1.0 - c.false_positive_weight)


def _sketcher(ctx: StageContext):
    """mapInArrow kernel: (seed_uid, question, answer) -> seed_id, MinHash signature, band hashes."""
    c = ctx.settings.dedup
    opts = NormalizeOptions(**c.normalize.model_dump())
    hasher, (bands, rows), n = MinHasher(c.num_perm, c.seed), lsh_shape(ctx), c.shingle_words

    def sketch(batches):
        for batch in batches:
            for start in range(0, batch.num_rows, _BATCH_ROWS):  # Sail ignores Arrow batch sizes
                b = batch.slice(start, _BATCH_ROWS)
                q, a = b.column("question"), b.column("answer")
                text = pc.binary_join_element_wise(q, pc.fill_null(a, ""), " ")
                sigs = hasher.signatures(ngram_hashes(words_array(text, opts), n))
                yield pa.RecordBatch.from_arrays(
                    [b.column("seed_uid"), content_hash_array(q, a, opts), signature_list_array(sigs),
                     band_hash_lists(sigs, bands, rows)], schema=pa.schema(
                        [("seed_uid", pa.string()), ("seed_id", pa.string()), ("minhash", pa.list_(pa.int32())),
                         ("bands", pa.list_(pa.int64()))]))

    return sketch


def _similarity(batches):
    """mapInArrow kernel: estimated Jaccard = share of equal MinHash slots, vectorised."""
    for b in batches:
        if b.num_rows == 0:
            continue
        sa, sb = signatures_from_list_array(b.column("sa")), signatures_from_list_array(b.column("sb"))
        sim = (sa == sb).mean(axis=1) if sa.size else np.zeros(b.num_rows)
        yield pa.RecordBatch.from_arrays([b.column("a"), b.column("b"), pa.array(sim, pa.float64())],
                                         names=["a", "b", "similarity"])


def _similarities(pairs: DataFrame, sigs: DataFrame) -> DataFrame:
    s = sigs.select("seed_uid", "minhash")
    joined = (pairs.join(s.withColumnRenamed("seed_uid", "a").withColumnRenamed("minhash", "sa"), "a")
              .join(s.withColumnRenamed("seed_uid", "b").withColumnRenamed("minhash", "sb"), "b"))
    return joined.select("a", "b", "sa", "sb").mapInArrow(_similarity, SIM_SCHEMA)


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


def transform(ctx: StageContext, seeds: DataFrame, bands: DataFrame | None = None,
              signatures: DataFrame | None = None, existing: DataFrame | None = None) -> DataFrame:
    cfg = ctx.settings.dedup
    new = seeds.select(*[c for c in SEED_COLUMNS if c != "seed_id"])
    sk = ctx.checkpoint(new.select("seed_uid", "question", "answer").mapInArrow(_sketcher(ctx), SKETCH_SCHEMA))
    ex = existing.select("seed_uid", "seed_id", "source", "answer", "cluster_id") if existing is not None else None

    # candidate pairs (a = new seed, b = new or already-kept seed)
    w = Window.partitionBy("seed_id").orderBy("seed_uid")
    exact = (sk.withColumn("b", F.first("seed_uid").over(w)).where(F.col("b") != F.col("seed_uid"))
             .select(F.col("seed_uid").alias("a"), "b"))
    if ex is not None:
        exact = exact.unionByName(sk.join(ex.select("seed_id", F.col("seed_uid").alias("b")), "seed_id")
                                  .select(F.col("seed_uid").alias("a"), "b"))
    new_bands = sk.select("seed_uid", F.posexplode("bands").alias("band", "band_hash"))
    index = new_bands if bands is None else new_bands.unionByName(bands.select("seed_uid", "band", "band_hash"))
    near = (new_bands.alias("x").join(index.alias("y"), ["band", "band_hash"])
            .where(F.col("x.seed_uid") != F.col("y.seed_uid"))
            .select(F.least("x.seed_uid", "y.seed_uid").alias("a"), F.greatest("x.seed_uid", "y.seed_uid").alias("b"))
            .distinct())
    all_sigs = sk.select("seed_uid", "minhash")
    if signatures is not None:
        all_sigs = all_sigs.unionByName(signatures.select("seed_uid", "minhash"))
    if cfg.verify:
        near = _similarities(near, all_sigs).where(F.col("similarity") >= cfg.threshold).select("a", "b")
    edges = ctx.checkpoint(exact.unionByName(near).distinct())

    comps, rounds = connected_components(ctx, edges, cfg.max_iterations)
    ctx.extra["cc_rounds"] = rounds

    # representative per cluster: a seed kept earlier wins, then the configured policy. A cluster
    # whose representative was kept earlier keeps that seed's stored cluster_id, so members
    # removed in different runs share one cluster_id with their representative
    members = comps.withColumnRenamed("node", "seed_uid")
    info = new.select("seed_uid", "source", "answer").withColumn("_earlier", F.lit(1)) \
        .withColumn("_old_cluster", F.lit(None).cast("string"))
    if ex is not None:
        info = info.unionByName(ex.select("seed_uid", "source", "answer", F.col("cluster_id").alias("_old_cluster"))
                                .withColumn("_earlier", F.lit(0)))
    ranked = members.join(info, "seed_uid")
    rank = Window.partitionBy("cluster_id").orderBy(F.col("_earlier").asc(), *_policy_order(ctx))
    ranked = ranked.withColumn("_rep", F.first("seed_uid").over(rank)) \
        .withColumn("_rep_source", F.first("source").over(rank)) \
        .withColumn("_rep_earlier", F.first("_earlier").over(rank) == 0) \
        .withColumn("cluster_size", F.count("*").over(Window.partitionBy("cluster_id"))) \
        .withColumn("cluster_id", F.coalesce(F.first("_old_cluster").over(rank), "cluster_id"))
    sims = _similarities(ranked.where("seed_uid != _rep").select(F.col("seed_uid").alias("a"), F.col("_rep").alias("b")),
                         all_sigs).select(F.col("a").alias("seed_uid"), "similarity")
    clustered = ranked.select("seed_uid", "cluster_id", "cluster_size", "_rep", "_rep_source", "_rep_earlier") \
        .join(sims, "seed_uid", "left")

    rep_ids = sk.select(F.col("seed_uid").alias("_rep"), F.col("seed_id").alias("_rep_seed_id"))
    if ex is not None:
        rep_ids = rep_ids.unionByName(ex.select(F.col("seed_uid").alias("_rep"), F.col("seed_id").alias("_rep_seed_id")))
    out = (new.join(sk, "seed_uid").join(clustered, "seed_uid", "left").join(rep_ids, "_rep", "left")
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


def _bands(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return staged.where(F.col("_outcome") == "kept").select(
        "seed_uid", F.posexplode("_bands").alias("band", "band_hash"))


def _signatures(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return staged.where(F.col("_outcome") == "kept").select("seed_uid", F.col("_minhash").alias("minhash"))


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
             Derived("silver.seed_bands", ("band", "band_hash", "seed_uid"), _bands),
             Derived("silver.seed_signatures", ("seed_uid",), _signatures)),
    transform=transform,
    config=lambda s: {"dedup": s.dedup.model_dump(),
                      "lsh_bands_rows": lsh_params(s.dedup.threshold, s.dedup.num_perm, s.dedup.false_positive_weight,
                                                   1.0 - s.dedup.false_positive_weight)},
    description="exact + MinHash-LSH near-duplicate removal; clusters kept for audit",
)

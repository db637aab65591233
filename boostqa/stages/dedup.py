"""dedup: bronze.seeds -> silver.seeds (+ quarantine.duplicates, silver.seed_clusters, LSH index).

Exact duplicates share ``seed_id`` (hash of normalised question + answer); near duplicates share
a MinHash LSH band (word-shingle MinHash, bands x rows from datasketch's optimiser) and, with
``verify``, an estimated Jaccard at or above the threshold. Pairs become clusters through
connected components computed in the DataFrame API (min-label propagation, checkpointed each
round), so no pair is ever collected to the driver. One member per cluster is kept by policy;
every other member is rejected with its representative and similarity, so each removal is
auditable.

Recall pass (``dedup.recall``): a copy with a few edited words keeps too few 5-word shingles
for the pass above (2-3 edits in a 40-word question: Jaccard 0.5-0.6). A second MinHash over
2-word shingles, banded at a low threshold, proposes candidates; each is verified with an exact
token-level similarity (2 * LCS / total words of the normalised texts) before it becomes an edge,
so unrelated texts that share common phrases stay apart. Texts shorter than ``recall.min_words``
words are left to the first pass (one edited word in a short question is a different question).
Removed rows record which detector matched them to their representative (``detector``: exact,
minhash, token, or transitive when they joined the cluster only through another member).

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


# recall-pass candidates share at least this many of the 64 bands (``dedup.recall.min_shared_bands``
# when the config has it): at 2-word-shingle Jaccard 0.55 (15 % word edits) P(>= 2 of 64 bands of
# 4 rows) = 0.98, at 0.2 (unrelated texts on common phrases) 0.005 instead of 0.10 for one band. On
# the 200k benchmark corpus one band gave ~8.9M band collisions (quadratic in the corpus) and an
# 11 GB verify join.
_RECALL_MIN_SHARED_BANDS = 2
# the recall bands are joined a quarter at a time (peak memory of the pair count; see lsh.band_pair_counts)
_RECALL_BAND_GROUPS = 4


def _recall_edges(ctx: StageContext, rsk: DataFrame, index: DataFrame | None, texts: DataFrame,
                  known: DataFrame) -> DataFrame:
    """Recall-pass pairs: sharing a short-shingle band, not already an edge, and verified by the
    exact token similarity."""
    cfg = ctx.settings.dedup
    if ctx.existing is not None:  # seeds kept while the pass was off have no recall bands yet
        missing = ctx.existing.select("seed_uid", "question", "answer")
        if index is not None:
            missing = missing.join(index.select("seed_uid").distinct(), "seed_uid", "left_anti")
        back = lsh.recall_sketches(missing, cfg).select("seed_uid", F.posexplode("recall_bands")
                                                        .alias("band", "band_hash"))
        index = back if index is None else index.select("seed_uid", "band", "band_hash").unionByName(back)
    min_bands = getattr(cfg.recall, "min_shared_bands", _RECALL_MIN_SHARED_BANDS)
    ctx.stats.set("recall.min_shared_bands", min_bands)
    cand = lsh.band_pair_counts(rsk.withColumnRenamed("recall_bands", "bands"), index, min_bands,
                                _RECALL_BAND_GROUPS, ctx.checkpoint) \
        .select("a", "b").join(known, ["a", "b"], "left_anti")
    cand = ctx.checkpoint(lsh.token_similarities(cand, texts, cfg))
    r = cand.agg(F.count("*").alias("n"), F.sum((F.col("token_similarity") >= cfg.recall.token_similarity)
                                                 .cast("long")).alias("v")).first()
    ctx.stats.set("recall.candidates", r["n"] or 0)
    ctx.stats.set("recall.verified", r["v"] or 0)
    return cand.where(F.col("token_similarity") >= cfg.recall.token_similarity).select("a", "b")


def _edges(ctx: StageContext, sk: DataFrame, ex: DataFrame | None, bands: DataFrame | None,
           sigs: DataFrame, rsk: DataFrame | None = None, recall_bands: DataFrame | None = None,
           texts: DataFrame | None = None) -> DataFrame:
    """Duplicate pairs (a = new seed, b = new or already-kept seed): same seed_id, or sharing an LSH
    band (and, with ``verify``, an estimated Jaccard at or above the threshold), or (recall pass)
    sharing a short-shingle band with a token similarity at or above ``recall.token_similarity``."""
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
    edges = ctx.checkpoint(exact.unionByName(near).distinct())
    if rsk is None:
        return edges
    known = edges.select(F.least("a", "b").alias("a"), F.greatest("a", "b").alias("b"))
    return ctx.checkpoint(edges.unionByName(_recall_edges(ctx, rsk, recall_bands, texts, known)).distinct())


def _clustered(ctx: StageContext, comps: DataFrame, new: DataFrame, ex: DataFrame | None,
               sigs: DataFrame, texts: DataFrame | None = None) -> DataFrame:
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
    ranked = ctx.checkpoint(ranked)  # the clustered minority; read three times below, ranked once
    pairs = ranked.where("seed_uid != _rep").select(F.col("seed_uid").alias("a"), F.col("_rep").alias("b"))
    sims = lsh.similarities(pairs, sigs).select(F.col("a").alias("seed_uid"), "similarity")
    out = ranked.select("seed_uid", "cluster_id", "cluster_size", "_rep", "_rep_source", "_rep_earlier") \
        .join(sims, "seed_uid", "left")
    if texts is None:
        return out.withColumn("token_similarity", F.lit(None).cast("double"))
    tsims = lsh.token_similarities(pairs, texts, ctx.settings.dedup) \
        .select(F.col("a").alias("seed_uid"), "token_similarity")
    return out.join(tsims, "seed_uid", "left")


def transform(ctx: StageContext, seeds: DataFrame, bands: DataFrame | None = None,
              signatures: DataFrame | None = None, recall_bands: DataFrame | None = None) -> DataFrame:
    cfg = ctx.settings.dedup
    new = seeds.select(*[c for c in SEED_COLUMNS if c != "seed_id"])
    # one pass over the text: sketches (and recall bands) with the seed columns carried along, so
    # the output needs no join of the wide rows with their wide sketches
    rows = ctx.checkpoint(lsh.sketches(new, cfg, recall=cfg.recall.enabled, passthrough=tuple(new.columns)))
    if not cfg.recall.enabled:
        rows = rows.withColumn("recall_bands", F.lit(None).cast("array<bigint>"))
    sk = rows.select("seed_uid", "seed_id", "minhash", "bands")
    ex = ctx.existing.select("seed_uid", "seed_id", "source", "answer", "cluster_id") \
        if ctx.existing is not None else None
    sigs = lsh.signatures(sk, signatures)
    rsk = texts = None
    if cfg.recall.enabled:
        rsk = rows.select("seed_uid", "recall_bands")
        texts = rows.select("seed_uid", "question", "answer")
        if ctx.existing is not None:
            texts = texts.unionByName(ctx.existing.select("seed_uid", "question", "answer"))
        rb, rr = lsh.recall_shape(cfg)
        ctx.stats.set("recall.bands", rb)
        ctx.stats.set("recall.rows_per_band", rr)
    comps, rounds = connected_components(ctx, _edges(ctx, sk, ex, bands, sigs, rsk, recall_bands, texts),
                                         cfg.max_iterations)
    ctx.stats.set("cc_rounds", rounds)
    bands_n, rows_n = lsh.lsh_shape(ctx.settings.dedup)  # datasketch's choice for the threshold
    ctx.stats.set("lsh.bands", bands_n)
    ctx.stats.set("lsh.rows_per_band", rows_n)
    rep_ids = sk.select(F.col("seed_uid").alias("_rep"), F.col("seed_id").alias("_rep_seed_id"))
    if ex is not None:
        rep_ids = rep_ids.unionByName(ex.select(F.col("seed_uid").alias("_rep"), F.col("seed_id").alias("_rep_seed_id")))
    # the clustered minority with its representative, materialised narrow before it meets the wide rows
    info = ctx.checkpoint(_clustered(ctx, comps, rows.select("seed_uid", "source", "answer"), ex, sigs, texts)
                          .join(rep_ids, "_rep", "left"))
    out = (rows.join(info, "seed_uid", "left")
           .withColumn("cluster_id", F.coalesce("cluster_id", "seed_uid"))
           .withColumn("cluster_size", F.coalesce("cluster_size", F.lit(1)).cast("long")))
    removed = F.col("_rep").isNotNull() & (F.col("_rep") != F.col("seed_uid"))
    reason = F.when(removed & (F.col("_rep_seed_id") == F.col("seed_id")), "exact_duplicate") \
        .when(removed, "near_duplicate")
    exact = F.col("_rep_seed_id") == F.col("seed_id")
    sim = F.when(exact, F.lit(1.0)).otherwise(F.col("similarity"))
    tsim = F.when(exact, F.lit(1.0)).otherwise(F.col("token_similarity"))
    detector = F.when(~removed, F.lit(None)).when(exact, "exact") \
        .when(F.col("similarity") >= cfg.threshold, "minhash") \
        .when(F.col("token_similarity") >= cfg.recall.token_similarity, "token").otherwise("transitive")
    detail = F.when(removed, F.concat(F.lit("duplicate of seed "), F.col("_rep"), F.lit(" in cluster "),
                                      F.col("cluster_id"), F.lit(" (estimated Jaccard "),
                                      F.format_number(sim, 3),
                                      F.when(F.col("token_similarity").isNotNull() & ~exact,
                                             F.concat(F.lit(", token similarity "),
                                                      F.format_number("token_similarity", 3)))
                                      .otherwise(F.lit("")),
                                      F.lit("; "), detector, F.lit(")")))
    return out.select(*SEED_COLUMNS, "cluster_id", "cluster_size", F.lit(ctx.run_id).alias("run_id"),
                      F.col("minhash").alias("_minhash"), F.col("bands").alias("_bands"),
                      F.when(F.col("_rep").isNull(), F.col("seed_uid")).otherwise(F.col("_rep")).alias("_representative"),
                      F.when(F.col("_rep").isNull(), F.lit(1.0)).otherwise(sim).cast("double").alias("_similarity"),
                      reason.alias("_reason"), detail.alias("_detail"), detector.alias("_detector"),
                      tsim.cast("double").alias("_token_similarity"), F.col("recall_bands").alias("_recall_bands"),
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
    inputs={"seeds": "bronze.seeds", "bands": "silver.seed_bands", "signatures": "silver.seed_signatures",
            "recall_bands": "silver.seed_recall_bands"},
    optional_inputs=("bands", "signatures", "recall_bands"),
    output="silver.seeds",
    rejects="quarantine.duplicates",
    key=("seed_uid",),
    reject_columns=("seed_uid", "seed_id", "source", "source_row_id", "cluster_id", "_representative",
                    "_similarity", "_token_similarity", "_detector"),
    reads_output=True,
    whole=True,  # clusters span the whole batch: judge all pending seeds together
    derived=(Derived("silver.seed_clusters", ("seed_uid",), _clusters),
             Derived("silver.seed_bands", ("band", "band_hash", "seed_uid"),
                     lambda ctx, st: lsh.band_index(st, "seed_uid")),
             Derived("silver.seed_signatures", ("seed_uid",), lambda ctx, st: lsh.signature_index(st, "seed_uid")),
             Derived("silver.seed_recall_bands", ("band", "band_hash", "seed_uid"),
                     lambda ctx, st: lsh.recall_index(st.where(F.col("_recall_bands").isNotNull()), "seed_uid"))),
    transform=transform,
    sections=("dedup",),
    description="exact + MinHash-LSH near-duplicate removal; clusters kept for audit",
)

"""MinHash LSH on Spark, shared by seed dedup and the gate's near-copy check (no stage here).

``sketches`` turns (id, question, answer) rows into a content hash, a MinHash signature and LSH
band hashes (Spark-free kernels in boostqa/text, vectorised in mapInArrow); ``band_pairs`` finds
rows sharing a band with a new row (explode + join on a 64-bit hash of (band, band hash));
``similarities`` estimates their Jaccard from the signatures.
"""

from __future__ import annotations

from functools import reduce

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.text.minhash import EMPTY, MinHasher, band_hash_lists, lsh_params, signature_list_array, \
    signatures_from_list_array
from boostqa.text.ngrams import list_parts, ngram_hashes, token_similarity
from boostqa.text.normalize import NormalizeOptions, content_hash_array, words_array

SKETCH_SCHEMA = T.StructType([T.StructField("seed_uid", T.StringType()), T.StructField("seed_id", T.StringType()),
                              T.StructField("minhash", T.ArrayType(T.IntegerType())),
                              T.StructField("bands", T.ArrayType(T.LongType()))])
SIM_SCHEMA = T.StructType([T.StructField("a", T.StringType()), T.StructField("b", T.StringType()),
                           T.StructField("similarity", T.DoubleType())])
_BATCH_ROWS = 4096


def lsh_shape(cfg) -> tuple[int, int]:
    """(bands, rows per band) for ``dedup``'s threshold and permutations, from datasketch's optimiser."""
    return lsh_params(cfg.threshold, cfg.num_perm, cfg.false_positive_weight, 1.0 - cfg.false_positive_weight)


def _sketcher(cfg, recall: bool, passthrough: tuple[str, ...]):
    """mapInArrow kernel: (seed_uid, question, answer, *passthrough) -> seed_id, MinHash signature,
    band hashes (with ``recall``: the recall pass's band hashes too), passthrough columns as they
    came in."""
    opts = NormalizeOptions(**cfg.normalize.model_dump())
    hasher, (bands, rows), n = MinHasher(cfg.num_perm, cfg.seed), lsh_shape(cfg), cfg.shingle_words
    recall_kernel = _recall_kernel(cfg) if recall else None
    names = ["seed_uid", "seed_id", "minhash", "bands"] + (["recall_bands"] if recall else []) + list(passthrough)

    def sketch(batches):
        for batch in batches:
            for start in range(0, batch.num_rows, _BATCH_ROWS):  # Sail ignores Arrow batch sizes
                b = batch.slice(start, _BATCH_ROWS)
                q, a = b.column("question"), b.column("answer")
                text = pc.binary_join_element_wise(q, pc.fill_null(a, ""), " ")
                words = words_array(text, opts)
                sigs = hasher.signatures(ngram_hashes(words, n))
                cols = [b.column("seed_uid"), content_hash_array(q, a, opts), signature_list_array(sigs),
                        band_hash_lists(sigs, bands, rows)]
                if recall_kernel is not None:  # same words unless a question is null (then "" + answer)
                    cols.append(recall_kernel(b, words if q.null_count == 0 else None))
                yield pa.RecordBatch.from_arrays(cols + [b.column(c) for c in passthrough], names=names)

    return sketch


def sketches(rows: DataFrame, cfg, recall: bool = False, passthrough: tuple[str, ...] = ()) -> DataFrame:
    """(seed_uid, question, answer) rows -> SKETCH_SCHEMA, with the ``dedup`` settings ``cfg``;
    ``recall`` adds the recall pass's ``recall_bands`` and ``passthrough`` carries other columns of
    ``rows`` along, so a caller needing both has them in one pass over the text, with no join."""
    passthrough = tuple(c for c in passthrough if c not in ("seed_uid", "seed_id"))
    fields = list(SKETCH_SCHEMA.fields) + ([RECALL_SCHEMA["recall_bands"]] if recall else []) \
        + [rows.schema[c] for c in passthrough]
    cols = ["seed_uid", "question", "answer"] + [c for c in passthrough if c not in ("question", "answer")]
    return rows.select(*cols).mapInArrow(_sketcher(cfg, recall, passthrough), T.StructType(fields))


def _hashed_bands(sk: DataFrame, index: DataFrame | None) -> tuple[DataFrame, DataFrame, DataFrame]:
    """The two sides of a band self-join on 64-bit keys: the sketched rows' bands (x =
    xxhash64(seed_uid), band, band_hash), every band row (y, band, band_hash, new = sketched, not
    indexed) and every seed_uid seen, to name the pairs afterwards (``_named``)."""
    new_bands = sk.select(F.xxhash64("seed_uid").alias("x"), F.posexplode("bands").alias("band", "band_hash"))
    ids = sk.select("seed_uid")
    pool = new_bands.select(F.col("x").alias("y"), "band", "band_hash", F.lit(True).alias("new"))
    if index is not None:
        old = index.select("seed_uid", "band", "band_hash")
        pool = pool.unionByName(old.select(F.xxhash64("seed_uid").alias("y"), "band", "band_hash",
                                           F.lit(False).alias("new")))
        ids = ids.unionByName(old.select("seed_uid"))
    return new_bands, pool, ids


def _bucket_keyed(df: DataFrame) -> DataFrame:
    """(band, band_hash) -> k = xxhash64 of both: the join key of a band self-join."""
    return df.select("*", F.xxhash64("band", "band_hash").alias("k")).drop("band", "band_hash")


def _named(pairs: DataFrame, ids: DataFrame) -> DataFrame:
    """Hashed pairs (x, y, ...) with sx, sy: the seed_uids they stand for; never a row with itself."""
    ids = ids.distinct().select("seed_uid", F.xxhash64("seed_uid").alias("h"))
    return (pairs.join(ids.select(F.col("h").alias("x"), F.col("seed_uid").alias("sx")), "x")
            .join(ids.select(F.col("h").alias("y"), F.col("seed_uid").alias("sy")), "y")
            .where(F.col("sx") != F.col("sy")))


def band_pairs(sk: DataFrame, index: DataFrame | None) -> DataFrame:
    """(a = a sketched row, b = another sketched row or an indexed one) sharing an LSH band.

    The self-join runs on 64-bit keys, not strings, as in ``band_pair_counts``; the few pairs found
    get their ids back by two joins with the id list. On the 200k benchmark corpus (2.6M band rows)
    joining the strings held 0.39 GB above the resting level for the main pass's edge step. A
    collision of two 64-bit keys (about n^2 / 2^64) can only add a candidate pair, which
    verification judges, or lose the one pair whose ids collide."""
    new_bands, pool, ids = _hashed_bands(sk, index)
    pairs = _bucket_keyed(new_bands).join(_bucket_keyed(pool), "k").where(F.col("x") != F.col("y")) \
        .select("x", "y").distinct()
    return _named(pairs, ids).select(F.col("sx").alias("a"), F.col("sy").alias("b")).distinct()


def band_pair_counts(sk: DataFrame, index: DataFrame | None, min_shared: int = 1, groups: int = 1,
                     checkpoint=lambda df: df) -> DataFrame:
    """(a, b, shared): unordered pairs (a < b) of a sketched row and another sketched or indexed
    row sharing at least ``min_shared`` LSH bands, with the number they share. At a low threshold
    a single shared band is mostly chance (unrelated texts on common phrases, a count that grows
    with the square of the corpus); true near copies share several.

    Memory: the self-join runs on 64-bit keys, not strings (a row's id is xxhash64(seed_uid), a
    bucket xxhash64(band, band hash)); each pair of sketched rows is produced once (x < y), not in
    both orders; and with ``groups`` > 1 the bands are joined a group at a time, each group's pair
    counts materialised by ``checkpoint`` before they are summed, and summed a slice of ``x`` at a
    time (each slice checkpointed), so no hash table holds all colliding pairs. On the 200k benchmark
    corpus (12.8M band rows, ~9M colliding pairs) the join's peak fell from 3.9 GB to 1.4 GB with
    the groups; with the slices the summation peaks at 0.86 GB instead of lifting the verification
    step that follows it to 1.32 GB (now 1.17 GB, profiled in-process RSS). A hash collision can
    only add a candidate pair, and every candidate is verified exactly afterwards."""
    new_bands, pool, ids = _hashed_bands(sk, index)
    parts = []
    for g in range(groups):
        def bucket(df):
            return _bucket_keyed(df.where(F.col("band") % groups == g))
        # a pair of new rows once (x < y); a new row and an indexed one in the only order they meet
        parts.append(checkpoint(bucket(new_bands).join(bucket(pool), "k")
                                .where(~F.col("new") | (F.col("x") < F.col("y")))
                                .groupBy("x", "y").agg(F.count("*").alias("shared"))))
    counts = parts[0]
    for p in parts[1:]:
        counts = counts.unionByName(p)
    if groups > 1:  # summed a slice of rows at a time too: all colliding pairs in one hash table was the next peak
        counts = reduce(DataFrame.unionByName, [
            checkpoint(counts.where(F.pmod(F.col("x"), F.lit(groups)) == s).groupBy("x", "y")
                       .agg(F.sum("shared").alias("shared")).where(F.col("shared") >= min_shared))
            for s in range(groups)])
    else:
        counts = counts.where(F.col("shared") >= min_shared)
    return _named(counts, ids).groupBy(F.least("sx", "sy").alias("a"), F.greatest("sx", "sy").alias("b")) \
        .agg(F.max("shared").alias("shared"))


def signatures(sk: DataFrame, stored: DataFrame | None) -> DataFrame:
    """(seed_uid, minhash) of the sketched rows and of the stored index."""
    sigs = sk.select("seed_uid", "minhash")
    return sigs if stored is None else sigs.unionByName(stored.select("seed_uid", "minhash"))


def _similarity(batches):
    """mapInArrow kernel: estimated Jaccard = share of equal MinHash slots, vectorised."""
    for b in batches:
        if b.num_rows == 0:
            continue
        sa, sb = signatures_from_list_array(b.column("sa")), signatures_from_list_array(b.column("sb"))
        sim = (sa == sb).mean(axis=1) if sa.size else np.zeros(b.num_rows)
        yield pa.RecordBatch.from_arrays([b.column("a"), b.column("b"), pa.array(sim, pa.float64())],
                                         names=["a", "b", "similarity"])


def similarities(pairs: DataFrame, sigs: DataFrame) -> DataFrame:
    """(a, b) pairs -> (a, b, similarity): the estimated Jaccard of their signatures."""
    s = sigs.select("seed_uid", "minhash")
    joined = (pairs.join(s.withColumnRenamed("seed_uid", "a").withColumnRenamed("minhash", "sa"), "a")
              .join(s.withColumnRenamed("seed_uid", "b").withColumnRenamed("minhash", "sb"), "b"))
    return joined.select("a", "b", "sa", "sb").mapInArrow(_similarity, SIM_SCHEMA)


def band_index(staged: DataFrame, id_column: str, column: str = "_bands") -> DataFrame:
    """The persistent LSH index rows (seed_uid, band, band_hash) of a chunk's kept rows."""
    return staged.where(F.col("_outcome") == "kept").select(F.col(id_column).alias("seed_uid"),
                                                            F.posexplode(column).alias("band", "band_hash"))


# ---------------------------------------------------------------- the recall pass (dedup.recall)
# A copy with a few edited words loses most of its 5-word shingles (2 edits in 40 words: Jaccard
# ~0.55), so the main pass misses it. The recall pass bands a second MinHash over *short*
# shingles (2 words by default: the same 2 edits keep ~0.8 of them) at a low threshold, which
# finds those pairs, and verifies every candidate with an exact token-level similarity (2 * LCS /
# total words), which unrelated texts sharing common phrases do not reach.

RECALL_SCHEMA = T.StructType([T.StructField("seed_uid", T.StringType()),
                              T.StructField("recall_bands", T.ArrayType(T.LongType()))])
TOKEN_SIM_SCHEMA = T.StructType([T.StructField("a", T.StringType()), T.StructField("b", T.StringType()),
                                 T.StructField("token_similarity", T.DoubleType())])
NO_BAND = -1  # index row of a text too short for the recall pass: never equal to a real band number


def recall_shape(cfg) -> tuple[int, int]:
    """(bands, rows per band) of the recall pass, from datasketch's optimiser."""
    r = cfg.recall
    return lsh_params(r.threshold, r.num_perm, r.false_positive_weight, 1.0 - r.false_positive_weight)


def _doc_text(b: pa.RecordBatch, q: str = "question", a: str = "answer") -> pa.Array:
    return pc.binary_join_element_wise(pc.fill_null(b.column(q), ""), pc.fill_null(b.column(a), ""), " ")


def _recall_kernel(cfg):
    """(batch with question, answer) -> recall-pass band hashes ([] when the text has fewer than
    ``recall.min_words`` words)."""
    opts, r = NormalizeOptions(**cfg.normalize.model_dump()), cfg.recall
    hasher, (bands, rows) = MinHasher(r.num_perm, cfg.seed + 1), recall_shape(cfg)

    def kernel(b: pa.RecordBatch, words: pa.Array | None = None) -> pa.Array:
        """``words``: the batch's words of question + " " + answer when the caller has them."""
        if words is None:
            words = words_array(_doc_text(b), opts)
        offs, _, _ = list_parts(words)
        sigs = hasher.signatures(ngram_hashes(words, r.shingle_words))
        sigs[np.diff(offs) < r.min_words] = EMPTY  # -> no bands
        return band_hash_lists(sigs, bands, rows)

    return kernel


def _recall_sketcher(cfg):
    """mapInArrow kernel: (seed_uid, question, answer) -> (seed_uid, recall_bands)."""
    kernel = _recall_kernel(cfg)
    schema = pa.schema([("seed_uid", pa.string()), ("recall_bands", pa.list_(pa.int64()))])

    def sketch(batches):
        for batch in batches:
            for start in range(0, batch.num_rows, _BATCH_ROWS):
                b = batch.slice(start, _BATCH_ROWS)
                yield pa.RecordBatch.from_arrays([b.column("seed_uid"), kernel(b)], schema=schema)

    return sketch


def recall_sketches(rows: DataFrame, cfg) -> DataFrame:
    """(seed_uid, question, answer) rows -> (seed_uid, recall_bands), with the ``dedup`` settings."""
    return rows.select("seed_uid", "question", "answer").mapInArrow(_recall_sketcher(cfg), RECALL_SCHEMA)


def recall_index(staged: DataFrame, id_column: str) -> DataFrame:
    """Index rows (seed_uid, band, band_hash) of the recall pass for a chunk's kept rows; a text
    too short for the pass gets one (NO_BAND, 0) row, so it is known to be indexed."""
    kept = staged.where(F.col("_outcome") == "kept").select(
        F.col(id_column).alias("seed_uid"),
        F.when(F.size("_recall_bands") > 0, F.col("_recall_bands"))
        .otherwise(F.array(F.lit(0).cast("long"))).alias("_b"),
        (F.size("_recall_bands") > 0).alias("_has"))
    return kept.select("seed_uid", F.posexplode("_b").alias("band", "band_hash"), "_has") \
        .withColumn("band", F.when(F.col("_has"), F.col("band")).otherwise(F.lit(NO_BAND))).drop("_has")


# pairs per slice of the token-similarity kernel: its words become Python lists (two texts of ~50
# words per pair); a whole 8,192-row batch made ~800k str objects per UDF thread
_TOKEN_SIM_ROWS = 1024


def _token_sim_kernel(opts: NormalizeOptions):
    def kernel(batches):
        for batch in batches:
            for start in range(0, batch.num_rows, _TOKEN_SIM_ROWS):
                b = batch.slice(start, _TOKEN_SIM_ROWS)
                wa = words_array(_doc_text(b, "qa", "aa"), opts).to_pylist()
                wb = words_array(_doc_text(b, "qb", "ab"), opts).to_pylist()
                sim = [token_similarity(x or [], y or []) for x, y in zip(wa, wb)]
                yield pa.RecordBatch.from_arrays([b.column("a"), b.column("b"), pa.array(sim, pa.float64())],
                                                 names=["a", "b", "token_similarity"])

    return kernel


def token_similarities(pairs: DataFrame, texts: DataFrame, cfg) -> DataFrame:
    """(a, b) pairs + (seed_uid, question, answer) texts -> (a, b, token_similarity): 2 * LCS /
    (words a + words b) of the normalised texts, exact (not estimated)."""
    t = texts.select("seed_uid", "question", "answer")
    joined = (pairs.select("a", "b")
              .join(t.select(F.col("seed_uid").alias("a"), F.col("question").alias("qa"),
                             F.col("answer").alias("aa")), "a")
              .join(t.select(F.col("seed_uid").alias("b"), F.col("question").alias("qb"),
                             F.col("answer").alias("ab")), "b"))
    opts = NormalizeOptions(**cfg.normalize.model_dump())
    return joined.select("a", "b", "qa", "aa", "qb", "ab").mapInArrow(_token_sim_kernel(opts), TOKEN_SIM_SCHEMA)


def signature_index(staged: DataFrame, id_column: str) -> DataFrame:
    """The stored signatures (seed_uid, minhash) of a chunk's kept rows."""
    return staged.where(F.col("_outcome") == "kept").select(F.col(id_column).alias("seed_uid"),
                                                            F.col("_minhash").alias("minhash"))

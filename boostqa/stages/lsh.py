"""MinHash LSH on Spark, shared by seed dedup and the gate's near-copy check (no stage here).

``sketches`` turns (id, question, answer) rows into a content hash, a MinHash signature and LSH
band hashes (Spark-free kernels in boostqa/text, vectorised in mapInArrow); ``band_pairs`` finds
rows sharing a band with a new row (explode + join on (band, band hash)); ``similarities``
estimates their Jaccard from the signatures.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

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


def lsh_shape(cfg) -> tuple[int, int]:
    """(bands, rows per band) for ``dedup``'s threshold and permutations, from datasketch's optimiser."""
    return lsh_params(cfg.threshold, cfg.num_perm, cfg.false_positive_weight, 1.0 - cfg.false_positive_weight)


def _sketcher(cfg):
    """mapInArrow kernel: (seed_uid, question, answer) -> seed_id, MinHash signature, band hashes."""
    opts = NormalizeOptions(**cfg.normalize.model_dump())
    hasher, (bands, rows), n = MinHasher(cfg.num_perm, cfg.seed), lsh_shape(cfg), cfg.shingle_words
    schema = pa.schema([("seed_uid", pa.string()), ("seed_id", pa.string()), ("minhash", pa.list_(pa.int32())),
                        ("bands", pa.list_(pa.int64()))])

    def sketch(batches):
        for batch in batches:
            for start in range(0, batch.num_rows, _BATCH_ROWS):  # Sail ignores Arrow batch sizes
                b = batch.slice(start, _BATCH_ROWS)
                q, a = b.column("question"), b.column("answer")
                text = pc.binary_join_element_wise(q, pc.fill_null(a, ""), " ")
                sigs = hasher.signatures(ngram_hashes(words_array(text, opts), n))
                yield pa.RecordBatch.from_arrays(
                    [b.column("seed_uid"), content_hash_array(q, a, opts), signature_list_array(sigs),
                     band_hash_lists(sigs, bands, rows)], schema=schema)

    return sketch


def sketches(rows: DataFrame, cfg) -> DataFrame:
    """(seed_uid, question, answer) rows -> SKETCH_SCHEMA, with the ``dedup`` settings ``cfg``."""
    return rows.select("seed_uid", "question", "answer").mapInArrow(_sketcher(cfg), SKETCH_SCHEMA)


def band_pairs(sk: DataFrame, index: DataFrame | None) -> DataFrame:
    """(a = a sketched row, b = another sketched row or an indexed one) sharing an LSH band."""
    new_bands = sk.select("seed_uid", F.posexplode("bands").alias("band", "band_hash"))
    pool = new_bands if index is None else new_bands.unionByName(index.select("seed_uid", "band", "band_hash"))
    return (new_bands.alias("x").join(pool.alias("y"), ["band", "band_hash"])
            .where(F.col("x.seed_uid") != F.col("y.seed_uid"))
            .select(F.col("x.seed_uid").alias("a"), F.col("y.seed_uid").alias("b")).distinct())


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


def band_index(staged: DataFrame, id_column: str) -> DataFrame:
    """The persistent LSH index rows (seed_uid, band, band_hash) of a chunk's kept rows."""
    return staged.where(F.col("_outcome") == "kept").select(F.col(id_column).alias("seed_uid"),
                                                            F.posexplode("_bands").alias("band", "band_hash"))


def signature_index(staged: DataFrame, id_column: str) -> DataFrame:
    """The stored signatures (seed_uid, minhash) of a chunk's kept rows."""
    return staged.where(F.col("_outcome") == "kept").select(F.col(id_column).alias("seed_uid"),
                                                            F.col("_minhash").alias("minhash"))

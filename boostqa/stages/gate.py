"""gate: silver.synth_refined -> gold.boostqa (+ quarantine.synth).

The last line of defence before training data: length and format checks; exact and near
duplicates against the seeds (a synthesiser that copies its seed adds nothing) and against other
synthesised QA; and decontamination of the OUTPUTS with the same detectors as the seeds (a
generator can regenerate a benchmark item it memorised). Kept rows get their exact token count
in the training format and their lineage (run ids, models, prompt versions).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from boostqa.stages import decontam, dedup
from boostqa.stages.base import Derived, Stage, StageContext
from boostqa.stages.training import tokens_column
from boostqa.stages.synth import SYNTH_REJECTS



def _near_pairs(ctx: StageContext, sk: DataFrame, index: DataFrame | None, sigs: DataFrame | None) -> DataFrame:
    """(a = new qa, b = the other side) pairs sharing an LSH band with estimated Jaccard >= threshold."""
    new_bands = sk.select("seed_uid", F.posexplode("bands").alias("band", "band_hash"))
    pool = new_bands if index is None else new_bands.unionByName(index.select("seed_uid", "band", "band_hash"))
    pairs = (new_bands.alias("x").join(pool.alias("y"), ["band", "band_hash"])
             .where(F.col("x.seed_uid") != F.col("y.seed_uid"))
             .select(F.col("x.seed_uid").alias("a"), F.col("y.seed_uid").alias("b")).distinct())
    all_sigs = sk.select("seed_uid", "minhash")
    if sigs is not None:
        all_sigs = all_sigs.unionByName(sigs.select("seed_uid", "minhash"))
    return dedup._similarities(pairs, all_sigs).where(F.col("similarity") >= ctx.settings.dedup.threshold)


def transform(ctx: StageContext, qa: DataFrame, seeds: DataFrame, bench: DataFrame,
              seed_bands: DataFrame | None = None, seed_sigs: DataFrame | None = None,
              vectors: DataFrame | None = None, synth_bands: DataFrame | None = None,
              synth_sigs: DataFrame | None = None, existing: DataFrame | None = None) -> DataFrame:
    g = ctx.settings.gate
    rows = qa.select("qa_id", "question", "answer")
    sk = ctx.checkpoint(rows.withColumnRenamed("qa_id", "seed_uid").mapInArrow(dedup._sketcher(ctx),
                                                                               dedup.SKETCH_SCHEMA))
    sk_q = sk.withColumnRenamed("seed_uid", "qa_id")

    # exact copies: of a seed, of a QA already in gold, of another QA in this batch (smallest id kept)
    first = Window.partitionBy("seed_id").orderBy("qa_id")
    exact = sk_q.select("qa_id", "seed_id", F.first("qa_id").over(first).alias("_first")) \
        .join(seeds.select("seed_id", F.col("seed_uid").alias("_seed_copy")).dropDuplicates(["seed_id"]),
              "seed_id", "left")
    if existing is not None:
        gold_ids = existing.select("qa_id", "question", "answer").withColumnRenamed("qa_id", "seed_uid") \
            .mapInArrow(dedup._sketcher(ctx), dedup.SKETCH_SCHEMA).select("seed_id", F.col("seed_uid").alias("_gold_copy"))
        exact = exact.join(gold_ids.dropDuplicates(["seed_id"]), "seed_id", "left")
    else:
        exact = exact.withColumn("_gold_copy", F.lit(None).cast("string"))

    # near copies: of a seed (the dedup index), of other synthesised QA (kept ones, and this batch)
    near_seed = _near_pairs(ctx, sk, seed_bands, seed_sigs).join(
        (seed_bands.select(F.col("seed_uid").alias("b")).distinct() if seed_bands is not None
         else ctx.spark.createDataFrame([], "b string")), "b") \
        .groupBy(F.col("a").alias("qa_id")).agg(F.min("b").alias("_near_seed"), F.max("similarity").alias("_near_sim"))
    near_synth = _near_pairs(ctx, sk, synth_bands, synth_sigs)
    batch = rows.select(F.col("qa_id").alias("b"))
    near_synth = near_synth.join(batch, "b", "left_anti").unionByName(   # kept earlier: always wins
        near_synth.join(batch, "b").where(F.col("b") < F.col("a")))       # this batch: the smaller id wins
    near_synth = near_synth.groupBy(F.col("a").alias("qa_id")).agg(F.min("b").alias("_near_synth"),
                                                                     F.max("similarity").alias("_synth_sim"))

    contaminated = decontam.transform(ctx, qa.select("qa_id", "question", "answer"), bench, vectors,
                                      key="qa_id", question="question", answer="answer", choices=None) \
        .select("qa_id", F.col("_reason").alias("_contam"), F.col("_detail").alias("_contam_detail"))
    tokens = rows.select("qa_id", tokens_column(ctx.settings, rows, g.template, "gate").alias("n_tokens"))
    out = (qa.join(exact, "qa_id").join(near_seed, "qa_id", "left").join(near_synth, "qa_id", "left")
           .join(contaminated, "qa_id", "left").join(tokens, "qa_id").join(sk_q.select("qa_id", "minhash", "bands"),
                                                                            "qa_id"))
    ql, al = F.length("question"), F.length("answer")
    reason = (F.when(ql < g.min_question_chars, "too_short").when(ql > g.max_question_chars, "too_long")
              .when(al < g.min_answer_chars, "too_short").when(al > g.max_answer_chars, "too_long")
              .when(F.col("_seed_copy").isNotNull(), "duplicate_of_seed")
              .when(F.col("_gold_copy").isNotNull() | (F.col("_first") != F.col("qa_id")), "duplicate_synth")
              .when(F.col("_near_seed").isNotNull(), "near_duplicate_of_seed")
              .when(F.col("_near_synth").isNotNull(), "near_duplicate_synth")
              .when(F.col("_contam").isNotNull(), F.col("_contam"))
              .when((F.col("consistency") == "inconsistent") & F.lit(not g.keep_inconsistent), "inconsistent_answer"))
    detail = (F.when(reason.isin("too_short", "too_long"),
                     F.concat(F.lit("question "), ql.cast("string"), F.lit(" chars, answer "), al.cast("string"),
                              F.lit(" chars")))
              .when(reason == "duplicate_of_seed", F.concat(F.lit("same normalised text as seed "), "_seed_copy"))
              .when(reason == "duplicate_synth", F.concat(F.lit("same normalised text as "),
                                                          F.coalesce("_gold_copy", "_first")))
              .when(reason == "near_duplicate_of_seed", F.concat(F.lit("near copy of seed "), "_near_seed",
                                                                 F.lit(" (estimated Jaccard "),
                                                                 F.format_number("_near_sim", 3), F.lit(")")))
              .when(reason == "near_duplicate_synth", F.concat(F.lit("near copy of "), "_near_synth",
                                                               F.lit(" (estimated Jaccard "),
                                                               F.format_number("_synth_sim", 3), F.lit(")")))
              .when(F.col("_contam").isNotNull(), F.col("_contam_detail"))
              .when(reason == "inconsistent_answer", F.col("consistency_reason")))
    lineage = F.create_map(
        F.lit("synthesize_run"), F.col("synth_run_id"), F.lit("check_run"), F.col("check_run_id"),
        F.lit("refine_run"), F.col("run_id"), F.lit("gate_run"), F.lit(ctx.run_id),
        F.lit("generator_model"), F.col("generator_model"), F.lit("generator_prompt"), F.col("generator_prompt"),
        F.lit("refiner_model"), F.col("refiner_model"), F.lit("refiner_prompt"), F.col("refiner_prompt"))
    return out.select(
        "qa_id", "question", "answer", "discipline", "subfield", "is_stem",
        F.col("achieved_difficulty").alias("difficulty"), "target_difficulty", "seed_difficulty", "grade_role", "mode",
        "attempt", "seed_ids", "consistency", "n_tokens", lineage.alias("lineage"), "llm_simulated",
        F.lit(ctx.run_id).alias("run_id"), F.col("minhash").alias("_minhash"), F.col("bands").alias("_bands"),
        reason.alias("_reason"), detail.alias("_detail"), F.lit(None).cast("string").alias("_raw"),
        F.col("achieved_difficulty").alias("_achieved_difficulty"))


def _bands(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return staged.where(F.col("_outcome") == "kept").select(F.col("qa_id").alias("seed_uid"),
                                                            F.posexplode("_bands").alias("band", "band_hash"))


def _sigs(ctx: StageContext, staged: DataFrame) -> DataFrame:
    return staged.where(F.col("_outcome") == "kept").select(F.col("qa_id").alias("seed_uid"),
                                                            F.col("_minhash").alias("minhash"))


def report(staged: DataFrame) -> dict[str, float]:
    kept = staged.where(F.col("_outcome") == "kept")
    r = kept.groupBy().agg(F.sum("n_tokens").alias("tokens"), F.count("*").alias("rows")).first()
    out = {"gold_tokens": float(r["tokens"] or 0), "gold_rows": float(r["rows"] or 0)}
    for m in kept.groupBy("mode").agg(F.sum("n_tokens").alias("t")).collect():
        out[f"gold_tokens.{m['mode']}"] = float(m["t"] or 0)
    return out


STAGE = Stage(
    name="gate",
    inputs={"qa": "silver.synth_refined", "seeds": "silver.seeds", "bench": "ref.bench_items",
            "seed_bands": "silver.seed_bands", "seed_sigs": "silver.seed_signatures",
            "vectors": "ref.bench_embeddings", "synth_bands": "silver.synth_bands",
            "synth_sigs": "silver.synth_signatures"},
    optional_inputs=("seed_bands", "seed_sigs", "vectors", "synth_bands", "synth_sigs"),
    output="gold.boostqa",
    rejects="quarantine.synth",
    key=("qa_id",),
    reject_columns=SYNTH_REJECTS,
    reads_output=True,
    whole=True,  # duplicates inside the batch are judged together
    derived=(Derived("silver.synth_bands", ("band", "band_hash", "seed_uid"), _bands),
             Derived("silver.synth_signatures", ("seed_uid",), _sigs)),
    report=report,
    transform=transform,
    config=lambda s: {"gate": s.gate.model_dump(), "dedup": s.dedup.model_dump(), "decontam": s.decontam.model_dump()},
    description="length/format checks, dedup vs seeds and synth, output decontamination -> gold.boostqa",
)

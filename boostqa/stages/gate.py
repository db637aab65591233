"""gate: silver.synth_refined -> gold.boostqa (+ quarantine.synth).

The last line of defence before training data: length and format checks; exact and near
duplicates against the seeds (a synthesiser that copies its seed adds nothing) and against other
synthesised QA; and decontamination of the OUTPUTS with the same detectors as the seeds (a
generator can regenerate a benchmark item it memorised). Kept rows get their exact token count
in the training format and their lineage (run ids, models, prompt versions). Near copies use the
seeds' dedup settings (section ``dedup``), decontamination the seeds' (``decontam``).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from boostqa.stages import decontam, lsh
from boostqa.stages.base import Derived, Stage, StageContext
from boostqa.stages.synthesize import SYNTH_REJECTS
from boostqa.stages.training import tokens_column


def _near(ctx: StageContext, sk: DataFrame, index: DataFrame | None, sigs: DataFrame | None) -> DataFrame:
    """(a = new qa, b = the other side) pairs sharing an LSH band with estimated Jaccard >= threshold."""
    return lsh.similarities(lsh.band_pairs(sk, index), lsh.signatures(sk, sigs)) \
        .where(F.col("similarity") >= ctx.settings.dedup.threshold)


def _exact_copies(ctx: StageContext, sk_q: DataFrame, seeds: DataFrame) -> DataFrame:
    """qa_id -> _first (smallest qa_id of its text in this batch), _seed_copy, _gold_copy."""
    first = Window.partitionBy("seed_id").orderBy("qa_id")
    exact = sk_q.select("qa_id", "seed_id", F.first("qa_id").over(first).alias("_first")) \
        .join(seeds.select("seed_id", F.col("seed_uid").alias("_seed_copy")).dropDuplicates(["seed_id"]),
              "seed_id", "left")
    if ctx.existing is None:
        return exact.withColumn("_gold_copy", F.lit(None).cast("string"))
    gold = lsh.sketches(ctx.existing.withColumnRenamed("qa_id", "seed_uid"), ctx.settings.dedup) \
        .select("seed_id", F.col("seed_uid").alias("_gold_copy"))
    return exact.join(gold.dropDuplicates(["seed_id"]), "seed_id", "left")


def _near_copies(ctx: StageContext, sk: DataFrame, batch_ids: DataFrame, seed_bands, seed_sigs, synth_bands,
                 synth_sigs) -> tuple[DataFrame, DataFrame]:
    """(near copies of a seed, near copies of other synthesised QA) per qa_id: a QA kept earlier
    always wins; inside this batch the smaller id wins."""
    seed_ids = seed_bands.select(F.col("seed_uid").alias("b")).distinct() if seed_bands is not None \
        else ctx.spark.createDataFrame([], "b string")
    near_seed = _near(ctx, sk, seed_bands, seed_sigs).join(seed_ids, "b") \
        .groupBy(F.col("a").alias("qa_id")).agg(F.min("b").alias("_near_seed"), F.max("similarity").alias("_near_sim"))
    synth = _near(ctx, sk, synth_bands, synth_sigs)
    batch = batch_ids.select(F.col("qa_id").alias("b"))
    synth = synth.join(batch, "b", "left_anti").unionByName(synth.join(batch, "b").where(F.col("b") < F.col("a")))
    near_synth = synth.groupBy(F.col("a").alias("qa_id")).agg(F.min("b").alias("_near_synth"),
                                                              F.max("similarity").alias("_synth_sim"))
    return near_seed, near_synth


def _verdict(ctx: StageContext) -> tuple[Column, Column]:
    """(reason, detail) of a rejected row, checks in order; null reason = kept."""
    g = ctx.settings.gate
    ql, al = F.length("question"), F.length("answer")
    jaccard = lambda c: F.concat(F.lit(" (estimated Jaccard "), F.format_number(c, 3), F.lit(")"))  # noqa: E731
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
                                                                 jaccard("_near_sim")))
              .when(reason == "near_duplicate_synth", F.concat(F.lit("near copy of "), "_near_synth",
                                                               jaccard("_synth_sim")))
              .when(F.col("_contam").isNotNull(), F.col("_contam_detail"))
              .when(reason == "inconsistent_answer", F.col("consistency_reason")))
    return reason, detail


def _lineage(ctx: StageContext) -> Column:
    """Run ids, models and prompt versions of each step; a LinkQA item also names its KP-graph
    path (``kp_path``: its plan id, the path id in silver.kp_paths)."""
    path = F.when(F.col("mode") == "linkqa", F.create_map(F.lit("kp_path"), F.col("qa_id"))) \
        .otherwise(F.create_map().cast("map<string,string>"))
    return F.map_concat(_steps(ctx), path)


def _steps(ctx: StageContext) -> Column:
    return F.create_map(
        F.lit("synthesize_run"), F.col("synth_run_id"), F.lit("check_run"), F.col("check_run_id"),
        F.lit("refine_run"), F.col("run_id"), F.lit("gate_run"), F.lit(ctx.run_id),
        F.lit("generator_model"), F.col("generator_model"), F.lit("generator_prompt"), F.col("generator_prompt"),
        F.lit("refiner_model"), F.col("refiner_model"), F.lit("refiner_prompt"), F.col("refiner_prompt"))


def transform(ctx: StageContext, qa: DataFrame, seeds: DataFrame, bench: DataFrame,
              seed_bands: DataFrame | None = None, seed_sigs: DataFrame | None = None,
              vectors: DataFrame | None = None, synth_bands: DataFrame | None = None,
              synth_sigs: DataFrame | None = None) -> DataFrame:
    rows = qa.select("qa_id", "question", "answer")
    sk = ctx.checkpoint(lsh.sketches(rows.withColumnRenamed("qa_id", "seed_uid"), ctx.settings.dedup))
    sk_q = sk.withColumnRenamed("seed_uid", "qa_id")
    near_seed, near_synth = _near_copies(ctx, sk, rows, seed_bands, seed_sigs, synth_bands, synth_sigs)
    contaminated = decontam.transform(ctx, rows, bench, vectors, key="qa_id", question="question", answer="answer",
                                      choices=None) \
        .select("qa_id", F.col("_reason").alias("_contam"), F.col("_detail").alias("_contam_detail"))
    tokens = rows.select("qa_id", tokens_column(ctx.settings, rows, ctx.settings.gate.template, "gate").alias("n_tokens"))
    out = (qa.join(_exact_copies(ctx, sk_q, seeds), "qa_id").join(near_seed, "qa_id", "left")
           .join(near_synth, "qa_id", "left").join(contaminated, "qa_id", "left").join(tokens, "qa_id")
           .join(sk_q.select("qa_id", "minhash", "bands"), "qa_id"))
    reason, detail = _verdict(ctx)
    achieved = F.split("achieved_discipline", "/")[0]
    return out.select(
        "qa_id", "question", "answer", "discipline", "subfield", "is_stem", "achieved_discipline",
        (achieved != F.col("discipline")).alias("discipline_drift"), F.col("achieved_stage").alias("grade_stage"),
        F.col("achieved_difficulty").alias("difficulty"), "target_difficulty", "seed_difficulty", "grade_role", "mode",
        "attempt", "seed_ids", "consistency", "n_tokens", _lineage(ctx).alias("lineage"), "llm_simulated",
        F.lit(ctx.run_id).alias("run_id"), F.col("minhash").alias("_minhash"), F.col("bands").alias("_bands"),
        reason.alias("_reason"), detail.alias("_detail"), F.lit(None).cast("string").alias("_raw"),
        F.col("achieved_difficulty").alias("_achieved_difficulty"))


def gold_tokens(ctx: StageContext, staged: DataFrame) -> None:
    """Tokens and rows the chunk added to gold.boostqa, in total and per mode."""
    kept = staged.where(F.col("_outcome") == "kept")
    r = kept.groupBy().agg(F.sum("n_tokens").alias("tokens"), F.count("*").alias("rows")).first()
    ctx.stats.add("gold_tokens", float(r["tokens"] or 0))
    ctx.stats.add("gold_rows", float(r["rows"] or 0))
    for m in kept.groupBy("mode").agg(F.sum("n_tokens").alias("t")).collect():
        ctx.stats.add(f"gold_tokens.{m['mode']}", float(m["t"] or 0))


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
    derived=(Derived("silver.synth_bands", ("band", "band_hash", "seed_uid"),
                     lambda ctx, st: lsh.band_index(st, "qa_id")),
             Derived("silver.synth_signatures", ("seed_uid",), lambda ctx, st: lsh.signature_index(st, "qa_id"))),
    summarize=gold_tokens,
    reports=("synthesis",),
    transform=transform,
    sections=("gate", "dedup", "decontam", "tokens"),
    description="length/format checks, dedup vs seeds and synth, output decontamination -> gold.boostqa",
)

"""export: gold.mix (one Delta version) -> training shards on disk + ops.exports.

One export per mix version and export settings: ``<export.dir>/mix-v<version>/`` holds
jsonl.zst and parquet shards in shuffle order, ``manifest.json`` (files, rows, tokens, sha256,
source table versions) and a dataset card. The export id is the mix version + settings, so a
rerun finds nothing pending; a new blend (a new gold.mix version) is exported next to the old
one, which stays as it was. ``ops.exports`` says which directory holds which mix version.
"""

from __future__ import annotations

import hashlib
import json
import os

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from boostqa.stages.base import Stage, StageContext
from boostqa.text.shards import sha256_file

METADATA = ("mix_id", "component", "source_table", "source_version", "doc_id", "epoch", "n_tokens", "discipline",
            "difficulty", "mode", "llm_simulated")


def export_dir(settings, version: int) -> str:
    return os.path.join(settings.export.dir, f"mix-v{version}")


def _export_id(ctx: StageContext) -> str:
    body = json.dumps({"mix_version": ctx.versions["mix"], "export": ctx.settings.export.model_dump()}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def prepare(ctx: StageContext, mix: DataFrame) -> DataFrame:
    """One candidate row: this mix version under these export settings."""
    return ctx.spark.createDataFrame([(_export_id(ctx), ctx.versions["mix"])], "export_id string, mix_version long")


def transform(ctx: StageContext, mix: DataFrame, **_: DataFrame) -> DataFrame:
    from boostqa.export import export

    e, full = ctx.settings.export, ctx.inputs["mix"]
    version = ctx.versions["mix"]
    sources = [{"table": "gold.mix", "version": version}] + [
        {"table": r["source_table"], "version": r["source_version"]}
        for r in full.select("source_table", "source_version").distinct().orderBy("source_table").collect()]
    simulated = bool(full.where(F.col("llm_simulated")).limit(1).count())
    out = export_dir(ctx.settings, version)
    m = export(full, out, shard_tokens=e.shard_tokens, formats=tuple(e.formats), metadata_columns=METADATA,
               sources=sources, card_title=f"{e.title} (gold.mix version {version})", simulated=simulated,
               extra_manifest={"blend": ctx.settings.blend.model_dump(), "tokens": ctx.settings.tokens.model_dump()})
    manifest_sha = sha256_file(os.path.join(m.out_dir, "manifest.json"))
    totals = m.data["totals"]
    first = totals[e.formats[0]]
    for k, v in {"files": sum(t["files"] for t in totals.values()), "rows": first["rows"],
                 "tokens": first["tokens"], "bytes": sum(t["bytes"] for t in totals.values())}.items():
        ctx.stats.set(f"export.{k}", float(v))
    return mix.select(
        "export_id", "mix_version", F.lit(os.path.abspath(m.out_dir)).alias("path"),
        F.lit(",".join(e.formats)).alias("formats"), F.lit(int(m.data["shards"])).cast("long").alias("shards"),
        F.lit(int(first["rows"])).cast("long").alias("rows"), F.lit(int(first["tokens"])).cast("long").alias("tokens"),
        F.lit(manifest_sha).alias("manifest_sha256"), F.lit(simulated).alias("llm_simulated"),
        F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("exported_at"),
        F.lit(None).cast("string").alias("_reason"), F.lit(None).cast("string").alias("_detail"))


def artifacts(ctx: StageContext, staged: DataFrame) -> None:
    """The manifest and the dataset card of each export, logged with the stage's MLflow run."""
    for r in staged.select("path").collect():
        for name in ("manifest.json", "README.md"):
            with open(os.path.join(r["path"], name), encoding="utf-8") as f:
                ctx.stats.artifact(f"export/{os.path.basename(r['path'])}/{name}", f.read())


STAGE = Stage(
    name="export",
    inputs={"mix": "gold.mix"},
    output="ops.exports",
    key=("export_id",),
    prepare=prepare,
    whole=True,
    transform=transform,
    summarize=artifacts,
    sections=("export", "blend", "tokens"),
    description="gold.mix version -> jsonl.zst + parquet shards, manifest.json, dataset card (ops.exports)",
)

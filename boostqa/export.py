"""Export gold.mix as training shards (jsonl.zst + parquet) with a manifest and a dataset card.

Distributed and deterministic. Shard boundaries come from a prefix sum of ``n_tokens`` in
``shuffle_key`` order: the row whose first token sits at global offset ``o`` goes to shard
``floor(o / shard_tokens)``. A single global window would move every row into one task, so the
prefix sum is two-level: rows fall into ``tasks`` buckets by a monotone function of shuffle_key
(equal-width ranges between its min and max), a tiny per-bucket total gives each bucket its token
offset, and a window partitioned by bucket adds the running sum inside it. Bucket edges only
change parallelism, never the result.

Each shard is then written by the Spark task that owns it, straight into the export directory
(a local path or a FUSE mount such as a Databricks /Volumes path), through
``groupBy(shard).applyInArrow``: a grouped map hands one task the whole shard in one call, so a
shard is written exactly once. (mapInPandas/mapInArrow would not do: on Sail a sort placed
before them is not kept and a partition arrives in several batches, so a task would have to
buffer its whole partition.) Arrow also keeps nullable ints as ints on every engine. Only one
small stats row per file comes back to the driver.

The export is built in a hidden sibling directory and renamed into place when complete, so a
crash never leaves a half export that looks finished. An existing non-empty directory is
refused unless its manifest describes exactly this export (same input fingerprint, settings,
sources, mix, card), in which case the call is a no-op that returns the stored manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import zstandard
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.text import shards
from boostqa.text.shards import FORMATS

FORMAT_VERSION = 1
DEFAULT_METADATA = ("mix_id", "component", "discipline", "difficulty", "mode", "epoch", "n_tokens")
ORDER = ("shuffle_key", "mix_id")  # mix_id breaks shuffle_key ties, so the order is total
MATCH_KEYS = ("format_version", "title", "simulated", "input", "schema", "settings", "shuffle", "sources", "mix",
              "extra")  # what must be equal for a rerun to be a no-op (not created_at, writer, files)
STATS_SCHEMA = T.StructType([T.StructField(n, t) for n, t in [
    ("shard", T.LongType()), ("name", T.StringType()), ("format", T.StringType()), ("rows", T.LongType()),
    ("tokens", T.LongType()), ("bytes", T.LongType()), ("sha256", T.StringType())]])
_ARROW = {T.StringType: pa.string(), T.LongType: pa.int64(), T.IntegerType: pa.int32(), T.ShortType: pa.int16(),
          T.ByteType: pa.int8(), T.DoubleType: pa.float64(), T.FloatType: pa.float32(), T.BooleanType: pa.bool_()}


_HF_DTYPE = {"double": "float64", "float": "float32"}  # Arrow type names datasets spells differently


class ExportError(RuntimeError):
    """The export cannot be written as asked; the message says why."""


@dataclass(frozen=True)
class Manifest:
    out_dir: str
    data: dict  # the content of manifest.json
    reused: bool = False  # True when an identical export already existed and nothing was written

    @property
    def files(self) -> list[dict]:
        return self.data["files"]

    @property
    def totals(self) -> dict:
        return self.data["totals"]

    def verify(self) -> list[str]:
        return shards.verify(self.out_dir, self.data)


def export(df: DataFrame, out_dir: str, *, shard_tokens: int = 50_000_000, formats: Sequence[str] = FORMATS,
           metadata_columns: Sequence[str] = DEFAULT_METADATA, sources: Sequence[dict] = (),
           mix_summary: list[dict] | None = None, card_title: str = "boostqa training mix",
           simulated: bool, extra_manifest: dict | None = None, tasks: int | None = None) -> Manifest:
    """Write ``df`` (gold.mix rows) as shards + manifest.json + README.md into ``out_dir``.

    ``simulated`` has no default on purpose: the caller must say whether any row came from the
    LLM simulator, and the card states it at the top. ``tasks`` sets how many buckets the prefix
    sum uses (default: spark.sql.shuffle.partitions); it never changes the output.
    """
    formats, meta = _check_request(df, formats, metadata_columns, shard_tokens, mix_summary is None)
    out_dir = os.path.abspath(out_dir)
    _existing_manifest(out_dir)  # fail fast on a foreign non-empty directory, before any Spark work
    tasks = tasks or _shuffle_partitions(df.sparkSession)

    base = df.select(*dict.fromkeys(["text", *meta, "n_tokens", *ORDER]))
    schema = pa.schema([pa.field(c, _arrow_type(base.schema[c].dataType)) for c in ["text", *meta]])
    stats = _input_stats(base, df, mix_summary is None)
    if stats["rows"] == 0:
        raise ExportError("the input has no rows; refusing to publish an empty export")

    data = _describe(stats, schema, shard_tokens=shard_tokens, formats=formats, meta=meta, sources=sources,
                     mix_summary=mix_summary, card_title=card_title, simulated=simulated,
                     extra_manifest=extra_manifest)
    old = _existing_manifest(out_dir, data)
    if old is not None:
        return old
    return _write_and_publish(base, stats, data, out_dir, schema=schema, formats=formats, meta=meta,
                              shard_tokens=shard_tokens, tasks=tasks)


def _check_request(df: DataFrame, formats: Sequence[str], metadata_columns: Sequence[str], shard_tokens: int,
                   need_mix: bool) -> tuple[list[str], list[str]]:
    """(formats, metadata columns) deduplicated in order; raises before any Spark work on a bad argument
    or a missing column (component/epoch are needed only when the mix table is computed here)."""
    formats = list(dict.fromkeys(formats))
    meta = list(dict.fromkeys(metadata_columns))
    if not formats or set(formats) - set(FORMATS):
        raise ExportError(f"formats must be a non-empty subset of {list(FORMATS)}, got {formats}")
    if shard_tokens <= 0:
        raise ExportError(f"shard_tokens must be positive, got {shard_tokens}")
    if "text" in meta:
        raise ExportError("'text' is always written first; leave it out of metadata_columns")
    need = ["text", *meta, "n_tokens", *ORDER] + (["component", "epoch"] if need_mix else [])
    missing = [c for c in dict.fromkeys(need) if c not in df.columns]
    if missing:
        raise ExportError(f"input lacks columns {missing} (have {df.columns})")
    return formats, meta


def _describe(stats: dict, schema: pa.Schema, *, shard_tokens: int, formats: list[str], meta: list[str],
              sources: Sequence[dict], mix_summary: list[dict] | None, card_title: str, simulated: bool,
              extra_manifest: dict | None) -> dict:
    """The manifest's MATCH_KEYS part: everything that decides the output, known before writing.

    Returned in its JSON form, because that is what a rerun compares against."""
    data = {
        "format_version": FORMAT_VERSION, "title": card_title, "simulated": bool(simulated),
        "input": {k: stats[k] for k in ("rows", "tokens", "fingerprint")},
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
        "settings": {"shard_tokens": shard_tokens, "formats": formats, "text_column": "text",
                     "metadata_columns": meta, "jsonl_zstd_level": shards.ZSTD_LEVEL,
                     "parquet_compression": "zstd", "parquet_zstd_level": shards.PARQUET_ZSTD_LEVEL,
                     "parquet_row_group_rows": shards.PARQUET_ROW_GROUP_ROWS},
        "shuffle": {"order_by": list(ORDER), "ascending": True,
                    "shard_rule": "rows in ascending (shuffle_key, mix_id); a row whose first token is at global "
                                  "token offset o goes to shard floor(o / shard_tokens), renumbered without gaps"},
        "sources": list(sources),
        "mix": mix_summary if mix_summary is not None else stats["mix"],
        "extra": extra_manifest or {},
    }
    return json.loads(json.dumps(data, default=str))


def _write_and_publish(base: DataFrame, stats: dict, data: dict, out_dir: str, *, schema: pa.Schema,
                       formats: list[str], meta: list[str], shard_tokens: int, tasks: int) -> Manifest:
    """Write shards, manifest and card into a hidden sibling directory, then rename it to ``out_dir``,
    so a crash never leaves a half export that looks finished."""
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    try:
        width = max(5, len(str(stats["tokens"] // shard_tokens)))
        rows = _shard_rows(base, stats, shard_tokens, tasks) \
            .groupBy("_shard").applyInArrow(_shard_writer(tmp, formats, meta, schema, width), STATS_SCHEMA).collect()
        files = _check_and_name(tmp, [r.asDict() for r in rows], formats, stats, width)
        data = _complete(data, files, formats, tasks)
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=2)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card(data))
        return _publish(tmp, out_dir, data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename; removes a failed attempt


def _complete(data: dict, files: list[dict], formats: list[str], tasks: int) -> dict:
    """The full manifest: ``data`` plus what only the write knows (time, library versions, files, totals)."""
    return {"format_version": FORMAT_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **data,
            "writer": {"pyarrow": pa.__version__, "zstandard": zstandard.__version__,
                       "zstd": ".".join(map(str, zstandard.ZSTD_VERSION)), "tasks": tasks},
            "shards": len({f["shard"] for f in files}), "files": files,
            "totals": {fmt: {"files": sum(f["format"] == fmt for f in files),
                             **{k: sum(f[k] for f in files if f["format"] == fmt)
                                for k in ("rows", "tokens", "bytes")}} for fmt in formats}}


def _shuffle_partitions(spark) -> int:
    try:
        return max(1, int(spark.conf.get("spark.sql.shuffle.partitions")))
    except Exception:  # some managed sessions do not expose the setting
        return 8


def _arrow_type(dt):
    if type(dt) not in _ARROW:
        raise ExportError(f"cannot export a column of type {dt.simpleString()}")
    return _ARROW[type(dt)]


def _input_stats(base: DataFrame, df: DataFrame, per_component: bool) -> dict:
    """Totals, a fingerprint and the per-component mix in one pass; fails on rows that cannot be exported.

    The fingerprint is an order-independent sum of xxhash64 over every exported column (split in
    32-bit halves so the sums cannot overflow), which lets a rerun recognise the same input
    without rewriting anything.
    """
    h = F.xxhash64(*base.columns)
    comp = df["component"] if per_component else F.lit(None).cast("string")
    epoch = df["epoch"] if per_component else F.lit(0)
    grouped = df.select(*base.columns, comp.alias("_c"), epoch.alias("_e")).groupBy("_c").agg(
        F.count(F.lit(1)).alias("rows"), F.sum("n_tokens").alias("tokens"),
        F.sum(F.when(F.col("_e") == 0, F.col("n_tokens")).otherwise(0)).alias("first_pass_tokens"),
        F.max("_e").alias("max_epoch"), F.min("shuffle_key").alias("lo"), F.max("shuffle_key").alias("hi"),
        F.sum(F.shiftright(h, 32)).alias("h_hi"), F.sum(h.bitwiseAND(F.lit(0xFFFFFFFF))).alias("h_lo"),
        F.sum(F.hash(*base.columns).cast("long")).alias("h_m3"),
        F.sum(F.when(F.col("text").isNull() | F.col("n_tokens").isNull() | (F.col("n_tokens") < 0)
                     | F.col("shuffle_key").isNull() | F.col("mix_id").isNull(), 1).otherwise(0)).alias("bad"))
    groups = [r.asDict() for r in grouped.collect()]
    bad = sum(g["bad"] for g in groups)
    if bad:
        raise ExportError(f"{bad} rows have a null text/shuffle_key/mix_id or a null/negative n_tokens")
    dups = base.groupBy("mix_id").count().where(F.col("count") > 1).limit(3).collect()
    if dups:
        raise ExportError(f"mix_id is not unique, e.g. {[(r['mix_id'], r['count']) for r in dups]}")
    rows, tokens = sum(g["rows"] for g in groups), sum(g["tokens"] or 0 for g in groups)
    digest = "|".join(str(x) for x in (rows, tokens, sum((g["h_hi"] << 32) + g["h_lo"] for g in groups),
                                        sum(g["h_m3"] for g in groups), ",".join(base.columns)))
    mix = [{"component": g["_c"], "rows": g["rows"], "tokens": g["tokens"],
            "share": round(g["tokens"] / tokens, 6) if tokens else 0.0,
            "epochs": round(g["tokens"] / g["first_pass_tokens"], 2) if g["first_pass_tokens"]
            else (g["max_epoch"] or 0) + 1}
           for g in sorted(groups, key=lambda g: (-(g["tokens"] or 0), str(g["_c"])))]
    return {"rows": rows, "tokens": tokens, "fingerprint": hashlib.sha256(digest.encode()).hexdigest(),
            "lo": min((g["lo"] for g in groups), default=0), "hi": max((g["hi"] for g in groups), default=0),
            "mix": mix}


def _shard_rows(base: DataFrame, stats: dict, shard_tokens: int, tasks: int) -> DataFrame:
    """``base`` + ``_shard`` (raw, may have gaps after a row longer than shard_tokens), via the two-level prefix sum."""
    lo, span = stats["lo"], stats["hi"] - stats["lo"] + 1
    bucket = F.floor((F.col("shuffle_key").cast("double") - float(lo)) * (tasks / float(span))).cast("long")
    b = base.withColumn("_bucket", F.greatest(F.lit(0), F.least(F.lit(tasks - 1), bucket)))
    offsets = b.groupBy("_bucket").agg(F.sum("n_tokens").alias("_bt")).withColumn(  # <= tasks rows
        "_off", F.coalesce(F.sum("_bt").over(Window.partitionBy(F.lit(0)).orderBy("_bucket")
                                             .rowsBetween(Window.unboundedPreceding, -1)), F.lit(0)))
    running = F.sum("n_tokens").over(Window.partitionBy("_bucket").orderBy(*ORDER)
                                     .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    start = F.col("_off") + running - F.col("n_tokens")  # tokens before this row in the whole export
    return b.join(F.broadcast(offsets.select("_bucket", "_off")), "_bucket") \
        .withColumn("_shard", F.floor(start / F.lit(shard_tokens)).cast("long")) \
        .drop("_bucket", "_off")


def _shard_writer(tmp: str, formats: list[str], meta: list[str], schema: pa.Schema, width: int):
    """The grouped-map function: one whole shard in, its files written, one stats row per file out."""

    def write(table: pa.Table) -> pa.Table:
        shard = table.column("_shard")[0].as_py()
        table = table.sort_by([(c, "ascending") for c in ORDER])
        files = shards.write_shard(table, tmp, f"part-{shard:0{width}d}", formats, "text", meta, schema=schema)
        return pa.Table.from_pylist([{"shard": shard, "name": f.path, **{k: getattr(f, k) for k in (
            "format", "rows", "tokens", "bytes", "sha256")}} for f in files],
            schema=pa.schema([(f.name, _arrow_type(f.dataType)) for f in STATS_SCHEMA]))

    return write


def _check_and_name(tmp: str, rows: list[dict], formats: list[str], stats: dict, width: int) -> list[dict]:
    """Check the files add up to the input, then renumber shards densely (renaming files in the hidden dir)."""
    for fmt in formats:
        got = [r for r in rows if r["format"] == fmt]
        r_, t_ = sum(r["rows"] for r in got), sum(r["tokens"] for r in got)
        if (r_, t_) != (stats["rows"], stats["tokens"]) or len({r["shard"] for r in got}) != len(got):
            raise ExportError(f"{fmt} files hold {r_} rows / {t_} tokens in {len(got)} files, input has "
                              f"{stats['rows']} rows / {stats['tokens']} tokens (or a shard was written twice)")
    raw = sorted({r["shard"] for r in rows})
    dense = {s: i for i, s in enumerate(raw)}
    order = {fmt: i for i, fmt in enumerate(formats)}
    files = []
    for r in sorted(rows, key=lambda r: (r["shard"], order[r["format"]])):  # ascending: a rename never clobbers
        name = f"part-{dense[r['shard']]:0{width}d}.{r['format']}"
        if name != r["name"]:
            os.replace(os.path.join(tmp, r["name"]), os.path.join(tmp, name))
        files.append({"name": name, "format": r["format"], "shard": dense[r["shard"]],
                      **{k: r[k] for k in ("rows", "tokens", "bytes", "sha256")}})
    return files


def _existing_manifest(out_dir: str, data: dict | None = None) -> Manifest | None:
    """None if out_dir is absent or empty; the stored Manifest if it describes ``data``; else raise."""
    if not os.path.isdir(out_dir):
        if os.path.exists(out_dir):
            raise ExportError(f"{out_dir} exists and is not a directory")
        return None
    if not os.listdir(out_dir):
        return None
    path = os.path.join(out_dir, "manifest.json")
    if not os.path.isfile(path):
        raise ExportError(f"{out_dir} is not empty and has no manifest.json; refusing to overwrite it")
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    if data is None:
        return None
    differ = [k for k in MATCH_KEYS if old.get(k) != data.get(k)]
    if differ:
        raise ExportError(f"{out_dir} already holds a different export (differs in {differ}); "
                          "choose a new directory or remove the old export")
    return Manifest(out_dir, old, reused=True)


def _publish(tmp: str, out_dir: str, data: dict) -> Manifest:
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    try:
        os.rename(tmp, out_dir)
    except OSError:  # another export got there first: fine if it is this export
        old = _existing_manifest(out_dir, data)
        if old is None:
            raise
        return old
    return Manifest(out_dir, data)


def _fmt(key: str, v) -> str:
    if v is None:
        return "—"
    if key == "share" and isinstance(v, float):
        return f"{v:.2%}"
    if key == "epochs" and isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def _table(rows: list[dict]) -> str:
    if not rows:
        return "_none given_\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(k, r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def card(m: dict) -> str:
    """The README.md dataset card, rendered from the manifest alone (so it can be regenerated)."""
    fmts, st, inp = m["settings"]["formats"], m["settings"], m["input"]
    main = "parquet" if "parquet" in fmts else fmts[0]
    tags = ["synthetic", "question-answering"] + (["simulated"] if m["simulated"] else [])
    if m["simulated"]:
        sim = ("> **Simulated: yes.** Rows of this export were generated by the boostqa LLM *simulator*, "
               "a deterministic stand-in for a language model used to exercise the pipeline. They are not "
               "the output of any real model and must not be presented, trained on or evaluated as if they were.")
    else:
        sim = "> **Simulated: no.** No row of this export came from the LLM simulator."
    files = _table([{"format": f, **{k: m["totals"][f][k] for k in ("files", "rows", "tokens", "bytes")}}
                    for f in fmts])
    load = ["import datasets"]
    if "parquet" in fmts:
        load += ['ds = datasets.load_dataset("parquet", data_files="<export dir>/*.parquet", split="train")',
                 'ds = datasets.load_dataset("<export dir>", split="train")  # the card\'s config: the parquet files']
    if "jsonl.zst" in fmts:  # JSON has no types: without features, a shard whose column is all null reads as null
        feats = ", ".join(f'"{c["name"]}": datasets.Value("{_HF_DTYPE.get(c["type"], c["type"])}")'
                          for c in m["schema"])
        load += [f"features = datasets.Features({{{feats}}})",
                 'ds = datasets.load_dataset("json", data_files="<export dir>/*.jsonl.zst", features=features, '
                 'split="train")']
    columns = ", ".join(f"`{c['name']}` ({c['type']})" for c in m["schema"])
    lines = [
        "---", f"pretty_name: {json.dumps(m['title'], ensure_ascii=False)}", "configs:", "- config_name: default",
        "  data_files:", "  - split: train", f'    path: "*.{main}"', "tags:", *[f"- {t}" for t in tags], "---", "",
        f"# {m['title']}", "", sim, "",
        "## What it is", "",
        "A token-budget blend of boostqa synthetic question–answer data and a general corpus (table `gold.mix`), "
        f"ready for LLM training: {inp['rows']:,} rows, {inp['tokens']:,} tokens in {m['shards']:,} shards of about "
        f"{st['shard_tokens']:,} tokens. Rows are already shuffled: they are in ascending `shuffle_key` order within "
        "and across shards (`part-00000` first), so reading the shards in name order replays the training order. "
        f"`text` is exactly the training text; `n_tokens` counts its tokens. Columns: {columns}.", "",
        files,
        "Both formats hold the same rows in the same order. `manifest.json` lists every file with its rows, tokens, "
        "bytes and sha256; check a copy with `boostqa.text.shards.verify(\"<export dir>\")`.", "",
        "## How to load", "", "```python", *load, "```", "",
        "`datasets` decompresses `.jsonl.zst` itself (it needs the `zstandard` package).", "",
        "For Megatron-style preprocessing use the JSON lines' `text` field: decompress "
        "(`zstd -d part-00000.jsonl.zst`) and run "
        "`tools/preprocess_data.py --input part-00000.jsonl --json-keys text ...`.", "",
        "## Mix", "",
        "`epochs` is tokens over first-pass tokens: 1.00 means each document once, more means up-sampled.", "",
        _table(m["mix"]),
        "## Sources", "",
        _table(m["sources"]),
    ]
    return "\n".join(lines)

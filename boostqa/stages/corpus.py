"""corpus: general-corpus files -> bronze.corpus (+ quarantine.corpus).

The blend mixes the synthetic QA with a general knowledge/education corpus (BoostQA blends 1:1).
Documents are read like seed sources (jsonl/json/parquet/csv, local paths, package:// or
cache://) and keyed by source + file + row + content, so a rerun adds only new or changed rows.
A row without usable text is quarantined with the file, row and field named.
"""

from __future__ import annotations

import json

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import Stage, StageContext

CORPUS_FILES = "files:corpus"
_FIELDS = [("record_key", T.StringType()), ("source_row_id", T.StringType()), ("text", T.StringType()),
           ("_reason", T.StringType()), ("_detail", T.StringType())]


def _get(obj, path: str):
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def parse_documents(raw: pd.DataFrame, text_field: dict[str, str], id_field: dict[str, str | None]) -> pd.DataFrame:
    """raw records -> (record_key, source_row_id, text, _reason, _detail); Spark-free."""
    out = []
    for key, src, file, row, body, err in zip(raw["record_key"], raw["source"], raw["source_file"],
                                              raw["source_row"], raw["raw"], raw["read_error"]):
        where = f"{src}:{file}:{row}"
        if err:
            reason, _, detail = err.partition(":")
            out.append((key, None, None, reason, f"{where}: {detail.strip() or reason}"))
            continue
        try:
            rec = json.loads(body)
        except ValueError as e:
            out.append((key, None, None, "unparseable", f"{where}: {e}"))
            continue
        field = text_field[src]
        text = _get(rec, field) if isinstance(rec, dict) else None
        if not isinstance(rec, dict):
            out.append((key, None, None, "not_an_object", f"{where}: a {type(rec).__name__}, not an object"))
        elif text is None:
            out.append((key, None, None, "missing_text", f"{where}: no field '{field}'"))
        elif not isinstance(text, str):
            out.append((key, None, None, "bad_text_type", f"{where}: field '{field}' is {type(text).__name__}"))
        elif not text.strip():
            out.append((key, None, None, "empty_text", f"{where}: field '{field}' is blank"))
        else:
            rid = _get(rec, id_field[src]) if id_field[src] else None
            out.append((key, None if rid is None else str(rid), text, None, None))
    return pd.DataFrame(out, columns=[n for n, _ in _FIELDS])


def transform(ctx: StageContext, raw: DataFrame) -> DataFrame:
    declared = [s for s in ctx.settings.corpus if s.enabled]
    text_field = {s.name: s.text_field for s in declared}
    id_field = {s.name: s.id_field for s in declared}

    def parse(batches):
        for pdf in batches:
            yield parse_documents(pdf, text_field, id_field)

    parsed = raw.select("record_key", "source", "source_file", "source_row", "raw", "read_error") \
        .mapInPandas(parse, T.StructType([T.StructField(n, t) for n, t in _FIELDS]))
    return raw.join(parsed, "record_key").select(
        F.col("record_key").alias("doc_id"), "record_key", "source", "source_file", "source_row", "source_row_id",
        "text", F.length("text").alias("n_chars"), F.col("raw").alias("_raw"), F.current_timestamp().alias("ingested_at"),
        F.lit(ctx.run_id).alias("run_id"), "_reason", "_detail")


STAGE = Stage(
    name="corpus",
    inputs={"raw": CORPUS_FILES},
    output="bronze.corpus",
    rejects="quarantine.corpus",
    key=("record_key",),
    reject_columns=("record_key", "source", "source_file", "source_row", "_raw"),
    transform=transform,
    enabled=lambda s: any(c.enabled for c in s.corpus),
    config=lambda s: {"corpus": [c.model_dump() for c in s.corpus]},
    description="general-corpus files -> bronze.corpus; unusable rows -> quarantine.corpus",
)

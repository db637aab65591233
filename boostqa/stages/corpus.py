"""corpus: general-corpus files -> bronze.corpus (+ quarantine.corpus).

The blend mixes the synthetic QA with a general knowledge/education corpus (BoostQA blends 1:1).
Documents are read like seed sources (jsonl/json/parquet/csv/tsv, compressed or not, local paths,
package://, cache:// or any URI the engine reads, a Delta directory or a catalog table) and keyed
by source + file + row + content, so a rerun adds only new or changed rows. A row without usable
text (missing, blank or invisible, NUL/control characters) is quarantined with the file, row and
field named.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import Stage, StageContext
from boostqa.text.records import DOCUMENT_COLUMNS, parse_documents

CORPUS_FILES = "files:corpus"
_SCHEMA = T.StructType([T.StructField(n, T.StringType()) for n in DOCUMENT_COLUMNS])


def transform(ctx: StageContext, raw: DataFrame) -> DataFrame:
    declared = [s for s in ctx.settings.corpus if s.enabled]
    text_field = {s.name: s.text_field for s in declared}
    id_field = {s.name: s.id_field for s in declared}

    def parse(batches):
        for pdf in batches:
            yield parse_documents(pdf, text_field, id_field)

    parsed = raw.select("record_key", "source", "source_file", "source_row", "raw", "read_error") \
        .mapInPandas(parse, _SCHEMA)
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
    sections=("corpus",),
    description="general-corpus files -> bronze.corpus; unusable rows -> quarantine.corpus",
)

"""ledger: exact token counts of the configured tables -> gold.token_ledger.

Every table in ``tokens.tables`` is counted in the training format (its template, EOS per
document) with the target tokenizer, grouped by discipline x difficulty x mode x source. A ledger
row is keyed by (table, Delta version + content digest, tokenizer fingerprint, format, cell): an
unchanged table version is never counted twice, a new version gets new rows, and the ledger keeps the history,
so "tokens of gold.boostqa at version 12 under Llama-3" is a lookup. Totals go to MLflow.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from boostqa.stages.base import Stage, StageContext
from boostqa.stages.training import format_id, tokenizer_id, tokens_column

DIMS = {"discipline": "string", "difficulty": "int", "mode": "string", "source": "string"}
SCHEMA = ("ledger_id string, table_name string, table_version long, table_digest string, tokenizer string, "
          "format string, discipline string, difficulty int, mode string, source string, records long, "
          "tokens long, run_id string, counted_at timestamp")


def _inputs(settings) -> dict[str, str]:
    return {t.table: t.table for t in settings.tokens.tables}


def _dim(df: DataFrame, name: str, expr: str | None):
    if expr is not None:
        return F.expr(expr).cast(DIMS[name])
    return (F.col(name) if name in df.columns else F.lit(None)).cast(DIMS[name])


def counted(ctx: StageContext, table: str, df: DataFrame, template: str, dims: dict[str, str],
            tok: str) -> DataFrame:
    """Ledger rows of one table version (one row per non-empty cell); ``tok``: the tokenizer fingerprint."""
    fmt = format_id(ctx.settings, template)
    rows = df.select(*[_dim(df, d, dims.get(d)).alias(d) for d in DIMS],
                     tokens_column(ctx.settings, df, template, f"tokens.tables: {table}").alias("n"))
    agg = rows.groupBy(*DIMS).agg(F.count(F.lit(1)).alias("records"), F.sum("n").alias("tokens"))
    version, digest = ctx.versions[table], ctx.digests[table]
    key = F.concat_ws("\x1f", F.lit(table), F.lit(str(version)), F.lit(digest), F.lit(tok), F.lit(fmt),
                      *[F.coalesce(F.col(d).cast("string"), F.lit("\x00")) for d in DIMS])
    return agg.select(F.substring(F.sha2(key, 256), 1, 32).alias("ledger_id"), F.lit(table).alias("table_name"),
                      F.lit(version).cast("long").alias("table_version"), F.lit(digest).alias("table_digest"),
                      F.lit(tok).alias("tokenizer"), F.lit(fmt).alias("format"), *DIMS, "records", F.col("tokens").cast("long").alias("tokens"),
                      F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("counted_at"))


def prepare(ctx: StageContext, _driving: DataFrame | None) -> DataFrame:
    """All ledger rows still to count: tables (at their pinned version) not yet in the ledger
    under this tokenizer and format."""
    done = set()
    if ctx.existing is not None:
        done = {tuple(r) for r in ctx.existing.select("table_name", "table_digest", "tokenizer", "format")
                .distinct().collect()}
    tok = tokenizer_id(ctx.settings)
    parts = []
    for t in ctx.settings.tokens.tables:
        df = ctx.inputs.get(t.table)
        if df is None or (t.table, ctx.digests[t.table], tok, format_id(ctx.settings, t.template)) in done:
            continue
        parts.append(counted(ctx, t.table, df, t.template, t.dims, tok))
    if not parts:
        return ctx.spark.createDataFrame([], SCHEMA)
    return ctx.checkpoint(reduce(DataFrame.unionByName, parts))


def transform(ctx: StageContext, **tables: DataFrame) -> DataFrame:
    rows = tables[next(iter(_inputs(ctx.settings)))]  # the driving alias: the prepared ledger rows
    return rows.select("*", F.lit(None).cast("string").alias("_reason"), F.lit(None).cast("string").alias("_detail"))


def totals(ctx: StageContext, staged: DataFrame) -> None:
    """Tokens and records counted per table, for MLflow."""
    for r in staged.groupBy("table_name").agg(F.sum("tokens").alias("t"), F.sum("records").alias("n")).collect():
        ctx.stats.add(f"tokens.{r['table_name']}", float(r["t"] or 0))
        ctx.stats.add(f"records.{r['table_name']}", float(r["n"] or 0))


STAGE = Stage(
    name="ledger",
    inputs=_inputs,
    optional_inputs=None,  # count whatever of tokens.tables exists
    output="gold.token_ledger",
    key=("ledger_id",),
    prepare=prepare,
    reads_output=True,
    whole=True,
    transform=transform,
    summarize=totals,
    enabled=lambda s: bool(s.tokens.tables),
    sections=("tokens",),
    description="exact training-format token counts per table version x discipline x difficulty x mode x source",
)

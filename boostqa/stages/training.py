"""The training format on Spark: render rows with a template and count their exact tokens.

One place for it, so the gate's n_tokens, the token ledger and the blend count the same text
the same way (tokens.tokenizer, tokens.templates, tokens.eos). A pandas UDF per batch: the
tokenizer loads once per worker (counters pickle as their spec) and counting stays within a few
percent of the bare encoder loop (benchmarks/tokens_bench.py).
"""

from __future__ import annotations

import hashlib
import string

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from boostqa.config import Settings


def template_fields(template: str) -> list[str]:
    """The row fields a template reads, in order of first use."""
    out: list[str] = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name and name not in out:
            out.append(name)
    return out


def format_id(settings: Settings, template_name: str) -> str:
    """Identifies the text as trained on: template text + EOS. Stored next to every count."""
    t = settings.tokens
    body = f"{t.templates[template_name]}\x1feos={t.eos}"
    return f"{template_name}@{hashlib.sha256(body.encode()).hexdigest()[:12]}"


def tokenizer_id(settings: Settings) -> str:
    from boostqa.text.tokens import get_counter

    return get_counter(settings.tokens.tokenizer, settings.tokens.pattern).fingerprint


def _fields(df: DataFrame, template: str, what: str) -> list[Column]:
    names = template_fields(template)
    if not names:
        raise ValueError(f"{what}: template {template!r} reads no field")
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ValueError(f"{what}: template {template!r} reads {missing}, not columns of the table "
                         f"(columns: {df.columns})")
    return [F.col(n).cast("string") for n in names]


def tokens_column(settings: Settings, df: DataFrame, template_name: str, what: str = "table") -> Column:
    """Exact tokens of each row rendered with the named template (+1 EOS when tokens.eos)."""
    t = settings.tokens
    template, names = t.templates[template_name], template_fields(t.templates[template_name])
    spec, pattern, eos = t.tokenizer, t.pattern, t.eos
    cols = _fields(df, template, what)

    @F.pandas_udf("long")
    def count(*series: pd.Series) -> pd.Series:
        from boostqa.text.tokens import get_counter, render_training_text

        counter = get_counter(spec, pattern)
        texts = [render_training_text(template, dict(zip(names, r))) for r in zip(*series)]
        return pd.Series(counter.count(texts, add_eos=eos), dtype="int64")

    return count(*cols)


def text_column(settings: Settings, df: DataFrame, template_name: str, what: str = "table") -> Column:
    """Each row rendered with the named template: the text exactly as trained on."""
    template = settings.tokens.templates[template_name]
    names = template_fields(template)
    cols = _fields(df, template, what)

    @F.pandas_udf("string")
    def render(*series: pd.Series) -> pd.Series:
        from boostqa.text.tokens import render_training_text

        return pd.Series([render_training_text(template, dict(zip(names, r))) for r in zip(*series)], dtype=object)

    return render(*cols)


def count_column(settings: Settings, text: Column) -> Column:
    """Exact tokens of a text column that is already in the training format (+1 EOS when tokens.eos)."""
    spec, pattern, eos = settings.tokens.tokenizer, settings.tokens.pattern, settings.tokens.eos

    @F.pandas_udf("long")
    def count(texts: pd.Series) -> pd.Series:
        from boostqa.text.tokens import get_counter

        return pd.Series(get_counter(spec, pattern).count(list(texts), add_eos=eos), dtype="int64")

    return count(text)

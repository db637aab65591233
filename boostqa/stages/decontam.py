"""decontam: rows that overlap a benchmark test item leave the corpus, with the evidence.

Three independent detectors, all configurable (``decontam:`` in conf); text is normalised with
``strip_labels`` on both sides, so "Q:"/"Question:" prefixes and choice labels "(a)", "A.", "a)"
never decide a match:
- exact word n-grams (default n = 10): the benchmark side hashes every n-gram of question +
  answer (so n-grams spanning question -> answer count too) and, with ``choice_ngrams``, of
  question + choices (options appended inline), broadcast-joined with the rows' n-gram hashes; a
  row is contaminated when it shares at least ``min_shared_ngrams`` n-grams with one item.
  Evidence: benchmark, item, the matching n-gram text, count.
- spans (``span``): a benchmark question shorter than the n-gram has no n-gram, so its whole
  normalised question must occur as a contiguous span of the row; a stem shorter than
  ``span.min_words`` or shared by several items ("Which of the following is true?") also needs
  its choices (or, without choices, its answer) as spans of the row. Evidence: the span text.
  Fuzzy spans (same switch): a question of n words or more, edited lightly (two or three words
  swapped or dropped leave no 10-gram in a 15-word question), is found by its shared 3-grams and
  verified exactly: at most 20 % word edits between the question (under 15 words: question +
  choices, as a short question is often a template) and some run of the row. Reported only where
  no exact n-gram matched. Evidence: the question and the edit count.
- embedding cosine: rows and items are embedded (question + choices), the maximum cosine over
  the benchmark matrix is computed in blocks inside the UDF; at or above ``threshold`` is a hit.
  Long rows are also scored by windows of ``window_words`` words (a short item embedded in a
  longer text is diluted in the whole-text vector). Evidence: benchmark, item, cosine.

Each hit records the detectors that fired (``detector``: ngram, span, span+choices,
span+answer, fuzzy_span, embedding, embedding_window; several joined by "+").

The stage is built by ``make_stage`` for any table and text columns, so synthesised QA is
decontaminated by the same code as seeds.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages.base import Stage, StageContext, StageError
from boostqa.stages.bench_embed import embedder_config, embedding_text, model_name
from boostqa.text.embed import make_embedder, max_cosine
from boostqa.text.ngrams import (contains_span, list_parts, matching_ngrams, ngram_distinct_words, ngram_hashes,
                                  ngram_hashes_multi, span_edit_distance)
from boostqa.text.normalize import NormalizeOptions, words_array

_BATCH_ROWS = 1024
_FUZZY_KEYS = ("fuzzy_enabled", "fuzzy_max_edit_rate", "fuzzy_min_words", "fuzzy_k", "fuzzy_min_share",
               "fuzzy_max_items_per_gram", "fuzzy_max_words", "fuzzy_max_checks")  # decontam.span.*


def _joined_text(b: pa.RecordBatch, cols: list[str]) -> pa.Array:
    """Columns joined by spaces (list columns flattened), nulls as empty."""
    parts = []
    for c in cols:
        arr = b.column(c)
        if pa.types.is_null(arr.type):  # an all-null column from pandas has no type
            arr = pa.nulls(len(arr), pa.string())
        if pa.types.is_list(arr.type):
            arr = pc.binary_join(pc.fill_null(arr, pa.scalar([], arr.type)), " ")
        parts.append(pc.fill_null(arr, ""))
    return pc.binary_join_element_wise(*parts, " ") if len(parts) > 1 else parts[0]


def _gram_kernel(key: str, cols: list[str], n: int, opts: NormalizeOptions, min_distinct: int):
    def grams(batches):
        for batch in batches:
            for start in range(0, batch.num_rows, _BATCH_ROWS):
                b = batch.slice(start, _BATCH_ROWS)
                words = words_array(_joined_text(b, cols), opts)
                hashes = ngram_hashes(words, n)
                if min_distinct > 1:  # drop low-information n-grams ("1 1 1 1 ...")
                    keep = pc.greater_equal(ngram_distinct_words(words, n).flatten(), min_distinct)
                    hashes = pa.ListArray.from_arrays(
                        pa.array(np.concatenate([[0], np.cumsum(_kept_per_row(hashes, keep))]).astype(np.int32)),
                        pc.filter(hashes.flatten(), keep))
                yield pa.RecordBatch.from_arrays([b.column(key), hashes], names=[key, "hashes"])

    return grams


def _kept_per_row(lists: pa.ListArray, keep: pa.Array) -> np.ndarray:
    """How many flattened elements each row keeps."""
    lens = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.repeat(np.arange(len(lens)), lens)
    return np.bincount(rows[keep.to_numpy(zero_copy_only=False)], minlength=len(lens))


def _grams(df: DataFrame, key: str, cols: list[str], n: int, opts: NormalizeOptions,
           min_distinct: int = 1) -> DataFrame:
    schema = T.StructType([T.StructField(key, T.StringType()), T.StructField("hashes", T.ArrayType(T.LongType()))])
    return (df.select(key, *cols).mapInArrow(_gram_kernel(key, cols, n, opts, min_distinct), schema)
            .select(key, F.explode("hashes").alias("hash")).distinct())


def _matching_gram_kernel(key: str, cols: list[str], n: int, opts: NormalizeOptions, wanted: np.ndarray):
    """mapInArrow kernel: (key, hash) for each distinct n-gram of a row that is in ``wanted``
    (sorted benchmark n-gram hashes). Rows' n-grams never leave the kernel otherwise: at 200k rows
    the exploded (row, n-gram) table was ~12M rows for a few thousand matches."""
    def grams(batches):
        if not len(wanted):  # no benchmark n-gram: nothing can match, nothing to hash
            return
        for batch in batches:
            for start in range(0, batch.num_rows, _BATCH_ROWS):
                b = batch.slice(start, _BATCH_ROWS)
                offs, flat, _ = list_parts(ngram_hashes(words_array(_joined_text(b, cols), opts), n))
                hv = flat.to_numpy(zero_copy_only=False).astype(np.int64)
                if not len(hv):
                    continue
                pos = np.minimum(np.searchsorted(wanted, hv), len(wanted) - 1)
                hit = np.flatnonzero(wanted[pos] == hv)
                if not len(hit):
                    continue
                row = np.searchsorted(offs, hit, side="right") - 1
                pairs = np.unique(np.stack([row, hv[hit]]), axis=1)  # distinct (row, n-gram)
                yield pa.RecordBatch.from_arrays([pc.take(b.column(key), pa.array(pairs[0])),
                                                  pa.array(pairs[1], pa.int64())], names=[key, "hash"])

    return grams


def _ngram_hits(ctx: StageContext, rows: DataFrame, bench: DataFrame, key: str, cols: list[str]) -> DataFrame:
    cfg = ctx.settings.decontam
    opts = NormalizeOptions(**cfg.normalize.model_dump())
    bench_grams = _grams(bench, "item_id", ["question", "answer"], cfg.ngram, opts, cfg.min_distinct_words)
    if cfg.choice_ngrams:  # options appended inline after the question
        bench_grams = bench_grams.unionByName(
            _grams(bench.where(F.size("choices") > 0), "item_id", ["question", "choices"], cfg.ngram, opts,
                   cfg.min_distinct_words)).distinct()
    bench_grams = ctx.checkpoint(bench_grams.join(bench.select("item_id", "benchmark"), "item_id"))
    # benchmark-sized (~1M hashes, 8 MB for MMLU + GSM8K): shipped to the rows' kernel, which emits
    # only the n-grams a benchmark has
    wanted = np.unique(bench_grams.select("hash").distinct().toPandas()["hash"].to_numpy(dtype=np.int64))
    ctx.stats.set("bench_ngrams", len(wanted))
    schema = T.StructType([T.StructField(key, T.StringType()), T.StructField("hash", T.LongType())])
    row_grams = rows.select(key, *cols).mapInArrow(_matching_gram_kernel(key, cols, cfg.ngram, opts, wanted), schema)
    hits = (row_grams.join(bench_grams, "hash")
            .groupBy(key, "benchmark", "item_id").agg(F.count("*").alias("shared"), F.min("hash").alias("hash"))
            .where(F.col("shared") >= cfg.min_shared_ngrams))
    best = Window.partitionBy(key).orderBy(F.col("shared").desc(), "benchmark", "item_id")
    hits = hits.withColumn("_r", F.row_number().over(best)).where("_r = 1").drop("_r")
    # the evidence text, computed only for the (few) contaminated rows
    n = cfg.ngram

    def evidence(batches):
        for pdf in batches:
            texts = _joined_text(pa.RecordBatch.from_pandas(pdf[cols], preserve_index=False), cols).to_pylist()
            words = words_array(pa.array(texts, pa.string()), opts).to_pylist()
            found = [matching_ngrams(w or [], n, [h]) for w, h in zip(words, pdf["hash"])]
            yield pd.DataFrame({key: pdf[key], "ngram": [f[0][1] if f else None for f in found]})

    schema = T.StructType([T.StructField(key, T.StringType()), T.StructField("ngram", T.StringType())])
    text = hits.select(key, "hash").join(rows.select(key, *cols), key).mapInPandas(evidence, schema)
    return hits.join(text, key, "left").select(
        key, F.col("benchmark").alias("ng_benchmark"), F.col("item_id").alias("ng_item"),
        F.col("shared").alias("ng_shared"), F.col("ngram").alias("ng_text"))


def _span_items(ctx: StageContext, bench: DataFrame) -> list[tuple[str, str, str, list[list[str]]]]:
    """Benchmark items whose question is shorter than the n-gram, as (benchmark, item_id, kind,
    parts): every part (a list of normalised words) must occur in a row. The first part is the
    question; kind "span" needs nothing else, "span+choices" / "span+answer" need the choices /
    the answer too (short stems, and stems shared by several items)."""
    cfg = ctx.settings.decontam
    sp, n = cfg.span, cfg.ngram
    opts = NormalizeOptions(**cfg.normalize.model_dump())
    # every question (benchmark-sized: ~2 MB for 15k items), to tell specific stems from generic ones
    pdf = bench.select("benchmark", "item_id", "question", "answer", "choices").toPandas()
    if pdf.empty:
        return []
    all_w = words_array(pa.array(pdf["question"].tolist(), pa.string()), opts)
    lens = np.asarray([len(w) if w else 0 for w in all_w.to_pylist()])
    short = np.flatnonzero((lens > 0) & (lens < n))
    pdf = pdf.iloc[short]
    qw = [all_w[int(i)].as_py() for i in short]
    aw = words_array(pa.array(pdf["answer"].tolist(), pa.string()), opts).to_pylist()
    # a stem is generic when it occurs as a span of several benchmark questions ("Which of the
    # following statements is true?" is also the start of hundreds of longer ones)
    stem_h = {i: h for i, h in zip(short.tolist(), ngram_hashes(pa.array(qw, pa.list_(pa.string())), n)
                                   .flatten().to_numpy(zero_copy_only=False).tolist())}
    items_with: dict[int, set] = {}
    wanted = set(stem_h.values())
    for k, (hv, row) in ngram_hashes_multi(all_w, sorted({len(w) for w in qw})).items():
        pos = np.flatnonzero(np.isin(hv, np.fromiter(wanted, np.int64, len(wanted))))
        for r, h in zip(row[pos].tolist(), hv[pos].tolist()):
            items_with.setdefault(h, set()).add(r)
    stems = {i: len(items_with.get(h, ())) or 1 for i, h in stem_h.items()}
    out = []
    for (bench_name, item, choices), q, a, i in zip(pdf[["benchmark", "item_id", "choices"]]
                                                    .itertuples(index=False), qw, aw, short.tolist()):
        if not q or len(q) >= n or len(q) < sp.min_words_with_answer:
            continue
        if len(q) >= sp.min_words and stems[i] <= sp.max_items_per_stem:
            out.append((bench_name, item, "span", [q]))
            continue
        opts_list = [str(c) for c in choices] if choices is not None and len(choices) else []
        if opts_list:
            cw = [w[:n] for w in words_array(pa.array(opts_list, pa.string()), opts).to_pylist() if w]
            if cw:
                out.append((bench_name, item, "span+choices", [q, *cw]))
        elif a:
            out.append((bench_name, item, "span+answer", [q, a[:n]]))
    return out


def _fuzzy_cfg(ctx: StageContext) -> dict:
    sp = ctx.settings.decontam.span
    return {k: getattr(sp, k) for k in _FUZZY_KEYS}


def _fuzzy_index(ctx: StageContext, bench: DataFrame) -> dict | None:
    """Benchmark questions of n..fuzzy_max_words words, for fuzzy spans: a row whose words contain
    the question with at most ``fuzzy_max_edit_rate`` x its length word edits (a light edit: two
    or three words swapped or dropped leave no 10-gram in a 15-word question). Candidates come from
    shared k-grams (k = 3; k-grams in more than ``fuzzy_max_items_per_gram`` questions carry no
    signal and are skipped): an item is checked when the row holds ``fuzzy_min_share`` of its
    k-grams (each edit breaks at most k of them). The check is exact: ``span_edit_distance``.
    Returns the lookup arrays (a k-gram -> items CSR), or None when fuzzy spans are off."""
    fz = _fuzzy_cfg(ctx)
    if not fz["fuzzy_enabled"]:
        return None
    cfg = ctx.settings.decontam
    opts = NormalizeOptions(**cfg.normalize.model_dump())
    pdf = bench.select("benchmark", "item_id", "question", "choices").toPandas()
    qw = words_array(pa.array(pdf["question"].tolist(), pa.string()), opts).to_pylist()
    # a short question (< fuzzy_min_words) is a template too often ("write the prime factorization
    # of 77 ..." vs "... of 48 ..."): its pattern is question + choices, as they appear in a row
    joined = [" ".join(str(c) for c in ch) if ch is not None and len(ch) else "" for ch in pdf["choices"]]
    cw = words_array(pa.array(joined, pa.string()), opts).to_pylist()
    pats = [q if q and len(q) >= fz["fuzzy_min_words"] else ((q + c) if q and c else None) for q, c in zip(qw, cw)]
    keep = [i for i, (q, p) in enumerate(zip(qw, pats))
            if p and len(q) >= cfg.ngram and len(p) <= fz["fuzzy_max_words"]]
    if not keep:
        return None
    k = fz["fuzzy_k"]
    hv, row = ngram_hashes_multi(pa.array([pats[i] for i in keep], pa.list_(pa.string())), [k])[k]
    pairs = pd.DataFrame({"h": hv, "item": row}).drop_duplicates()
    df = pairs.groupby("h")["item"].transform("size")
    pairs = pairs[df <= fz["fuzzy_max_items_per_gram"]].sort_values(["h", "item"])
    keys, first = np.unique(pairs["h"].to_numpy(), return_index=True)
    ptr = np.append(first, len(pairs)).astype(np.int64)
    grams = np.bincount(pairs["item"].to_numpy(), minlength=len(keep))
    need = np.maximum(np.ceil(fz["fuzzy_min_share"] * grams), 2).astype(np.int64)
    names, ids = pdf["benchmark"].tolist(), pdf["item_id"].astype(str).tolist()
    meta = [(names[i], ids[i], pats[i]) for i in keep]
    edits = np.asarray([int(fz["fuzzy_max_edit_rate"] * len(m[2])) for m in meta], dtype=np.int64)
    return {"k": k, "keys": keys, "ptr": ptr, "items": pairs["item"].to_numpy().astype(np.int64), "need": need,
            "meta": meta, "edits": edits, "max_checks": fz["fuzzy_max_checks"]}


def _fuzzy_candidates(fx: dict, words: pa.Array) -> dict[int, list[int]]:
    """Row index -> candidate items (most shared k-grams first), vectorised over the batch."""
    k = fx["k"]
    hv, row = ngram_hashes_multi(words, [k])[k]
    if not len(hv):
        return {}
    order = np.argsort(hv, kind="stable")  # sorted queries: searchsorted walks the keys in order (~5x faster)
    hv, row = hv[order], row[order]
    pos = np.minimum(np.searchsorted(fx["keys"], hv), len(fx["keys"]) - 1)
    hit = fx["keys"][pos] == hv
    if not hit.any():
        return {}
    rows_h = pd.DataFrame({"r": row[hit], "g": pos[hit]}).drop_duplicates()  # distinct k-grams per row
    g = rows_h["g"].to_numpy()
    lo, cnt = fx["ptr"][g], fx["ptr"][g + 1] - fx["ptr"][g]
    r = np.repeat(rows_h["r"].to_numpy(), cnt)
    items = fx["items"][np.repeat(lo, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))]
    n_items = len(fx["need"])
    pair, shared = np.unique(r.astype(np.int64) * n_items + items, return_counts=True)
    it = pair % n_items
    ok = shared >= fx["need"][it]
    out: dict[int, list[int]] = {}
    order = np.lexsort((it[ok], -shared[ok], pair[ok] // n_items))
    for rr, ii in zip((pair[ok] // n_items)[order].tolist(), it[ok][order].tolist()):
        out.setdefault(rr, []).append(ii)
    return out


def _span_hits(ctx: StageContext, rows: DataFrame, bench: DataFrame, key: str, cols: list[str]) -> DataFrame:
    """Rows containing every part of a short benchmark item (``_span_items``), matched by hashing
    each row's k-grams for the part lengths k present and looking them up in sorted arrays; only
    rows with a present part are checked in Python."""
    cfg = ctx.settings.decontam
    opts = NormalizeOptions(**cfg.normalize.model_dump())
    items = _span_items(ctx, bench)
    ctx.stats.set("span_items", len(items))
    fx = _fuzzy_index(ctx, bench)
    ctx.stats.set("fuzzy_items", len(fx["meta"]) if fx else 0)
    schema = T.StructType([T.StructField(key, T.StringType()), T.StructField("sp_benchmark", T.StringType()),
                           T.StructField("sp_item", T.StringType()), T.StructField("sp_kind", T.StringType()),
                           T.StructField("sp_text", T.StringType())])
    # hash of every part with the n-gram hash (a k-word list's single hash = its k-gram hash)
    flat = [p for _, _, _, parts in items for p in parts]
    ph = ngram_hashes(pa.array(flat, pa.list_(pa.string())), max([len(p) for p in flat], default=1)).flatten() \
        .to_numpy(zero_copy_only=False).astype(np.int64)
    part_hashes, j = [], 0
    for i, (_, _, _, parts) in enumerate(items):
        hs = [int(h) for h in ph[j:j + len(parts)]]
        j += len(parts)
        part_hashes.append(hs)
    q_owners: dict[int, list[int]] = {}  # by the question part only: the candidates of a row
    for i, hs in enumerate(part_hashes):
        q_owners.setdefault(hs[0], []).append(i)
    by_k: dict[int, np.ndarray] = {}
    for p, h in zip(flat, ph):
        by_k.setdefault(len(p), []).append(h)
    by_k = {k: np.unique(np.asarray(v, dtype=np.int64)) for k, v in by_k.items()}
    meta = [(b, str(it), kind, parts[0]) for b, it, kind, parts in items]

    def match(batches):
        for batch in batches:
            for start in range(0, batch.num_rows, _BATCH_ROWS):
                b = batch.slice(start, _BATCH_ROWS)
                words = words_array(_joined_text(b, cols), opts)
                present: dict[int, set] = {}
                for k, (hv, row) in ngram_hashes_multi(words, by_k).items():  # complete k-grams only
                    pos = np.flatnonzero(np.isin(hv, by_k[k]))
                    for r, h in zip(row[pos].tolist(), hv[pos].tolist()):
                        present.setdefault(r, set()).add(h)
                keys, out, done = b.column(key).to_pylist(), [], set()
                for r, hs in sorted(present.items()):
                    cands = sorted({i for h in hs for i in q_owners.get(h, ())})
                    hit = next((i for i in cands if all(h in hs for h in part_hashes[i])), None)
                    if hit is None:
                        continue
                    bench_name, item, kind, q = meta[hit]
                    doc = words[r].as_py() or []
                    if contains_span(doc, q) < 0:  # hash collision guard
                        continue
                    out.append((keys[r], bench_name, item, kind, " ".join(q)))
                    done.add(r)
                if fx is not None:
                    for r, cands in sorted(_fuzzy_candidates(fx, words).items()):
                        if r in done:
                            continue
                        doc = words[r].as_py() or []
                        for i in cands[:fx["max_checks"]]:
                            bench_name, item, q = fx["meta"][i]
                            d = span_edit_distance(q, doc)
                            if d <= fx["edits"][i]:
                                out.append((keys[r], bench_name, item, "fuzzy_span",
                                            f"{' '.join(q)} [{d} word edit{'s' if d != 1 else ''}]"))
                                break
                if out:
                    yield pa.RecordBatch.from_pylist(
                        [dict(zip([key, "sp_benchmark", "sp_item", "sp_kind", "sp_text"], o)) for o in out],
                        schema=pa.schema([(key, pa.string()), ("sp_benchmark", pa.string()), ("sp_item", pa.string()),
                                          ("sp_kind", pa.string()), ("sp_text", pa.string())]))

    return rows.select(key, *cols).mapInArrow(match, schema)


def _windows(text: str, size: int, most: int) -> list[str]:
    """Sliding spans of ``size`` words (stride size // 2) of a long text, at most ``most`` of them
    (evenly spaced over the text, the last one ending at its end); [] for a text of <= size words."""
    w = text.split()
    if size <= 0 or len(w) <= size:
        return []
    stride = max(size // 2, 1)
    starts = list(range(0, len(w) - size + 1, stride))
    if starts[-1] != len(w) - size:
        starts.append(len(w) - size)
    if len(starts) > most:
        starts = [starts[round(i * (len(starts) - 1) / (most - 1))] for i in range(most)] if most > 1 else [0]
    return [" ".join(w[s:s + size]) for s in dict.fromkeys(starts)]


def _embedding_hits(ctx: StageContext, rows: DataFrame, vectors: DataFrame, key: str, q: str,
                    choices: str | None) -> DataFrame:
    cfg = ctx.settings.decontam.embedding
    model = model_name(ctx)
    ref = vectors.select("item_id", "benchmark", "vector", "model").toPandas()  # benchmark-sized: ~25 MB/16k items
    other = sorted(set(ref["model"]) - {model})
    if other:
        raise StageError(f"ref.bench_embeddings holds vectors of {other}, not {model}: delete that table and rerun "
                         "`boostqa run bench_embed` after changing the embedding model")
    matrix = np.stack(ref["vector"].to_numpy()).astype(np.float32) if len(ref) else np.zeros((0, 1), np.float32)
    ids, benches = ref["item_id"].to_numpy(), ref["benchmark"].to_numpy()
    emb_cfg, threshold = embedder_config(ctx), cfg.threshold
    size, most = cfg.window_words, cfg.max_windows

    def match(batches):
        embedder = make_embedder(emb_cfg)
        for pdf in batches:
            for start in range(0, len(pdf), 512):
                part = pdf.iloc[start:start + 512]
                opts = part[choices] if choices else pd.Series([None] * len(part))
                texts = embedding_text(part[q], opts)
                best, idx = max_cosine(embedder.encode(texts), matrix)
                kind = np.where(best >= threshold, "embedding", None).astype(object)
                # windows of the long rows: the best-matching window scores the row
                owner, wins = [], []
                for r, t in enumerate(texts):
                    w = _windows(t, size, most)
                    owner += [r] * len(w)
                    wins += w
                if wins:
                    wb, wi = max_cosine(embedder.encode(wins), matrix)
                    owner = np.asarray(owner)
                    for r in np.unique(owner):
                        m = owner == r
                        k = int(np.argmax(wb[m]))
                        if wb[m][k] > best[r] and wb[m][k] >= threshold:
                            if best[r] < threshold:
                                kind[r] = "embedding_window"
                            best[r], idx[r] = wb[m][k], wi[m][k]
                hit = best >= threshold
                yield pd.DataFrame({key: part[key].values,
                                    "em_benchmark": np.where(hit, benches[idx] if len(ids) else None, None),
                                    "em_item": np.where(hit, ids[idx] if len(ids) else None, None),
                                    "em_cosine": np.where(hit, best, np.nan),
                                    "em_kind": np.where(hit, kind, None)})

    schema = T.StructType([T.StructField(key, T.StringType()), T.StructField("em_benchmark", T.StringType()),
                           T.StructField("em_item", T.StringType()), T.StructField("em_cosine", T.DoubleType()),
                           T.StructField("em_kind", T.StringType())])
    cols = [key, q] + ([choices] if choices else [])
    return rows.select(*cols).mapInPandas(match, schema).where(F.col("em_item").isNotNull())


def transform(ctx: StageContext, rows: DataFrame, bench: DataFrame, vectors: DataFrame | None = None, *,
              key: str, question: str, answer: str | None, choices: str | None) -> DataFrame:
    cols = [c for c in (question, choices, answer) if c]
    # each detector's pass over the rows is materialised on its own: run side by side in one plan
    # they held two UDF pipelines' buffers at once (200k-row span + n-gram step 1.40 -> 1.12 GB, 10 % faster)
    flagged = ctx.checkpoint(_ngram_hits(ctx, rows, bench, key, cols))
    if ctx.settings.decontam.span.enabled:
        flagged = flagged.join(ctx.checkpoint(_span_hits(ctx, rows, bench, key, cols)), key, "full")
    else:
        flagged = flagged.select("*", *[F.lit(None).cast("string").alias(c) for c in
                                        ("sp_benchmark", "sp_item", "sp_kind", "sp_text")])
    emb = ctx.settings.decontam.embedding
    if emb.enabled:
        if vectors is None:
            raise StageError("decontam.embedding is enabled but ref.bench_embeddings does not exist: "
                             "run `boostqa run bench_embed` (or disable decontam.embedding)")
        flagged = flagged.join(_embedding_hits(ctx, rows, vectors, key, question, choices), key, "full")
    else:
        flagged = flagged.select("*", *[F.lit(None).cast(t).alias(c) for c, t in
                                        (("em_benchmark", "string"), ("em_item", "string"), ("em_cosine", "double"),
                                         ("em_kind", "string"))])
    ng, em = F.col("ng_item").isNotNull(), F.col("em_item").isNotNull()
    # a fuzzy span is the fallback for edited copies: where an exact n-gram already matched, it adds nothing
    sp = F.col("sp_item").isNotNull() & ~(ng & (F.col("sp_kind") == "fuzzy_span"))
    out = rows.join(ctx.checkpoint(flagged), key, "left")
    detail = F.concat_ws("; ",
                         F.when(ng, F.concat(F.col("ng_benchmark"), F.lit(" item "), F.col("ng_item"), F.lit(": "),
                                             F.col("ng_shared").cast("string"),
                                             F.lit(f" shared {ctx.settings.decontam.ngram}-grams, e.g. '"),
                                             F.col("ng_text"), F.lit("'"))),
                         F.when(sp, F.concat(F.col("sp_benchmark"), F.lit(" item "), F.col("sp_item"),
                                             F.lit(": whole question contained ("), F.col("sp_kind"),
                                             F.lit("), '"), F.col("sp_text"), F.lit("'"))),
                         F.when(em, F.concat(F.col("em_benchmark"), F.lit(" item "), F.col("em_item"),
                                             F.lit(": cosine "), F.format_number("em_cosine", 3),
                                             F.when(F.col("em_kind") == "embedding_window", F.lit(" (best window)"))
                                             .otherwise(F.lit("")))))
    method = F.concat_ws("+", F.when(ng, F.lit("ngram")), F.when(sp, F.lit("span")), F.when(em, F.lit("embedding")))
    detector = F.concat_ws("+", F.when(ng, F.lit("ngram")), F.when(sp, F.col("sp_kind")), F.when(em, F.col("em_kind")))
    return out.select(
        *rows.columns,
        F.when(ng, "benchmark_ngram").when(sp, "benchmark_span").when(em, "benchmark_embedding").alias("_reason"),
        F.when(ng | sp | em, detail).alias("_detail"),
        F.coalesce("ng_benchmark", F.when(sp, F.col("sp_benchmark")), "em_benchmark").alias("_benchmark"),
        F.coalesce("ng_item", F.when(sp, F.col("sp_item")), "em_item").alias("_item_id"),
        F.when(ng | sp | em, method).alias("_method"),
        F.when(ng | sp | em, detector).alias("_detector"),
        F.col("ng_shared").cast("long").alias("_shared_ngrams"),
        F.coalesce("ng_text", F.when(sp, F.col("sp_text"))).alias("_ngram"),
        F.col("em_cosine").alias("_cosine"))


def hits(ctx: StageContext, staged: DataFrame) -> None:
    """Hits per benchmark and per method, for MLflow and the CLI."""
    for r in staged.where(F.col("_outcome") == "rejected").groupBy("_benchmark", "_method").count().collect():
        ctx.stats.add(f"hits.{r['_benchmark']}", r["count"])
        ctx.stats.add(f"hits_by_method.{r['_method']}", r["count"])
    for r in staged.where(F.col("_outcome") == "rejected").groupBy("_detector").count().collect():
        ctx.stats.add(f"hits_by_detector.{r['_detector']}", r["count"])


def make_stage(name: str, source: str, output: str, rejects: str, key: str, question: str = "question",
               answer: str | None = "answer", choices: str | None = "choices", extra_reject_columns=()) -> Stage:
    """A decontamination stage over any table: seeds now, synthesised QA later."""
    return Stage(
        name=name,
        inputs={"rows": source, "bench": "ref.bench_items", "vectors": "ref.bench_embeddings"},
        optional_inputs=("vectors",),
        output=output,
        rejects=rejects,
        key=(key,),
        reject_columns=(key, *extra_reject_columns, question, "_benchmark", "_item_id", "_method", "_detector",
                        "_shared_ngrams", "_ngram", "_cosine"),
        transform=partial(transform, key=key, question=question, answer=answer, choices=choices),
        summarize=hits,
        sections=("decontam",),
        description=f"drop {source} rows overlapping benchmark items (n-grams + spans + embeddings)",
    )


STAGE = make_stage("decontam", "silver.seeds", "silver.seeds_clean", "quarantine.contaminated", "seed_uid",
                   extra_reject_columns=("seed_id", "source"))

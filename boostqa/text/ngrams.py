"""Deterministic 64-bit hashes of word n-grams on Arrow list arrays (Spark-free, vectorised).

Used for benchmark decontamination (exact n-gram overlap) and as MinHash shingles. Hashes are
stored (``ref.bench_ngrams``) and compared across runs, processes and machines, so they never
use Python's salted ``hash()``:

- a word's hash is SipHash-2-4 of its UTF-8 bytes with pandas' fixed key ("0123456789123456",
  ``pandas.util.hash_array``), computed once per distinct word of the batch;
- an n-gram's hash combines its words' hashes with a polynomial (multiplier ``_M``, modulo
  2**64, started at the number of words) followed by the murmur3 64-bit finalizer, so all
  64 bits are well mixed (MinHash folds them, band hashing and joins use them).

The hash is a function of the word sequence alone: it is the same in any document, batch or
position, and a short document's single "all words" hash equals the hash of that word
sequence as a k-gram. Golden values in the tests pin it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from boostqa.text.normalize import DEFAULT, NormalizeOptions, words_array

__all__ = [
    "fmix64",
    "list_parts",
    "word_hashes",
    "ngram_hashes",
    "ngram_hashes_text",
    "ngram_count",
    "ngram_text",
    "matching_ngrams",
    "ngram_distinct_words",
    "lcs_length",
    "token_similarity",
    "contains_span",
    "ngram_hashes_multi",
    "span_edit_distance",
]

_M = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (2**64 / golden ratio)
_F1 = np.uint64(0xFF51AFD7ED558CCD)
_F2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer (a bijection): every input bit affects every output bit."""
    h = np.asarray(h, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        h ^= h >> _S33
        h *= _F1
        h ^= h >> _S33
        h *= _F2
        h ^= h >> _S33
    return h


def list_parts(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, np.ndarray | None]:
    """(offsets int64 rebased to 0, flat values, null mask or None) of a list array.

    Uses ``flatten()`` + lengths rather than ``.values``/``.offsets``, which ignore slicing and
    the (possibly non-empty) child ranges behind null entries; Spark batches are often slices.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise TypeError(f"expected a list array, got {arr.type}")
    lens = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offs = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    mask = pc.is_null(arr).to_numpy(zero_copy_only=False) if arr.null_count else None
    return offs, arr.flatten(), mask


def word_hashes(tokens: pa.Array) -> np.ndarray:
    """uint64 SipHash (pandas' fixed key) of each token; each distinct token hashed once."""
    if len(tokens) == 0:
        return np.zeros(0, dtype=np.uint64)
    if tokens.null_count:
        raise ValueError("word lists must not contain null tokens")
    d = pc.dictionary_encode(tokens)
    uniq = d.dictionary.to_numpy(zero_copy_only=False).astype(object)
    dict_h = pd.util.hash_array(uniq, categorize=False)
    return dict_h[d.indices.to_numpy(zero_copy_only=False)]


def _mix_words(wh: np.ndarray, starts: np.ndarray, k: np.ndarray | int, n_max: int) -> np.ndarray:
    """Hashes of word sequences wh[starts[i] : starts[i] + k[i]] (k ≤ n_max), vectorised over i."""
    h = np.broadcast_to(np.asarray(k, dtype=np.uint64), starts.shape).copy()
    with np.errstate(over="ignore"):
        for j in range(n_max):
            step = h * _M + wh[np.minimum(starts + j, len(wh) - 1)]
            h = step if np.isscalar(k) or isinstance(k, int) else np.where(j < k, step, h)
    return fmix64(h)


def ngram_count(n_words: np.ndarray | int, n: int) -> np.ndarray | int:
    """Hashes per document: max(len - n + 1, 1) for non-empty docs, 0 for empty ones."""
    nw = np.asarray(n_words)
    out = np.where(nw > 0, np.maximum(nw - n + 1, 1), 0)
    return out if out.ndim else int(out)


def _layout(words: pa.Array | pa.ChunkedArray, n: int):
    """Word hashes and the n-gram layout per document: (word offsets, word hashes, words per doc,
    n-grams per doc, n-gram offsets, null mask)."""
    offs, flat, mask = list_parts(words)
    lens = np.diff(offs)
    cnt = ngram_count(lens, n)
    out_offs = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(cnt, out=out_offs[1:])
    return offs, word_hashes(flat), lens, cnt, out_offs, mask


def ngram_hashes(words: pa.Array | pa.ChunkedArray, n: int) -> pa.ListArray:
    """list<int64> of word n-gram hashes per document, in position order (duplicates kept, so
    element i is the n-gram starting at word i: see :func:`ngram_text`).

    A document with 1 ≤ len < n words yields one hash of all its words (short texts still
    match each other); an empty document yields []; a null document yields null.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    offs, wh, lens, cnt, out_offs, mask = _layout(words, n)
    out = np.empty(int(out_offs[-1]), dtype=np.uint64)

    full = lens >= n  # documents with at least one complete n-gram
    if full.any():
        c = cnt[full]
        total = int(c.sum())
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
        src = np.repeat(offs[:-1][full], c) + within
        dst = np.repeat(out_offs[:-1][full], c) + within
        out[dst] = _mix_words(wh, src, n, n)
    short = (lens > 0) & (lens < n)
    if short.any():
        out[out_offs[:-1][short]] = _mix_words(wh, offs[:-1][short], lens[short], n - 1)

    offs_type = pa.int32() if out_offs[-1] < 2**31 else pa.int64()
    list_cls = pa.ListArray if offs_type == pa.int32() else pa.LargeListArray
    return list_cls.from_arrays(pa.array(out_offs, offs_type), pa.array(out.view(np.int64), pa.int64()),
                                mask=None if mask is None else pa.array(mask))


def ngram_hashes_text(texts: pa.Array | pa.ChunkedArray, n: int,
                      opts: NormalizeOptions = DEFAULT) -> pa.ListArray:
    """Raw strings -> normalized words -> n-gram hashes (the usual one-call path)."""
    return ngram_hashes(words_array(texts, opts), n)


def ngram_text(words: list[str], index: int, n: int) -> str:
    """Text of the n-gram whose hash is element ``index`` of the document's hash list (for a
    short document, index 0 is all of its words)."""
    if not 0 <= index < max(len(words) - n + 1, 1 if words else 0):
        raise IndexError(f"n-gram index {index} out of range for {len(words)} words, n={n}")
    return " ".join(words[index:index + n])


def matching_ngrams(words: list[str], n: int, hashes: Iterable[int]) -> list[tuple[int, str]]:
    """(hash, n-gram text) for each distinct n-gram of one document whose hash is in ``hashes``,
    in order of first occurrence. ``words`` are the document's normalized tokens (``words()``). Evidence for reports: meant for the few flagged documents."""
    wanted = set(int(h) for h in hashes)
    doc = ngram_hashes(pa.array([words], pa.list_(pa.string())), n)[0].as_py() or []
    seen: dict[int, str] = {}
    for i, h in enumerate(doc):
        if h in wanted and h not in seen:
            seen[h] = ngram_text(words, i, n)
    return list(seen.items())


def ngram_distinct_words(words: pa.Array | pa.ChunkedArray, n: int) -> pa.ListArray:
    """list<int32> aligned with :func:`ngram_hashes`: distinct words in each n-gram.

    Low-information n-grams ("1 1 1 1 1 1 1 1 1 1", "0 0 0 ...") repeat across unrelated texts;
    decontamination drops them by this count. Vectorised: each window's word hashes are sorted
    along the window axis and the value changes counted.
    """
    offs, wh, lens, cnt, out_offs, mask = _layout(words, n)
    starts = np.repeat(offs[:-1], cnt) + (np.arange(int(out_offs[-1]), dtype=np.int64)
                                          - np.repeat(out_offs[:-1], cnt))
    width = np.repeat(np.minimum(lens, n), cnt)  # short docs: one window of all their words
    if len(starts):
        idx = starts[:, None] + np.arange(n)[None, :]
        win = wh[np.minimum(idx, max(len(wh) - 1, 0))]
        valid = np.arange(n)[None, :] < width[:, None]
        win = np.where(valid, win, win[:, :1])  # padding repeats the first word: never adds a distinct one
        win.sort(axis=1)
        distinct = 1 + (np.diff(win, axis=1) != 0).sum(axis=1)
    else:
        distinct = np.zeros(0, dtype=np.int64)
    return pa.ListArray.from_arrays(pa.array(out_offs.astype(np.int32)), pa.array(distinct.astype(np.int32)),
                                    mask=None if mask is None else pa.array(mask))


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence of two token lists (Hyyrö's bit-parallel
    algorithm on Python ints: one add, two ands/ors and one subtraction per token of ``b``, so a
    150 x 150-token pair costs ~50 µs, with no quadratic table)."""
    if not a or not b:
        return 0
    if len(a) < len(b):
        a, b = b, a  # the bit vector over the longer side: fewer loop steps
    pm: dict = {}
    for i, t in enumerate(a):
        pm[t] = pm.get(t, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        u = v & pm.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def token_similarity(a: list, b: list) -> float:
    """Normalised token-level similarity 2 * LCS / (len a + len b) (the Indel ratio of
    difflib/rapidfuzz, on words): 1.0 for equal lists, 1 - (edits / total) roughly for a copy with
    substituted, dropped or inserted words; 0.0 when either list is empty."""
    if not a or not b:
        return 0.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


def contains_span(words: list, span: list) -> int:
    """Start of the first occurrence of ``span`` as a contiguous run in ``words``, or -1."""
    k = len(span)
    if not k or k > len(words):
        return -1
    first = span[0]
    for i in range(len(words) - k + 1):
        if words[i] == first and words[i:i + k] == span:
            return i
    return -1


def span_edit_distance(pattern: list, text: list) -> int:
    """Fewest word edits (substitute, drop, insert) that turn ``pattern`` into some contiguous run
    of ``text`` (Sellers' approximate matching, free start and end in the text), by Myers'
    bit-parallel algorithm on Python ints: a handful of int operations per word of ``text``, so a
    benchmark question with two edited words inside a long seed costs ~100 µs per check.
    len(pattern) when ``text`` is empty; 0 when ``pattern`` is."""
    m = len(pattern)
    if not m or not text:
        return m
    peq: dict = {}
    for i, t in enumerate(pattern):
        peq[t] = peq.get(t, 0) | (1 << i)
    mask, high = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = mask, 0, m
    best = m
    for t in text:
        eq = peq.get(t, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & mask
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = (ph << 1) & mask  # a 0 shifted in: the match may start at any word of the text
        mh = (mh << 1) & mask
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv
        if score < best:
            best = score
    return best


def ngram_hashes_multi(words: pa.Array | pa.ChunkedArray, ks: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each k: (int64 hashes of every complete k-gram of every document, the document index of
    each), with the word hashes computed once for all k. The hashes equal :func:`ngram_hashes`'s
    for documents of at least k words; shorter documents contribute nothing for that k."""
    offs, flat, _ = list_parts(words)
    lens = np.diff(offs)
    wh = word_hashes(flat)
    out = {}
    for k in ks:
        cnt = np.where(lens >= k, lens - k + 1, 0)
        total = int(cnt.sum())
        row = np.repeat(np.arange(len(lens)), cnt)
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        src = offs[:-1][row] + within
        h = _mix_words(wh, src, k, k) if total else np.zeros(0, np.uint64)
        out[k] = (h.view(np.int64), row)
    return out

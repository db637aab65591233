"""Spark-free text kernels: normalization, n-gram hashes, MinHash/LSH (no engine needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from boostqa.text.minhash import (
    EMPTY,
    MinHasher,
    band_hash_lists,
    band_hashes,
    candidate_probability,
    estimated_jaccard,
    jaccard,
    lsh_params,
    signature_is_empty,
    signature_list_array,
    signatures_from_list_array,
)
from boostqa.text.ngrams import (
    matching_ngrams,
    ngram_count,
    ngram_hashes,
    ngram_hashes_text,
    ngram_text,
    word_hashes,
)
from boostqa.text.normalize import (
    NormalizeOptions,
    content_hash,
    content_hash_array,
    normalize,
    normalize_array,
    words,
    words_array,
)

# ---------------------------------------------------------------- helpers

VOCAB = [f"w{i}" for i in range(2000)]


def _paragraph(rng: np.random.Generator, n: int = 60) -> list[str]:
    return [VOCAB[i] for i in rng.integers(0, len(VOCAB), n)]


def _edit(rng: np.random.Generator, words_: list[str], frac: float) -> list[str]:
    out = list(words_)
    for i in rng.choice(len(out), max(1, round(frac * len(out))), replace=False):
        out[i] = VOCAB[int(rng.integers(0, len(VOCAB)))]
    return out


def _lists(rows) -> pa.ListArray:
    return pa.array(rows, pa.list_(pa.int64()))


def _docs(n_docs: int, n_words: int, seed: int = 0) -> pa.Array:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"tok{i}" for i in range(5000)])
    lens = rng.integers(n_words // 2, n_words * 3 // 2 + 1, n_docs)
    return pa.array([" ".join(vocab[rng.integers(0, len(vocab), k)]) for k in lens])


# ---------------------------------------------------------------- normalize

@pytest.mark.parametrize("text, expected", [
    ("Ｑ１２３ ＡＢＣ", "q123 abc"),                        # NFKC full-width letters/digits
    ("Hello, WORLD!!", "hello world"),                      # case + punctuation
    ("x+y=z; (a)", "x y z a"),                              # symbols become spaces, not joins
    ("  tabs\tand\nnewlines\u00a0nbsp\u3000ideo  ", "tabs and newlines nbsp ideo"),
    ("zero\u200bwidth", "zerowidth"),                       # format chars removed
    ("中文测试", "中 文 测 试"),                              # CJK: one token per ideograph
    ("日本語のテキスト", "日 本 語 の テ キ ス ト"),             # kanji + kana
    ("ﾃｽﾄ", "テ ス ト"),                                    # half-width kana -> NFKC -> split
    ("한국어 abc", "한 국 어 abc"),
    ("What's 2+2？", "what s 2 2"),                          # full-width question mark
    ("café", "café"),                                       # accents kept by default
    ("", ""),
    ("  !!! ", ""),
])
def test_normalize_cases(text, expected):
    assert normalize(text) == expected


def test_normalize_none_and_nulls():
    assert normalize(None) is None
    assert words(None) is None
    out = normalize_array(pa.array(["A", None, "b"]))
    assert out.to_pylist() == ["a", None, "b"]


def test_normalize_options():
    assert normalize("Café 2024, 3.14", NormalizeOptions(strip_accents=True, collapse_digits=True)) == "cafe 0 0 0"
    assert normalize("Hello, World", NormalizeOptions(lowercase=False, strip_punctuation=False)) == "Hello, World"
    assert normalize("中文", NormalizeOptions(split_cjk=False)) == "中文"
    assert normalize("Ｑ１", NormalizeOptions(nfkc=False)) == "ｑ１"
    assert normalize("が", NormalizeOptions(strip_accents=True)) == "が"  # dakuten is not an accent


def test_words_trimmed_and_empty():
    assert words("  a  b  ") == ["a", "b"]
    assert words("") == []
    assert words(" ... ") == []
    arr = words_array(pa.array(["x y ", "", None, "中文"]))
    assert arr.to_pylist() == [["x", "y"], [], None, ["中", "文"]]


def test_array_equals_scalar():
    texts = ["Ｑ１: What's 2+2？", "  İstanbul ΟΔΟΣ Straße  ", "中文テスト한국어", "a\u00a0b\x1cc", "", None,
             "Café — naïve façade…", "x\u2028y\u2029z", "٣٤ digits"]
    for opts in (NormalizeOptions(), NormalizeOptions(strip_accents=True, collapse_digits=True),
                 NormalizeOptions(nfkc=False, lowercase=False, strip_punctuation=False, split_cjk=False)):
        arr = normalize_array(pa.array(texts), opts).to_pylist()
        assert arr == [normalize(t, opts) for t in texts]
        assert words_array(pa.array(texts), opts).to_pylist() == [words(t, opts) for t in texts]
        # and normalized text splits exactly like Python's str.split()
        assert [None if t is None else t.split() for t in arr] == [words(t, opts) for t in texts]


def test_chunked_and_large_string_inputs():
    texts = ["A b", None, "c,d"]
    expected = normalize_array(pa.array(texts)).to_pylist()
    assert normalize_array(pa.chunked_array([texts[:1], texts[1:]])).to_pylist() == expected
    assert normalize_array(pa.array(texts, pa.large_string())).to_pylist() == expected
    assert normalize_array(pa.array(texts, pa.string_view())).to_pylist() == expected


def test_content_hash():
    q = pa.array(["What is 2+2?", "what is 2 + 2", None, "What is 2+2?", "Q"])
    a = pa.array(["4", "4.", "4", "5", None])
    hx = content_hash_array(q, a).to_pylist()
    assert hx[0] == hx[1]                   # equal after normalization
    assert hx[2] is None                    # null question -> null
    assert hx[0] != hx[3]                   # the answer matters
    assert hx[4] == content_hash("Q", "")   # null answer == empty answer
    assert all(len(h) == 32 for h in hx if h)
    i64 = content_hash_array(q, a, digest="int64")
    assert i64.type == pa.int64() and i64.to_pylist()[2] is None
    assert i64[0].as_py() == i64[1].as_py() != i64[3].as_py()
    # the separator keeps ("a b", "c") and ("a", "b c") apart
    assert content_hash("a b", "c") != content_hash("a", "b c")
    # golden values: this key is stored in Delta; a change must be deliberate
    assert content_hash("What is 2+2?", "4") == "658a5d61965f11a97be5e46ca4f9f94d"
    assert content_hash("What is 2+2?", "4", digest="int64") == 7316763218332815785


# ---------------------------------------------------------------- n-grams

def test_ngram_counts_short_and_empty():
    w = pa.array([["a", "b", "c", "d", "e", "f"], ["a", "b"], [], None, ["x", "y", "z", "w", "v"], ["solo"]],
                 pa.list_(pa.string()))
    h = ngram_hashes(w, 5)
    lens = [None if x is None else len(x) for x in h.to_pylist()]
    assert lens == [2, 1, 0, None, 1, 1]
    assert h.type == pa.list_(pa.int64())
    assert ngram_count(np.array([0, 1, 4, 5, 9]), 5).tolist() == [0, 1, 1, 1, 5]
    rng = np.random.default_rng(3)
    docs = [list(rng.choice(VOCAB, k)) for k in rng.integers(0, 30, 200)]
    for n in (1, 3, 5, 13):
        got = [len(x) for x in ngram_hashes(pa.array(docs, pa.list_(pa.string())), n).to_pylist()]
        assert got == [max(len(d) - n + 1, 1) if d else 0 for d in docs]


def test_same_ngram_same_hash_everywhere():
    a = ngram_hashes_text(pa.array(["the quick brown fox jumps over the lazy dog"]), 5)[0].as_py()
    b = ngram_hashes_text(pa.array(["unrelated words first", "The QUICK brown fox, jumps!"]), 5)[1].as_py()
    assert b == [a[0]]                       # "the quick brown fox jumps" in another doc and batch
    # a doc shorter than n hashes like the same word sequence as a k-gram
    short = ngram_hashes_text(pa.array(["quick brown fox"]), 5)[0].as_py()
    tri = ngram_hashes_text(pa.array(["the quick brown fox"]), 3)[0].as_py()
    assert short == [tri[1]]
    # short docs with identical words match each other, different order does not
    s2 = ngram_hashes_text(pa.array(["Quick brown fox.", "fox brown quick"]), 5).to_pylist()
    assert s2[0] == short and s2[1] != short
    # n-gram hashes are distinct for distinct n-grams (no structural collisions)
    rng = np.random.default_rng(1)
    docs = [" ".join(rng.choice(VOCAB, 400)) for _ in range(50)]
    flat = np.concatenate([np.array(x) for x in ngram_hashes_text(pa.array(docs), 5).to_pylist()])
    grams = {tuple(d.split()[i:i + 5]) for d in docs for i in range(396)}
    assert len(np.unique(flat)) == len(grams)


def test_ngram_golden_values():
    assert word_hashes(pa.array(["hello", "世界"])).view(np.int64).tolist() == \
        [-1714389747793682273, 5614493306328806082]
    h = ngram_hashes(pa.array([["the", "quick", "brown", "fox", "jumps", "over"], ["the", "quick"]]), 5)
    assert h.to_pylist() == [[-409314695519893264, -1890729105420636204], [5548898995957754626]]


def test_ngram_batch_split_invariance():
    texts = _docs(300, 40, seed=5)
    texts = pa.array(texts.to_pylist()[:100] + ["", None, "  tail  "] + texts.to_pylist()[100:])
    whole = ngram_hashes_text(texts, 5).to_pylist()
    for cuts in ([0, 1, 2, 3, len(texts)], [0, 50, 101, 102, 250, len(texts)]):
        parts = [ngram_hashes_text(texts.slice(s, e - s), 5).to_pylist() for s, e in zip(cuts, cuts[1:])]
        assert sum(parts, []) == whole
    # list input that is itself a slice (offsets not starting at 0)
    w = words_array(texts)
    assert ngram_hashes(w.slice(7, 100), 5).to_pylist() == whole[7:107]
    assert ngram_hashes(pa.chunked_array([w.slice(0, 10), w.slice(10)]), 5).to_pylist() == whole


def test_ngram_text_and_matching():
    ws = "the quick brown fox jumps over the lazy dog".split()
    assert ngram_text(ws, 0, 5) == "the quick brown fox jumps"
    assert ngram_text(ws, 4, 5) == "jumps over the lazy dog"
    assert ngram_text(["a", "b"], 0, 5) == "a b"
    with pytest.raises(IndexError):
        ngram_text(ws, 5, 5)
    bench = ngram_hashes_text(pa.array(["over the lazy dog. The quick brown fox jumps"]), 5)[0].as_py()
    got = matching_ngrams(ws, 5, bench)
    assert got == [(bench[-1], "the quick brown fox jumps")]   # the only shared 5-gram
    assert matching_ngrams(["a", "b"], 5, ngram_hashes_text(pa.array(["A b"]), 5)[0].as_py())[0][1] == "a b"
    assert matching_ngrams(ws, 5, [123]) == []


# ---------------------------------------------------------------- MinHash / LSH

def test_signatures_shape_dtype_and_empty():
    mh = MinHasher(num_perm=64)
    sh = _lists([[1, 2, 3], [], None, [5]])
    sig = mh.signatures(sh)
    assert sig.shape == (4, 64) and sig.dtype == np.uint32
    assert signature_is_empty(sig).tolist() == [False, True, True, False]
    assert (sig[1] == EMPTY).all()
    # order and duplicates inside a document do not matter
    assert (mh.signatures(_lists([[3, 1, 2, 2, 1]]))[0] == sig[0]).all()
    assert mh.signatures(_lists([])).shape == (0, 64)


def test_signatures_batch_split_and_window_invariance():
    sh = ngram_hashes_text(_docs(3000, 60, seed=2), 5)
    sh = pa.concat_arrays([sh.slice(0, 1000), _lists([[], None, [42]]), sh.slice(1000)])
    mh = MinHasher()
    whole = mh.signatures(sh)
    n = len(sh)
    parts = [mh.signatures(sh.slice(s, e - s)) for s, e in ((0, 999), (999, 2100), (2100, n))]
    assert np.array_equal(np.concatenate(parts), whole)
    assert np.array_equal(mh.signatures(pa.chunked_array([sh.slice(0, 5), sh.slice(5)])), whole)
    # tiny windows cut documents in the middle: partial minima must combine to the same result
    tiny = MinHasher(max_block_bytes=1)  # window = 256 shingles
    assert np.array_equal(tiny.signatures(sh), whole)
    bl = mh.band_lists(sh, 14, 9)
    split = pa.concat_arrays([mh.band_lists(sh.slice(0, 1001), 14, 9), mh.band_lists(sh.slice(1001), 14, 9)])
    assert bl.to_pylist() == split.to_pylist()


def test_minhasher_deterministic_across_instances_and_processes():
    texts = _docs(200, 50, seed=9)
    sh = ngram_hashes_text(texts, 5)
    s1, s2 = MinHasher(seed=42).signatures(sh), MinHasher(seed=42).signatures(sh)
    assert np.array_equal(s1, s2)
    assert not np.array_equal(s1, MinHasher(seed=43).signatures(sh))
    # a fresh interpreter with another PYTHONHASHSEED gives bit-identical results
    code = (
        "import json,sys,numpy as np,pyarrow as pa\n"
        "from boostqa.text.ngrams import ngram_hashes_text\n"
        "from boostqa.text.minhash import MinHasher, band_hashes\n"
        "t=pa.array(json.load(sys.stdin))\n"
        "h=ngram_hashes_text(t,5); s=MinHasher().signatures(h)\n"
        "print(json.dumps({'h':h.to_pylist(),'s':s.tolist(),'b':band_hashes(s,14,9).tolist()}))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts.to_pylist()), env=env,
                         capture_output=True, text=True, check=True)
    other = json.loads(res.stdout)
    assert other["h"] == sh.to_pylist()
    assert other["s"] == s1.tolist()
    assert other["b"] == band_hashes(s1, 14, 9).tolist()


def test_minhash_golden_values():
    mh = MinHasher()
    s = mh.signatures(ngram_hashes(pa.array([["the", "quick", "brown", "fox", "jumps", "over"]]), 5))
    assert s[0, :4].tolist() == [338959765, 1102411739, 1420002197, 2216052220]
    assert band_hashes(s, 14, 9)[0, :2].tolist() == [4746091976563081922, -4370335154404902124]


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8, 0.95])
def test_estimated_jaccard_tracks_true_jaccard(target):
    rng = np.random.default_rng(int(target * 100))
    mh = MinHasher()
    union = 400
    common = round(target * union)
    only = (union - common) // 2
    A, B, true = [], [], []
    for _ in range(50):
        u = rng.integers(-2**63, 2**63 - 1, union, dtype=np.int64)
        a = np.concatenate([u[:common], u[common:common + only]])
        b = np.concatenate([u[:common], u[common + only:common + 2 * only]])
        A.append(a.tolist()), B.append(b.tolist()), true.append(jaccard(a, b))
    est = estimated_jaccard(mh.signatures(_lists(A)), mh.signatures(_lists(B)))
    true = np.array(true)
    assert abs(true.mean() - target) < 0.01
    assert np.abs(est - true).mean() < 0.05
    assert abs((est - true).mean()) < 0.02     # no bias


def test_jaccard_helpers():
    assert jaccard(np.array([1, 2, 3]), np.array([2, 3, 4, 4])) == 0.5
    assert jaccard(np.array([]), np.array([])) == 0.0
    mh = MinHasher(num_perm=32)
    s = mh.signatures(_lists([[1, 2], []]))
    assert estimated_jaccard(s[0], s[0]) == 1.0
    assert estimated_jaccard(s[1], s[1]) == 0.0  # empty docs are never near-duplicates


def test_band_hashes():
    mh = MinHasher()
    sig = mh.signatures(_lists([[1, 2, 3], [1, 2, 3], [9, 8, 7], []]))
    bh = band_hashes(sig, 14, 9)
    assert bh.shape == (4, 14) and bh.dtype == np.int64
    assert (bh[0] == bh[1]).all() and not (bh[0] == bh[2]).any()
    # identical rows in different bands still hash differently
    const = np.full((1, 128), 7, np.uint32)
    assert len(set(band_hashes(const, 14, 9)[0].tolist())) == 14
    with pytest.raises(ValueError):
        band_hashes(sig, 15, 9)
    # empty docs collide with each other in band_hashes, but band_hash_lists keeps them out
    assert (bh[3] == band_hashes(mh.signatures(_lists([[]])), 14, 9)[0]).all()
    lists = band_hash_lists(sig, 14, 9, null_mask=np.array([False, False, True, False]))
    assert [None if x is None else len(x) for x in lists.to_pylist()] == [14, 14, None, 0]
    assert lists[0].as_py() == bh[0].tolist()


def test_signature_storage_roundtrip():
    sig = MinHasher(num_perm=16).signatures(_lists([[1], [2, 3], []]))
    arr = signature_list_array(sig)
    assert arr.type == pa.list_(pa.int32())
    assert np.array_equal(signatures_from_list_array(arr), sig)


def test_lsh_params_sanity():
    b, r = lsh_params(0.7, 128)
    assert (b, r) == (14, 9) and b * r <= 128
    rows = [lsh_params(t, 128)[1] for t in (0.5, 0.7, 0.8, 0.9)]
    assert rows == sorted(rows) and rows[0] < rows[-1]      # higher threshold -> more rows per band
    # weighting false negatives more lowers the effective threshold
    b2, r2 = lsh_params(0.7, 128, 0.2, 0.8)
    assert candidate_probability(0.6, b2, r2) > candidate_probability(0.6, b, r)
    assert candidate_probability(0.0, b, r) == 0.0 and candidate_probability(1.0, b, r) == 1.0
    p = candidate_probability(np.array([0.3, 0.7, 0.9]), b, r)
    assert p[0] < 0.01 and 0.3 < p[1] < 0.6 and p[2] > 0.99


def test_near_duplicates_share_a_band_unrelated_do_not():
    """200 pairs of 60-word paragraphs with 5 % of the words replaced, vs 200 unrelated pairs.

    Whether 5 % edits are "near duplicates at 0.7" depends on the shingle: each replaced word
    breaks up to n shingles, so the true Jaccard is ~0.91 for word sets (n=1), ~0.82 for
    2-grams, ~0.75 for 3-grams and ~0.63 for 5-grams. At the 0.7 threshold (14 bands x 9 rows)
    word-set/2-gram pairs are found; 5-gram pairs mostly are not (P(0.63) ~ 0.2). For every n
    the observed rate must match the S-curve at the pairs' true Jaccard, and unrelated pairs
    must never share a band.
    """
    bands, rows = lsh_params(0.7, 128)
    mh = MinHasher()
    rng = np.random.default_rng(2024)
    base = [_paragraph(rng) for _ in range(200)]
    near = [_edit(rng, p, 0.05) for p in base]
    other = [_paragraph(rng) for _ in range(200)]
    to_arr = lambda d: pa.array(d, pa.list_(pa.string()))  # noqa: E731
    rates = {}
    for n, min_rate in ((1, 0.97), (2, 0.85), (3, None), (5, None)):
        ha, hb, ho = (ngram_hashes(to_arr(d), n) for d in (base, near, other))
        ba, bb, bo = (band_hashes(mh.signatures(h), bands, rows) for h in (ha, hb, ho))
        found = (ba == bb).any(axis=1)
        true = np.array([jaccard(np.array(x), np.array(y)) for x, y in zip(ha.to_pylist(), hb.to_pylist())])
        expected = float(candidate_probability(true, bands, rows).mean())
        tol = 4 * np.sqrt(expected * (1 - expected) / len(found)) + 0.02
        assert abs(found.mean() - expected) < tol, (n, found.mean(), expected)
        if min_rate is not None:
            assert found.mean() >= min_rate, (n, found.mean())
        assert not (ba == bo).any(), n                      # unrelated pairs share no band
        rates[n] = (round(float(true.mean()), 3), round(float(found.mean()), 3), round(expected, 3))
    print("\nn -> (true Jaccard, found rate, S-curve):", rates)


# ---------------------------------------------------------------- throughput (printed, not asserted)

def test_signature_throughput(capsys):
    texts = _docs(20_000, 80, seed=11)
    t0 = time.perf_counter()
    w = words_array(texts)
    t1 = time.perf_counter()
    sh = ngram_hashes(w, 5)
    t2 = time.perf_counter()
    mh = MinHasher()
    sig = mh.signatures(sh)
    t3 = time.perf_counter()
    bl = band_hash_lists(sig, 14, 9)
    t4 = time.perf_counter()
    n = len(texts)
    assert sig.shape == (n, 128) and len(bl) == n
    with capsys.disabled():
        print(f"\n[throughput] {n} docs x ~80 words, {len(sh.flatten())} 5-gram shingles, 128 perms, 1 process: "
              f"normalize+split {n / (t1 - t0):,.0f} docs/s, 5-gram hashes {n / (t2 - t1):,.0f} docs/s, "
              f"signatures {n / (t3 - t2):,.0f} docs/s, bands {n / (t4 - t3):,.0f} docs/s, "
              f"end-to-end {n / (t4 - t0):,.0f} docs/s")


def test_ngram_distinct_words_aligns_with_hashes():
    from boostqa.text.ngrams import ngram_distinct_words, ngram_hashes

    w = pa.array([["1"] * 12, ["a", "b", "c"], [], None, list("abcdefghijkl"), ["x", "y", "x", "y"]],
                 pa.list_(pa.string()))
    d = ngram_distinct_words(w, 10).to_pylist()
    assert d == [[1, 1, 1], [3], [], None, [10, 10, 10], [2]]
    assert [len(x) if x is not None else None for x in d] == \
        [len(x) if x is not None else None for x in ngram_hashes(w, 10).to_pylist()]

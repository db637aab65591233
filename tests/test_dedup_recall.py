"""Issue 13: near copies with a few edited words (dedup recall pass), short / embedded / reformatted
benchmark items (decontam span detector, label normalisation, embedding windows). Small hand-built
tables; the numbers checked are the ones the detectors promise."""

from __future__ import annotations

import json
import random

import pytest

from boostqa.runner import Runner
from boostqa.stages.decontam import _windows
from boostqa.text.ngrams import contains_span, lcs_length, span_edit_distance, token_similarity
from boostqa.text.normalize import NormalizeOptions, normalize, words
from tests.conftest import write_jsonl


def _vocab(size: int = 800) -> list[str]:
    rng, cons, vows = random.Random(13), "bcdfghjklmnprstvz", "aeiou"
    out: set[str] = set()
    while len(out) < size:
        out.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.randint(2, 3))))
    return sorted(out)


VOCAB = _vocab()
FIELDS = {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}


def _text(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(n)]


def _shingles(w: list[str], n: int = 5) -> set:
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


# ---------------------------------------------------------------- kernels

def test_lcs_and_token_similarity_match_a_dynamic_programme():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
        assert lcs_length(a, b) == t[-1][-1]
    w = _text(rng, 40)
    edited = list(w)
    edited[10], edited[25] = "zzz", "yyy"
    assert token_similarity(w, edited) == pytest.approx(38 / 40)
    assert token_similarity(w, w) == 1.0 and token_similarity([], w) == 0.0
    assert contains_span(["x", "a", "b", "c"], ["a", "b"]) == 1 and contains_span(["a"], ["a", "b"]) == -1


def test_span_edit_distance_matches_a_dynamic_programme():
    """Fewest word edits from a pattern to any run of the text (free start and end)."""
    rng = random.Random(1)
    for _ in range(300):
        p = [rng.choice("abcde") for _ in range(rng.randint(1, 70))]  # > 64 words: several machine words
        t = [rng.choice("abcde") for _ in range(rng.randint(0, 90))]
        col = list(range(len(p) + 1))
        best = len(p)
        for y in t:
            new = [0]
            for i, x in enumerate(p):
                new.append(min(col[i] + (x != y), col[i + 1] + 1, new[i] + 1))
            col = new
            best = min(best, col[-1])
        assert span_edit_distance(p, t) == best
    q = _text(rng, 15)
    edited = q[:4] + ["zzz"] + q[5:11] + q[12:]  # one word swapped, one dropped
    assert span_edit_distance(q, _text(rng, 30) + edited + _text(rng, 30)) == 2
    assert span_edit_distance(q, q) == 0 and span_edit_distance(q, []) == 15 and span_edit_distance([], q) == 0


def test_choice_labels_and_prefixes_normalise_alike():
    o = NormalizeOptions(strip_labels=True)
    inline = "Q: Which gas is most abundant in air? (a) oxygen (b) nitrogen (c) argon (d) helium"
    lines = "Question: Which gas is most abundant in air?\nA. oxygen\nB. nitrogen\nC. argon\nD. helium"
    other = "QUESTION 4. WHICH GAS IS MOST ABUNDANT IN AIR? A) OXYGEN  B) NITROGEN  C) ARGON  D) HELIUM"
    want = "which gas is most abundant in air oxygen nitrogen argon helium"
    assert normalize(inline, o) == normalize(lines, o) == normalize(other, o) == want
    assert normalize("(a) x (b) y", o) == normalize("A. x\nB. y", o) == "x y"
    # ordinary words survive: the article "a", initials, a letter inside a sentence
    assert normalize("I have a (small) dog and plan A. It is a good plan", o) == \
        "i have a small dog and plan a it is a good plan"
    assert normalize(inline) != want  # off by default (dedup keeps its HEAD behaviour)


def test_windows_cover_a_long_text():
    text = " ".join(f"w{i}" for i in range(100))
    wins = _windows(text, 40, 4)
    assert len(wins) == 4 and wins[0].split()[0] == "w0" and wins[-1].split()[-1] == "w99"
    assert all(len(w.split()) == 40 for w in wins)
    assert _windows("short text", 40, 4) == [] and _windows(text, 0, 4) == []


# ---------------------------------------------------------------- dedup recall pass

def _dedup(spark, make_settings, tmp_path, rows, **dedup):
    write_jsonl(tmp_path / "s.jsonl", rows)
    settings = make_settings(sources=[{"name": "s", "path": str(tmp_path / "s.jsonl"), "fields": FIELDS}],
                             tracking={"enabled": False}, dedup=dedup)
    runner = Runner(settings, spark=spark)
    _, res = runner.run(["ingest", "dedup"])
    dups = {r.source_row_id: r for r in runner.lake.read("quarantine.duplicates").collect()}
    return runner, res[1], dups


def _recall_rows():
    rng = random.Random(7)
    base = _text(rng, 40)  # a 40-word question
    near = list(base)
    near[12], near[27] = "qqqq", "wwww"  # 2 edited words
    tmpl = _text(rng, 20)  # two texts sharing a 20-word template, different otherwise
    clean_a, clean_b = tmpl + _text(rng, 20), tmpl + _text(rng, 20)
    short = _text(rng, 10)  # one edited word in a 10-word question: a different question
    short2 = list(short)
    short2[5] = "eeee"
    rows = [{"id": "orig", "question": " ".join(base), "answer": "yes"},
            {"id": "near", "question": " ".join(near), "answer": "yes"},
            {"id": "clean_a", "question": " ".join(clean_a), "answer": "no"},
            {"id": "clean_b", "question": " ".join(clean_b), "answer": "no"},
            {"id": "short", "question": " ".join(short), "answer": "x"},
            {"id": "short2", "question": " ".join(short2), "answer": "x"}]
    # what makes the case hard: the 5-word-shingle Jaccard of the near copy is far below 0.8
    j5 = len(_shingles(base + ["yes"]) & _shingles(near + ["yes"])) / len(_shingles(base + ["yes"]) |
                                                                          _shingles(near + ["yes"]))
    assert j5 < 0.65
    assert token_similarity(words(" ".join(clean_a)), words(" ".join(clean_b))) < 0.7
    return rows


def test_near_copy_with_two_edited_words_is_clustered(spark, make_settings, tmp_path):
    rows = _recall_rows()
    runner, res, dups = _dedup(spark, make_settings, tmp_path, rows)
    assert set(dups) <= {"orig", "near"} and len(dups) == 1  # one of the pair, nothing else
    d = next(iter(dups.values()))
    assert (d.reason, d.detector) == ("near_duplicate", "token")
    assert d.token_similarity == pytest.approx(2 * 39 / 82, abs=1e-9)  # 39 of 41 words align on each side
    assert d.similarity < 0.8 and "token similarity 0.951" in d.detail
    silver = {r.source_row_id: r for r in runner.lake.read("silver.seeds").collect()}
    assert {"clean_a", "clean_b", "short", "short2"} <= set(silver)
    m = res.metrics()
    assert m["recall.verified"] == 1 and m["recall.candidates"] >= 1
    assert (m["recall.bands"], m["recall.rows_per_band"]) == (64, 4)
    # every kept seed is in the recall index; the short ones with the NO_BAND marker only
    idx = runner.lake.read("silver.seed_recall_bands").collect()
    by_uid: dict[str, set] = {}
    for r in idx:
        by_uid.setdefault(r.seed_uid, set()).add(r.band)
    assert set(by_uid) == {r.seed_uid for r in silver.values()}
    short_uids = {silver[k].seed_uid for k in ("short", "short2")}
    assert all(by_uid[u] == {-1} for u in short_uids)
    assert all(len(b) == 64 for u, b in by_uid.items() if u not in short_uids)


def test_recall_pass_off_is_the_head_behaviour(spark, make_settings, tmp_path):
    _, res, dups = _dedup(spark, make_settings, tmp_path, _recall_rows(), recall={"enabled": False})
    assert dups == {} and "recall.candidates" not in res.metrics()


def test_incremental_near_copy_matches_an_earlier_seed(spark, make_settings, tmp_path):
    rows = _recall_rows()
    first, second = [r for r in rows if r["id"] != "near"], [r for r in rows if r["id"] == "near"]
    runner, _, dups = _dedup(spark, make_settings, tmp_path, first)
    assert dups == {}
    kept = {r.source_row_id: r.seed_uid for r in runner.lake.read("silver.seeds").collect()}
    write_jsonl(tmp_path / "s2.jsonl", second)
    settings = make_settings(sources=[{"name": "s", "path": str(tmp_path / "s.jsonl"), "fields": FIELDS},
                                      {"name": "t", "path": str(tmp_path / "s2.jsonl"), "fields": FIELDS}],
                             tracking={"enabled": False})
    r2 = Runner(settings, spark=spark)
    _, res = r2.run(["ingest", "dedup"])
    assert (res[1].pending, res[1].rejected) == (1, 1)
    [d] = r2.lake.read("quarantine.duplicates").collect()
    assert (d.source_row_id, d.representative, d.detector) == ("near", kept["orig"], "token")


# ---------------------------------------------------------------- decontam: spans and formats

def _decontam(spark, make_settings, tmp_path, seeds, items, **decontam):
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_jsonl(tmp_path / "bench.jsonl", items)
    write_jsonl(tmp_path / "seeds.jsonl", seeds)
    bench = [{"name": "quiz", "path": str(tmp_path / "bench.jsonl"), "fields": FIELDS}]
    settings = make_settings(sources=[{"name": "s", "path": str(tmp_path / "seeds.jsonl"), "fields": FIELDS}],
                             benchmarks=bench, tracking={"enabled": False}, lake={"root": str(tmp_path / "lake")},
                             decontam={"embedding": {"enabled": False}, **decontam})
    runner = Runner(settings, spark=spark)
    runner.run(["ingest", "bench", "dedup", "decontam"])
    return {r.source_row_id: r for r in runner.lake.read("quarantine.contaminated")
            .join(runner.lake.read("silver.seeds").select("seed_uid", "source_row_id"), "seed_uid").collect()}


ITEMS = [
    {"id": "b1", "question": "Who painted the ceiling of the Sistine Chapel?", "answer": "Michelangelo"},  # 8 words
    {"id": "b2", "question": "Which of the following is true?", "choices": ["Ice sinks in water", "Water boils at 50 C",
                                                                       "Salt dissolves in water", "Iron floats"],
     "answer": "Salt dissolves in water"},  # generic stem: needs its choices
    {"id": "b3", "question": "Which of the following is true?", "choices": ["Cats bark", "Dogs meow", "Birds fly",
                                                                       "Fish walk"], "answer": "Birds fly"},
    {"id": "b4", "question": "What is photosynthesis?", "answer": "Plants making sugar from light"},  # 3 words
]
SEEDS = [
    {"id": "embedded", "question": "Here is a practice item from my notes. Who painted the ceiling of the "
                                   "Sistine Chapel? Explain your reasoning step by step and name the artist.",
     "answer": "It was painted in the 1500s by a Florentine artist."},
    {"id": "inline", "question": "Q: WHICH OF THE FOLLOWING IS TRUE? (a) Ice sinks in water (b) Water boils at 50 C "
                                 "(c) Salt dissolves in water (d) Iron floats", "answer": "C"},
    {"id": "lines", "question": "Question: Which of the following is true?\nA. Cats bark\nB. Dogs meow\nC. Birds fly\n"
                                "D. Fish walk", "answer": "C"},
    {"id": "generic_clean", "question": "Which of the following is true? (a) Gold rusts (b) Lead is light "
                                        "(c) Copper conducts (d) Glass is a metal", "answer": "c"},
    {"id": "short_clean", "question": "Describe what photosynthesis is in plants and why it matters.",
     "answer": "It turns light into chemical energy."},
    {"id": "short_with_answer", "question": "What is photosynthesis? Answer in one line.",
     "answer": "Plants making sugar from light, in chloroplasts."},
]


def test_short_embedded_and_reformatted_items_are_flagged_with_their_detector(spark, make_settings, tmp_path):
    flagged = _decontam(spark, make_settings, tmp_path, SEEDS, ITEMS)
    assert set(flagged) == {"embedded", "inline", "lines", "short_with_answer"}  # no clean seed
    e = flagged["embedded"]
    assert (e.item_id is not None, e.detector, e.method, e.reason) == (True, "span", "span", "benchmark_span")
    assert e.ngram == "who painted the ceiling of the sistine chapel" and "whole question contained" in e.detail
    # the stem is generic: matched with its choices (the question + choices n-grams fire too)
    assert flagged["inline"].detector == flagged["lines"].detector == "ngram+span+choices"
    assert flagged["short_with_answer"].detector == "span+answer"


def test_inline_choices_match_choice_lines_through_ngrams(spark, make_settings, tmp_path):
    """A >= 10-word item reformatted with inline "(a) x (b) y" choices is caught by the n-grams of
    question + choices once labels are normalised; with the HEAD switches it is not."""
    item = {"id": "m", "question": "Which planet has the shortest orbit?", "choices": ["Mercury", "Venus", "Earth",
                                                                                      "Mars"], "answer": "Mercury"}
    seed = {"id": "r", "question": "Q: Which planet has the shortest orbit? (a) Mercury (b) Venus (c) Earth (d) Mars",
            "answer": "A"}
    on = _decontam(spark, make_settings, tmp_path / "on", [seed], [item], span={"enabled": False})
    assert on["r"].detector == "ngram"
    off = _decontam(spark, make_settings, tmp_path / "off", [seed], [item], span={"enabled": False},
                    choice_ngrams=False, normalize={"strip_labels": False})
    assert off == {}


def test_an_edited_copy_with_no_surviving_ngram_is_a_fuzzy_span(spark, make_settings, tmp_path):
    """Two or three edited words leave no 10-gram in a 15-20-word question: the fuzzy span (at most
    20 % word edits, exact edit distance) catches it; a different question on the same template,
    or a copy with too many edits, is not flagged."""
    rng = random.Random(21)
    long_q = _text(rng, 18)
    short_q = _text(rng, 11)  # < 15 words: the pattern is question + choices
    choices = _text(rng, 4)
    items = [{"id": "long", "question": " ".join(long_q), "answer": "yes"},
             {"id": "short", "question": " ".join(short_q), "choices": choices, "answer": choices[0]}]
    edit2 = long_q[:6] + ["qqq"] + long_q[7:14] + long_q[15:]  # a swap at 6, a drop at 14: 3 edits = 16 %
    edit2[2] = "www"
    too_many = list(long_q)
    for i in (1, 5, 9, 13):  # 4 of 18 = 22 %
        too_many[i] = "xxx"
    short_edit = short_q[:5] + ["ppp"] + short_q[6:]
    template = short_q[:5] + ["ppp"] + short_q[6:]  # the same question with other choices: another item
    seeds = [{"id": "edited", "question": "Review: " + " ".join(edit2), "answer": "yes"},
             {"id": "too_many", "question": " ".join(too_many), "answer": "yes"},
             {"id": "short_edited", "question": " ".join(short_edit), "choices": choices, "answer": "x"},
             {"id": "template", "question": " ".join(template), "choices": _text(rng, 4), "answer": "z"},
             {"id": "verbatim", "question": " ".join(long_q), "answer": "no"}]
    assert all(not (_shingles(long_q, 10) & _shingles(words(s["question"]), 10)) for s in seeds[:2])
    flagged = _decontam(spark, make_settings, tmp_path, seeds, items)
    assert set(flagged) == {"edited", "short_edited", "verbatim"}
    e = flagged["edited"]
    assert (e.detector, e.method, e.reason) == ("fuzzy_span", "span", "benchmark_span")
    assert e.ngram == " ".join(long_q) + " [3 word edits]" and "(fuzzy_span)" in e.detail
    s = flagged["short_edited"]  # matched on question + choices
    assert (s.detector, s.ngram) == ("fuzzy_span", " ".join(short_q + choices) + " [1 word edit]")
    assert flagged["verbatim"].detector == "ngram"  # an exact n-gram already says it: no fuzzy label
    off = _decontam(spark, make_settings, tmp_path / "off", seeds, items, span={"fuzzy_enabled": False})
    assert set(off) == {"verbatim"}  # decontam.span.fuzzy_enabled: false switches the detector off


# ---------------------------------------------------------------- memory-lean paths (issue 15)

def test_band_pair_counts_by_groups_equal_a_brute_force_count(spark):
    """Pairs sharing >= k bands, counted on 64-bit keys a band group at a time, are exactly the
    pairs a brute-force count over (band, hash) finds, new-new once and new-indexed once."""
    from itertools import combinations

    from pyspark.sql import functions as F

    from boostqa.stages import lsh

    rng = random.Random(7)
    new = {f"n{i:02d}": [rng.randint(0, 3) for _ in range(8)] for i in range(30)}  # few values: many collisions
    old = {f"o{i:02d}": [rng.randint(0, 3) for _ in range(8)] for i in range(20)}
    sk = spark.createDataFrame([(k, v) for k, v in new.items()], "seed_uid string, bands array<bigint>")
    index = spark.createDataFrame([(k, b, h) for k, v in old.items() for b, h in enumerate(v)],
                                  "seed_uid string, band int, band_hash bigint")
    rows = {**new, **old}
    truth = {}
    for a, b in combinations(sorted(rows), 2):
        if a in old and b in old:
            continue  # two indexed rows were compared when the later one was new
        shared = sum(x == y for x, y in zip(rows[a], rows[b]))
        if shared >= 3:
            truth[(a, b)] = shared
    for groups in (1, 4):
        got = {(r["a"], r["b"]): r["shared"] for r in
               lsh.band_pair_counts(sk, index, min_shared=3, groups=groups).collect()}
        assert got == truth, groups
    assert len(truth) > 20  # the case is not trivially empty
    # without an index: only the new rows' pairs
    alone = {(r["a"], r["b"]) for r in lsh.band_pair_counts(sk, None, 3, 2).where(F.col("shared") >= 3).collect()}
    assert alone == {p for p in truth if p[0] in new and p[1] in new}


def test_band_pairs_on_64_bit_keys_are_the_pairs_sharing_a_band_in_both_orders(spark):
    """band_pairs (the main pass's and the gate's candidates) joins hashed keys, not strings: it
    still yields every (new row, other row) sharing any band, a new-new pair in both orders and a
    new-indexed pair with the new row first, never a row with itself."""
    from boostqa.stages import lsh

    rng = random.Random(11)
    new = {f"n{i:02d}": [rng.randint(0, 5) for _ in range(4)] for i in range(25)}
    old = {f"o{i:02d}": [rng.randint(0, 5) for _ in range(4)] for i in range(15)}
    sk = spark.createDataFrame([(k, v) for k, v in new.items()], "seed_uid string, bands array<bigint>")
    index = spark.createDataFrame([(k, b, h) for k, v in old.items() for b, h in enumerate(v)],
                                  "seed_uid string, band int, band_hash bigint")
    rows = {**new, **old}

    def truth(others):
        return {(a, b) for a in new for b in others if a != b and any(x == y for x, y in zip(rows[a], rows[b]))}

    got = [(r["a"], r["b"]) for r in lsh.band_pairs(sk, index).collect()]
    assert len(got) == len(set(got))  # each pair once
    assert set(got) == truth(rows) and len(truth(old)) > 10 and len(truth(new)) > 10
    assert {(r["a"], r["b"]) for r in lsh.band_pairs(sk, None).collect()} == truth(new)


def test_one_pass_sketches_equal_the_separate_passes(spark):
    """sketches(recall=True, passthrough=...) gives the same seed_id, signature, bands and recall
    bands as the two separate kernels, with the other columns carried along unchanged; also where
    a batch has null questions (the one pass reuses the main pass's words only when it has none)."""
    from boostqa.config import load_settings
    from boostqa.stages import lsh

    cfg = load_settings("local", environ={}).dedup
    rng = random.Random(3)
    data = [(f"s{i}", " ".join(_text(rng, rng.randint(0, 40))), None if i % 5 == 0 else " ".join(_text(rng, 6)),
             ["x", "y"] if i % 2 else None, float(i)) for i in range(60)]
    data += [(f"n{i}", None if i % 3 == 0 else " ".join(_text(rng, rng.randint(10, 40))), " ".join(_text(rng, 12)),
              None, float(i)) for i in range(30)]
    schema = "seed_uid string, question string, answer string, choices array<string>, source_weight double"
    rows = spark.createDataFrame(data[:60], schema).unionByName(spark.createDataFrame(data[60:], schema))
    one = {r["seed_uid"]: r for r in lsh.sketches(rows, cfg, recall=True,
                                                  passthrough=tuple(rows.columns)).collect()}
    main = {r["seed_uid"]: r for r in lsh.sketches(rows, cfg).collect()}
    rec = {r["seed_uid"]: r for r in lsh.recall_sketches(rows, cfg).collect()}
    assert set(one) == set(main) == set(rec) == {d[0] for d in data}
    for uid, q, a, ch, w in data:
        r = one[uid]
        assert (r["seed_id"], list(r["minhash"]), list(r["bands"])) == \
            (main[uid]["seed_id"], list(main[uid]["minhash"]), list(main[uid]["bands"]))
        assert list(r["recall_bands"]) == list(rec[uid]["recall_bands"])
        assert (r["question"], r["answer"], r["choices"], r["source_weight"]) == (q, a, ch, w)


def test_the_token_similarity_kernel_works_in_slices_and_keeps_every_pair():
    """A batch larger than the kernel's slice (its words become Python lists, so it works 1,024
    pairs at a time) gives one similarity per pair, in order, equal to the scalar function."""
    import pyarrow as pa

    from boostqa.stages import lsh
    from boostqa.text.ngrams import token_similarity
    from boostqa.text.normalize import NormalizeOptions, words

    rng = random.Random(5)
    n = 2 * lsh._TOKEN_SIM_ROWS + 37
    qa = [" ".join(_text(rng, rng.randint(0, 12))) for _ in range(n)]
    qb = [q if i % 3 else " ".join(_text(rng, 8)) for i, q in enumerate(qa)]
    batch = pa.RecordBatch.from_pydict({"a": [f"a{i}" for i in range(n)], "b": [f"b{i}" for i in range(n)],
                                        "qa": qa, "aa": pa.array([None] * n, pa.string()), "qb": qb,
                                        "ab": ["x"] * n})
    opts = NormalizeOptions()
    out = list(lsh._token_sim_kernel(opts)(iter([batch])))
    assert len(out) == 3
    got = pa.Table.from_batches(out)
    assert got.column("a").to_pylist() == [f"a{i}" for i in range(n)]
    want = [token_similarity(words(q + " ", opts) or [], words(p + " x", opts) or []) for q, p in zip(qa, qb)]
    assert got.column("token_similarity").to_pylist() == want

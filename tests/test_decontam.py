"""Benchmarks as reference data and decontamination, on real MMLU/GSM8K items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from boostqa.runner import Runner
from boostqa.stages.base import StageError
from tests.conftest import write_jsonl

N_BENCH = 300  # a slice of the real test sets keeps the embedding step short


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory) -> dict[str, Path]:
    """Real MMLU and GSM8K test items (first N_BENCH of each) from the asset cache."""
    from boostqa import assets

    cache = assets.default_cache_dir()
    try:
        paths = {n: assets.asset_path(n, cache) for n in ("mmlu", "gsm8k")}
    except assets.AssetMissing:
        cache = tmp_path_factory.mktemp("cache")
        paths = assets.fetch(["mmlu", "gsm8k"], cache)
    out = tmp_path_factory.mktemp("bench")
    files = {}
    for name, path in paths.items():
        lines = Path(path).read_text().splitlines()[:N_BENCH]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        files[name] = out / f"{name}.jsonl"
    return files


def _benchmarks(files):
    return [{"name": "mmlu", "path": str(files["mmlu"]), "fields": {"question": "question", "answer": "correct_answer",
                                                                     "subject": "topic"},
             "choices_fields": ["answer_a", "answer_b", "answer_c", "answer_d"], "answer_is_label": True},
            {"name": "gsm8k", "path": str(files["gsm8k"]), "fields": {"question": "question", "answer": "answer"}}]


def _leaky_seeds(files, tmp_path):
    mmlu = [json.loads(x) for x in files["mmlu"].read_text().splitlines()]
    gsm = [json.loads(x) for x in files["gsm8k"].read_text().splitlines()]
    m, g, p = mmlu[17], gsm[3], gsm[50]
    para = p["question"].replace("How much", "Can you work out how much", 1)
    assert para != p["question"]
    rows = [
        {"id": "verbatim_mmlu", "question": m["question"], "choices": [m[f"answer_{c}"] for c in "abcd"],
         "answer": m["answer_" + m["correct_answer"].lower()]},
        {"id": "verbatim_gsm8k", "question": g["question"], "answer": g["answer"].split("####")[-1].strip()},
        {"id": "prefixed_gsm8k", "question": "Solve this problem: " + para, "answer": "42"},
        {"id": "clean_1", "question": "Which enzyme unwinds the DNA double helix at the replication fork?",
         "answer": "Helicase."},
        {"id": "clean_2", "question": "State the first law of thermodynamics in words for a closed system.",
         "answer": "The change in internal energy equals heat added minus work done by the system."},
        {"id": "low_info", "question": "What is the rank of [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]?",
         "answer": "1 1 1 1 1 1 1 1 1 1 1 1 -> rank one"},
    ]
    write_jsonl(tmp_path / "seeds.jsonl", rows)
    return {"name": "s", "path": str(tmp_path / "seeds.jsonl"),
            "fields": {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}}


def _flagged(runner):
    return {r.source_row_id: r for r in runner.lake.read("quarantine.contaminated")
            .join(runner.lake.read("silver.seeds").select("seed_uid", "source_row_id"), "seed_uid").collect()}


def test_ngram_and_embedding_decontamination(spark, make_settings, bench_files, tmp_path):
    settings = make_settings(sources=[_leaky_seeds(bench_files, tmp_path)], benchmarks=_benchmarks(bench_files))
    runner = Runner(settings, spark=spark)
    _, results = runner.run()
    by = {r.stage: r for r in results}
    assert by["bench"].kept == 2 * N_BENCH and by["bench_embed"].kept == 2 * N_BENCH
    flagged = _flagged(runner)
    assert set(flagged) == {"verbatim_mmlu", "verbatim_gsm8k", "prefixed_gsm8k"}  # and nothing clean
    v = flagged["verbatim_mmlu"]
    assert (v.benchmark, v.method, v.reason) == ("mmlu", "ngram+embedding", "benchmark_ngram")
    assert v.shared_ngrams >= 1 and v.ngram and len(v.ngram.split()) == 10 and v.cosine > 0.95
    assert "mmlu item" in v.detail and "shared 10-grams" in v.detail
    assert flagged["verbatim_gsm8k"].benchmark == "gsm8k"
    assert runner.lake.read("silver.seeds_clean").count() == 3
    metrics = by["decontam"].metrics()
    assert metrics["hits.mmlu"] == 1 and metrics["hits.gsm8k"] == 2
    # a rerun does nothing more
    _, again = runner.run(["decontam"])
    assert again[0].pending == 0


def test_embedding_catches_a_paraphrase_ngrams_miss(spark, make_settings, bench_files, tmp_path):
    mmlu = [json.loads(x) for x in bench_files["mmlu"].read_text().splitlines()]
    m = mmlu[17]
    words = m["question"].split()
    # change every 4th word: no 10-gram survives, the meaning does
    para = " ".join(w.upper() if i % 4 == 3 else w for i, w in enumerate(words))
    para = para.replace(" the ", " this ")
    write_jsonl(tmp_path / "p.jsonl", [{"id": "p", "question": para,
                                        "choices": [m[f"answer_{c}"] for c in "abcd"], "answer": "x"}])
    src = {"name": "p", "path": str(tmp_path / "p.jsonl"),
           "fields": {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}}
    settings = make_settings(sources=[src], benchmarks=_benchmarks(bench_files),
                             decontam={"embedding": {"threshold": 0.85}, "min_shared_ngrams": 100,
                                       "span": {"fuzzy_enabled": False}})  # the edited span is a fuzzy_span too
    runner = Runner(settings, spark=spark)
    runner.run()
    [hit] = runner.lake.read("quarantine.contaminated").collect()
    assert (hit.method, hit.reason, hit.benchmark) == ("embedding", "benchmark_embedding", "mmlu")
    assert hit.cosine >= 0.85 and "cosine" in hit.detail


def test_ngram_only_and_missing_vectors(spark, make_settings, bench_files, tmp_path):
    src = _leaky_seeds(bench_files, tmp_path)
    off = make_settings(sources=[src], benchmarks=_benchmarks(bench_files), decontam={"embedding": {"enabled": False}})
    runner = Runner(off, spark=spark)
    _, results = runner.run()
    assert "bench_embed" not in [r.stage for r in results]  # disabled stages are skipped
    assert set(_flagged(runner)) == {"verbatim_mmlu", "verbatim_gsm8k", "prefixed_gsm8k"}
    assert {r.method for r in _flagged(runner).values()} == {"ngram"}
    # embeddings enabled but never computed: a clear error, nothing written
    on = make_settings(sources=[src], benchmarks=_benchmarks(bench_files), lake={"root": str(tmp_path / "lake2")})
    r2 = Runner(on, spark=spark)
    r2.run(["ingest", "bench", "dedup"])
    with pytest.raises(StageError, match="ref.bench_embeddings does not exist"):
        r2.run(["decontam"])
    assert not r2.lake.exists("silver.seeds_clean")


def test_benchmark_mapping_resolves_answer_labels(spark, make_settings, bench_files):
    settings = make_settings(benchmarks=_benchmarks(bench_files), decontam={"embedding": {"enabled": False}})
    runner = Runner(settings, spark=spark)
    runner.run(["bench"])
    m = json.loads(bench_files["mmlu"].read_text().splitlines()[0])
    row = runner.lake.read("ref.bench_items").where("benchmark = 'mmlu' and source_row = 1").first()
    assert row.question == m["question"].strip()
    assert row.answer == m["answer_" + m["correct_answer"].lower()].strip()
    assert list(row.choices) == [m[f"answer_{c}"].strip() for c in "abcd"]


def test_low_information_ngrams_are_ignored(spark, make_settings, tmp_path):
    """A run of ones in a benchmark item must not flag every seed that contains one."""
    (tmp_path / "m.jsonl").write_text(json.dumps({"question": "What is the rank of the matrix "
                                                  "[[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]?", "answer": "1"}) + "\n")
    write_jsonl(tmp_path / "s.jsonl", [{"id": "s", "question": "Define the sequence 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 "
                                                                "and find its limit.", "answer": "1"}])
    src = {"name": "s", "path": str(tmp_path / "s.jsonl"), "fields": {"id": "id"}}
    bench = [{"name": "m", "path": str(tmp_path / "m.jsonl")}]
    for min_distinct, flagged in ((4, 0), (1, 1)):
        settings = make_settings(sources=[src], benchmarks=bench, lake={"root": str(tmp_path / f"l{min_distinct}")},
                                 decontam={"embedding": {"enabled": False}, "min_distinct_words": min_distinct})
        runner = Runner(settings, spark=spark)
        runner.run(["ingest", "bench", "dedup", "decontam"])
        assert runner.lake.read("quarantine.contaminated").count() == flagged


def test_matching_gram_kernel_emits_exactly_the_shared_ngrams():
    """The rows' n-gram kernel keeps only n-grams the benchmark has, one row per distinct
    (row, n-gram): the same set as exploding every n-gram and joining, without the explosion."""
    import numpy as np
    import pyarrow as pa

    from boostqa.stages.decontam import _matching_gram_kernel
    from boostqa.text.ngrams import ngram_hashes
    from boostqa.text.normalize import NormalizeOptions, words_array

    opts = NormalizeOptions()
    bench = ["the quick brown fox jumps over the lazy dog today", "one two three four five six seven eight nine ten"]
    rows = ["a the quick brown fox jumps over the lazy dog today b the quick brown fox jumps over the lazy dog today",
            "nothing in common here at all with any benchmark item of ours", "",
            "x one two three four five six seven eight nine ten y", None]
    bh = ngram_hashes(words_array(pa.array(bench), opts), 10).flatten().to_numpy().astype(np.int64)
    wanted = np.unique(bh)
    batch = pa.RecordBatch.from_arrays([pa.array([f"r{i}" for i in range(len(rows))]), pa.array(rows, pa.string())],
                                       names=["k", "q"])
    out = list(_matching_gram_kernel("k", ["q"], 10, opts, wanted)([batch]))
    got = sorted((k, h) for b in out for k, h in zip(b.column("k").to_pylist(), b.column("hash").to_pylist()))
    rh = ngram_hashes(words_array(pa.array([r or "" for r in rows]), opts), 10).to_pylist()
    truth = sorted({(f"r{i}", h) for i, hs in enumerate(rh) for h in (hs or []) if h in set(wanted.tolist())})
    assert got == truth
    assert {k for k, _ in got} == {"r0", "r3"} and sum(k == "r0" for k, _ in got) == 1  # distinct per row
    assert list(_matching_gram_kernel("k", ["q"], 10, opts, np.array([], np.int64))([batch])) == []

"""Ingestion end to end on the embedded engine: real Delta tables, real MLflow store."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from boostqa.runner import Runner
from boostqa.sources import SourceError
from boostqa.text.records import REASONS
from tests.conftest import write_jsonl

FIELDS = {"id": "id", "question": "question", "answer": "answer", "choices": "choices", "subject": "subject"}


def _bad_rows():
    """One row per quarantine reason, plus valid rows; returns (lines, expected reasons by line)."""
    good = lambda i: {"id": f"g{i}", "question": f"What is {i}+{i}?", "answer": str(2 * i), "subject": "mathematics"}
    lines = [good(1), good(2),
             '{"id": "t1", "question": "trunc',                       # 3 unparseable
             "[1, 2, 3]",                                              # 4 not_an_object
             {"id": "m1", "answer": "x"},                              # 5 missing_question
             {"id": "e1", "question": " \t ", "answer": "x"},          # 6 empty_question
             {"id": "w1", "question": 7, "answer": "x"},               # 7 wrong_type
             {"id": "l1", "question": "y" * 301, "answer": "x"},       # 8 too_long
             {"id": "g1", "question": "dup?", "answer": "x"},          # 9 duplicate_row_id
             b'{"id": "u1", "question": "caf\xe9?", "answer": "x"}',   # 10 not_utf8 (latin-1 byte)
             {"id": "a1", "question": "no answer?"},                   # 11 missing_answer
             {"question": "no id?", "answer": "x"},                    # 12 missing_id
             good(3),
             '{"id": "d1", "question": "deep?", "answer": "x", "n": ' + "[" * 100 + "]" * 100 + "}",  # 14 too_deep
             '{"id": "f1", "question": "nan?", "answer": NaN}',        # 15 not_finite
             {"id": "c1", "question": "nul\u0000?", "answer": "x"},   # 16 bad_chars
             {"id": "k1", "question": "pick?", "answer": "x", "choices": ["a", "\u200b"]}]  # 17 empty_choice
    expected = {3: "unparseable", 4: "not_an_object", 5: "missing_question", 6: "empty_question", 7: "wrong_type",
                8: "too_long", 9: "duplicate_row_id", 10: "not_utf8", 11: "missing_answer", 12: "missing_id",
                14: "too_deep", 15: "not_finite", 16: "bad_chars", 17: "empty_choice"}
    return lines, expected


@pytest.fixture
def bad_source(tmp_path):
    lines, expected = _bad_rows()
    write_jsonl(tmp_path / "src" / "bad.jsonl", lines)
    return {"name": "bad", "path": str(tmp_path / "src" / "bad.jsonl"), "fields": FIELDS, "weight": 0.5}, expected


def test_every_quarantine_reason(spark, make_settings, bad_source):
    src, expected = bad_source
    settings = make_settings(sources=[src], ingest={"max_question_chars": 300})
    runner = Runner(settings, spark=spark)
    _, [res] = runner.run(["ingest"])
    assert (res.kept, res.rejected, res.pending) == (3, 14, 17)
    q = {r.source_row: r for r in runner.lake.read("quarantine.seeds").collect()}
    assert {row: r.reason for row, r in q.items()} == expected
    assert set(expected.values()) == set(REASONS)  # the fixture covers every documented reason
    for row, r in q.items():  # each names file and row, and keeps the evidence
        assert r.detail.startswith(f"bad.jsonl:{row}: ") and r.raw and r.stage == "ingest" and r.run_id
    assert "already used at bad.jsonl:1" in q[9].detail
    bronze = {r.source_row_id: r for r in runner.lake.read("bronze.seeds").collect()}
    assert set(bronze) == {"g1", "g2", "g3"} and bronze["g1"].question == "What is 1+1?"
    assert bronze["g1"].source_weight == 0.5 and bronze["g1"].lang == "en" and bronze["g1"].subject_hint == "mathematics"
    assert json.loads(bronze["g2"].raw)["id"] == "g2"
    # the tables are real Delta tables
    assert DeltaTable(runner.lake.location("bronze.seeds")).version() >= 1


def test_rerun_is_idempotent_and_new_rows_are_added(spark, make_settings, bad_source, tmp_path):
    src, _ = bad_source
    settings = make_settings(sources=[src], ingest={"max_question_chars": 300})
    runner = Runner(settings, spark=spark)
    runner.run(["ingest"])
    v_bronze, v_quar = runner.lake.version("bronze.seeds"), runner.lake.version("quarantine.seeds")
    _, [res] = runner.run(["ingest"])
    assert (res.pending, res.kept, res.rejected) == (0, 0, 0)
    assert (runner.lake.version("bronze.seeds"), runner.lake.version("quarantine.seeds")) == (v_bronze, v_quar)
    # a new file with one new seed and one id that an earlier run already ingested
    write_jsonl(tmp_path / "src2" / "more.jsonl", [{"id": "g9", "question": "new?", "answer": "1"},
                                                   {"id": "g2", "question": "clash?", "answer": "1"}])
    # the same source name now reads a directory with the old file and the new one
    (tmp_path / "src" / "more.jsonl").write_bytes((tmp_path / "src2" / "more.jsonl").read_bytes())
    settings2 = make_settings(sources=[{**src, "path": str(tmp_path / "src")}], ingest={"max_question_chars": 300})
    _, [res2] = Runner(settings2, spark=spark).run(["ingest"])
    assert (res2.kept, res2.rejected) == (1, 1)
    clash = runner.lake.read("quarantine.seeds").where("source_file = 'more.jsonl'").first()
    assert clash.reason == "duplicate_row_id" and "already ingested from bad.jsonl:2" in clash.detail
    keys = [r.record_key for r in runner.lake.read("bronze.seeds").collect()]
    assert len(keys) == len(set(keys)) == 4


def test_missing_file_fails_and_writes_nothing(spark, make_settings, bad_source, tmp_path):
    src, _ = bad_source
    settings = make_settings(sources=[src, {"name": "gone", "path": str(tmp_path / "nope.jsonl")}])
    runner = Runner(settings, spark=spark)
    with pytest.raises(SourceError, match="source 'gone'.*nope.jsonl"):
        runner.run(["ingest"])
    # no data table; the stage's lease (ops.stage_leases) was taken before reading and released
    assert [t for t in runner.lake.tables() if t != "ops.stage_leases"] == []
    assert runner.lake.read("ops.stage_leases").count() == 0


def test_csv_parquet_json_sources(spark, make_settings, tmp_path):
    (tmp_path / "c.csv").write_text("qid;text;sol;opt\n1;Why?;Because.;\n2;How?;Thus.;\n")
    pq.write_table(pa.table({"problem": ["P1?", "P2?"], "solution": ["S1", "S2"],
                             "choices": [["a", "b"], None], "meta": [{"topic": "algebra"}, {"topic": "geometry"}]}),
                   tmp_path / "p.parquet")
    (tmp_path / "j.json").write_text(json.dumps([{"Q": "J1?", "A": 1.5, "lang": "de"}]))
    settings = make_settings(sources=[
        {"name": "csvsrc", "path": str(tmp_path / "c.csv"), "csv_delimiter": ";",
         "fields": {"id": "qid", "question": "text", "answer": "sol"}},
        {"name": "pq", "path": str(tmp_path / "p.parquet"),
         "fields": {"question": "problem", "answer": "solution", "choices": "choices", "subject": "meta.topic"}},
        {"name": "js", "path": str(tmp_path / "j.json"), "fields": {"question": "Q", "answer": "A", "lang": "lang"}},
    ])
    runner = Runner(settings, spark=spark)
    _, [res] = runner.run(["ingest"])
    assert (res.kept, res.rejected) == (5, 0)
    rows = {r.question: r for r in runner.lake.read("bronze.seeds").collect()}
    assert rows["Why?"].source_row_id == "1" and rows["Why?"].answer == "Because."
    assert list(rows["P1?"].choices) == ["a", "b"] and rows["P2?"].subject_hint == "geometry"
    assert rows["P1?"].source_row_id == "p.parquet:1"
    assert rows["J1?"].answer == "1.5" and rows["J1?"].lang == "de"


def test_demo_sources_with_real_champ(spark, make_settings, champ_cache):
    settings = make_settings("demo", data_cache=str(champ_cache))
    runner = Runner(settings, spark=spark)
    _, [res] = runner.run(["ingest"])
    counts = {r.source: r["count"] for r in runner.lake.read("bronze.seeds").groupBy("source").count().collect()}
    assert counts["champ"] == 270 and counts["boostqa_stem"] == 200 and counts["boostqa_humanities"] == 120
    reasons = {r.reason for r in runner.lake.read("quarantine.seeds").collect()}
    assert {"not_utf8", "unparseable", "duplicate_row_id", "too_long", "wrong_type"} <= reasons
    assert res.kept == sum(counts.values())

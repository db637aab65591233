"""Raw record extraction from every supported format, Spark-free."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from boostqa.config import SourceConfig
from boostqa.sources import SourceError, list_files, read_records, write_raw
from tests.conftest import write_jsonl


def records(tmp_path, name, **kw):
    src = SourceConfig(name="s", path=str(tmp_path / name), **kw)
    return [r for f in list_files(src, tmp_path) for r in read_records(f, src.csv_delimiter)]


def test_jsonl_rows_keep_line_numbers_and_flag_bad_bytes(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"question": "q1"}, "", b'{"question": "bad \xff byte"}', "{not json"])
    recs = records(tmp_path, "a.jsonl")
    assert [r["source_row"] for r in recs] == [1, 3, 4]  # blank line 2 is not a record
    assert recs[0]["read_error"] is None and json.loads(recs[0]["raw"]) == {"question": "q1"}
    assert recs[1]["read_error"].startswith("not_utf8: invalid byte 0xff")
    assert "\\xff" in recs[1]["raw"]  # evidence kept, escaped
    assert recs[2]["read_error"] is None  # JSON errors are judged by the stage, with the rest of the rules


def test_csv_json_parquet(tmp_path):
    (tmp_path / "c.csv").write_bytes(b'question,answer\n"multi\nline?",1\nshort,\n"x",2,extra\nbad\xfe,3\n')
    recs = records(tmp_path, "c.csv")
    assert json.loads(recs[0]["raw"]) == {"question": "multi\nline?", "answer": "1"}
    assert recs[2]["read_error"].startswith("unparseable: expected 2 fields, got 3")
    assert recs[3]["read_error"].startswith("not_utf8")
    (tmp_path / "j.json").write_text(json.dumps([{"question": "a"}, {"question": "b"}]))
    assert [json.loads(r["raw"])["question"] for r in records(tmp_path, "j.json")] == ["a", "b"]
    (tmp_path / "o.json").write_text('{"question": "not an array"}')
    assert records(tmp_path, "o.json")[0]["read_error"].startswith("unparseable: a .json source must hold an array")
    pq.write_table(pa.table({"question": ["p1", "p2"], "n": [1, None]}), tmp_path / "p.parquet")
    recs = records(tmp_path, "p.parquet")
    assert [json.loads(r["raw"]) for r in recs] == [{"question": "p1", "n": 1}, {"question": "p2", "n": None}]
    assert [r["source_row"] for r in recs] == [1, 2]


def test_directories_globs_and_relative_names(tmp_path):
    write_jsonl(tmp_path / "d" / "x" / "1.jsonl", [{"question": "a"}])
    write_jsonl(tmp_path / "d" / "2.jsonl", [{"question": "b"}])
    recs = records(tmp_path, "d")
    assert sorted(r["source_file"] for r in recs) == ["2.jsonl", "x/1.jsonl"]
    assert sorted(r["source_file"] for r in records(tmp_path, "d/**/*.jsonl")) == ["2.jsonl", "x/1.jsonl"]


def test_record_key_is_stable_and_content_sensitive(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"question": "q1"}])
    k1 = records(tmp_path, "a.jsonl")[0]["record_key"]
    assert k1 == records(tmp_path, "a.jsonl")[0]["record_key"]
    write_jsonl(tmp_path / "a.jsonl", [{"question": "q1 edited"}])
    assert records(tmp_path, "a.jsonl")[0]["record_key"] != k1


def test_missing_source_fails_before_writing(tmp_path):
    write_jsonl(tmp_path / "ok.jsonl", [{"question": "a"}])
    srcs = [SourceConfig(name="ok", path=str(tmp_path / "ok.jsonl")),
            SourceConfig(name="gone", path=str(tmp_path / "missing.jsonl"))]
    out = tmp_path / "raw" / "raw.parquet"
    with pytest.raises(SourceError, match=r"source 'gone': no input file at .*missing\.jsonl"):
        write_raw(srcs, tmp_path, str(out))
    assert not out.exists() and not (tmp_path / "raw").exists()


def test_cache_prefix_hint(tmp_path):
    with pytest.raises(SourceError, match="boostqa assets fetch champ"):
        list_files(SourceConfig(name="c", path="cache://champ/champ.jsonl"), tmp_path)


def test_unknown_extension_needs_a_format(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(SourceError, match="set format"):
        records(tmp_path, "x.txt")
    assert records(tmp_path, "x.txt", format="jsonl")[0]["raw"] == "hi"


def test_write_raw_streams_all_records(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"question": f"q{i}"} for i in range(25_001)])
    files, n = write_raw([SourceConfig(name="a", path=str(tmp_path / "a.jsonl"))], tmp_path, str(tmp_path / "r.parquet"))
    assert n == 25_001 and pq.read_metadata(tmp_path / "r.parquet").num_rows == 25_001
    assert files[0].sha256 and files[0].size > 0

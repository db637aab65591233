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


def test_compressed_bom_utf16_and_cr_only_files(tmp_path):
    import bz2
    import codecs
    import gzip

    import zstandard

    lines = [{"question": f"q{i}"} for i in range(3)]
    body = "\n".join(json.dumps(x) for x in lines) + "\n"
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body.encode()))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body.encode()))
    (tmp_path / "c.jsonl.bz2").write_bytes(bz2.compress(body.encode()))
    (tmp_path / "d.jsonl").write_bytes(codecs.BOM_UTF8 + body.encode())
    (tmp_path / "e.jsonl").write_bytes(codecs.BOM_UTF16_LE + body.encode("utf-16-le"))
    (tmp_path / "f.jsonl").write_bytes(body.replace("\n", "\r").encode())
    for name in ("a.jsonl.gz", "b.jsonl.zst", "c.jsonl.bz2", "d.jsonl", "e.jsonl", "f.jsonl"):
        recs = records(tmp_path, name)
        assert [json.loads(r["raw"]) for r in recs] == lines and not any(r["read_error"] for r in recs), name
        assert [r["source_row"] for r in recs] == [1, 2, 3]
    # the same line has the same key whether the file was compressed or not
    assert records(tmp_path, "a.jsonl.gz")[0]["raw"] == records(tmp_path, "d.jsonl")[0]["raw"]


def test_unsupported_files_in_a_directory_are_reported(tmp_path, caplog):
    import logging

    write_jsonl(tmp_path / "d" / "a.jsonl", [{"question": "a"}])
    (tmp_path / "d" / "notes.txt").write_text("hi")
    (tmp_path / "d" / "_SUCCESS").write_text("")

    class Stats:
        def __init__(self):
            self.counters = {}

        def add(self, name, value=1.0):
            self.counters[name] = self.counters.get(name, 0) + value

    stats = Stats()
    with caplog.at_level(logging.WARNING, logger="boostqa.sources"):
        files, n = write_raw([SourceConfig(name="d", path=str(tmp_path / "d"))], tmp_path, str(tmp_path / "r.parquet"),
                             stats=stats)
    assert n == 1 and [f.rel for f in files] == ["a.jsonl"]
    assert stats.counters == {"unsupported_files.d": 1, "hidden_files.d": 1}
    assert any("notes.txt" in m for m in caplog.messages)


def test_glob_semantics_of_spark_listed_paths():
    from boostqa.sources import _glob_match, _relative

    assert _glob_match(["x.jsonl"], ["**", "*.jsonl"]) and _glob_match(["a", "b", "x.jsonl"], ["**", "*.jsonl"])
    assert not _glob_match(["a", "x.jsonl"], ["*.jsonl"]) and _glob_match(["a", "x.csv"], ["a", "*.csv"])
    # engines report paths their own way: Sail without scheme, Spark file:/, Databricks dbfs:/
    for reported in ("tmp/d/x/1.jsonl", "file:/tmp/d/x/1.jsonl", "file:///tmp/d/x/1.jsonl"):
        assert _relative(reported, "/tmp/d") == "x/1.jsonl"
    assert _relative("dbfs:/Volumes/c/s/v/d/sub/a b.jsonl", "/Volumes/c/s/v/d") == "sub/a b.jsonl"
    assert _relative("file:/tmp/my%20dir/x.jsonl", "/tmp/my dir") == "x.jsonl"  # %-encoded by the engine
    assert _relative("tmp/d/a%20b.jsonl", "/tmp/d") == "a%20b.jsonl"  # a literal name (Sail reports it as is)
    assert _relative("s3a://bucket/data/x.jsonl", "s3a://bucket/data") == "x.jsonl"

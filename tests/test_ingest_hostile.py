"""Hostile inputs: ingestion never raises on what a file holds, names every bad row, keeps every good one.

One lake per reader (the driver reader for small local inputs, and Spark on the executors)
ingests a tree of hostile files and runs dedup; each case then asserts, for its file, the
quarantine reason and detail of the bad row (source column; detail "file:row: ..." naming the
field or part) and that every good row of the same file reached silver.seeds.

| #  | kind                                                   | file            | reason            |
|----|--------------------------------------------------------|-----------------|-------------------|
| 1  | lone UTF-16 surrogate escape in a string               | jsonl           | bad_chars         |
| 2  | a line nested 200k levels deep                         | jsonl           | too_deep          |
| 3  | a Latin-1 byte                                         | jsonl           | not_utf8          |
| 4  | UTF-8 BOM (first row read) + zero-width-only question  | jsonl           | empty_question    |
| 5  | CR-only line ends + NaN answer                         | jsonl           | not_finite        |
| 6  | UTF-16LE with BOM + a lone surrogate code unit         | jsonl           | bad_encoding      |
| 7  | UTF-32BE with BOM + an answer of 1e999 (inf)           | jsonl           | not_finite        |
| 8  | UTF-16LE without BOM + an ESC control character        | jsonl           | bad_chars         |
| 9  | 10 MB of choices                                       | jsonl           | too_long (line)   |
| 10 | a 2 MB subject                                         | jsonl           | too_long (line)   |
| 11 | a subject over max_subject_chars                       | jsonl           | too_long (subject)|
| 12 | a choice over max_choice_chars                         | jsonl           | too_long (choice) |
| 13 | a zero-width-only choice                               | jsonl           | empty_choice      |
| 14 | a 5000-digit integer (over Python's int limit)         | jsonl           | unparseable       |
| 15 | an element nested 100k levels deep                     | json            | too_deep          |
| 16 | lone surrogate escape in an element                    | json            | bad_chars         |
| 17 | a truncated array                                      | json            | unparseable       |
| 18 | an invalid element among valid ones                    | json            | unparseable       |
| 19 | JSON lines in a .json file (HF export) + number question| json           | wrong_type        |
| 20 | a Latin-1 byte inside one element                      | json            | not_utf8          |
| 21 | a field over the csv field-size limit                  | csv             | too_long (field)  |
| 22 | UTF-8 BOM on the header + an empty question            | csv             | empty_question    |
| 23 | an unbalanced quote (the next rows are not lost)       | csv             | unparseable       |
| 24 | NUL bytes in a field                                   | csv             | bad_chars         |
| 25 | UTF-16BE with BOM + a row with too many fields         | csv             | unparseable       |
| 26 | CR-only line ends + a Latin-1 byte                     | csv             | not_utf8          |
| 27 | a binary column that is not UTF-8 (UTF-8 one is text)  | parquet         | not_utf8          |
| 28 | NaN and inf answers                                    | parquet         | not_finite        |
| 29 | a truncated parquet file                               | parquet         | corrupt_file      |
| 30 | gzip jsonl + a list as question                        | jsonl.gz        | wrong_type        |
| 31 | zstd csv + no question                                 | csv.zst         | missing_question  |
| 32 | bz2 json + an array element                            | json.bz2        | not_an_object     |
| 33 | xz jsonl in a subdirectory (glob **) + blank question  | jsonl.xz        | empty_question    |
| 34 | a truncated gzip stream (rows before it arrive)        | jsonl.gz        | corrupt_file      |
| 35 | a decompression bomb (over max_file_mb)                | jsonl.gz        | too_long (file)   |
| 36 | garbage after zstd magic bytes                         | jsonl.zst       | corrupt_file      |
| 37 | a zero-width-only id (file:// URI source)              | jsonl           | missing_id        |
| 38 | an id over max_id_chars (file:// URI source)           | jsonl           | too_long (id)     |
| 39 | NaN answer / binary question in a Delta table source   | delta           | not_finite, not_utf8 |

Also: a .txt file and a _SUCCESS file in source directories (reported and counted, not read),
a glob source, a file:// URI source, a Delta table and a catalog table as sources.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import logging
import lzma
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from boostqa import engine
from boostqa.config import deep_merge, load_settings
from boostqa.runner import Runner
from boostqa.stages import ingest as ingest_stage
from boostqa.text.records import READER_REASONS, REASONS

_RNG = random.Random(7)
_WORDS = sorted({"".join(_RNG.choice("bcdfghklmnprstvz") + _RNG.choice("aeiou") for _ in range(3)) for _ in range(600)})
_seen: set[str] = set()


def text(tag: str) -> str:
    """A question no other one resembles (dedup keeps every good row)."""
    rng = random.Random(tag)
    q = f"{tag} " + " ".join(rng.choice(_WORDS) for _ in range(12)) + "?"
    assert q not in _seen
    _seen.add(q)
    return q


def text_of(tag: str) -> str:
    rng = random.Random(tag)
    return f"{tag} " + " ".join(rng.choice(_WORDS) for _ in range(12)) + "?"


@dataclass
class Bad:
    payload: object  # a record (dict), or the row's raw text/bytes
    reason: str
    needle: str  # part of the detail after "file:row: "


@dataclass
class Case:
    kind: str
    source: str
    rel: str
    goods: list[str] = field(default_factory=list)  # questions that must reach silver.seeds
    bads: dict[int, Bad] = field(default_factory=dict)  # row -> expected verdict


CASES: list[Case] = []
FILES: dict[str, bytes] = {}  # "source/rel" -> bytes, written under the test's root by the fixture


def good(tag: str, **extra) -> dict:
    return {"question": text(tag), "answer": f"answer of {tag}", **extra}


def _line(x) -> str:
    return x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)


def jsonl(source: str, rel: str, kind: str, items: list, *, enc="utf-8", bom=b"", nl="\n") -> Case:
    """items: good dicts, or Bad; the row number is the line number."""
    case = Case(kind, source, rel)
    lines = []
    for i, it in enumerate(items, 1):
        if isinstance(it, Bad):
            case.bads[i] = it
            lines.append(it.payload)
        else:
            case.goods.append(it["question"])
            lines.append(_line(it))
    data = b"".join((ln if isinstance(ln, bytes) else _line(ln).encode(enc)) + nl.encode(enc) for ln in lines)
    _write(f"{source}/{rel}", bom + data)
    CASES.append(case)
    return case


def _write(key: str, data: bytes) -> None:
    FILES[key] = data


def json_array(items: list, case: Case) -> bytes:
    parts = []
    for i, it in enumerate(items, 1):
        if isinstance(it, Bad):
            case.bads[i] = it
            parts.append(it.payload if isinstance(it.payload, bytes) else _line(it.payload).encode())
        else:
            case.goods.append(it["question"])
            parts.append(json.dumps(it).encode())
    return b"[" + b",\n".join(parts) + b"]"


def csv_file(header: str, items: list, case: Case, sep: str = ",") -> str:
    """items: (question, answer) goods or Bad with a raw line; the row number is the data row."""
    lines = [header]
    for i, it in enumerate(items, 1):
        if isinstance(it, Bad):
            case.bads[i] = it
            lines.append(it.payload)
        else:
            case.goods.append(it[0])
            lines.append(sep.join(it))
    return "\n".join(lines) + "\n"


def define() -> None:
    """The hostile tree: sources hj (jsonl/json dir), hc (csv dir), hp (parquet dir), hz (glob of
    compressed files) and hu (a file:// URI with an id mapping)."""
    deep = "[" * 200_000 + "]" * 200_000
    jsonl("hj", "surrogate.jsonl", "lone surrogate escape", [
        good("j1"), Bad('{"question": "bad \\ud800 escape", "answer": "x"}', "bad_chars", "lone surrogate"),
        good("j2")])
    jsonl("hj", "deep.jsonl", "200k-deep line", [
        good("j3"), Bad('{"question": "q", "answer": "a", "x": ' + deep + "}", "too_deep", "the line nests 200,00"),
        good("j4")])
    jsonl("hj", "latin1.jsonl", "latin-1 byte", [
        good("j5"), Bad(b'{"question": "caf\xe9?", "answer": "x"}', "not_utf8", "invalid byte 0xe9 at offset 17"),
        good("j6")])
    jsonl("hj", "bom.jsonl", "UTF-8 BOM", [
        good("j7"), Bad({"question": "\u200b\u200d\ufeff \u2060", "answer": "x"}, "empty_question", "no visible"),
        good("j8")], bom=codecs.BOM_UTF8)
    jsonl("hj", "cr.jsonl", "CR-only line ends (jsonl)", [
        good("j9"), Bad('{"question": "nan?", "answer": NaN}', "not_finite", "field 'answer'"), good("j10")], nl="\r")
    case = jsonl("hj", "utf16.jsonl", "UTF-16LE with BOM", [good("j11"), good("j12")],
                 enc="utf-16-le", bom=codecs.BOM_UTF16_LE)
    data = FILES["hj/utf16.jsonl"]  # a lone low surrogate code unit as row 3
    _write("hj/utf16.jsonl", data + '{"question": "'.encode("utf-16-le") + b"\x00\xdc" +
           '", "answer": "x"}\n'.encode("utf-16-le") + (_line(good("j13")) + "\n").encode("utf-16-le"))
    case.bads[3] = Bad(None, "bad_encoding", "invalid utf-16-le sequence")
    case.goods.append(text_of("j13"))
    jsonl("hj", "utf32.jsonl", "UTF-32BE with BOM", [
        good("j14"), Bad('{"question": "inf?", "answer": 1e999}', "not_finite", "is inf"), good("j15")],
        enc="utf-32-be", bom=codecs.BOM_UTF32_BE)
    jsonl("hj", "utf16_nobom.jsonl", "UTF-16LE without BOM", [
        good("j16"), Bad({"question": "esc?", "answer": "a\x1bb"}, "bad_chars", "field 'answer'"), good("j17")],
        enc="utf-16-le")
    jsonl("hj", "choices10mb.jsonl", "10 MB of choices", [
        good("j18"), Bad({"question": "big?", "answer": "x", "choices": ["c" * 1_000_000] * 10}, "too_long",
                         "the line has 10,000,"), good("j19")])
    jsonl("hj", "subject2mb.jsonl", "2 MB subject", [
        good("j20"), Bad({"question": "subj?", "answer": "x", "subject": "s" * 2_000_000}, "too_long",
                         "the line has 2,000,"), good("j21")])
    jsonl("hj", "subject.jsonl", "subject over max_subject_chars", [
        good("j22"), Bad({"question": "s?", "answer": "x", "subject": "s" * 300}, "too_long",
                         "subject has 300 chars > limit 256"), good("j23")])
    jsonl("hj", "choice.jsonl", "choice over max_choice_chars", [
        good("j24"), Bad({"question": "c?", "answer": "x", "choices": ["a", "b" * 20_000]}, "too_long",
                         "choices[1] has 20000 chars"), good("j25")])
    jsonl("hj", "blankchoice.jsonl", "zero-width-only choice", [
        good("j26"), Bad({"question": "c?", "answer": "x", "choices": ["a", "\u200b"]}, "empty_choice",
                         "'choices[1]'"), good("j27")])
    jsonl("hj", "bigint.jsonl", "5000-digit integer", [
        good("j28"), Bad('{"question": "int?", "answer": ' + "9" * 5000 + "}", "unparseable", "invalid JSON"),
        good("j29")])

    def json_case(rel, kind, items, *, raw=None):
        case = Case(kind, "hj", rel)
        data = json_array(items, case)
        _write(f"hj/{rel}", raw(data) if raw else data)
        CASES.append(case)
        return case

    json_case("deep.json", "100k-deep element", [
        good("k1"), Bad("[" * 100_000 + "]" * 100_000, "too_deep", "element 2 nests 100,000 levels"), good("k2")])
    json_case("surrogate.json", "lone surrogate escape in an element", [
        good("k3"), Bad('{"question": "\\udc80 x", "answer": "y"}', "bad_chars", "lone surrogate"), good("k4")])
    case = Case("truncated array", "hj", "truncated.json")
    data = json_array([good("k5"), good("k6")], case)
    _write("hj/truncated.json", data[:-1] + b', {"question": "cut o')
    case.bads[3] = Bad(None, "unparseable", "the file ends inside element 3")
    CASES.append(case)
    json_case("badelement.json", "invalid element", [
        good("k7"), Bad('{"question": tru, "answer": "x"}', "unparseable", "element 2: Expecting value"), good("k8")])
    case = Case("JSON lines in a .json file", "hj", "lines.json")
    g1, g2 = good("k9"), good("k10")
    _write("hj/lines.json", (json.dumps(g1) + "\n" + '{"question": 42, "answer": "x"}\n' +
                                        json.dumps(g2) + "\n").encode())
    case.goods, case.bads = [g1["question"], g2["question"]], {2: Bad(None, "wrong_type", "is int")}
    CASES.append(case)
    json_case("latin1.json", "latin-1 byte in an element", [
        good("k11"), Bad(b'{"question": "caf\xe9?", "answer": "x"}', "not_utf8", "of element 2"), good("k12")])

    def csv_case(rel, kind, items, *, enc="utf-8", bom=b"", nl=None):
        case = Case(kind, "hc", rel)
        body = csv_file("question,answer", items, case)
        if nl:
            body = body.replace("\n", nl)
        _write(f"hc/{rel}", bom + body.encode(enc, "surrogateescape"))
        CASES.append(case)

    t = lambda tag: (text(tag), f"answer of {tag}")  # noqa: E731
    csv_case("bigfield.csv", "field over the csv limit", [
        t("c1"), Bad("q," + "x" * 1_000_100, "too_long", "field 'answer' of the row is over limit 1,000,000"), t("c2")])
    csv_case("bom.csv", "UTF-8 BOM on the header", [t("c3"), Bad(" ,x", "empty_question", "empty"), t("c4")],
             bom=codecs.BOM_UTF8)
    csv_case("quote.csv", "unbalanced quote", [
        t("c5"), Bad('"unbalanced question,x', "unparseable", "unbalanced quote"), t("c6"), t("c7")])
    csv_case("nul.csv", "NUL bytes", [t("c8"), Bad("nul\x00here,x", "bad_chars", "a NUL"), t("c9")])
    csv_case("utf16be.csv", "UTF-16BE with BOM", [t("c10"), Bad("a,b,c", "unparseable", "expected 2 fields, got 3"),
                                                  t("c11")], enc="utf-16-be", bom=codecs.BOM_UTF16_BE)
    csv_case("cr.csv", "CR-only line ends (csv)", [
        t("c12"), Bad("caf\udce9?,x", "not_utf8", "of field 'question'"), t("c13")], nl="\r")

    def parquet_case(rel, kind, table, goods, bads, cut=None):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        _write(f"hp/{rel}", buf.getvalue()[:cut] if cut else buf.getvalue())
        CASES.append(Case(kind, "hp", rel, goods, bads))

    p1, p2 = good("p1"), good("p2")
    parquet_case("binary.parquet", "binary column", pa.table({
        "question": pa.array([p1["question"].encode(), b"\xff\xfe bad", p2["question"].encode()], pa.binary()),
        "answer": ["a", "b", "c"]}), [p1["question"], p2["question"]],
        {2: Bad(None, "not_utf8", "binary data that is not UTF-8")})
    p3, p4 = good("p3"), good("p4")
    parquet_case("nan.parquet", "NaN and inf answers", pa.table({
        "question": [p3["question"], "nan?", "inf?", p4["question"]],
        "answer": [1.5, float("nan"), float("-inf"), 2.0]}),
        [p3["question"], p4["question"]],
        {2: Bad(None, "not_finite", "is nan"), 3: Bad(None, "not_finite", "is -inf")})
    parquet_case("truncated.parquet", "truncated parquet", pa.table({"question": ["x?"] * 10, "answer": ["y"] * 10}),
                 [], {0: Bad(None, "corrupt_file", "cannot be read")}, cut=-40)

    def compressed(rel, kind, raw: bytes, pack, goods, bads):
        _write(f"hz/{rel}", pack(raw))
        CASES.append(Case(kind, "hz", rel, goods, bads))

    z1, z2 = good("z1"), good("z2")
    compressed("a.jsonl.gz", "gzip jsonl", (json.dumps(z1) + '\n{"question": ["x"], "answer": "y"}\n' +
                                            json.dumps(z2) + "\n").encode(), gzip.compress,
               [z1["question"], z2["question"]], {2: Bad(None, "wrong_type", "is list")})
    z3, z4 = good("z3"), good("z4")
    compressed("b.csv.zst", "zstd csv", f"question,answer\n{z3['question']},x\n,y\n{z4['question']},z\n".encode(),
               zstandard.ZstdCompressor().compress, [z3["question"], z4["question"]],
               {2: Bad(None, "empty_question", "empty")})
    z5, z6 = good("z5"), good("z6")
    compressed("c.json.bz2", "bz2 json", json.dumps([z5, [1, 2], z6]).encode(), bz2.compress,
               [z5["question"], z6["question"]], {2: Bad(None, "not_an_object", "got list")})
    z7, z8 = good("z7"), good("z8")
    compressed("sub/d.jsonl.xz", "xz jsonl in a subdirectory",
               (json.dumps(z7) + '\n{"question": "\\u3164", "answer": "y"}\n' + json.dumps(z8) + "\n").encode(),
               lzma.compress,
               [z7["question"], z8["question"]], {2: Bad(None, "empty_question", "no visible")})
    goods = [good(f"zt{i}") for i in range(400)]
    stream = gzip.compress(("\n".join(json.dumps(g) for g in goods) + "\n").encode())
    cut = stream[: len(stream) * 3 // 4]
    _write("hz/trunc.jsonl.gz", cut)
    lines = zlib.decompressobj(31).decompress(cut).split(b"\n")  # what survives the cut
    bads = {0: Bad(None, "corrupt_file", "gzip stream is truncated")}
    if lines[-1]:  # the last line is cut in two: its own unparseable row
        bads[len(lines)] = Bad(None, "unparseable", "invalid JSON")
    CASES.append(Case("truncated gzip", "hz", "trunc.jsonl.gz", [g["question"] for g in goods[:len(lines) - 1]], bads))
    compressed("bomb.jsonl.gz", "decompression bomb", b"\n" * (20 << 20), gzip.compress, [],
               {0: Bad(None, "too_long", "inflates to more than 16,777,216 bytes")})
    _write("hz/garbage.jsonl.zst", b"\x28\xb5\x2f\xfd" + b"\x00garbage" * 10)
    CASES.append(Case("garbage zstd", "hz", "garbage.jsonl.zst", [], {0: Bad(None, "corrupt_file", "zstd stream")}))
    _write("hz/notes.txt", b"not a source file\n")  # unsupported: reported, not read
    _write("hc/_SUCCESS", b"")  # hidden, as Spark writes them

    u1, u2 = good("u1", id="u-1"), good("u2", id="u-2")
    jsonl("hu", "uri.jsonl", "file:// URI source", [
        u1, Bad({"id": "\u200b", "question": "id?", "answer": "x"}, "missing_id", "no id in field 'id'"),
        Bad({"id": "i" * 600, "question": "long id?", "answer": "x"}, "too_long", "id has 600 chars > limit 512"), u2])


define()


FIELDS = {"id": None, "question": "question", "answer": "answer", "choices": "choices", "subject": "subject"}


def _settings(root: Path, lake: Path, reader: str, sources: list[dict]):
    over = {"lake": {"root": str(lake / "lake")}, "runs_dir": str(lake / "runs"), "sources": sources,
            "ingest": {"max_file_mb": 16, "driver_max_mb": 64 if reader == "driver" else 0}}
    return load_settings("local", overrides=deep_merge({}, over), environ={})


def _sources(root: Path) -> list[dict]:
    return [{"name": "hj", "path": str(root / "hj"), "fields": FIELDS},
            {"name": "hc", "path": str(root / "hc"), "fields": FIELDS},
            {"name": "hp", "path": str(root / "hp"), "fields": FIELDS},
            {"name": "hz", "path": str(root / "hz") + "/**/*.*", "fields": FIELDS},
            {"name": "hu", "path": (root / "hu" / "uri.jsonl").as_uri(), "fields": {**FIELDS, "id": "id"}}]


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    for key, data in FILES.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return root


@pytest.fixture(scope="module", params=["driver", "spark"])
def lake(request, hostile_root, tmp_path_factory, _engine):
    """The hostile tree ingested and deduplicated by one reader; the tables as Python rows."""
    settings = _settings(hostile_root, tmp_path_factory.mktemp(request.param), request.param, _sources(hostile_root))
    runner = Runner(settings, spark=engine.get_spark())
    _, results = runner.run(["ingest", "dedup"])
    assert [r.stage for r in results] == ["ingest", "dedup"] and all(r.complete for r in results)
    quarantine = {(r.source, r.source_file, r.source_row): r for r in runner.lake.read("quarantine.seeds").collect()}
    bronze = runner.lake.read("bronze.seeds").select("source", "source_file", "source_row", "question").collect()
    silver = {r.question for r in runner.lake.read("silver.seeds").select("question").collect()}
    return {"reader": request.param, "q": quarantine, "bronze": bronze, "silver": silver, "runner": runner,
            "ingest": results[0]}


def test_the_table_has_enough_kinds(hostile_root):
    kinds = {c.kind for c in CASES}
    assert len(kinds) >= 25 and len(CASES) == len(kinds)
    covered = {b.reason for c in CASES for b in c.bads.values()}
    assert set(READER_REASONS) <= covered  # the reasons tests/test_ingest.py cannot show in one jsonl file
    assert len(covered & set(REASONS)) >= 11


@pytest.mark.parametrize("case", CASES, ids=[f"{i + 1}-{c.kind}" for i, c in enumerate(CASES)])
def test_case(lake, case):
    q = lake["q"]
    rows = {k[2]: r for k, r in q.items() if k[:2] == (case.source, case.rel)}
    assert set(rows) == set(case.bads), f"{case.kind}: quarantined rows {sorted(rows)} != {sorted(case.bads)}"
    for row, bad in case.bads.items():
        r = rows[row]
        assert r.reason == bad.reason, f"{case.kind}: {r.reason} ({r.detail})"
        assert r.source == case.source and r.detail.startswith(f"{case.rel}:{row}: "), r.detail
        assert bad.needle in r.detail, f"{case.kind}: {bad.needle!r} not in {r.detail!r}"
        assert r.reason in REASONS or r.reason in READER_REASONS
    bronze = {r.question for r in lake["bronze"] if (r.source, r.source_file) == (case.source, case.rel)}
    assert set(case.goods) <= bronze, f"{case.kind}: good rows missing from bronze"
    assert set(case.goods) <= lake["silver"], f"{case.kind}: good rows missing from silver.seeds"


def test_no_junk_became_a_seed(lake):
    bad_text = [q for q in lake["silver"] if q.startswith("b'") or "\x00" in q or not q.strip("\u200b\u3164 ")]
    assert bad_text == []
    # rows of every file arrived in bronze with their relative names (glob root hz/, sub/ kept)
    files = {(r.source, r.source_file) for r in lake["bronze"]}
    assert ("hz", "sub/d.jsonl.xz") in files and ("hu", "uri.jsonl") in files
    assert ("hz", "notes.txt") not in files and not any(f.startswith("_") for _, f in files)


def test_both_readers_agree(hostile_root, tmp_path_factory, _engine):
    """The driver and the executors decode with the same kernel: the same records and keys."""
    from boostqa import sources
    from boostqa.config import SourceConfig

    spark = engine.get_spark()
    srcs = [SourceConfig(**s) for s in _sources(hostile_root)]
    out = {}
    for mb in (64, 0):
        s = _settings(hostile_root, tmp_path_factory.mktemp("agree"), "x", [])
        raw = sources.read_raw(spark, srcs, s.cache_dir(), str(tmp_path_factory.mktemp("stage") / "raw.parquet"),
                               s.ingest.model_copy(update={"driver_max_mb": mb, "max_file_mb": 16}))
        out[raw.reader] = {(r.record_key, r.source, r.source_file, r.source_row, r.read_error)
                           for r in raw.df.collect()}
        if raw.reader == "spark":
            assert all(f.sha256 for f in raw.files)
    assert out["driver"] == out["spark"]


def test_unsupported_files_are_reported_and_counted(hostile_root, tmp_path, caplog, _engine):
    settings = _settings(hostile_root, tmp_path, "spark", _sources(hostile_root)[3:4])  # hz: notes.txt
    runner = Runner(settings, spark=engine.get_spark())
    with caplog.at_level(logging.INFO, logger="boostqa.sources"):
        ctx = runner.context(ingest_stage.STAGE, "unsupported-1")
    assert ctx.stats["unsupported_files.hz"] == 1
    assert any("source 'hz': 1 file(s) of no supported format" in m and "notes.txt" in m for m in caplog.messages)
    rels = {f.rel for f in ctx.files}
    assert rels >= {"a.jsonl.gz", "sub/d.jsonl.xz"} and "notes.txt" not in rels
    settings = _settings(hostile_root, tmp_path / "b", "spark", _sources(hostile_root)[1:2])  # hc: _SUCCESS
    ctx = Runner(settings, spark=engine.get_spark()).context(ingest_stage.STAGE, "unsupported-2")
    assert ctx.stats["unsupported_files.hc"] == 0 and ctx.stats["hidden_files.hc"] == 1


def test_table_sources(tmp_path, _engine):
    """A Delta directory (format: delta) and a catalog table are sources: each row is a record
    (its JSON, as a parquet row would be), numbered by content, so a rewritten table keeps its keys."""
    from pyspark.sql import types as T

    spark = engine.get_spark()
    g1, g2, g3 = text("t1"), text("t2"), text("t3")
    rows = [(g1, 1.5, b"x"), ("nan?", float("nan"), b"y"), (g2, 2.5, b"\xff"), (g3, 3.5, b"z"),
            (g3, 3.5, b"z")]  # an exact copy: a second record, which dedup removes
    schema = T.StructType([T.StructField("question", T.StringType()), T.StructField("score", T.DoubleType()),
                           T.StructField("blob", T.BinaryType())])
    delta = str(tmp_path / "delta_src")
    spark.createDataFrame(rows, schema).write.format("delta").save(delta)
    spark.sql(f"CREATE TABLE hostile_cat USING delta LOCATION '{delta}'")
    try:
        over = {"lake": {"root": str(tmp_path / "lake")}, "runs_dir": str(tmp_path / "runs"), "sources": [
            {"name": "dt", "path": delta, "format": "delta", "fields": {**FIELDS, "answer": "score"}},
            {"name": "ct", "table": "hostile_cat", "fields": {**FIELDS, "question": "blob", "answer": None},
             "require_answer": False}]}
        runner = Runner(load_settings("local", overrides=over, environ={}), spark=spark)
        _, [res, _dedup] = runner.run(["ingest", "dedup"])
        q = runner.lake.read("quarantine.seeds").collect()
        assert sorted((r.source, r.reason) for r in q) == [("ct", "not_utf8"), ("dt", "not_finite")]
        for r in q:
            name = "delta_src" if r.source == "dt" else "hostile_cat"
            assert r.detail.startswith(f"{name}:{r.source_row}: ") and r.source_file == name
        assert "field 'answer' (from 'score') is nan" in [r for r in q if r.source == "dt"][0].detail
        bronze = runner.lake.read("bronze.seeds").collect()
        assert sorted(r.question for r in bronze if r.source == "dt") == sorted([g1, g2, g3, g3])
        assert {r.question for r in bronze if r.source == "ct"} == {"x", "y", "z"}
        assert len({r.record_key for r in bronze}) == len(bronze)
        silver = {r.question for r in runner.lake.read("silver.seeds").collect()}
        assert {g1, g2, g3} <= silver
        keys = {r.record_key for r in bronze}
        spark.read.format("delta").load(delta).orderBy("score").write.format("delta").mode("overwrite").save(delta)
        _, [res2] = runner.run(["ingest"])  # the same rows rewritten in another order: the same keys
        assert res2.pending == 0 and {r.record_key for r in runner.lake.read("bronze.seeds").collect()} == keys
    finally:
        spark.sql("DROP TABLE IF EXISTS hostile_cat")


def test_missing_table_fails_before_writing(tmp_path, _engine):
    from boostqa.sources import SourceError

    over = {"lake": {"root": str(tmp_path / "lake")}, "runs_dir": str(tmp_path / "runs"),
            "sources": [{"name": "gone", "table": "no_such_schema.no_such_table"}]}
    runner = Runner(load_settings("local", overrides=over, environ={}), spark=engine.get_spark())
    with pytest.raises(SourceError, match="source 'gone': cannot read table 'no_such_schema.no_such_table'"):
        runner.run(["ingest"])
    assert not [t for t in runner.lake.tables() if not t.startswith("ops.")]


def test_spark_listing_matches_local_listing(hostile_root, tmp_path, monkeypatch, _engine):
    """Paths only the cluster sees (s3a://, abfss://, dbfs:/, /Volumes on Connect) are listed by
    Spark and filtered with the same glob semantics; here every local listing is withheld, so
    each source goes that way and must give the records the local listing gives."""
    from boostqa import sources
    from boostqa.config import SourceConfig

    spark = engine.get_spark()
    srcs = [SourceConfig(**s) for s in _sources(hostile_root)[:4]]
    ingest = _settings(hostile_root, tmp_path, "spark", []).ingest
    local = sources.read_raw(spark, srcs, tmp_path, str(tmp_path / "a" / "raw.parquet"), ingest)
    monkeypatch.setattr(sources, "_list_local", lambda src, path: None)
    remote = sources.read_raw(spark, srcs, tmp_path, str(tmp_path / "b" / "raw.parquet"), ingest)
    assert remote.reader == "spark" and all(f.sha256 for f in remote.files)
    cols = ("record_key", "source", "source_file", "source_row", "read_error")
    rows = lambda raw: {tuple(r[c] for c in cols) for r in raw.df.collect()}  # noqa: E731
    assert rows(remote) == rows(local)
    assert sorted(f.rel for f in remote.files) == sorted(f.rel for f in local.files)
    with pytest.raises(sources.SourceError, match="source 'x': no input file at"):
        sources.list_source(spark, SourceConfig(name="x", path=str(hostile_root / "nothing" / "*.jsonl")), tmp_path)


def test_unsupported_only_directory_says_why(tmp_path):
    from boostqa import sources
    from boostqa.config import SourceConfig

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "questions.txt").write_text("one question per line?\n")
    with pytest.raises(sources.SourceError, match=r"only 1 file\(s\) of no supported format.*questions.txt"):
        sources.list_files(SourceConfig(name="t", path=str(tmp_path / "d")), tmp_path)


def test_corpus_from_a_table(tmp_path, _engine):
    spark = engine.get_spark()
    delta = str(tmp_path / "docs")
    spark.createDataFrame([("d1", "A document about rivers."), ("d2", "\u200b"), ("d3", "nul\x00doc")],
                          "id string, text string").write.format("delta").save(delta)
    over = {"lake": {"root": str(tmp_path / "lake")}, "runs_dir": str(tmp_path / "runs"),
            "corpus": [{"name": "docs", "path": delta, "format": "delta", "text_field": "text", "id_field": "id"}]}
    runner = Runner(load_settings("local", overrides=over, environ={}), spark=spark)
    _, [res] = runner.run(["corpus"])
    assert (res.kept, res.rejected) == (1, 2)
    assert {r.reason for r in runner.lake.read("quarantine.corpus").collect()} == {"empty_text", "bad_chars"}
    assert [r.source_row_id for r in runner.lake.read("bronze.corpus").collect()] == ["d1"]

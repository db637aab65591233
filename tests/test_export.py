"""Training-shard export: readable by the usual loaders, exact against input and manifest, deterministic,
idempotent, refuses to clobber, and verify() catches tampering."""

from __future__ import annotations

import json
import os
import random
import re
import shutil

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from boostqa.export import ExportError, card, export
from boostqa.text import shards

SCHEMA = ("mix_id string, component string, source_table string, source_version long, doc_id string, epoch int, "
          "text string, n_tokens long, discipline string, difficulty int, mode string, shuffle_key long, "
          "blend_id string, run_id string")
SHARD_TOKENS = 1_500
SOURCES = [{"table": "gold.boostqa", "version": 12, "digest": "sha256:ab12"},
           {"table": "general.corpus", "version": 3, "digest": "sha256:cd34"}]
_CACHE: dict = {}


def _mix_rows(n: int = 360) -> pd.DataFrame:
    rnd = random.Random(7)
    rows = []
    for i in range(n):
        general = i % 3 == 0
        text = (f"通用语料第{i}段：长江是中国最长的河流。" if general
                else f"问题{i}：求 {i} 与 {i + 1} 的和。\n答案：{2 * i + 1}。解析：直接相加即可。") * rnd.randint(1, 4)
        if i == 5:
            text += "\u2028行分隔符与 \"引号\" 和 emoji 🙂"
        rows.append({
            "mix_id": f"mix-{i:04d}", "component": "general" if general else "boostqa",
            "source_table": "general.corpus" if general else "gold.boostqa", "source_version": 3 if general else 12,
            "doc_id": f"doc-{i // 2 if general else i}", "epoch": (i // 3) % 2 if general else 0,
            "text": text, "n_tokens": len(text) // 2 + 1,
            "discipline": None if general or i % 7 == 0 else rnd.choice(["数学", "物理", "history"]),
            "difficulty": None if general or i % 5 == 0 else rnd.randint(1, 5),
            "mode": None if general else rnd.choice(["multigrade", "booster"]),
            "shuffle_key": rnd.getrandbits(63) - (1 << 62), "blend_id": "blend-1", "run_id": "run-1"})
    for i in (10, 11, 12):  # shuffle_key ties: mix_id decides
        rows[i]["shuffle_key"] = rows[9]["shuffle_key"]
    return pd.DataFrame(rows)


def _df(spark, pdf):
    return spark.createDataFrame(pdf, SCHEMA)


@pytest.fixture
def exported(spark, tmp_path_factory):
    """One export of the sample mix, shared by the read-only tests (exports cost a few Spark jobs)."""
    if "main" not in _CACHE:
        pdf = _mix_rows()
        out = str(tmp_path_factory.mktemp("export") / "mix-v1")
        m = export(_df(spark, pdf), out, shard_tokens=SHARD_TOKENS, sources=SOURCES, simulated=True,
                   card_title="boostqa test mix", extra_manifest={"blend_id": "blend-1"})
        _CACHE["main"] = (pdf, out, m)
    return _CACHE["main"]


def _files(m, fmt):
    return [f for f in m.files if f["format"] == fmt]


def test_files_match_input_and_manifest(exported):
    pdf, out, m = exported
    assert not m.reused and m.verify() == []
    assert sorted(os.listdir(out)) == sorted([f["name"] for f in m.files] + ["manifest.json", "README.md"])
    assert not [p for p in os.listdir(os.path.dirname(out)) if ".tmp-" in p]  # the hidden build dir is gone
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
        assert json.load(f) == m.data
    assert m.data["input"]["rows"] == len(pdf) and m.data["input"]["tokens"] == pdf.n_tokens.sum()
    assert m.data["sources"] == SOURCES and m.data["simulated"] is True and m.data["extra"] == {"blend_id": "blend-1"}
    assert m.data["shards"] > 5  # the sample spans many shards
    meta = ["mix_id", "component", "discipline", "difficulty", "mode", "epoch", "n_tokens"]
    per_format = {}
    for fmt in ("parquet", "jsonl.zst"):
        files = _files(m, fmt)
        assert [f["name"] for f in files] == [f"part-{i:05d}.{fmt}" for i in range(m.data["shards"])]
        frames = []
        for f in files:
            path = os.path.join(out, f["name"])
            part = pd.read_parquet(path) if fmt == "parquet" else pd.DataFrame(list(shards.read_jsonl_zst(path)))
            assert list(part.columns) == ["text", *meta]
            assert (len(part), int(part.n_tokens.sum()), os.path.getsize(path), shards.sha256_file(path)) == \
                (f["rows"], f["tokens"], f["bytes"], f["sha256"])
            frames.append(part)
        got = pd.concat(frames, ignore_index=True)
        assert m.totals[fmt] == {"files": len(files), "rows": len(pdf), "tokens": int(pdf.n_tokens.sum()),
                                 "bytes": sum(f["bytes"] for f in files)}
        per_format[fmt] = got
    # both formats: the same rows in the same order, equal to the input (Chinese text, nulls, U+2028 intact)
    want = pdf.set_index("mix_id")
    for fmt, got in per_format.items():
        assert got.mix_id.tolist() == per_format["parquet"].mix_id.tolist()
        assert sorted(got.mix_id) == sorted(pdf.mix_id)
        g = got.set_index("mix_id").loc[want.index]
        assert g.text.tolist() == want.text.tolist()
        for c in ("component", "discipline", "mode"):
            assert [None if pd.isna(v) else v for v in g[c]] == [None if pd.isna(v) else v for v in want[c]]
        for c in ("difficulty", "epoch", "n_tokens"):
            assert [None if pd.isna(v) else int(v) for v in g[c]] == [None if pd.isna(v) else int(v) for v in want[c]]
    t = pq.read_table(os.path.join(out, "part-00000.parquet"))
    assert t.schema.field("difficulty").type == pa.int32() and t.schema.field("text").type == pa.string()
    assert t.schema.metadata is None or b"pandas" not in t.schema.metadata


def test_order_and_shard_boundaries(exported):
    pdf, out, m = exported
    order = pdf.sort_values(["shuffle_key", "mix_id"]).reset_index(drop=True)
    start = order.n_tokens.cumsum() - order.n_tokens  # tokens before each row
    raw = start // SHARD_TOKENS
    expected = raw.map({s: i for i, s in enumerate(sorted(raw.unique()))})
    got = []
    for f in _files(m, "parquet"):
        ids = pq.read_table(os.path.join(out, f["name"]), columns=["mix_id"]).column("mix_id").to_pylist()
        got += [(mid, f["shard"]) for mid in ids]
    # the concatenation of the shards in name order is exactly the ascending (shuffle_key, mix_id) order ...
    assert [mid for mid, _ in got] == order.mix_id.tolist()
    # ... and each row sits in the shard its token offset says
    assert [s for _, s in got] == expected.tolist()
    assert raw.nunique() == m.data["shards"]
    for f in _files(m, "parquet")[:-1]:  # every shard but the last reaches the budget (rows are < budget here)
        assert f["tokens"] >= SHARD_TOKENS - order.n_tokens.max()


def test_loaders_read_the_export(exported, tmp_path):
    pdf, out, m = exported
    cache = str(tmp_path / "hf")
    ds = datasets.load_dataset("parquet", data_files=f"{out}/*.parquet", split="train", cache_dir=cache)
    assert ds.num_rows == len(pdf) and ds[0]["mix_id"] == _first_mix_id(pdf)
    assert pq.read_table(out + "/part-00001.parquet").num_rows == _files(m, "parquet")[1]["rows"]
    # datasets reads zstd-compressed JSON lines itself (zstandard installed)
    js = datasets.load_dataset("json", data_files=f"{out}/*.jsonl.zst", split="train", cache_dir=cache)
    assert js.num_rows == len(pdf) and js["mix_id"] == ds["mix_id"] and js["text"] == ds["text"]
    # the card's own loading snippet runs as written
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        text = f.read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("<export dir>", out).replace('split="train"', f'split="train", cache_dir={cache!r}')
    ns: dict = {}
    exec(code, ns)  # noqa: S102 - our own generated snippet
    assert ns["ds"].num_rows == len(pdf) and ns["ds"].features["difficulty"].dtype == "int32"


def _first_mix_id(pdf):
    return pdf.sort_values(["shuffle_key", "mix_id"]).mix_id.iloc[0]


def test_card_states_mix_sources_and_simulation(exported):
    pdf, out, m = exported
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("---\n") and "# boostqa test mix" in text
    assert "**Simulated: yes.**" in text.split("## What it is")[0]  # stated before anything else
    mix = {r["component"]: r for r in m.data["mix"]}
    general = pdf[pdf.component == "general"]
    assert mix["general"]["rows"] == len(general) and mix["general"]["tokens"] == general.n_tokens.sum()
    assert mix["general"]["epochs"] == round(general.n_tokens.sum() / general[general.epoch == 0].n_tokens.sum(), 2)
    assert mix["boostqa"]["epochs"] == 1.0 and abs(sum(r["share"] for r in m.data["mix"]) - 1) < 1e-5
    assert f"| general | {len(general):,} | {int(general.n_tokens.sum()):,} |" in text
    assert "| gold.boostqa | 12 | sha256:ab12 |" in text and "--json-keys text" in text
    plain = card({**m.data, "simulated": False})
    assert "**Simulated: no.**" in plain and "simulated" not in plain.split("---")[1]  # no tag either


def test_deterministic_across_runs_and_partitioning(spark, exported, tmp_path):
    pdf, out, m = exported
    shuffled = _df(spark, pdf.sample(frac=1, random_state=3)).repartition(5)
    m2 = export(shuffled, str(tmp_path / "again"), shard_tokens=SHARD_TOKENS, sources=SOURCES, simulated=True,
                card_title="boostqa test mix", extra_manifest={"blend_id": "blend-1"}, tasks=1)
    assert [(f["name"], f["sha256"]) for f in m2.files] == [(f["name"], f["sha256"]) for f in m.files]
    assert m2.data["input"]["fingerprint"] == m.data["input"]["fingerprint"]
    with open(os.path.join(out, "README.md"), "rb") as a, open(tmp_path / "again" / "README.md", "rb") as b:
        assert a.read() == b.read()


def test_rerun_is_a_noop_and_a_different_export_is_refused(spark, exported, tmp_path):
    pdf, out, m = exported
    kw = dict(shard_tokens=SHARD_TOKENS, sources=SOURCES, simulated=True, card_title="boostqa test mix",
              extra_manifest={"blend_id": "blend-1"})
    before = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in os.listdir(out)}
    again = export(_df(spark, pdf), out, **kw)
    assert again.reused and again.data == m.data  # same created_at: nothing was rewritten
    assert {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in os.listdir(out)} == before
    changed = pdf.copy()
    changed.loc[3, "text"] = changed.loc[3, "text"] + "。"
    with pytest.raises(ExportError, match=r"different export \(differs in \['input'\]\)"):
        export(_df(spark, changed), out, **kw)
    with pytest.raises(ExportError, match=r"differs in \['settings'\]"):
        export(_df(spark, pdf), out, **{**kw, "shard_tokens": 999})
    with pytest.raises(ExportError, match=r"differs in \['simulated'\]"):
        export(_df(spark, pdf), out, **{**kw, "simulated": False})
    assert {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in os.listdir(out)} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and has no manifest.json"):
        export(_df(spark, pdf), str(foreign), **kw)
    assert os.listdir(foreign) == ["notes.txt"]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_rows_longer_than_a_shard_and_empty_target_dir(spark, tmp_path):
    pdf = _mix_rows(60)
    out = tmp_path / "small"
    out.mkdir()  # an existing empty directory is fine
    m = export(_df(spark, pdf), str(out), shard_tokens=40, formats=["parquet"], metadata_columns=["mix_id", "n_tokens"],
               mix_summary=[{"component": "all", "rows": 60}], simulated=False)
    assert m.verify() == [] and m.data["mix"] == [{"component": "all", "rows": 60}]
    order = pdf.sort_values(["shuffle_key", "mix_id"]).reset_index(drop=True)
    raw = (order.n_tokens.cumsum() - order.n_tokens) // 40
    assert raw.diff().max() > 1  # rows longer than a shard skip shard numbers ...
    assert [f["name"] for f in m.files] == [f"part-{i:05d}.parquet" for i in range(raw.nunique())]  # ... not names
    got = [pq.read_table(os.path.join(out, f["name"])).column("mix_id").to_pylist() for f in m.files]
    assert got == [order.mix_id[raw == s].tolist() for s in sorted(raw.unique())]
    assert sorted(os.listdir(out)) == sorted([f["name"] for f in m.files] + ["manifest.json", "README.md"])


def test_bad_input_is_refused(spark, tmp_path):
    pdf = _mix_rows(20)
    dup = pdf.copy()
    dup.loc[1, "mix_id"] = dup.loc[0, "mix_id"]
    with pytest.raises(ExportError, match="mix_id is not unique"):
        export(_df(spark, dup), str(tmp_path / "a"), simulated=False)
    nulls = pdf.copy()
    nulls.loc[2, "text"] = None
    with pytest.raises(ExportError, match="1 rows have a null text"):
        export(_df(spark, nulls), str(tmp_path / "b"), simulated=False)
    with pytest.raises(ExportError, match=r"lacks columns \['shuffle_key'\]"):
        export(_df(spark, pdf).drop("shuffle_key"), str(tmp_path / "c"), simulated=False)
    assert os.listdir(tmp_path) == []


def test_verify_reports_tampering(exported, tmp_path):
    _, out, m = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert shards.verify(str(copy)) == []  # reads manifest.json itself
    p = copy / "part-00001.parquet"
    raw = bytearray(p.read_bytes())
    raw[10] ^= 0xFF
    p.write_bytes(bytes(raw))
    (copy / "part-00002.jsonl.zst").unlink()
    (copy / "part-00099.parquet").write_bytes(b"stray")
    data = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    data["files"][0]["rows"] += 1
    problems = shards.verify(str(copy), data)
    assert any(x.startswith("part-00001.parquet: sha256") for x in problems)
    assert "part-00002.jsonl.zst: missing" in problems
    assert "part-00099.parquet: not in the manifest" in problems
    assert f"{data['files'][0]['name']}: {data['files'][0]['rows'] - 1} rows != manifest {data['files'][0]['rows']}" \
        in problems


# Spark-free shard writer

def test_write_shard_is_atomic_and_deterministic(tmp_path):
    pdf = pd.DataFrame({"text": ["第一行\n第二行", "a\u2028b", "c"], "mix_id": ["x", "y", "z"],
                        "difficulty": pd.array([1, None, 3], "Int32"), "n_tokens": [4, 2, 1], "ignored": [1, 2, 3]})
    schema = pa.schema([("text", pa.string()), ("mix_id", pa.string()), ("difficulty", pa.int32())])
    runs = []
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        runs.append(shards.write_shard(pdf, str(tmp_path / d), "part-00000", metadata_columns=["mix_id", "difficulty"],
                                       schema=schema))
        assert sorted(os.listdir(tmp_path / d)) == ["part-00000.jsonl.zst", "part-00000.parquet"]  # no temp left
    assert runs[0] == runs[1]
    assert [(f.path, f.rows, f.tokens) for f in runs[0]] == [("part-00000.jsonl.zst", 3, 7),
                                                             ("part-00000.parquet", 3, 7)]
    assert list(shards.read_jsonl_zst(str(tmp_path / "a" / "part-00000.jsonl.zst"))) == [
        {"text": "第一行\n第二行", "mix_id": "x", "difficulty": 1},
        {"text": "a\u2028b", "mix_id": "y", "difficulty": None},
        {"text": "c", "mix_id": "z", "difficulty": 3}]
    with pytest.raises(ValueError, match="null 'text'"):
        shards.write_shard(pdf.assign(text=[None, "b", "c"]), str(tmp_path), "bad", formats=["parquet"])


def test_json_loader_needs_features_when_a_shard_column_is_all_null(tmp_path):
    """Why the card passes features to the json loader: JSON carries no types, datasets infers them per file."""
    schema = pa.schema([("text", pa.string()), ("discipline", pa.string())])
    shards.write_shard(pd.DataFrame({"text": ["a"], "discipline": [None]}), str(tmp_path), "part-00000",
                       formats=["jsonl.zst"], metadata_columns=["discipline"], schema=schema)
    shards.write_shard(pd.DataFrame({"text": ["b"], "discipline": ["数学"]}), str(tmp_path), "part-00001",
                       formats=["jsonl.zst"], metadata_columns=["discipline"], schema=schema)
    files, cache = f"{tmp_path}/*.jsonl.zst", str(tmp_path / "hf")
    with pytest.raises(Exception):  # DatasetGenerationError: Couldn't cast array of type string to null
        datasets.load_dataset("json", data_files=files, split="train", cache_dir=cache)
    features = datasets.Features({"text": datasets.Value("string"), "discipline": datasets.Value("string")})
    ds = datasets.load_dataset("json", data_files=files, features=features, split="train", cache_dir=cache + "2")
    assert ds["discipline"] == [None, "数学"]


def test_bad_arguments_and_empty_input_are_refused(spark, tmp_path):
    df = _df(spark, _mix_rows(20))
    with pytest.raises(ExportError, match=r"must be a non-empty subset of \['jsonl.zst', 'parquet'\], got \[\]"):
        export(df, str(tmp_path / "a"), formats=[], simulated=False)
    with pytest.raises(ExportError, match=r"got \['csv'\]"):
        export(df, str(tmp_path / "a"), formats=["csv", "csv"], simulated=False)
    with pytest.raises(ExportError, match="shard_tokens must be positive, got 0"):
        export(df, str(tmp_path / "a"), shard_tokens=0, simulated=False)
    with pytest.raises(ExportError, match="'text' is always written first"):
        export(df, str(tmp_path / "a"), metadata_columns=["mix_id", "text"], simulated=False)
    with pytest.raises(ExportError, match="the input has no rows"):
        export(df.limit(0), str(tmp_path / "a"), simulated=False)
    assert os.listdir(tmp_path) == []

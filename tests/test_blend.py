"""The general corpus, the token ledger, the token-budget blend and the export stage, on real
Delta tables with the real Llama-3 tokenizer."""

from __future__ import annotations

import json
import os
from collections import Counter

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from boostqa.runner import Runner, StageError
from boostqa.stages import STAGES
from boostqa.text import shards
from boostqa.text.tokens import get_counter, render_training_text
from tests.conftest import write_jsonl

QA_TEMPLATE = "Question: {question}\nAnswer: {answer}"
DISCIPLINES = ("math", "physics", "history")


def _qa_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        d = DISCIPLINES[i % 3]
        rows.append({"qa_id": f"qa{i:04d}", "question": f"In {d}, what is item {i} times {i % 7}? Explain briefly.",
                     "answer": f"Step one: take {i}. Step two: multiply by {i % 7}. The answer is {i * (i % 7)}." +
                               " Detail." * (i % 5), "discipline": d, "difficulty": 1 + i % 5,
                     "mode": "multigrade" if i % 4 else "booster", "llm_simulated": True,
                     "seed_ids": [f"seed{i // 3}"]})
    return rows


def _docs(n: int) -> list[dict]:
    return [{"id": f"doc-{i}", "text": f"Document {i}. " + "Knowledge about topic %d and 中文 text. " % i * (8 + i % 9)}
            for i in range(n)]


@pytest.fixture
def lake_with_inputs(spark, make_settings, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus" / "docs.jsonl", _docs(120) + [
        {"id": "no-text", "body": "x"}, {"id": "bad-type", "text": 42}, {"id": "blank", "text": "   "},
        "not json at all", "[1, 2]", b'{"id": "latin1", "text": "caf\xe9"}'])

    def make(target: int = 20_000, ratios=(0.5, 0.5), **over):
        settings = make_settings(
            corpus=[{"name": "docs", "path": str(corpus), "text_field": "text", "id_field": "id"}],
            blend={"target_tokens": target, "seed": over.pop("seed", 0), "components": [
                {"name": "qa", "table": "gold.boostqa", "template": "qa", "ratio": ratios[0],
                 "id_column": "qa_id", **over.pop("qa", {})},
                {"name": "general", "table": "bronze.corpus", "template": "text", "ratio": ratios[1],
                 "id_column": "doc_id"}], **over.pop("blend", {})},
            tokens={"tables": [{"table": "gold.boostqa", "template": "qa"},
                               {"table": "bronze.corpus", "template": "text", "dims": {"mode": "'general'"}},
                               {"table": "gold.mix", "template": "text", "dims": {"source": "component"}}]},
            export={"dir": str(tmp_path / "exports"), "shard_tokens": 5_000}, **over)
        return Runner(settings, spark=spark)

    runner = make()
    runner.lake.overwrite(spark.createDataFrame(_qa_rows(90)), "gold.boostqa")
    return make


def _recount(texts, eos=True) -> list[int]:
    return get_counter("splintr:llama3").count(texts, add_eos=eos)


def test_corpus_ingests_documents_and_quarantines_unusable_rows(lake_with_inputs):
    runner = lake_with_inputs()
    res = runner.run_stage(STAGES["corpus"], "r1")
    assert (res.kept, res.rejected) == (120, 6)
    docs = {r.source_row_id: r for r in runner.lake.read("bronze.corpus").collect()}
    assert docs["doc-3"].text == _docs(4)[3]["text"] and docs["doc-3"].source_row == 4
    q = {r.source_row: (r.reason, r.detail) for r in runner.lake.read("quarantine.corpus").collect()}
    assert q[121] == ("missing_text", "docs:docs.jsonl:121: no field 'text'")
    assert q[122] == ("bad_text_type", "docs:docs.jsonl:122: field 'text' is int")
    assert q[123][0] == "empty_text" and q[124][0] == "unparseable" and q[125][0] == "not_an_object"
    assert q[126][0] == "not_utf8" and q[126][1].startswith("docs:docs.jsonl:126: ")
    again = runner.run_stage(STAGES["corpus"], "r2")
    assert again.pending == 0 and runner.lake.read("bronze.corpus").count() == 120


def test_blend_hits_token_targets_and_repeats_or_samples_components(lake_with_inputs):
    runner = lake_with_inputs(target=20_000, ratios=(0.5, 0.5))
    runner.run(["corpus", "blend"])
    mix = runner.lake.read("gold.mix").toPandas()
    qa_tokens = sum(_recount([render_training_text(QA_TEMPLATE, r) for r in _qa_rows(90)]))
    by = mix.groupby("component")["n_tokens"].sum()
    for comp in ("qa", "general"):  # within 0.5 % of 10,000 tokens each
        assert abs(by[comp] - 10_000) / 10_000 < 0.005, by.to_dict()
    assert qa_tokens < 10_000  # the small component is repeated: whole epochs, then a partial one
    qa = mix[mix.component == "qa"]
    full = 10_000 // qa_tokens
    assert set(qa.epoch) == set(range(full + 1))
    assert (qa.groupby("epoch").size()[list(range(full))] == 90).all()
    assert qa.mix_id.is_unique and mix.mix_id.is_unique
    gen = mix[mix.component == "general"]
    assert set(gen.epoch) == {0} and gen.doc_id.is_unique and len(gen) < 120  # down-sampled
    # each row's tokens are its text's exact Llama-3 tokens + EOS, and the text is the template rendered
    assert list(mix.n_tokens) == _recount(list(mix.text))
    qa_by_id = {r["qa_id"]: r for r in _qa_rows(90)}
    row = qa.iloc[0]
    assert row.text == render_training_text(QA_TEMPLATE, qa_by_id[row.doc_id])
    assert row.discipline == qa_by_id[row.doc_id]["discipline"] and row.llm_simulated
    assert set(mix.source_table) == {"gold.boostqa", "bronze.corpus"}


def test_blend_is_deterministic_and_a_new_seed_draws_another_sample(lake_with_inputs):
    runner = lake_with_inputs()
    runner.run(["corpus", "blend"])
    first = runner.lake.read("gold.mix").select("mix_id", "shuffle_key", "n_tokens").toPandas()
    _, [res] = runner.run(["blend"])  # same inputs and config: the blend is already there
    assert res.pending == 0 and runner.lake.version("gold.mix") == 0
    runner.lake.overwrite(runner.lake.read("gold.boostqa"), "gold.boostqa")  # a new input version, same rows
    runner.run(["blend"])  # a new blend (new input version) with the same result, as a new mix version
    again = runner.lake.read("gold.mix").select("mix_id", "shuffle_key", "n_tokens").toPandas()
    assert runner.lake.version("gold.mix") == 1
    assert sorted(map(tuple, first.values)) == sorted(map(tuple, again.values))
    other = lake_with_inputs(seed=7)
    other.run(["blend"])
    reseeded = other.lake.read("gold.mix").select("mix_id").toPandas()
    assert set(reseeded.mix_id) != set(first.mix_id)


def test_blend_splits_a_component_by_column_shares(lake_with_inputs):
    runner = lake_with_inputs(target=12_000, ratios=(1, 1), qa={"by": "discipline", "shares": {"math": 0.5}})
    runner.run(["corpus", "blend"])
    mix = runner.lake.read("gold.mix").where("component = 'qa'").toPandas()
    by = mix.groupby("discipline")["n_tokens"].sum()
    assert abs(by["math"] - 3_000) / 3_000 < 0.02  # half of the 6,000 qa tokens (one doc is ~60 tokens)
    assert abs(by["physics"] + by["history"] - 3_000) / 3_000 < 0.02


def test_blend_splits_by_a_discipline_x_difficulty_expression(lake_with_inputs):
    by = "concat_ws('/', discipline, cast(difficulty as string))"
    runner = lake_with_inputs(target=12_000, ratios=(1, 1), qa={"by": by, "shares": {"math/1": 0.1}})
    runner.run(["corpus", "blend"])
    mix = runner.lake.read("gold.mix").where("component = 'qa'").toPandas()
    cell = mix[(mix.discipline == "math") & (mix.difficulty == 1)].n_tokens.sum()
    assert set(mix[(mix.discipline == "math") & (mix.difficulty == 1)].epoch) == {0, 1, 2}  # 6 rows, 2.4 epochs
    # each group within one row of its target, the component within half a row (error diffusion)
    assert abs(cell - 600) <= mix.n_tokens.max() and abs(mix.n_tokens.sum() - 6_000) <= mix.n_tokens.max() / 2


def test_blend_refuses_more_epochs_than_allowed(lake_with_inputs):
    runner = lake_with_inputs(target=400_000, blend={"max_epochs": 2})
    runner.run(["corpus"])
    with pytest.raises(StageError, match="max_epochs"):
        runner.run(["blend"])
    assert not runner.lake.exists("gold.mix")


def test_ledger_sums_equal_a_direct_recount_and_count_each_version_once(lake_with_inputs, spark):
    runner = lake_with_inputs()
    runner.run(["corpus", "blend", "ledger"])
    led = runner.lake.read("gold.token_ledger").toPandas()
    qa_texts = [render_training_text(QA_TEMPLATE, r) for r in _qa_rows(90)]
    qa = led[led.table_name == "gold.boostqa"]
    assert qa.tokens.sum() == sum(_recount(qa_texts)) and qa.records.sum() == 90
    per_cell = qa.groupby(["discipline", "difficulty", "mode"]).tokens.sum().to_dict()
    direct = Counter()
    for r, n in zip(_qa_rows(90), _recount(qa_texts)):
        direct[(r["discipline"], r["difficulty"], r["mode"])] += n
    assert per_cell == dict(direct)
    docs = runner.lake.read("bronze.corpus").select("text").toPandas()
    gen = led[led.table_name == "bronze.corpus"]
    assert gen.tokens.sum() == sum(_recount(list(docs.text))) and set(gen["mode"]) == {"general"}
    mix = runner.lake.read("gold.mix").toPandas()
    ml = led[led.table_name == "gold.mix"]
    assert ml.groupby("source").tokens.sum().to_dict() == mix.groupby("component").n_tokens.sum().to_dict()
    assert set(led.tokenizer) == {"splintr:llama3"} and led.ledger_id.is_unique
    # nothing changed: nothing to count; a new version of one table: only it is counted again
    res = runner.run_stage(STAGES["ledger"], "r-again")
    assert res.pending == 0
    runner.lake.append(spark.createDataFrame(_qa_rows(93)[90:]), "gold.boostqa")
    res = runner.run_stage(STAGES["ledger"], "r-new")
    led2 = runner.lake.read("gold.token_ledger").toPandas()
    new = led2[led2.run_id == "r-new"]
    assert set(new.table_name) == {"gold.boostqa"} and new.records.sum() == 93
    assert len(led2) == len(led) + len(new)


def test_export_stage_writes_shards_matching_gold_mix_once_per_version(lake_with_inputs, tmp_path):
    runner = lake_with_inputs()
    run_id, _ = runner.run(["corpus", "blend", "export"])
    [row] = runner.lake.read("ops.exports").collect()
    # the chain of table versions, from MLflow alone: blend wrote the version export read
    from boostqa.tracking import lineage

    lin = lineage(runner.settings.tracking_uri(), runner.settings.tracking.experiment, run_id)
    wrote = {(x["stage"], x["table"]): x for x in lin if x["context"] == "output"}
    read = {(x["stage"], x["table"]): x for x in lin if x["context"] == "input"}
    assert wrote[("blend", "gold.mix")]["version"] == read[("export", "gold.mix")]["version"] == row.mix_version
    assert wrote[("blend", "gold.mix")]["digest"] == read[("export", "gold.mix")]["digest"]
    assert ("blend", "bronze.corpus") in read and ("export", "ops.exports") in wrote
    mix = runner.lake.read("gold.mix").toPandas()
    assert row.mix_version == runner.lake.version("gold.mix") and row.path.endswith(f"mix-v{row.mix_version}")
    manifest = json.load(open(os.path.join(row.path, "manifest.json")))
    assert shards.verify(row.path, manifest) == []
    assert (row.rows, row.tokens) == (len(mix), int(mix.n_tokens.sum()))
    for fmt in ("jsonl.zst", "parquet"):
        assert (manifest["totals"][fmt]["rows"], manifest["totals"][fmt]["tokens"]) == (row.rows, row.tokens)
    assert row.shards > 1 and row.llm_simulated and manifest["simulated"] is True
    texts = [t for f in sorted(os.listdir(row.path)) if f.endswith(".parquet")
             for t in pq.read_table(os.path.join(row.path, f)).column("text").to_pylist()]
    assert texts == list(mix.sort_values(["shuffle_key", "mix_id"]).text)
    assert {s["table"] for s in manifest["sources"]} == {"gold.mix", "gold.boostqa", "bronze.corpus"}
    assert "Simulated" in open(os.path.join(row.path, "README.md")).read()
    res = runner.run_stage(STAGES["export"], "again")
    assert res.pending == 0 and runner.lake.read("ops.exports").count() == 1


def test_token_progress_and_the_tokens_command(lake_with_inputs, monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    from boostqa import cli
    from boostqa.reports import token_progress

    runner = lake_with_inputs()
    runner.run(["corpus", "blend", "ledger"])
    qa_tokens = sum(_recount([render_training_text(QA_TEMPLATE, r) for r in _qa_rows(90)]))
    p = token_progress(runner.lake, 1_000_000)
    assert (p["tokens"], p["accepted_qa"], p["seeds_used"]) == (qa_tokens, 90, 30)
    assert p["share_done"] == qa_tokens / 1_000_000 and p["tokens_per_seed"] == qa_tokens / 30
    assert p["seeds_needed"] == -(-(1_000_000 - qa_tokens) // (qa_tokens / 30))
    assert p["version"] == p["current_version"] == runner.lake.version("gold.boostqa")

    monkeypatch.setattr(cli, "_settings", lambda profile: runner.settings)
    monkeypatch.setattr(cli, "console", Console(width=200, color_system=None))
    r = CliRunner().invoke(cli.app, ["tokens", "--target", "1000000"])
    assert r.exit_code == 0, r.output
    assert f"gold.boostqa: {qa_tokens:,} of 1,000,000 tokens" in r.stdout
    assert f"{p['seeds_needed']:,} more seeds" in r.stdout and "bronze.corpus" in r.stdout


@pytest.mark.parametrize("qa, match", [
    ({"by": "discipline", "shares": {"math": 0.7, "physics": 0.5}}, "shares sum to 1.2 > 1"),
    ({"by": "discipline", "shares": {"chemistry": 0.2}}, r"no rows with discipline in \['chemistry'\]"),
    ({"id_column": "no_such_id"}, "no id column 'no_such_id' in gold.boostqa"),
    ({"template": "text"}, r"template '\{text\}' reads \['text'\], not columns of the table"),
])
def test_bad_blend_config_fails_with_the_component_named_and_writes_nothing(lake_with_inputs, qa, match):
    runner = lake_with_inputs(qa=qa)
    runner.run(["corpus"])
    with pytest.raises((StageError, ValueError), match=match):
        runner.run(["blend"])
    assert not runner.lake.exists("gold.mix")


def test_ledger_table_with_an_unknown_template_is_a_config_error(make_settings):
    from boostqa.config import ConfigError

    with pytest.raises(ConfigError, match="uses template 'chat', not in tokens.templates"):
        make_settings(tokens={"tables": [{"table": "gold.boostqa", "template": "chat"}]})

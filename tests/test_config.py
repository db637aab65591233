from pathlib import Path

import pytest

from boostqa.config import ConfigError, env_overrides, load_settings


def test_base_plus_profile_and_env_override():
    s = load_settings("demo", environ={"BOOSTQA__RUNNER__CHUNK_ROWS": "5000", "BOOSTQA__LAKE__ROOT": "/x/lake"})
    assert s.profile == "demo"
    assert s.runner.chunk_rows == 5000 and isinstance(s.runner.chunk_rows, int)
    assert s.lake.root == "/x/lake"
    assert {x.name for x in s.sources} >= {"champ", "boostqa_stem", "demo_malformed"}
    assert s.engine.kind == "embedded"  # from base.yaml


def test_explicit_overrides_win_over_env():
    s = load_settings("local", overrides={"runner": {"chunk_rows": 7}}, environ={"BOOSTQA__RUNNER__CHUNK_ROWS": "9"})
    assert s.runner.chunk_rows == 7


def test_unknown_profile_names_the_file():
    with pytest.raises(ConfigError, match=r"unknown profile 'nope'.*nope\.yaml"):
        load_settings("nope", environ={})


def test_invalid_value_names_the_field(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("runner: {chunk_rows: 0}\n")
    (tmp_path / "p.yaml").write_text("sources: [{name: Bad Name, path: x}]\n")
    with pytest.raises(ConfigError) as e:
        load_settings("p", directory=tmp_path, environ={})
    assert "runner.chunk_rows" in str(e.value) and "sources.0.name" in str(e.value)


def test_unknown_keys_are_rejected(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("lake: {rooot: x}\n")
    (tmp_path / "p.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="lake.rooot"):
        load_settings("p", directory=tmp_path, environ={})


def test_duplicate_source_names(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("sources: [{name: a, path: x}, {name: a, path: y}]\n")
    (tmp_path / "p.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="duplicate source names"):
        load_settings("p", directory=tmp_path, environ={})


def test_env_override_parsing():
    assert env_overrides({"BOOSTQA__A__B_C": "true", "OTHER": "1"}) == {"a": {"b_c": True}}


def test_redacted_masks_secret_values():
    s = load_settings("local", environ={})
    d = s.redacted()
    d2 = __import__("boostqa.config", fromlist=["_redact"])._redact({"api_key": "sk-123", "api_key_env": "X",
                                                                     "nested": {"token": "t"}})
    assert d2 == {"api_key": "***", "api_key_env": "X", "nested": {"token": "***"}}
    assert d["lake"]["root"] == s.lake.root
    # names that only look like secrets stay readable: budgets, the tokens section, variable names
    assert d["llm"]["endpoints"]["annotator"]["max_tokens"] == s.llm.endpoints["annotator"].max_tokens
    assert d["tokens"]["tokenizer"] == s.tokens.tokenizer
    assert d["llm"]["endpoints"]["annotator"]["api_key_env"] == "DEEPSEEK_API_KEY"
    masked = __import__("boostqa.config", fromlist=["redact"]).redact(
        {"password": "p", "db_password": "q", "client_secret": "c", "access_token": "a", "tokens": 3, "max_tokens": 4})
    assert masked == {"password": "***", "db_password": "***", "client_secret": "***", "access_token": "***",
                      "tokens": 3, "max_tokens": 4}


def test_the_simulator_never_writes_catalog_tables(make_settings):
    from boostqa.stages.base import StageError
    from boostqa.stages.llm_calls import endpoint

    s = make_settings(lake={"catalog": "main"})
    with pytest.raises(StageError, match="is the simulator .* catalog 'main'"):
        endpoint(s, "annotator", start_simulator=False)
    ok = make_settings(lake={"catalog": "test"}, llm={"simulator": {"allow_in_catalog": True}})
    assert endpoint(ok, "annotator", start_simulator=False).simulated
    real = load_settings("databricks", environ={})
    assert {n: e.base_url for n, e in real.llm.endpoints.items() if e.base_url == "simulator"} == {}

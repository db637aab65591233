"""Shared fixtures: one embedded engine for the whole test session, a fresh lake per test."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from boostqa import engine
from boostqa.config import load_settings

logging.getLogger("mlflow").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def _engine():
    yield
    engine.stop()


@pytest.fixture
def spark(_engine):
    """The session of the one embedded server (started on first use, restarted if a test stopped it)."""
    return engine.get_spark()


@pytest.fixture
def make_settings(tmp_path: Path):
    """Settings on a temporary lake + MLflow store; sources and overrides per test."""

    def make(profile: str = "local", sources: list[dict] | None = None, **overrides):
        base = {"lake": {"root": str(tmp_path / "lake")}, "runs_dir": str(tmp_path / "runs")}
        if sources is not None:
            base["sources"] = sources
        from boostqa.config import deep_merge

        return load_settings(profile, overrides=deep_merge(base, overrides), environ={})

    return make


@pytest.fixture(scope="session")
def llama_binary(request: pytest.FixtureRequest) -> Path:
    """llama-server, built once per machine (cached); build progress shown through pytest's capture."""
    from boostqa.llm import llamacpp

    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        return llamacpp.build_server()


@pytest.fixture(scope="session")
def llama_server(llama_binary: Path):
    """One real llama-server + SmolLM2-135M-Instruct on loopback for the whole session."""
    from boostqa.llm import llamacpp

    with llamacpp.serve(ctx_size=3072, n_parallel=2) as srv:
        yield srv


@pytest.fixture(scope="session")
def champ_cache(tmp_path_factory) -> Path:
    """The real CHAMP set in a data cache (the default cache when `make` already fetched it)."""
    from boostqa import assets

    cache = assets.default_cache_dir()
    try:
        assets.asset_path("champ", cache)
    except assets.AssetMissing:
        cache = tmp_path_factory.mktemp("cache")
        assets.fetch(["champ"], cache)
    return cache


def write_jsonl(path: Path, lines: list) -> Path:
    """Lines may be dicts (dumped as JSON), str (written as is) or bytes (raw)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


def sim_requests(sim) -> int:
    """Chat requests a pipeline sent to a simulator (the client's preflights not counted)."""
    stats = sim.stats()
    return stats["requests_by_endpoint"].get("/chat/completions", 0) - stats["preflights"]

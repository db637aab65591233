"""Provider dialects of the simulator (served under /<provider>/v1), through the real openai SDK,
and the client adapting to each: the refusals, reasoning forms and completions shapes the
provider profiles are written against."""

from __future__ import annotations

import math
from typing import Literal

import openai
import pytest
from pydantic import BaseModel

from boostqa.llm.client import Endpoint, Request, preflight, run_requests
from boostqa.llm.schema import json_instruction, response_format, strict_schema
from boostqa.llm.sim import SimConfig, SimulatorServer
from boostqa.llm.sim.content import example_schema


class Label(BaseModel):
    discipline: Literal["mathematics", "physics", "chemistry", "biology", "economics", "history", "law", "medicine",
                        "computer_science", "philosophy"]
    difficulty: Literal[1, 2, 3, 4, 5]
    note: str | None = None


@pytest.fixture(scope="module")
def sim():
    with SimulatorServer(SimConfig(latency="none")) as server:
        yield server


def sdk(sim, provider: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim.url}/{provider}/v1", api_key="k", max_retries=0)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_every_dialect_serves_models_and_chat(sim):
    for provider in ("deepseek", "openai", "vllm", "sglang", "llamacpp", "databricks", "openai_compatible"):
        with sdk(sim, provider) as c:
            assert c.models.list().data
            assert c.chat.completions.create(model="m", messages=user("hi")).choices[0].message.content
    assert sim.stats()["requests_by_dialect"]["deepseek"] == 2


def test_deepseek_refuses_json_schema_and_wants_the_word_json(sim):
    with sdk(sim, "deepseek") as c:
        with pytest.raises(openai.BadRequestError, match="response_format type is unavailable"):
            c.chat.completions.create(model="deepseek-chat", messages=user("x"),
                                      response_format=response_format("json_schema", Label, False))
        with pytest.raises(openai.BadRequestError, match="must contain the word 'json'"):
            c.chat.completions.create(model="deepseek-chat", messages=user("label this"),
                                      response_format={"type": "json_object"})
        r = c.chat.completions.create(model="deepseek-chat", messages=user(f"label this\n{json_instruction(Label)}"),
                                      response_format={"type": "json_object"})
        Label.model_validate_json(r.choices[0].message.content)  # shaped like the prompt's example
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model="deepseek-chat", prompt="Q: 1+1\nA:")


def test_reasoning_forms_per_dialect(sim):
    def ask(provider: str, model: str, **kw):
        with sdk(sim, provider) as c:
            return c.chat.completions.create(model=model, messages=user("why?"), **kw)

    ds = ask("deepseek", "deepseek-reasoner").choices[0].message
    assert ds.reasoning_content.startswith("[simulated reasoning]") and "<think>" not in ds.content
    think = ask("llamacpp", "qwen3-reasoner").choices[0].message.content
    assert think.startswith("<think>\n[simulated reasoning]") and "</think>" in think
    assert ask("vllm", "qwen3-reasoner").choices[0].message.model_extra["reasoning"]
    hidden = ask("openai", "o3-mini", max_completion_tokens=400)
    assert not (hidden.choices[0].message.model_extra or {}).get("reasoning_content")
    assert hidden.usage.completion_tokens_details.reasoning_tokens > 0
    # the reasoning counts towards the budget: a budget it fills leaves no answer
    r = ask("deepseek", "deepseek-reasoner", max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == ""


def test_openai_strict_schema_and_reasoning_parameters(sim):
    with sdk(sim, "openai") as c:
        loose = {"type": "json_schema", "json_schema": {"name": "Label", "strict": True,
                                                        "schema": Label.model_json_schema()}}
        with pytest.raises(openai.BadRequestError, match="additionalProperties"):
            c.chat.completions.create(model="gpt-4o-mini", messages=user("x"), response_format=loose)
        open_props = strict_schema(Label)
        open_props["required"] = ["discipline"]
        with pytest.raises(openai.BadRequestError, match="Missing 'difficulty'"):
            c.chat.completions.create(model="gpt-4o-mini", messages=user("x"), response_format={
                "type": "json_schema", "json_schema": {"name": "Label", "strict": True, "schema": open_props}})
        r = c.chat.completions.create(model="gpt-4o-mini", messages=user("x"),
                                      response_format=response_format("json_schema", Label, True))
        Label.model_validate_json(r.choices[0].message.content)
        with pytest.raises(openai.BadRequestError, match="Unsupported parameter: 'max_tokens'"):
            c.chat.completions.create(model="o3-mini", messages=user("x"), max_tokens=50)
        with pytest.raises(openai.BadRequestError, match="Unsupported value: 'temperature'") as e:
            c.chat.completions.create(model="o3-mini", messages=user("x"), temperature=0.2)
        assert e.value.body["param"] == "temperature"


def test_text_mode_answers_the_example_inside_chatter(sim):
    with sdk(sim, "vllm") as c:
        text = c.chat.completions.create(model="m", messages=user(json_instruction(Label))).choices[0].message.content
    assert text.startswith("[simulated]") and "```json" in text
    assert example_schema(json_instruction(Label))["properties"]["difficulty"] == {"enum": [1, 2, 3, 4, 5]}


def test_completions_with_legacy_and_chat_shaped_logprobs(sim):
    prompt = ("Question: 2+2?\nA. 3\nB. 4\nAnswer: B\n\n"
              "Question: Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon\nAnswer:")
    with sdk(sim, "vllm") as c:
        r = c.completions.create(model="base", prompt=prompt, max_tokens=1, logprobs=4)
    ch = r.choices[0]
    assert ch.text in (" A", " B", " C", " D") and r.object == "text_completion"
    top = ch.logprobs.top_logprobs[0]
    assert set(top) == {" A", " B", " C", " D"} and max(top, key=top.get) == ch.text
    assert math.isclose(sum(math.exp(v) for v in top.values()), 1.0, abs_tol=1e-3)
    with sdk(sim, "llamacpp") as c:
        r = c.completions.create(model="base", prompt=prompt, max_tokens=1, logprobs=4)
    content = r.choices[0].logprobs.model_extra["content"]
    assert {t["token"] for t in content[0]["top_logprobs"]} == {" A", " B", " C", " D"}
    with sdk(sim, "vllm") as c:
        r = c.completions.create(model="base", prompt="Question: 3+4?\nAnswer:", max_tokens=8)
    assert r.choices[0].text.strip().isdigit()


@pytest.mark.parametrize("provider,model,mode", [
    ("deepseek", "deepseek-chat", "json_object"), ("openai", "gpt-4o-mini", "json_schema"),
    ("vllm", "qwen", "json_schema"), ("llamacpp", "smollm2", "json_schema"),
    ("databricks", "dbrx", "json_schema"), ("openai_compatible", "x", "json_schema")])
def test_client_preflight_learns_each_provider(sim, provider, model, mode):
    ep = Endpoint(name="t", base_url=f"{sim.url}/{provider}/v1", model=model, provider=provider,
                  api_key_env=None, max_tokens=512)
    ready, learned = preflight(ep, Label)
    assert ready.mode == mode
    res = run_requests(ready, [Request(f"k{i}", user(f"label question {i}\n{json_instruction(Label)}"))
                               for i in range(20)], Label)
    assert all(r.status == "ok" for r in res), [r.error for r in res if r.status != "ok"]
    assert all(Label.model_validate(r.parsed) for r in res)


def test_client_falls_back_and_drops_refused_parameters(sim):
    # told json_schema on DeepSeek: the 400 moves it to json_object, with the lesson recorded
    ep = Endpoint(name="t", base_url=f"{sim.url}/deepseek/v1", model="deepseek-chat", provider="openai_compatible",
                  api_key_env=None, response_format="json_schema")
    ready, learned = preflight(ep, Label)
    assert ready.mode == "json_object" and any("json_schema -> json_object" in x for x in learned)
    # an o-series model behind a generic profile: max_tokens renamed, temperature dropped
    ep = Endpoint(name="t", base_url=f"{sim.url}/openai/v1", model="o3-mini", provider="openai_compatible",
                  api_key_env=None, temperature=0.3, max_tokens=2000)
    ready, learned = preflight(ep, Label)
    assert {"max_tokens", "temperature"} <= set(ready.omit), learned
    (res,) = run_requests(ready, [Request("o", user(f"label\n{json_instruction(Label)}"))], Label)
    assert res.status == "ok" and res.reasoning_tokens > 0


def test_blank_answers_are_retried():
    with SimulatorServer(SimConfig(latency="none", faults={"blank": 0.4})) as blanky:
        ep = Endpoint(name="t", base_url=f"{blanky.url}/deepseek/v1", model="deepseek-chat", provider="deepseek",
                      api_key_env=None, blank_retries=6, mode="json_object")
        res = run_requests(ep, [Request(f"b{i}", user(f"label {i}\n{json_instruction(Label)}")) for i in range(40)],
                           Label)
        assert blanky.stats()["faults"]["blank"] > 5
    assert all(r.status == "ok" for r in res) and max(r.attempts for r in res) > 1


# ------------------------------------------------------------------ the stages, per provider dialect
@pytest.fixture(scope="module")
def prepared_lake(tmp_path_factory, _engine):
    from boostqa import engine
    from boostqa.config import load_settings
    from boostqa.runner import Runner
    from tests.conftest import write_jsonl

    root = tmp_path_factory.mktemp("dialect_lake")
    rows = [{"id": f"d{i}", "question": f"Dialect seed {i}: what is {i} squared plus {i * 3} in the {i}-th case?",
             "answer": f"{i * i + 3 * i}", **({"choices": [str(i * i + 3 * i), "0", "1"]} if i % 3 == 0 else {})}
            for i in range(12)]
    write_jsonl(root / "seeds.jsonl", rows)
    write_jsonl(root / "bench.jsonl", [{"question": "Which river flows through Cairo?", "answer": "Nile"}])
    base = {"sources": [{"name": "d", "path": str(root / "seeds.jsonl"),
                         "fields": {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}}],
            "benchmarks": [{"name": "b", "path": str(root / "bench.jsonl")}],
            "decontam": {"embedding": {"enabled": False}}, "tracking": {"enabled": False},
            "lake": {"root": str(root / "lake")}, "runs_dir": str(root / "runs")}
    Runner(load_settings("local", environ={}, overrides=base), spark=engine.get_spark()).run(
        ["ingest", "bench", "dedup", "decontam"])
    return root, base


@pytest.mark.parametrize("provider", ["deepseek", "openai", "vllm", "sglang", "llamacpp", "databricks",
                                      "openai_compatible"])
def test_annotate_and_probe_in_each_dialect(prepared_lake, tmp_path, provider):
    """The stages against the simulator speaking each provider's dialect: every row kept, no row
    lost, the output mode the provider supports, nothing asked twice on a rerun."""
    import shutil

    from boostqa import engine
    from boostqa.config import deep_merge, load_settings
    from boostqa.runner import Runner
    from boostqa.stages import llm

    root, base = prepared_lake
    shutil.copytree(root / "lake", tmp_path / "lake")
    eps = {n: {"provider": provider, "base_url": "simulator"} for n in ("annotator", "probe")}
    settings = load_settings("local", environ={}, overrides=deep_merge(base, {
        "lake": {"root": str(tmp_path / "lake")}, "llm": {"endpoints": eps}, "probe": {"per_cell": 2}}))
    llm.stop_simulator()
    runner = Runner(settings, spark=engine.get_spark())
    _, results = runner.run(["annotate", "probe"])
    _, again = runner.run(["annotate", "probe"])
    llm.stop_simulator()
    by = {r.stage: r for r in results}
    assert by["annotate"].kept == 12 and by["probe"].kept == by["probe"].pending > 0
    assert all(r.deferred == 0 and r.rejected == 0 for r in results)
    calls = runner.lake.read("ops.llm_calls").toPandas()
    modes = set(calls[calls["stage"] == "annotate"]["response_format"])
    assert modes == ({"json_object"} if provider == "deepseek" else {"json_schema"})
    assert all(r.pending == 0 for r in again)

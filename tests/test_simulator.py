"""The LLM simulator through the real `openai` SDK (sync + async) over HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from typing import Annotated, Literal, Optional, Union

import httpx2
import openai
import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from boostqa.llm.sim import (
    DEFAULT_FAULT_KINDS,
    SIM_NAME,
    SchemaGen,
    SimConfig,
    SimulatorServer,
    mc_letters,
)


# ------------------------------------------------------------------------------------------------
# schemas the pipeline-style stages would ask for
# ------------------------------------------------------------------------------------------------


class Option(BaseModel):
    label: Literal["A", "B", "C", "D"]
    text: str = Field(min_length=3, max_length=40)


class Generated(BaseModel):
    question: str
    options: list[Option] = Field(min_length=2, max_length=4)
    answer: Literal["A", "B", "C", "D"]
    difficulty: int = Field(ge=1, le=5)
    confidence: float = Field(ge=0.0, le=1.0)
    tags: Optional[list[str]] = None
    rationale: str | None = Field(default=None, max_length=200)
    is_hard: bool


class Annotation(BaseModel):
    topic: Literal["math", "physics", "chemistry", "biology", "other"]
    skills: list[Annotated[str, Field(min_length=1, max_length=30)]] = Field(default_factory=list, max_length=5)
    scores: dict[str, int]
    year: int = Field(gt=1900, lt=2100)
    ratio: float = Field(gt=0, lt=1)
    version: Literal["v1"] = "v1"


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Node(BaseModel):
    name: str
    children: list[Node] = Field(default_factory=list, max_length=3)


class Refined(BaseModel):
    pet: Annotated[Union[Cat, Dog], Field(discriminator="kind")]
    anything: Union[int, str, None]
    tree: Node
    nested: Optional[Generated] = None


SCHEMAS = [Generated, Annotation, Refined, Node]


def _schema_rf(model: type[BaseModel]) -> dict:
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema()}}


def _user(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}]


def _uid() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def sim():
    with SimulatorServer(SimConfig(latency="fixed", latency_ms=1.0, timeout_hold_s=2.0,
                                   retry_after_s=0.01)) as server:
        yield server


@pytest.fixture
def client(sim):
    with openai.OpenAI(base_url=sim.base_url, api_key="sim-key", max_retries=0) as c:
        yield c


# ------------------------------------------------------------------------------------------------
# content
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", SCHEMAS, ids=lambda m: m.__name__)
def test_json_schema_output_validates(client, model):
    contents = set()
    for i in range(25):
        r = client.chat.completions.create(model="sim-generator", messages=_user(f"make {model.__name__} #{i}"),
                                           response_format=_schema_rf(model), temperature=0.7)
        content = r.choices[0].message.content
        model.model_validate_json(content)  # raises on any mismatch
        contents.add(content)
        assert r.choices[0].finish_reason == "stop"
    assert len(contents) == 25


def test_sdk_parse_helper_with_strict_schema(client):
    for i in range(5):
        r = client.chat.completions.parse(model="sim-refiner", messages=_user(f"parse {i}"), response_format=Generated)
        assert isinstance(r.choices[0].message.parsed, Generated)


def test_schema_generator_covers_constructs():
    for i in range(200):
        rng = __import__("random").Random(i)
        for model in SCHEMAS:
            model.model_validate(SchemaGen(model.model_json_schema(), rng).generate())
        value = SchemaGen({"type": "object", "required": ["a", "b", "c", "d", "e"], "additionalProperties": False,
                           "properties": {
                               "a": {"const": 7},
                               "b": {"$ref": "#/definitions/N", "description": "x"},
                               "c": {"anyOf": [{"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
                                               {"type": "null"}]},
                               "d": {"type": "array", "items": {"enum": ["p", "q"]}, "minItems": 2, "maxItems": 2},
                               "e": {"type": "string", "minLength": 50}}, "definitions": {"N": {"type": "number",
                                                                                              "minimum": -1,
                                                                                              "maximum": -0.5}}},
                          rng).generate()
        assert value["a"] == 7 and -1 <= value["b"] <= -0.5 and value["c"] in (None, 1, 2)
        assert len(value["d"]) == 2 and set(value["d"]) <= {"p", "q"} and len(value["e"]) >= 50


def test_json_object_and_text(client):
    r = client.chat.completions.create(model="sim-annotator", messages=_user(f"json please {_uid()}"),
                                       response_format={"type": "json_object"})
    obj = json.loads(r.choices[0].message.content)
    assert "answer" in obj and obj["simulator"] == SIM_NAME
    r = client.chat.completions.create(model="sim-probe", messages=_user(f"What is 6 times 7? {_uid()}"))
    text = r.choices[0].message.content
    assert text.startswith("[simulated]")
    assert re.search(r"The answer is \d+\.$", text)


def test_multiple_choice_answer_among_offered_letters(client):
    letters_seen = set()
    for i in range(30):
        q = f"Question {i}: which is right?\nA. one\nB. two\nC. three\n(D) four"
        r = client.chat.completions.create(model="sim-probe", messages=_user(q))
        m = re.search(r"The answer is \(([A-Z])\)\.$", r.choices[0].message.content)
        assert m, r.choices[0].message.content
        letters_seen.add(m.group(1))
    assert letters_seen <= {"A", "B", "C", "D"} and len(letters_seen) >= 3
    for i in range(10):  # only two options offered
        r = client.chat.completions.create(model="sim-probe", messages=_user(f"Q{i}?\n(A) yes\n(B) no"))
        assert re.search(r"The answer is \([AB]\)\.$", r.choices[0].message.content)
    assert mc_letters("A. x\nB) y\n  C: z") == ["A", "B", "C"]
    assert mc_letters("A. only one line") == []


def test_determinism(sim, client):
    base = dict(model="sim-generator", messages=_user(f"same {_uid()}"), response_format=_schema_rf(Generated),
                temperature=0.8, seed=1)
    a = client.chat.completions.create(**base).choices[0].message.content
    b = client.chat.completions.create(**base).choices[0].message.content
    assert a == b
    assert client.chat.completions.create(**{**base, "seed": 2}).choices[0].message.content != a
    assert client.chat.completions.create(**{**base, "messages": _user("other")}).choices[0].message.content != a
    assert client.chat.completions.create(**{**base, "model": "sim-refiner"}).choices[0].message.content != a
    # another server with the same seed answers the same; a different server seed differs
    with SimulatorServer(SimConfig(latency="none")) as same, SimulatorServer(SimConfig(latency="none", seed=9)) as other:
        with openai.OpenAI(base_url=same.base_url, api_key="k") as c1, \
                openai.OpenAI(base_url=other.base_url, api_key="k") as c2:
            assert c1.chat.completions.create(**base).choices[0].message.content == a
            assert c2.chat.completions.create(**base).choices[0].message.content != a


def test_labels_usage_and_echo(client):
    msgs = _user("Count my tokens please, " + "word " * 40)
    raw = client.chat.completions.with_raw_response.create(model="whatever-model", messages=msgs)
    assert raw.headers["x-boostqa-simulated"] == "true"
    r = raw.parse()
    assert r.model == "whatever-model" and r.system_fingerprint == SIM_NAME and r.id.startswith("chatcmpl-sim-")
    chars = sum(len(m["role"]) + len(m["content"]) for m in msgs)
    assert abs(r.usage.prompt_tokens - chars / 4) <= 10
    assert r.usage.completion_tokens == math.ceil(len(r.choices[0].message.content) / 4)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    models = [m.id for m in client.models.list()]
    assert {"sim-generator", "sim-refiner", "sim-annotator", "sim-probe"} <= set(models)


def test_max_tokens(client):
    r = client.chat.completions.create(model="sim-generator", messages=_user(f"short {_uid()}"), max_tokens=5)
    assert r.choices[0].finish_reason == "length" and len(r.choices[0].message.content) <= 20


def test_streaming_and_n_are_refused_not_faked(client):
    """No stage streams or asks for n > 1: the simulator says so with a 400 instead of answering."""
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model="sim-generator", messages=_user("two"), n=2)
    with pytest.raises(openai.BadRequestError, match="stream is not supported"):
        client.chat.completions.create(model="sim-generator", messages=_user("stream"), stream=True)


def test_reasoning_content_for_reasoner_models(client):
    r = client.chat.completions.create(model="sim-reasoner", messages=_user(f"Think. {_uid()}\nA. a\nB. b"))
    msg = r.choices[0].message
    assert msg.reasoning_content.startswith("[simulated reasoning]")
    assert msg.reasoning_content not in msg.content and re.search(r"The answer is \([AB]\)\.$", msg.content)
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    r = client.chat.completions.create(model="sim-generator", messages=_user("no reasoning"))
    assert getattr(r.choices[0].message, "reasoning_content", None) is None


def test_async_client(sim):
    async def main():
        async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0) as c:
            tasks = [c.chat.completions.create(model="sim-annotator", messages=_user(f"async {i}"),
                                               response_format=_schema_rf(Annotation)) for i in range(40)]
            return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    for r in results:
        Annotation.model_validate_json(r.choices[0].message.content)
    again = asyncio.run(main())
    assert [r.choices[0].message.content for r in again] == [r.choices[0].message.content for r in results]


# ------------------------------------------------------------------------------------------------
# faults, capacity, retries, auth
# ------------------------------------------------------------------------------------------------


def test_each_fault_kind_via_header(client):
    def call(kind: str, **kw):
        return client.chat.completions.create(model="sim-generator", messages=_user(f"fault {kind} {_uid()}"),
                                              extra_headers={"X-Sim-Fault": kind}, **kw)

    with pytest.raises(openai.RateLimitError) as e:
        call("rate_limit")
    assert e.value.status_code == 429 and float(e.value.response.headers["retry-after"]) >= 1
    assert e.value.response.headers["retry-after-ms"] == "10"
    with pytest.raises(openai.InternalServerError) as e:
        call("server_error")
    assert e.value.status_code == 500
    with pytest.raises(openai.InternalServerError) as e:
        call("unavailable")
    assert e.value.status_code == 503
    with pytest.raises(openai.BadRequestError):
        call("bad_request")
    with pytest.raises(openai.APITimeoutError):
        call("timeout", timeout=0.3)
    r = call("truncated")
    assert r.choices[0].finish_reason == "length" and not r.choices[0].message.content.endswith(".")
    r = call("truncated", response_format=_schema_rf(Generated))
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(ValidationError):
        Generated.model_validate_json(r.choices[0].message.content)
    for _ in range(6):  # every malformation variant is invalid JSON
        r = call("malformed", response_format=_schema_rf(Generated))
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.choices[0].message.content)
    with pytest.raises(json.JSONDecodeError):  # plain text: a broken HTTP body
        call("malformed")
    with pytest.raises(openai.BadRequestError):
        call("no_such_kind")


def test_capacity_429_with_retry_after():
    async def main(sim):
        async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0) as c:
            async def one(i):
                try:
                    await c.chat.completions.create(model="sim-generator", messages=_user(f"cap {i}"))
                    return None
                except openai.RateLimitError as e:
                    return e

            return await asyncio.gather(*(one(i) for i in range(50)))

    with SimulatorServer(SimConfig(max_in_flight=5, latency="fixed", latency_ms=300)) as sim:
        results = asyncio.run(main(sim))
        stats = sim.stats()
    rejected = [e for e in results if e is not None]
    assert 30 <= len(rejected) <= 45
    assert all(e.response.headers.get("retry-after") == "1" for e in rejected)
    assert all(e.body["code"] == "rate_limit_exceeded" for e in rejected)
    assert stats["max_in_flight_seen"] == 5 and stats["capacity_rejections"] == len(rejected)
    assert stats["responses_by_status"] == {"200": 50 - len(rejected), "429": len(rejected)}


def test_fault_rates_share():
    rates = {"server_error": 0.1, "rate_limit": 0.1, "truncated": 0.1, "malformed": 0.05}
    counts = dict.fromkeys(rates, 0)

    async def main(sim):
        async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0) as c:
            async def one(i):
                try:
                    r = await c.chat.completions.create(model="sim-generator", messages=_user(f"rate {i}"),
                                                        response_format={"type": "json_object"})
                except openai.RateLimitError:
                    return "rate_limit"
                except openai.InternalServerError:
                    return "server_error"
                if r.choices[0].finish_reason == "length":
                    return "truncated"
                try:
                    json.loads(r.choices[0].message.content)
                except ValueError:
                    return "malformed"
                return "ok"

            return await asyncio.gather(*(one(i) for i in range(400)))

    with SimulatorServer(SimConfig(latency="none", faults=rates)) as sim:
        for kind in asyncio.run(main(sim)):
            if kind != "ok":
                counts[kind] += 1
        stats = sim.stats()
    for kind, rate in rates.items():
        assert abs(counts[kind] / 400 - rate) < 0.05, (kind, counts)
        assert stats["faults"][kind] == counts[kind]
    assert stats["faults_total"] == sum(counts.values())


def test_retries_eventually_succeed():
    with SimulatorServer(SimConfig(latency="none", faults={"rate_limit": 0.5}, retry_after_s=0.01,
                                   timeout_hold_s=2.0)) as sim:
        with openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=10) as c:
            for i in range(20):
                r = c.chat.completions.create(model="sim-generator", messages=_user(f"retry {i}"))
                assert r.choices[0].message.content
            # forced faults on the first N attempts only
            r = c.chat.completions.create(model="sim-generator", messages=_user("forced 503"),
                                          extra_headers={"X-Sim-Fault": "unavailable:3"})
            assert r.choices[0].finish_reason in ("stop", "length")
            with openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=1, timeout=0.3) as c1:
                c1.chat.completions.create(model="sim-generator", messages=_user("forced timeout"),
                                           extra_headers={"X-Sim-Fault": "timeout:1"})
            with openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0) as c0:
                with pytest.raises(openai.RateLimitError):
                    c0.chat.completions.create(model="sim-generator", messages=_user("no retry"),
                                               extra_headers={"X-Sim-Fault": "rate_limit:1"})
                c0.chat.completions.create(model="sim-generator", messages=_user("no retry"),
                                           extra_headers={"X-Sim-Fault": "rate_limit:1"})  # attempt 2 passes
        stats = sim.stats()
    assert stats["faults"]["rate_limit"] >= 5 and stats["retries_seen"] >= stats["faults"]["rate_limit"]


def test_auth():
    with SimulatorServer(SimConfig(latency="none", api_key="s3cret-key")) as sim:
        with openai.OpenAI(base_url=sim.base_url, api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as e:
                bad.chat.completions.create(model="sim-probe", messages=_user("hi"))
            assert e.value.status_code == 401
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        assert httpx2.post(f"{sim.base_url}/chat/completions", json={"model": "m"}).status_code == 401
        with openai.OpenAI(base_url=sim.base_url, api_key="s3cret-key", max_retries=0) as good:
            assert good.chat.completions.create(model="sim-probe", messages=_user("hi")).choices
        stats = sim.stats()
        assert stats["auth_failures"] == 3
        assert "s3cret" not in json.dumps(stats) and "s3cret" not in repr(sim.config)
        assert httpx2.get(f"{sim.url}/health").json()["status"] == "ok"


def test_stats_endpoint_and_counters():
    with SimulatorServer(SimConfig(latency="none")) as sim:
        with openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0) as c:
            r1 = c.chat.completions.create(model="sim-generator", messages=_user("s1"))
            r2 = c.chat.completions.create(model="sim-refiner", messages=_user("s2"))
            c.models.list()
            with pytest.raises(openai.InternalServerError):
                c.chat.completions.create(model="sim-generator", messages=_user("s3"),
                                          extra_headers={"X-Sim-Fault": "server_error"})
        s = httpx2.get(f"{sim.url}/stats").json()
        assert s == {**sim.stats(), "uptime_s": s["uptime_s"]}
        assert s["simulator"] == SIM_NAME and s["requests"] == 4 and s["in_flight"] == 0
        assert s["max_in_flight_seen"] == 1 and s["faults"]["server_error"] == 1 and s["faults_total"] == 1
        assert s["requests_by_endpoint"]["/chat/completions"] == 3
        assert s["requests_by_model"] == {"sim-generator": 2, "sim-refiner": 1}
        prompt = r1.usage.prompt_tokens + r2.usage.prompt_tokens
        assert s["tokens"]["prompt"] == prompt
        assert s["tokens"]["completion"] == r1.usage.completion_tokens + r2.usage.completion_tokens
        assert s["tokens"]["total"] == prompt + s["tokens"]["completion"]
        sim.reset_stats()
        assert sim.stats()["requests"] == 0


def test_config_with_fault_rate_and_validation():
    cfg = SimConfig.with_fault_rate(0.3, port=0, latency_ms=5, models=["m1", "m2"], faults={"bad_request": 0.05})
    assert cfg.models == ["m1", "m2"] and cfg.latency_ms == 5
    assert set(cfg.faults) == {*DEFAULT_FAULT_KINDS, "bad_request"}
    assert abs(sum(cfg.faults.values()) - 0.35) < 1e-9
    with pytest.raises(ValidationError):
        SimConfig(faults={"server_error": 0.7, "timeout": 0.5})
    with pytest.raises(ValidationError):
        SimConfig(faults={"explode": 0.1})
    assert TypeAdapter(SimConfig).validate_python({"max_in_flight": 3}).max_in_flight == 3

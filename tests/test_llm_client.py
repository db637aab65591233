"""The async LLM client against the real simulator over HTTP: retries, limits, breaker, parsing.

Spark-free. Every test starts its own SimulatorServer on 127.0.0.1 (a free port) with small
latencies, so the file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from boostqa.llm.client import (
    AsyncLLM,
    BatchStats,
    CallResult,
    Endpoint,
    Request,
    TokenBucket,
    extract_json,
    parse_output,
    response_format,
    run_requests,
)
from boostqa.llm.prompts import Prompt, request_key
from boostqa.llm.sim import DEFAULT_FAULT_KINDS, SimConfig, SimulatorServer

# ------------------------------------------------------------------------------------------------
# schemas and helpers
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
    is_hard: bool


class Answer(BaseModel):
    answer: Literal["A", "B", "C", "D"]
    explanation: str
    confidence: float = Field(ge=0.0, le=1.0)


class Tiny(BaseModel):
    answer: Literal["A", "B"]


PROMPT = Prompt("gen_test", 3, "You write hard multiple-choice questions. Answer in JSON.",
                "Seed question: {seed}\nWrite a harder variant.")

FAST = dict(latency="fixed", latency_ms=5.0)


def endpoint(sim: SimulatorServer, **kw) -> Endpoint:
    base = dict(name="sim", base_url=sim.base_url, model="sim-generator", max_concurrency=16, timeout=10.0,
                backoff_base=0.01, backoff_max=2.0, simulated=True)
    base.update(kw)
    return Endpoint(**base)


def make_requests(n: int, ep: Endpoint | None = None, prefix: str = "seed") -> list[Request]:
    """Rendered prompts with deterministic request keys (as the LLM stages build them)."""
    out = []
    params = ep.params() if ep else {}
    model = ep.model if ep else "sim-generator"
    for i in range(n):
        messages = PROMPT.render(seed=f"{prefix} {i}: what is {i} + {i * 7}?")
        out.append(Request(request_key(model, PROMPT, messages, params), messages))
    return out


def check_complete(results: list[CallResult], reqs: list[Request]) -> None:
    """One result per request, in request order, no duplicates, a known status with its evidence."""
    assert len(results) == len(reqs)
    assert [r.request_key for r in results] == [q.key for q in reqs]
    assert len({r.request_key for r in results}) == len(reqs)
    for r in results:
        assert r.status in ("ok", "invalid", "truncated", "failed"), r
        if r.status == "ok":
            assert r.parsed is not None and r.error is None and r.attempts >= 1
        elif r.status == "invalid":
            assert r.raw is not None and r.error and r.error.startswith("invalid output:"), r
        elif r.status == "truncated":
            assert r.finish_reason == "length" and r.error.startswith("truncated: finish_reason=length"), r
        else:
            assert r.error, r


def call_with_headers(ep: Endpoint, reqs: list[Request], schema, headers: dict[str, str]) -> list[CallResult]:
    """AsyncLLM.call with extra HTTP headers on every request (X-Sim-Fault forces a fault).

    The client has no per-request headers, so the SDK client is swapped for a copy with
    default headers; everything else (retries, parsing, breaker) is the real call path.
    """

    async def go() -> list[CallResult]:
        llm = AsyncLLM(ep, schema)
        plain = llm.sdk
        llm.sdk = plain.with_options(default_headers=headers)
        try:
            return list(await asyncio.gather(*(llm.call(r) for r in reqs)))
        finally:
            await llm.close()
            await plain.close()

    return asyncio.run(go())


# ------------------------------------------------------------------------------------------------
# 1. happy path
# ------------------------------------------------------------------------------------------------


def test_happy_path_200_requests_schema_validated_in_order():
    with SimulatorServer(SimConfig(latency="lognormal", latency_ms=5.0, latency_sigma=0.5)) as sim:
        ep = endpoint(sim, max_concurrency=32)
        assert response_format(ep, Generated)["type"] == "json_schema"
        reqs = make_requests(200, ep)
        seen: list[CallResult] = []
        results = run_requests(ep, reqs, Generated, on_result=seen.append)
        stats = sim.stats()

    check_complete(results, reqs)
    assert all(r.status == "ok" for r in results), Counter(r.status for r in results)
    for r in results:
        Generated.model_validate(r.parsed)  # parsed fields validate again
        assert r.parsed == Generated.model_validate_json(r.raw).model_dump(mode="json")
        assert r.prompt_tokens > 0 and r.completion_tokens > 0
        assert r.latency_ms > 0
        assert r.attempts == 1
        assert r.http_status == 200 and r.finish_reason == "stop"
        assert r.reasoning is None  # not a reasoner model
        row = r.as_row()
        assert json.loads(row["parsed"]) == r.parsed and row["request_key"] == r.request_key
    # callback once per request; usage matches what the server counted
    assert len(seen) == 200 and {r.request_key for r in seen} == {q.key for q in reqs}
    assert stats["requests"] == 200 and stats["retries_seen"] == 0
    assert sum(r.prompt_tokens for r in results) == stats["tokens"]["prompt"]
    assert sum(r.completion_tokens for r in results) == stats["tokens"]["completion"]
    assert stats["max_in_flight_seen"] <= 32
    b = BatchStats()
    for r in results:
        b.add(r)
    assert (b.calls, b.ok, b.invalid, b.failed, b.attempts) == (200, 200, 0, 0, 200)


def test_empty_batch():
    with SimulatorServer(SimConfig(**FAST)) as sim:
        assert run_requests(endpoint(sim), [], Answer) == []
        assert sim.stats()["requests"] == 0


# ------------------------------------------------------------------------------------------------
# 2. faults: nothing lost or duplicated, retries recover
# ------------------------------------------------------------------------------------------------

# a `timeout` fault holds the answer 2 s; the client gives up after 1 s (margin for a loaded machine)
FAULTY = dict(latency="fixed", latency_ms=3.0, retry_after_s=0.05, timeout_hold_s=2.0)


def test_faults_without_retries_end_in_every_status_nothing_lost():
    cfg = SimConfig.with_fault_rate(0.3, DEFAULT_FAULT_KINDS, **FAULTY)
    with SimulatorServer(cfg) as sim:
        ep = endpoint(sim, max_concurrency=32, timeout=1.0, max_retries=0, invalid_retries=0,
                      breaker_failures=0)
        reqs = make_requests(200, ep, prefix="nr")
        results = run_requests(ep, reqs, Answer)
        stats = sim.stats()

    check_complete(results, reqs)
    by = Counter(r.status for r in results)
    assert by["ok"] > 100 and by["invalid"] > 0 and by["truncated"] > 0 and by["failed"] > 0, by
    assert stats["requests"] <= 200 and stats["retries_seen"] == 0  # no retries at all
    assert all(r.attempts == 1 for r in results)
    for r in results:
        if r.status == "failed":
            # 429 / 500 / 503, or a client timeout (no status)
            assert r.http_status in (429, 500, 503, None), r
            if r.http_status is None:
                assert "Timeout" in r.error
        if r.status == "invalid":
            assert r.raw
            assert r.finish_reason == "length" or "truncated" not in r.error
    # one attempt each: the faults the server injected show up as outcomes (upper bounds: on a
    # loaded machine any request may also time out on the client)
    faults = stats["faults"]
    failed_by = Counter(r.http_status for r in results if r.status == "failed")
    assert 0 < failed_by[429] <= faults["rate_limit"]
    assert 0 < failed_by[500] <= faults["server_error"]
    assert 0 < failed_by[503] <= faults["unavailable"]
    assert failed_by[None] >= faults["timeout"] > 0
    assert all("APITimeoutError" in r.error for r in results if r.status == "failed" and r.http_status is None)
    truncated = [r for r in results if r.status == "truncated"]
    assert 0 < len(truncated) <= faults["truncated"]
    assert all(r.error == "truncated: finish_reason=length (raise max_tokens)" for r in truncated)
    # malformed JSON is invalid, except when it is valid JSON wrapped in prose (extract_json recovers it)
    malformed = [r for r in results if r.status == "invalid" and r.finish_reason == "stop"]
    assert 0 < len(malformed) <= faults["malformed"]


def test_faults_with_retries_nearly_all_ok():
    cfg = SimConfig.with_fault_rate(0.3, DEFAULT_FAULT_KINDS, **FAULTY)
    with SimulatorServer(cfg) as sim:
        ep = endpoint(sim, max_concurrency=32, timeout=1.0, max_retries=8, invalid_retries=4,
                      breaker_failures=0)
        reqs = make_requests(200, ep, prefix="wr")
        t0 = time.monotonic()
        results = run_requests(ep, reqs, Answer)
        wall = time.monotonic() - t0
        stats = sim.stats()

    check_complete(results, reqs)
    by = Counter(r.status for r in results)
    assert by["ok"] >= 196, by
    assert any(r.attempts > 1 for r in results)
    retried = [r for r in results if r.attempts > 1]
    assert len(retried) > 20  # ~30 % of first attempts fail
    # the server saw each request and its retries (an attempt that timed out before the server
    # read it is not counted there)
    assert stats["unique_requests"] == 200
    assert 200 < stats["requests"] <= sum(r.attempts for r in results)
    assert stats["retries_seen"] == stats["requests"] - 200
    assert stats["faults_total"] > 40


# ------------------------------------------------------------------------------------------------
# 3. no retry on 400 / 401; missing key
# ------------------------------------------------------------------------------------------------


def test_bad_request_rate_fails_after_one_attempt():
    with SimulatorServer(SimConfig(faults={"bad_request": 1.0}, **FAST)) as sim:
        ep = endpoint(sim, max_retries=5, breaker_failures=0)
        reqs = make_requests(10, ep)
        results = run_requests(ep, reqs, Answer)
        stats = sim.stats()
    check_complete(results, reqs)
    for r in results:
        assert r.status == "failed" and r.attempts == 1 and r.http_status == 400
        assert "BadRequestError" in r.error
    assert stats["requests"] == 10


def test_bad_request_forced_by_header_is_not_retried_but_a_transient_fault_is():
    with SimulatorServer(SimConfig(retry_after_s=0.05, **FAST)) as sim:
        ep = endpoint(sim, max_retries=5)
        r400 = call_with_headers(ep, make_requests(3, ep, "h400"), Answer, {"X-Sim-Fault": "bad_request"})
        assert sim.stats()["requests"] == 3
        r500 = call_with_headers(ep, make_requests(3, ep, "h500"), Answer, {"X-Sim-Fault": "server_error:2"})
    for r in r400:
        assert (r.status, r.attempts, r.http_status) == ("failed", 1, 400)
    for r in r500:  # 500 on the first two attempts, then an answer
        assert (r.status, r.attempts, r.http_status) == ("ok", 3, 200)


def test_wrong_api_key_fails_once_and_never_leaks(monkeypatch):
    wrong, right = "sk-wrong-4f9a1c77e2d3b", "sk-right-0b8e6d21a9c4f"
    monkeypatch.setenv("BOOSTQA_TEST_LLM_KEY", wrong)
    with SimulatorServer(SimConfig(api_key=right, **FAST)) as sim:
        ep = endpoint(sim, api_key_env="BOOSTQA_TEST_LLM_KEY", max_retries=5, breaker_failures=0)
        reqs = make_requests(5, ep)
        results = run_requests(ep, reqs, Answer)
        stats = sim.stats()
        check_complete(results, reqs)
        for r in results:
            assert (r.status, r.attempts, r.http_status) == ("failed", 1, 401)
            assert "AuthenticationError" in r.error
            assert wrong not in r.error and right not in r.error
            assert wrong not in json.dumps(r.as_row())
        assert stats["requests"] == 5 and stats["auth_failures"] == 5

        monkeypatch.setenv("BOOSTQA_TEST_LLM_KEY", right)  # the right key works
        ok = run_requests(ep, reqs[:2], Answer)
        assert [r.status for r in ok] == ["ok", "ok"]


def test_missing_key_env_var_fails_without_a_request(monkeypatch):
    monkeypatch.delenv("BOOSTQA_TEST_NO_SUCH_KEY", raising=False)
    with SimulatorServer(SimConfig(**FAST)) as sim:
        ep = endpoint(sim, name="prod-judge", api_key_env="BOOSTQA_TEST_NO_SUCH_KEY")
        reqs = make_requests(4, ep)
        results = run_requests(ep, reqs, Answer)
        stats = sim.stats()
    check_complete(results, reqs)
    for r in results:
        assert r.status == "failed" and r.attempts == 0 and r.http_status is None
        assert "BOOSTQA_TEST_NO_SUCH_KEY" in r.error and "prod-judge" in r.error
    assert stats["requests"] == 0


# ------------------------------------------------------------------------------------------------
# 4. Retry-After honoured
# ------------------------------------------------------------------------------------------------


def test_capacity_429_waits_retry_after_then_succeeds():
    retry_after = 0.3
    with SimulatorServer(SimConfig(max_in_flight=2, retry_after_s=retry_after, latency="fixed",
                                   latency_ms=30.0)) as sim:
        ep = endpoint(sim, max_concurrency=8, max_retries=60, backoff_max=5.0)
        reqs = make_requests(16, ep)
        results = run_requests(ep, reqs, Answer)
        stats = sim.stats()

    check_complete(results, reqs)
    assert all(r.status == "ok" for r in results), Counter(r.status for r in results)
    assert stats["capacity_rejections"] > 0 and stats["max_in_flight_seen"] <= 2
    retried = [r for r in results if r.attempts > 1]
    assert retried
    for r in retried:  # every extra attempt followed a 429 that asked for 0.3 s
        assert r.latency_ms >= (r.attempts - 1) * retry_after * 1000 * 0.95, r


def test_retry_after_ms_is_preferred_over_rounded_retry_after():
    """The simulator sends Retry-After: 1 (whole seconds) and retry-after-ms: 300."""
    with SimulatorServer(SimConfig(retry_after_s=0.3, **FAST)) as sim:
        ep = endpoint(sim, max_retries=5)
        t0 = time.monotonic()
        results = call_with_headers(ep, make_requests(2, ep), Answer, {"X-Sim-Fault": "rate_limit:2"})
        wall = time.monotonic() - t0
    for r in results:
        assert (r.status, r.attempts) == ("ok", 3)
        assert r.latency_ms >= 2 * 300 * 0.95
    # which header wins is decided without a clock: the delay the client computes from the headers
    from types import SimpleNamespace

    from boostqa.llm.client import _retry_after

    both = SimpleNamespace(response=SimpleNamespace(headers={"retry-after": "1", "retry-after-ms": "300"}))
    assert _retry_after(both) == 0.3
    assert _retry_after(SimpleNamespace(response=SimpleNamespace(headers={"retry-after": "2"}))) == 2.0
    assert _retry_after(SimpleNamespace(response=None)) is None


# ------------------------------------------------------------------------------------------------
# 5. RPM / TPM limits
# ------------------------------------------------------------------------------------------------


def _max_count_excess(stamps: list[float], per_s: float) -> float:
    """max over windows [t_i, t_j] of count - per_s * (t_j - t_i)."""
    stamps = sorted(stamps)
    worst = 0.0
    for i in range(len(stamps)):
        for j in range(i, len(stamps)):
            worst = max(worst, (j - i + 1) - per_s * (stamps[j] - stamps[i]))
    return worst


def test_rpm_limit_respected():
    with SimulatorServer(SimConfig(**FAST)) as sim:
        ep = endpoint(sim, rpm=600, max_concurrency=16)  # 10/s, bursts of 10
        reqs = make_requests(40, ep)
        stamps: list[float] = []
        t0 = time.monotonic()
        results = run_requests(ep, reqs, Answer, on_result=lambda r: stamps.append(time.monotonic()))
        wall = time.monotonic() - t0
        stats = sim.stats()
    check_complete(results, reqs)
    assert all(r.status == "ok" for r in results)
    assert stats["requests"] == 40
    # 10 at once, then 30 more at 10/s
    assert wall >= 3.0 * 0.93
    assert (40 - 10) / wall <= 10 * 1.05
    # in any window: at most the one-second burst plus 10/s (+1 for timing jitter)
    assert _max_count_excess(stamps, 10.0) <= 10 + 1


def test_tpm_limit_respected():
    with SimulatorServer(SimConfig(**FAST)) as sim:
        # 12000 tokens/min = 200/s; each request is estimated at len(content)/4 + max_tokens = 60
        ep = endpoint(sim, tpm=12000, max_tokens=40, max_concurrency=16)
        reqs = [Request(f"t{i}", [{"role": "user", "content": f"{i:04d}" + "x" * 76}]) for i in range(12)]
        est = 80 / 4 + 40
        t0 = time.monotonic()
        results = run_requests(ep, reqs, Tiny)
        wall = time.monotonic() - t0
        stats = sim.stats()
    check_complete(results, reqs)
    assert all(r.status == "ok" for r in results)
    # 200 tokens of burst, then 200/s: 12 * 60 = 720 tokens need >= 2.6 s
    assert wall >= (12 * est - 200) / 200 * 0.93
    used = stats["tokens"]["total"]
    assert 0 < used <= 12 * est
    assert used <= 200 + 200 * wall


def test_tpm_limit_respected_when_one_request_exceeds_a_second_of_budget():
    """tpm=6000 is 100 tokens/s; each request is estimated at 20 + 130 = 150 tokens (> the 100 burst)."""
    with SimulatorServer(SimConfig(**FAST)) as sim:
        ep = endpoint(sim, tpm=6000, max_tokens=130, max_concurrency=8)
        reqs = [Request(f"b{i}", [{"role": "user", "content": f"{i:04d}" + "y" * 76}]) for i in range(3)]
        t0 = time.monotonic()
        results = run_requests(ep, reqs, Tiny)
        wall = time.monotonic() - t0
    assert all(r.status == "ok" for r in results)
    # 450 estimated tokens at 100/s: the first starts on a full bucket, the other two pay 150 each
    assert wall >= 2 * 150 / 100 * 0.93


def test_token_bucket_bursts_then_paces():
    async def go() -> tuple[float, float]:
        b = TokenBucket(600)  # 10/s, capacity 10
        t0 = time.monotonic()
        for _ in range(10):
            await b.take()
        burst = time.monotonic() - t0
        for _ in range(5):
            await b.take()
        return burst, time.monotonic() - t0

    burst, total = asyncio.run(go())
    assert burst < 0.05
    assert total >= 0.5 * 0.9  # 5 more at 10/s



def test_token_bucket_requests_larger_than_a_burst_are_paid_in_full():
    """A take larger than one second's worth starts on a full bucket but still pays its whole amount."""

    async def big() -> tuple[float, float]:
        b = TokenBucket(600)  # 10/s, capacity 10
        t0 = time.monotonic()
        await b.take(15)  # a full bucket: starts at once, leaves a debt of 5
        first = time.monotonic() - t0
        await b.take(15)  # waits until the debt is repaid and a full burst is back
        return first, time.monotonic() - t0

    first, total = asyncio.run(big())
    assert first < 0.05
    assert total >= 1.5 * 0.93  # the second waits off the debt of 5 plus 10 for its start: 1.5 s


# ------------------------------------------------------------------------------------------------
# 6. sliding window, not waves
# ------------------------------------------------------------------------------------------------


def test_sliding_window_keeps_exactly_max_concurrency_in_flight():
    n, k = 80, 4
    with SimulatorServer(SimConfig(latency="lognormal", latency_ms=30.0, latency_sigma=0.7,
                                   latency_max_ms=400.0)) as sim:
        ep = endpoint(sim, max_concurrency=k)
        reqs = make_requests(n, ep)
        t0 = time.monotonic()
        results = run_requests(ep, reqs, Answer)
        wall = time.monotonic() - t0
        stats = sim.stats()
    check_complete(results, reqs)
    assert all(r.status == "ok" for r in results)
    assert stats["max_in_flight_seen"] == k
    lat = [r.latency_ms / 1000 for r in results]
    mean = sum(lat) / n
    # waves of k would take the sum of each wave's slowest request
    waves = sum(max(lat[i:i + k]) for i in range(0, n, k))
    assert wall < waves


# ------------------------------------------------------------------------------------------------
# 7. circuit breaker
# ------------------------------------------------------------------------------------------------


def test_circuit_breaker_opens_after_consecutive_failures():
    with SimulatorServer(SimConfig(faults={"server_error": 1.0}, **FAST)) as sim:
        ep = endpoint(sim, max_concurrency=2, max_retries=0, breaker_failures=5)
        reqs = make_requests(60, ep)
        results = run_requests(ep, reqs, Answer)
        stats = sim.stats()
    check_complete(results, reqs)
    assert all(r.status == "failed" for r in results)
    http = [r for r in results if r.http_status == 500]
    fast = [r for r in results if "circuit open" in r.error]
    assert len(http) + len(fast) == 60
    assert 5 <= len(http) <= 5 + ep.max_concurrency
    assert all("InternalServerError" in r.error for r in http)
    assert all(r.attempts == 0 for r in fast)
    assert results[-1] in fast
    assert stats["requests"] == len(http) <= 7  # far fewer than the 60 submitted


def test_circuit_breaker_disabled_with_zero():
    with SimulatorServer(SimConfig(faults={"server_error": 1.0}, **FAST)) as sim:
        ep = endpoint(sim, max_concurrency=4, max_retries=0, breaker_failures=0)
        results = run_requests(ep, make_requests(20, ep), Answer)
        assert sim.stats()["requests"] == 20
    assert all(r.status == "failed" and r.http_status == 500 for r in results)
    assert not any("circuit open" in r.error for r in results)


def test_circuit_breaker_counts_requests_not_attempts():
    with SimulatorServer(SimConfig(faults={"unavailable": 1.0}, retry_after_s=0.0, **FAST)) as sim:
        ep = endpoint(sim, max_concurrency=1, max_retries=50, breaker_failures=1)
        results = run_requests(ep, make_requests(3, ep), Answer)
        assert sim.stats()["requests"] == 51  # the first request retried to its limit, then the circuit opened
    assert results[0].attempts == 51 and results[0].http_status == 503
    assert all("circuit open" in r.error and r.attempts == 0 for r in results[1:])


# ------------------------------------------------------------------------------------------------
# 8. invalid output
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("invalid_retries", [1, 2])
def test_malformed_output_is_invalid_after_retries_raw_kept(invalid_retries):
    with SimulatorServer(SimConfig(faults={"malformed": 1.0}, **FAST)) as sim:
        ep = endpoint(sim, invalid_retries=invalid_retries)
        reqs = make_requests(30, ep)
        results = run_requests(ep, reqs, Answer)
        stats = sim.stats()
    check_complete(results, reqs)
    invalid = [r for r in results if r.status == "invalid"]
    ok = [r for r in results if r.status == "ok"]
    assert len(invalid) >= 10 and len(invalid) + len(ok) == 30
    for r in invalid:
        assert r.attempts == 1 + invalid_retries
        assert r.raw and r.parsed is None and r.http_status == 200
        assert r.error.startswith("invalid output: ")
        assert "json" in r.error.lower()  # pydantic's json_invalid reason
    # the simulator sometimes wraps valid JSON in prose and a ``` fence: extract_json recovers it
    for r in ok:
        assert r.attempts == 1 and "```" in r.raw
    assert stats["requests"] == sum(r.attempts for r in results)


def test_truncated_output_is_its_own_outcome():
    with SimulatorServer(SimConfig(faults={"truncated": 1.0}, **FAST)) as sim:
        ep = endpoint(sim, invalid_retries=2)
        reqs = make_requests(10, ep)
        results = run_requests(ep, reqs, Answer)
    check_complete(results, reqs)
    for r in results:
        assert (r.status, r.attempts, r.finish_reason) == ("truncated", 3, "length")
        assert r.raw and r.error == "truncated: finish_reason=length (raise max_tokens)"
        assert r.completion_tokens > 0  # usage of all attempts counted


class Loose(BaseModel):
    answer: str
    explanation: str


def test_truncated_first_attempt_recovers_on_invalid_retry():
    with SimulatorServer(SimConfig(**FAST)) as sim:
        ep = endpoint(sim, model="sim-annotator", response_format="json_object", invalid_retries=1)
        # json_object: the simulator answers {"answer", "explanation", "simulator"}; extra keys are ignored
        results = call_with_headers(ep, make_requests(6, ep), Loose, {"X-Sim-Fault": "truncated:1"})
    for r in results:
        assert (r.status, r.attempts, r.finish_reason) == ("ok", 2, "stop")
        assert r.parsed["answer"]


def test_schema_the_output_does_not_satisfy_is_invalid():
    class Strict(BaseModel):
        answer: Literal["A", "B", "C", "D"]
        year: int

    with SimulatorServer(SimConfig(**FAST)) as sim:
        # plain-text answers (no response_format sent) cannot validate against a schema
        ep = endpoint(sim, response_format="text", invalid_retries=0)
        results = run_requests(ep, make_requests(3, ep), Strict)
    for r in results:
        assert r.status == "invalid" and r.raw.startswith("[simulated]")
        assert r.error.startswith("invalid output: ")


# ------------------------------------------------------------------------------------------------
# 9. parse_output / extract_json
# ------------------------------------------------------------------------------------------------


def test_extract_json_cases():
    obj = '{"answer": "A", "explanation": "x", "confidence": 0.5}'
    assert extract_json(f"```json\n{obj}\n```") == obj
    assert extract_json(f"Sure! Here it is:\n```\n{obj}\n```\nHope that helps.") == obj
    assert extract_json(f"The result is {obj} as requested.") == obj
    assert extract_json(obj) == obj
    assert extract_json("no json here") == "no json here"
    assert extract_json("} backwards {") == "} backwards {"


def test_parse_output_cases():
    good = {"answer": "B", "explanation": "because", "confidence": 0.25}
    text = "Answer:\n```json\n" + json.dumps(good) + "\n```"
    assert parse_output(text, Answer) == good
    assert parse_output("prose " + json.dumps(good) + " more prose", Answer) == good
    assert parse_output("anything", None) is None

    with pytest.raises(ValueError, match="empty output"):
        parse_output("", Answer)
    with pytest.raises(ValueError, match="empty output"):
        parse_output(None, Answer)
    with pytest.raises(ValueError, match=r"literal_error at answer"):
        parse_output(json.dumps({**good, "answer": "E"}), Answer)
    with pytest.raises(ValueError, match=r"at confidence"):
        parse_output(json.dumps({**good, "confidence": 3}), Answer)
    with pytest.raises(ValueError, match=r"missing at explanation"):
        parse_output(json.dumps({"answer": "A", "confidence": 0.1}), Answer)
    with pytest.raises(ValueError, match=r"at options\.1\.label"):
        parse_output(json.dumps({"question": "q", "options": [{"label": "A", "text": "abc"},
                                                               {"label": "Z", "text": "abc"}],
                                 "answer": "A", "difficulty": 2, "confidence": 0.5, "is_hard": False}), Generated)
    with pytest.raises(ValueError, match=r"json_invalid at root"):
        parse_output("{'answer': 'A',}", Answer)


# ------------------------------------------------------------------------------------------------
# 10. reasoning
# ------------------------------------------------------------------------------------------------


def test_reasoner_model_reasoning_separate_from_raw():
    with SimulatorServer(SimConfig(**FAST)) as sim:
        ep = endpoint(sim, model="sim-reasoner")
        reqs = make_requests(5, ep)
        results = run_requests(ep, reqs, Answer)
    check_complete(results, reqs)
    for r in results:
        assert r.status == "ok"
        assert r.reasoning and r.reasoning.startswith("[simulated reasoning]")
        assert "[simulated reasoning]" not in r.raw and r.reasoning not in r.raw
        assert Answer.model_validate_json(r.raw).model_dump(mode="json") == r.parsed
        assert r.as_row()["reasoning"] == r.reasoning


# ------------------------------------------------------------------------------------------------
# endpoint helpers
# ------------------------------------------------------------------------------------------------


def test_endpoint_params_and_scaled():
    ep = Endpoint("e", "http://x/v1", "m", max_concurrency=16, rpm=600, tpm=None, top_p=0.9)
    assert ep.params() == {"temperature": 0.0, "max_tokens": 1024, "response_format": "auto", "top_p": 0.9}
    half = ep.scaled(0.5)
    assert (half.max_concurrency, half.rpm, half.tpm) == (8, 300, None)
    assert ep.scaled(0.01).max_concurrency == 1
    assert response_format(Endpoint("e", "u", "m", response_format="text"), Answer) is None
    assert response_format(Endpoint("e", "u", "m", response_format="json_object"), Answer) == {"type": "json_object"}
    assert response_format(ep, None) is None


def test_each_attempt_sends_top_p_seed_and_format_only_when_set():
    """The request arguments, seen by a stub SDK: the same on a re-ask after invalid output."""
    from types import SimpleNamespace as NS

    sent, replies = [], []

    async def create(**kwargs):
        sent.append(kwargs)
        msg = NS(content=replies.pop(0), model_extra={})
        return NS(choices=[NS(message=msg, finish_reason="stop")], system_fingerprint=None,
                  usage=NS(prompt_tokens=3, completion_tokens=2))

    async def call(ep, req):
        llm = AsyncLLM(ep, Tiny)
        real, llm.sdk = llm.sdk, NS(chat=NS(completions=NS(create=create)))
        try:
            return await llm.call(req)
        finally:
            await real.close()

    msgs = [{"role": "user", "content": "hi"}]
    replies[:] = ["not json", '{"answer": "B"}']
    ep = Endpoint("e", "http://127.0.0.1:9/v1", "m", top_p=0.9, invalid_retries=1)
    r = asyncio.run(call(ep, Request("k", msgs, sample=3)))
    assert (r.status, r.parsed, r.attempts, r.prompt_tokens, r.completion_tokens) == ("ok", {"answer": "B"}, 2, 6, 4)
    assert len(sent) == 2 and sent[0] == sent[1]
    assert (sent[0]["top_p"], sent[0]["seed"], sent[0]["response_format"]["type"]) == (0.9, 3, "json_schema")

    sent.clear()
    replies[:] = ['{"answer": "A"}']
    r = asyncio.run(call(Endpoint("e", "http://127.0.0.1:9/v1", "m", response_format="text"), Request("k", msgs)))
    assert r.status == "ok" and sorted(sent[0]) == ["max_tokens", "messages", "model", "temperature"]

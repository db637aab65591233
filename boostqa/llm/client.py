"""Async OpenAI-compatible calls that survive real endpoints: rate limits, faults, bad output.

One request goes through: circuit breaker -> RPM/TPM token buckets -> the official `openai`
SDK (its own retries off: this layer owns them) -> retry on 408/409/429/5xx, timeouts and
connection errors with exponential backoff + jitter that honours Retry-After; no retry on
400/401/403/404/422 -> strict parse against the stage's pydantic model (invalid or truncated
output is asked again ``invalid_retries`` times, then recorded as ``invalid`` with its raw
text) -> a CallResult with status, parsed fields, raw text, reasoning, usage, latency, attempts.

Many requests go through ``run_requests``: a sliding window of at most ``max_concurrency``
requests in flight (a new one starts the moment one finishes; no waves). Spark-free: the
partition helper in ``stages/llm.py`` calls it from mapInPandas.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Endpoint:
    """Plain data (it pickles into Spark UDFs); built from config ``llm.endpoints.<name>``."""

    name: str
    base_url: str
    model: str
    api_key_env: str | None = None  # the variable's name; the key itself never leaves the env
    max_concurrency: int = 16
    rpm: float | None = None
    tpm: float | None = None
    timeout: float = 60.0
    max_retries: int = 5
    invalid_retries: int = 1
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    breaker_failures: int = 20  # consecutive failed requests that open the circuit for this batch
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 1024
    response_format: str = "json_schema"  # json_schema | json_object | text
    simulated: bool = False  # the endpoint is boostqa's simulator: outputs are labelled so

    def params(self) -> dict[str, Any]:
        """The generation parameters that are part of every request key."""
        p = {"temperature": self.temperature, "max_tokens": self.max_tokens, "response_format": self.response_format}
        if self.top_p is not None:
            p["top_p"] = self.top_p
        return p

    def scaled(self, share: float) -> "Endpoint":
        """This endpoint's budget for one of several concurrent tasks (concurrency, RPM, TPM x share)."""
        from dataclasses import replace

        return replace(self, max_concurrency=max(1, int(self.max_concurrency * share)),
                       rpm=self.rpm * share if self.rpm else None, tpm=self.tpm * share if self.tpm else None)


@dataclass
class Request:
    key: str
    messages: list[dict[str, str]]
    sample: int = 0


@dataclass
class CallResult:
    request_key: str
    status: str  # ok | invalid | failed
    parsed: dict | None = None
    raw: str | None = None
    reasoning: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 0
    error: str | None = None
    http_status: int | None = None
    simulated: bool = False  # the server identified itself as boostqa's simulator

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["parsed"] = json.dumps(self.parsed, ensure_ascii=False) if self.parsed is not None else None
        return row


class TokenBucket:
    """``rate`` units per minute, bursts up to one second's worth (at least one unit)."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        # a request larger than a burst waits for a full bucket, then pays in full (the level goes
        # negative), so the next one waits the debt off and the long-run rate stays within the limit
        need = min(amount, self.capacity)
        async with self.lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> str:
    """The JSON object in a reply: fenced block, else the outermost {...}, else the text."""
    m = _FENCE.search(text)
    if m:
        return m.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else text


def parse_output(text: str | None, schema: type[BaseModel] | None) -> dict | None:
    """Strictly validated fields, or raises ValueError with a short reason."""
    if schema is None:
        return None
    if not text:
        raise ValueError("empty output")
    try:
        return schema.model_validate_json(extract_json(text)).model_dump(mode="json")
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"{first['type']} at {'.'.join(map(str, first['loc'])) or 'root'}: {first['msg']}") from None


def response_format(ep: Endpoint, schema: type[BaseModel] | None) -> dict | None:
    if schema is None or ep.response_format == "text":
        return None
    if ep.response_format == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema",
            "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": True}}


class _Breaker:
    def __init__(self, threshold: int):
        self.threshold, self.failures = threshold, 0

    @property
    def open(self) -> bool:
        return self.threshold > 0 and self.failures >= self.threshold

    def record(self, ok: bool) -> None:
        self.failures = 0 if ok else self.failures + 1


def _retry_after(exc: Exception) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms wins over retry-after), if any."""
    resp = getattr(exc, "response", None)
    if resp is None:
        return None
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            value = resp.headers.get(header)
            if value is not None:
                return float(value) / scale
        except ValueError:
            continue
    return None


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class AsyncLLM:
    """One endpoint's client for one batch: shared buckets, breaker and SDK connection pool."""

    def __init__(self, ep: Endpoint, schema: type[BaseModel] | None = None):
        from openai import AsyncOpenAI

        self.ep, self.schema = ep, schema
        self._key = os.environ.get(ep.api_key_env) if ep.api_key_env else None
        self._missing_key = bool(ep.api_key_env) and not self._key
        self.sdk = AsyncOpenAI(base_url=ep.base_url, api_key=self._key or "EMPTY", max_retries=0, timeout=ep.timeout)
        self.rpm = TokenBucket(ep.rpm) if ep.rpm else None
        self.tpm = TokenBucket(ep.tpm) if ep.tpm else None
        self.breaker = _Breaker(ep.breaker_failures)
        self.format = response_format(ep, schema)
        self.rng = random.Random(0)

    async def close(self) -> None:
        await self.sdk.close()

    def _delay(self, attempt: int, exc: Exception | None) -> float:
        after = _retry_after(exc) if exc is not None else None
        if after is not None:
            return min(after, self.ep.backoff_max)
        return min(self.ep.backoff_max, self.ep.backoff_base * 2 ** attempt) * self.rng.uniform(0.5, 1.5)

    async def call(self, req: Request) -> CallResult:
        """One request to its final CallResult: ``ok``, ``invalid`` after ``invalid_retries`` re-asks,
        or ``failed`` (missing key, open circuit, non-retryable status, transport retries used up)."""
        ep, t0 = self.ep, time.monotonic()
        res = CallResult(req.key, "failed")
        if self._missing_key:
            res.error = f"environment variable {ep.api_key_env} (API key of endpoint {ep.name}) is not set"
            return res
        est_tokens = sum(len(m.get("content") or "") for m in req.messages) / 4 + ep.max_tokens
        invalid_left, transport = ep.invalid_retries, 0
        while True:
            if self.breaker.open:
                res.error = f"circuit open: {self.breaker.failures} consecutive failed requests to {ep.name}"
                break
            await self._throttle(est_tokens)
            res.attempts += 1
            resp, retry = await self._send(self._request_kwargs(req), res, transport)
            if resp is None:
                if not retry:
                    break
                transport += 1
                continue
            if self._validate(self._read(resp, res), res) or invalid_left <= 0:
                break
            invalid_left -= 1
        self.breaker.record(res.status != "failed")
        res.latency_ms = round((time.monotonic() - t0) * 1000, 1)
        return res

    async def _throttle(self, est_tokens: float) -> None:
        """Wait for the RPM and TPM buckets; every attempt pays, retries included."""
        if self.rpm:
            await self.rpm.take(1)
        if self.tpm:
            await self.tpm.take(est_tokens)

    def _request_kwargs(self, req: Request) -> dict[str, Any]:
        """The SDK arguments of one attempt; built per attempt so a step may change what the next one asks."""
        ep = self.ep
        kwargs: dict[str, Any] = dict(model=ep.model, messages=req.messages, temperature=ep.temperature,
                                      max_tokens=ep.max_tokens)
        if ep.top_p is not None:
            kwargs["top_p"] = ep.top_p
        if req.sample:  # distinct samples of one prompt must be distinct requests
            kwargs["seed"] = req.sample
        if self.format:
            kwargs["response_format"] = self.format
        return kwargs

    async def _send(self, kwargs: dict[str, Any], res: CallResult, transport: int) -> tuple[Any, bool]:
        """One SDK request: ``(response, False)``, or ``(None, retry?)`` after an error recorded on ``res``.

        This is where the transport retry is decided: 408/409/429/5xx, timeouts, connection errors and
        broken bodies are retried (after the backoff, slept here) until ``max_retries``; other statuses
        (400/401/403/404/422) are final, since asking again cannot change the answer."""
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        try:
            return await self.sdk.chat.completions.create(**kwargs), False
        except (APITimeoutError, APIConnectionError, APIStatusError, ValueError) as e:  # ValueError: broken body
            status = getattr(e, "status_code", None)
            res.http_status = status
            res.error = _redact(f"{type(e).__name__}: {str(e)[:300]}", self._key)
            retryable = status is None or status in RETRY_STATUS
            if not retryable or transport >= self.ep.max_retries:
                return None, False
            await asyncio.sleep(self._delay(transport, e))
            return None, True

    @staticmethod
    def _read(resp: Any, res: CallResult) -> Any:
        """Copy what a reply says onto ``res`` (text, finish reason, reasoning, token usage summed over
        attempts, simulator mark); returns the choice to validate."""
        choice = resp.choices[0]
        msg = choice.message
        res.raw, res.finish_reason, res.http_status = msg.content, choice.finish_reason, 200
        res.simulated = res.simulated or getattr(resp, "system_fingerprint", None) == "boostqa-simulator"
        extra = getattr(msg, "model_extra", None) or {}
        res.reasoning = extra.get("reasoning_content") or getattr(msg, "reasoning_content", None)
        if resp.usage:
            res.prompt_tokens += resp.usage.prompt_tokens or 0
            res.completion_tokens += resp.usage.completion_tokens or 0
        return choice

    def _validate(self, choice: Any, res: CallResult) -> bool:
        """Parse ``res.raw`` strictly into ``res``: True when ``ok``; False when ``invalid`` (truncated or
        not matching the schema), which the caller may ask again."""
        try:
            if choice.finish_reason == "length":
                raise ValueError("truncated: finish_reason=length")
            res.parsed = parse_output(res.raw, self.schema)
        except ValueError as e:
            res.status, res.error = "invalid", f"invalid output: {e}"
            return False
        res.status, res.error = "ok", None
        return True


async def _run(ep: Endpoint, requests: Iterable[Request], schema: type[BaseModel] | None,
               on_result: Callable[[CallResult], None] | None) -> list[CallResult]:
    llm = AsyncLLM(ep, schema)
    window = asyncio.Semaphore(ep.max_concurrency)
    results: list[CallResult | None] = []
    tasks = set()

    async def one(i: int, req: Request) -> None:
        try:
            results[i] = await llm.call(req)
        except Exception as e:  # a bug or an unexpected SDK error must not lose the row
            results[i] = CallResult(req.key, "failed", error=_redact(f"{type(e).__name__}: {e}"[:300], llm._key))
        finally:
            window.release()
            if on_result:
                on_result(results[i])

    try:
        for i, req in enumerate(requests):
            await window.acquire()  # sliding window: start the next request when one finishes
            results.append(None)
            task = asyncio.create_task(one(i, req))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        await llm.close()
    return [r for r in results if r is not None]


def run_requests(ep: Endpoint, requests: Iterable[Request], schema: type[BaseModel] | None = None,
                 on_result: Callable[[CallResult], None] | None = None) -> list[CallResult]:
    """Run a batch to completion on a private event loop; one result per request, in order."""
    return asyncio.run(_run(ep, requests, schema, on_result))


@dataclass
class BatchStats:
    """Counters a caller can fold CallResults into (for progress and metrics)."""

    calls: int = 0
    ok: int = 0
    invalid: int = 0
    failed: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: list[float] = field(default_factory=list)

    def add(self, r: CallResult) -> None:
        self.calls += 1
        setattr(self, r.status, getattr(self, r.status) + 1)
        self.attempts += r.attempts
        self.prompt_tokens += r.prompt_tokens
        self.completion_tokens += r.completion_tokens
        self.latency_ms.append(r.latency_ms)

"""Async OpenAI-compatible calls that survive real endpoints: rate limits, faults, bad output,
and each provider's dialect.

One request goes through: circuit breaker -> RPM/TPM token buckets -> the official `openai`
SDK (its own retries off: this layer owns them), asked in the endpoint's provider dialect
(``providers.py``: output mode, budget parameter, honoured sampling parameters) -> retry on
408/409/429/5xx, timeouts and connection errors with exponential backoff + jitter that honours
Retry-After; a 400 about ``response_format`` moves to the next output mode (json_schema ->
json_object -> text) and a 400 about an unsupported parameter drops or renames it, both
remembered for the rest of the batch; other 400/401/403/404/422 are final -> the reply read:
reasoning from ``reasoning_content``/``reasoning`` or a ``<think>`` block, reasoning tokens from
``usage.completion_tokens_details``; blank content is asked again as a transient fault; an
invalid or truncated answer is asked again ``invalid_retries`` times (the stage may then re-ask
with a new sample index: a new request, key and seed) ->
a CallResult with status ok | invalid | truncated | failed, parsed fields, raw text, reasoning,
usage, latency, attempts and the output mode used.

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

from pydantic import BaseModel

from boostqa.llm import schema as structured
from boostqa.llm.output import REASONING_FIELDS, extract_json, parse_output, split_think  # noqa: F401 (API)
from boostqa.llm.providers import fallback_modes, provider

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
PREFLIGHT_HEADER = "X-Boostqa-Preflight"  # marks the preflight request (servers ignore it; the simulator counts it)
_SEED_STRIDE = 7919  # a retry's seed: sample + stride x retry (distinct from every sample's own seed)


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
    response_format: str = "auto"  # auto (the provider's best) | json_schema | json_object | text
    provider: str = "openai_compatible"  # the dialect (providers.py)
    reasoning: bool = False  # a reasoning model: budget and sampling as the provider treats those
    api: str = "chat"  # chat | completions (the legacy API, for base-model probes)
    logprobs: int | None = None  # top log-probabilities per token to ask for (probes)
    stop: tuple[str, ...] = ()  # stop sequences (a base model continuing a few-shot prompt)
    blank_retries: int = 2  # blank content with finish_reason "stop" (DeepSeek json mode): asked again
    mode: str | None = None  # the output mode a preflight found to work (not part of request keys)
    omit: tuple[str, ...] = ()  # parameters a preflight found the endpoint refuses
    simulated: bool = False  # the endpoint is boostqa's simulator: outputs are labelled so

    def params(self) -> dict[str, Any]:
        """The generation parameters that are part of every request key (as configured: what a
        preflight learns about the endpoint does not change what is asked)."""
        p = {"temperature": self.temperature, "max_tokens": self.max_tokens, "response_format": self.response_format}
        if self.top_p is not None:
            p["top_p"] = self.top_p
        if self.stop:
            p["stop"] = list(self.stop)
        return p

    def scaled(self, share: float) -> "Endpoint":
        """This endpoint's budget for one of several concurrent tasks (concurrency, RPM, TPM x share)."""
        from dataclasses import replace

        return replace(self, max_concurrency=max(1, int(self.max_concurrency * share)),
                       rpm=self.rpm * share if self.rpm else None, tpm=self.tpm * share if self.tpm else None)


@dataclass
class Request:
    key: str
    messages: list[dict[str, str]]  # chat; for the completions API: one user message holding the prompt
    sample: int = 0
    retry: int = 0  # the stage's re-ask of an invalid or truncated answer (a new request key and seed)


@dataclass
class CallResult:
    request_key: str
    status: str  # ok | invalid | truncated | failed
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
    reasoning_tokens: int = 0  # usage.completion_tokens_details.reasoning_tokens, over attempts
    response_format: str | None = None  # the output mode that was used
    logprobs: str | None = None  # JSON: [{token: logprob, ...} per generated token] when asked for

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


def response_format(ep: Endpoint, schema: type[BaseModel] | None) -> dict | None:
    """The ``response_format`` this endpoint is asked with first (the start of its fallback chain)."""
    mode = fallback_modes(ep.provider, ep.response_format)[0]
    return structured.response_format(mode, schema, provider(ep.provider).strict_schema)


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


class EndpointError(RuntimeError):
    """An endpoint cannot serve (missing key, refused key, unknown model or URL, unreachable): the
    message names the endpoint and URL, never the key."""


class AsyncLLM:
    """One endpoint's client for one batch: shared buckets, breaker, SDK connection pool, and what
    it learned about the endpoint (the output mode that works, parameters it refuses)."""

    def __init__(self, ep: Endpoint, schema: type[BaseModel] | None = None, headers: dict[str, str] | None = None):
        from openai import AsyncOpenAI

        self.ep, self.schema, self.profile = ep, schema, provider(ep.provider)
        self._key = os.environ.get(ep.api_key_env) if ep.api_key_env else None
        self._missing_key = bool(ep.api_key_env) and not self._key
        self.sdk = AsyncOpenAI(base_url=ep.base_url, api_key=self._key or "EMPTY", max_retries=0, timeout=ep.timeout,
                               default_headers=headers)
        self.rpm = TokenBucket(ep.rpm) if ep.rpm else None
        self.tpm = TokenBucket(ep.tpm) if ep.tpm else None
        self.breaker = _Breaker(ep.breaker_failures)
        self.rng = random.Random(0)
        self.modes = list(fallback_modes(ep.provider, ep.mode or ep.response_format)) if schema else ["text"]
        self.omit = set(ep.omit)  # parameters the endpoint refused
        self.learned: list[str] = []  # what changed, for the run's record

    @property
    def mode(self) -> str:
        return self.modes[0]

    @property
    def format(self) -> dict | None:
        return structured.response_format(self.mode, self.schema, self.profile.strict_schema)

    async def close(self) -> None:
        await self.sdk.close()

    def _delay(self, attempt: int, exc: Exception | None) -> float:
        after = _retry_after(exc) if exc is not None else None
        if after is not None:
            return min(after, self.ep.backoff_max)
        return min(self.ep.backoff_max, self.ep.backoff_base * 2 ** attempt) * self.rng.uniform(0.5, 1.5)

    async def call(self, req: Request) -> CallResult:
        """One request to its final CallResult: ``ok``; ``invalid``/``truncated`` after
        ``invalid_retries`` re-asks; or ``failed`` (missing key, open circuit, non-retryable status,
        transport retries used up)."""
        ep, t0 = self.ep, time.monotonic()
        res = CallResult(req.key, "failed")
        if self._missing_key:
            res.error = f"environment variable {ep.api_key_env} (API key of endpoint {ep.name}) is not set"
            return res
        est_tokens = sum(len(m.get("content") or "") for m in req.messages) / 4 + ep.max_tokens
        transport = blank = reasked = 0
        while True:
            if self.breaker.open:
                res.error = f"circuit open: {self.breaker.failures} consecutive failed requests to {ep.name}"
                break
            await self._throttle(est_tokens)
            res.attempts += 1
            resp, action = await self._send(self._request_kwargs(req), res, transport)
            if action in ("retry", "adapt"):
                transport += action == "retry"
                continue
            if resp is None:
                break
            outcome = self._validate(self._read(resp, res), res)
            if outcome == "blank" and blank < ep.blank_retries:  # a transient fault, not an answer
                blank += 1
                await asyncio.sleep(self._delay(blank, None))
            elif outcome in ("blank", "invalid", "truncated") and reasked < ep.invalid_retries:
                reasked += 1  # the same request again (a new sample index is the stage's re-ask)
            else:
                break
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
        """The SDK arguments of one attempt, in the provider's dialect; built per attempt, so what
        the client learned (output mode, refused parameters) applies to the next one."""
        ep = self.ep
        if ep.api == "completions":
            kwargs: dict[str, Any] = dict(model=ep.model, prompt=req.messages[-1]["content"])
            if ep.logprobs:
                kwargs["logprobs"] = ep.logprobs
        else:
            kwargs = dict(model=ep.model, messages=req.messages)
            if self.format:
                kwargs["response_format"] = self.format
            if ep.logprobs:
                kwargs.update(logprobs=True, top_logprobs=ep.logprobs)
        if ep.stop:
            kwargs["stop"] = list(ep.stop)
        budget = "max_completion_tokens" if "max_tokens" in self.omit else \
            self.profile.budget_param if ep.reasoning else "max_tokens"
        kwargs[budget] = ep.max_tokens
        honoured = self.profile.reasoning_sampling if ep.reasoning and self.profile.reasoning_sampling is not None \
            else self.profile.sampling
        if "temperature" in honoured:
            kwargs["temperature"] = ep.temperature
        if "top_p" in honoured and ep.top_p is not None:
            kwargs["top_p"] = ep.top_p
        if "seed" in honoured and (req.sample or req.retry):  # distinct samples must be distinct requests
            kwargs["seed"] = req.sample + _SEED_STRIDE * req.retry
        return {k: v for k, v in kwargs.items() if k not in self.omit or k == budget}

    async def _send(self, kwargs: dict[str, Any], res: CallResult, transport: int) -> tuple[Any, str]:
        """One SDK request: ``(response, "done")``, or ``(None, action)`` after an error recorded on
        ``res``: ``adapt`` (a 400 the client learned from: ask again at once), ``retry`` (408/409/429/
        5xx, timeouts, connection errors, broken bodies: after the backoff, slept here, until
        ``max_retries``) or ``stop`` (anything else: asking again cannot change the answer)."""
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        create = self.sdk.completions.create if self.ep.api == "completions" else self.sdk.chat.completions.create
        try:
            return await create(**kwargs), "done"
        except (APITimeoutError, APIConnectionError, APIStatusError, ValueError) as e:  # ValueError: broken body
            status = getattr(e, "status_code", None)
            res.http_status = status
            res.error = _redact(f"{type(e).__name__}: {str(e)[:300]}", self._key)
            if status == 400 and self._adapt(e, kwargs):
                return None, "adapt"
            if (status is not None and status not in RETRY_STATUS) or transport >= self.ep.max_retries:
                return None, "stop"
            await asyncio.sleep(self._delay(transport, e))
            return None, "retry"

    def _adapt(self, e: Exception, kwargs: dict[str, Any]) -> bool:
        """Learn from a 400: the next output mode when it names response_format; drop (or, for
        max_tokens, rename) a parameter it calls unsupported. False: nothing to learn."""
        text, param = _error_text(e), _error_param(e)
        if "response_format" in kwargs and len(self.modes) > 1 and (
                param == "response_format" or any(w in text.lower() for w in ("response_format", "json_schema",
                                                                              "json_object", "schema"))):
            self.learned.append(f"response_format {self.modes.pop(0)} -> {self.mode}: {text[:160]}")
            return True
        m = _UNSUPPORTED.search(text)
        name = m.group(1) if m else param
        if name in kwargs and name not in ("model", "messages", "prompt") and name not in self.omit:
            self.omit.add(name)
            self.learned.append(f"parameter {name} not sent: {text[:160]}")
            return True
        return False

    def _read(self, resp: Any, res: CallResult) -> Any:
        """Copy what a reply says onto ``res`` (answer text with a leading <think> block moved to
        the reasoning, finish reason, token usage and reasoning tokens summed over attempts, the
        output mode, log-probabilities, simulator mark); returns the choice to validate."""
        choice = resp.choices[0]
        if self.ep.api == "completions":
            content, field_reasoning = choice.text, None
        else:
            msg = choice.message
            extra = getattr(msg, "model_extra", None) or {}
            content = msg.content
            field_reasoning = next((extra.get(f) or getattr(msg, f, None) for f in REASONING_FIELDS
                                    if extra.get(f) or getattr(msg, f, None)), None)
        content, think = split_think(content)
        res.raw, res.finish_reason, res.http_status = content, choice.finish_reason, 200
        res.reasoning, res.response_format = field_reasoning or think, self.mode
        res.simulated = res.simulated or getattr(resp, "system_fingerprint", None) == "boostqa-simulator"
        if resp.usage:
            res.prompt_tokens += resp.usage.prompt_tokens or 0
            res.completion_tokens += resp.usage.completion_tokens or 0
            details = getattr(resp.usage, "completion_tokens_details", None)
            res.reasoning_tokens += (getattr(details, "reasoning_tokens", None) or 0) if details else 0
        if self.ep.logprobs:
            res.logprobs = _top_logprobs(choice)
        return choice

    def _validate(self, choice: Any, res: CallResult) -> str:
        """Judge ``res.raw`` and parse it into ``res``: ``ok``, ``truncated`` (finish_reason length),
        ``blank`` (no content where an object was asked for: a transient fault) or ``invalid``."""
        if choice.finish_reason == "length" and self.ep.api != "completions":  # a continuation is cut by design
            res.status, res.error = "truncated", "truncated: finish_reason=length (raise max_tokens)"
            return "truncated"
        if self.schema is not None and not (res.raw or "").strip():
            res.status, res.error = "invalid", f"invalid output: blank content (finish_reason={choice.finish_reason})"
            return "blank"
        try:
            res.parsed = parse_output(res.raw, self.schema)
        except ValueError as e:
            res.status, res.error = "invalid", f"invalid output: {e}"
            return "invalid"
        res.status, res.error = "ok", None
        return "ok"


_UNSUPPORTED = re.compile(r"[Uu]nsupported (?:parameter|value):? '?([a-z_]+)'?")


def _error_text(e: Exception) -> str:
    body = getattr(e, "body", None)
    msg = body.get("message") if isinstance(body, dict) else None
    return str(msg or e)


def _error_param(e: Exception) -> str | None:
    body = getattr(e, "body", None)
    return body.get("param") if isinstance(body, dict) else None


def _top_logprobs(choice: Any) -> str | None:
    """[{token: logprob}] per generated token, from the legacy completions shape (``top_logprobs``)
    or the chat shape (``content``: objects, or plain dicts as llama-server puts them even on
    completions)."""
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        return None
    if getattr(lp, "top_logprobs", None) is not None:  # legacy completions
        return json.dumps([dict(t or {}) for t in lp.top_logprobs])
    extra = getattr(lp, "model_extra", None) or {}
    content = getattr(lp, "content", None) or extra.get("content") or []

    def get(x: Any, name: str) -> Any:
        return x.get(name) if isinstance(x, dict) else getattr(x, name, None)

    return json.dumps([{get(t, "token"): get(t, "logprob") for t in (get(c, "top_logprobs") or [])}
                       or {get(c, "token"): get(c, "logprob")} for c in content])


def preflight(ep: Endpoint, schema: type[BaseModel] | None) -> tuple[Endpoint, list[str]]:
    """One cheap request before a stage spends on an endpoint. Raises EndpointError for a missing
    or refused key, an unknown model or URL, or an endpoint that does not answer; returns the
    endpoint set to the output mode and parameters that worked, and what was learned on the way."""
    from dataclasses import replace

    probe = replace(ep, max_tokens=min(ep.max_tokens, 64 if ep.reasoning else 16), max_retries=3,
                    invalid_retries=0, blank_retries=0, timeout=min(ep.timeout, 60.0), rpm=None, tpm=None)
    content = "Reply with a short JSON object." + (f"\n{structured.json_instruction(schema)}" if schema else "")
    req = Request("preflight", [{"role": "user", "content": content}])

    async def go() -> tuple[CallResult, AsyncLLM]:
        llm = AsyncLLM(probe, schema, headers={PREFLIGHT_HEADER: "1"})
        try:
            return await llm.call(req), llm
        finally:
            await llm.close()

    res, llm = asyncio.run(go())
    if res.status == "failed":
        raise EndpointError(_explain(ep, res))
    return replace(ep, mode=llm.mode if schema else ep.mode, omit=tuple(sorted(llm.omit))), llm.learned


def _explain(ep: Endpoint, res: CallResult) -> str:
    where = f"LLM endpoint {ep.name!r} ({ep.base_url}, model {ep.model!r})"
    hint = {401: f"the key was refused: check ${ep.api_key_env}" if ep.api_key_env else "the server wants a key: set api_key_env",
            403: "the key may not use this model or endpoint",
            404: "the model name or the base_url is wrong"}.get(res.http_status or 0)
    if res.http_status is None and res.error and "not set" not in res.error:
        hint = "unreachable: is the server running and the base_url right?"
    status = f"HTTP {res.http_status}: " if res.http_status else ""
    return f"{where}: {status}{hint + ' — ' if hint else ''}{res.error}"


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
    truncated: int = 0
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

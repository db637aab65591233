"""The simulator's HTTP API as a Starlette app: routes, auth, capacity, faults, stats.

``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models``, under ``/v1`` (the
configured dialect) and under ``/<dialect>/v1`` for every dialect of ``dialect.DIALECTS``;
unauthenticated ``GET /health`` and ``GET /stats``. Every response carries ``X-Boostqa-Simulated: true`` and ``Server:
boostqa-simulator``; answers carry ``system_fingerprint: "boostqa-simulator"`` (how the client
recognises the simulator).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from boostqa.llm.sim.config import SimConfig
from boostqa.llm.sim.content import SIM_NAME, completion, example_schema, mc_letters, rng, text, tokens
from boostqa.llm.sim.dialect import DIALECTS, BadRequest, Dialect, read_request, shape_message
from boostqa.llm.sim.faults import FAULT_ERRORS, FAULT_HEADER, FAULT_KINDS, FaultPlan, broken_body, corrupt

log = logging.getLogger(__name__)

SIM_HEADER = "X-Boostqa-Simulated"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def respond(data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(data, status, {SIM_HEADER: "true", "Server": SIM_NAME, **(headers or {})},
                    media_type="application/json; charset=utf-8")


def error(status: int, message: str, etype: str, code: str | None = None, param: str | None = None,
          headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": f"{message} (boostqa LLM simulator)", "type": etype, "param": param, "code": code}}
    return respond(_dumps(body), status, headers)


@dataclass
class Stats:
    """The /stats counters (reset by replacing the object)."""

    started: float = field(default_factory=time.time)
    requests: int = 0
    requests_by_endpoint: Counter = field(default_factory=Counter)
    responses_by_status: Counter = field(default_factory=Counter)
    requests_by_model: Counter = field(default_factory=Counter)
    requests_by_dialect: Counter = field(default_factory=Counter)
    max_in_flight_seen: int = 0
    capacity_rejections: int = 0
    auth_failures: int = 0
    retries_seen: int = 0
    preflights: int = 0  # requests marked X-Boostqa-Preflight (the client's check before a stage spends)
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    preflight_prompt_tokens: int = 0  # of those, the preflights'
    preflight_completion_tokens: int = 0


class SimApp:
    """The request logic. Runs on one event loop; `in_flight` and the stats need no locks."""

    def __init__(self, config: SimConfig):
        self.cfg = config
        self.plan = FaultPlan(config)
        self.stats = Stats()
        self.in_flight = 0
        self.closing = False  # set by SimulatorServer.stop(): held `timeout` answers are sent
        key = config.api_key.get_secret_value() if config.api_key is not None else ""
        self.auth = f"Bearer {key}" if key else None

    def starlette(self) -> Starlette:
        routes = [Route("/health", self.health), Route("/stats", self.stats_endpoint)]
        for prefix, dialect in [("", DIALECTS[self.cfg.dialect]), *((f"/{d.name}", d) for d in DIALECTS.values())]:
            def api(route: str, handler: Callable, method: str, d: Dialect = dialect, p: str = prefix) -> Route:
                return Route(f"{p}/v1{route}", self.counted(handler, d, p), methods=[method])

            routes += [api("/models", self.models, "GET"), api("/chat/completions", self.call, "POST")]
            if dialect.completions:
                routes.append(api("/completions", self.call, "POST"))
        return Starlette(routes=routes, exception_handlers={HTTPException: self.http_error})

    # -- bookkeeping ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        s = {k: dict(v) if isinstance(v, dict) else v for k, v in vars(self.stats).items()}
        prompt, completion_tokens = s.pop("prompt_tokens"), s.pop("completion_tokens")
        pre = {"prompt": s.pop("preflight_prompt_tokens"), "completion": s.pop("preflight_completion_tokens")}
        return {"simulator": SIM_NAME, "uptime_s": round(time.time() - s.pop("started"), 3), **s,
                "in_flight": self.in_flight, "faults_total": sum(s["faults"].values()),
                "tokens": {"prompt": prompt, "completion": completion_tokens, "total": prompt + completion_tokens},
                "preflight_tokens": pre,
                "unique_requests": len(self.plan.attempts),
                "config": {**self.cfg.model_dump(exclude={"api_key"}), "auth": self.cfg.api_key is not None}}

    def counted(self, handler: Callable[[Request, Dialect], Awaitable[Response]], dialect: Dialect,
                prefix: str) -> Callable:
        """An API route: counted in the stats, behind the API key; a simulator bug answers 500."""

        async def run(request: Request) -> Response:
            self.stats.requests_by_endpoint[request.url.path.removeprefix(prefix).removeprefix("/v1")] += 1
            self.stats.requests_by_dialect[dialect.name] += 1
            self.stats.requests += 1
            self.stats.preflights += request.headers.get("x-boostqa-preflight") == "1"
            try:
                resp = self.check_auth(request) or await handler(request, dialect)
            except Exception as e:  # noqa: BLE001 - keep serving
                log.exception("simulator error")
                resp = error(500, f"simulator internal error: {type(e).__name__}", "server_error")
            self.stats.responses_by_status[str(resp.status_code)] += 1
            return resp

        return run

    def check_auth(self, request: Request) -> Response | None:
        got = request.headers.get("authorization", "")
        if self.auth is None or got == self.auth:
            return None
        self.stats.auth_failures += 1
        return error(401, "Incorrect API key provided" if got else "Missing API key (Authorization: Bearer)",
                     "invalid_request_error", "invalid_api_key")

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        """404 and 405 from the router, in the OpenAI error shape (say, a base_url without /v1)."""
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", "invalid_request_error",
                     "unknown_url" if exc.status_code == 404 else None)

    # -- plain endpoints ------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return respond(_dumps({"status": "ok", "simulator": SIM_NAME, "in_flight": self.in_flight}))

    async def stats_endpoint(self, request: Request) -> Response:
        return respond(_dumps(self.snapshot()))

    async def models(self, request: Request, dialect: Dialect) -> Response:
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": SIM_NAME} for m in self.cfg.models]
        return respond(_dumps({"object": "list", "data": data}))

    # -- chat completions: capacity, faults, latency ---------------------------------------------
    async def call(self, request: Request, dialect: Dialect) -> Response:
        chat = request.url.path.endswith("/chat/completions")
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            if not isinstance(body.get("model"), str) or not body["model"]:
                raise BadRequest("you must provide a model parameter", "model")
            if chat and (not isinstance(body.get("messages"), list) or not body["messages"]):
                raise BadRequest("messages must be a non-empty list", "messages")
            if not chat and not isinstance(body.get("prompt"), str):
                raise BadRequest("prompt must be a string", "prompt")
        except ValueError as e:  # BadRequest, invalid JSON or UTF-8
            return error(400, f"Invalid request: {e}", "invalid_request_error", None, getattr(e, "param", None))
        cap = self.cfg.max_in_flight
        if cap is not None and self.in_flight >= cap:
            self.stats.capacity_rejections += 1
            return error(429, f"Too many requests in flight (max_in_flight={cap}); retry later",
                         "rate_limit_exceeded", "rate_limit_exceeded", headers=self.plan.retry_after())
        self.in_flight += 1
        self.stats.max_in_flight_seen = max(self.stats.max_in_flight_seen, self.in_flight)
        try:
            return await self.answer(request, body, dialect, chat)
        finally:
            self.in_flight -= 1

    async def answer(self, request: Request, body: dict, dialect: Dialect, chat: bool) -> Response:
        st, plan = self.stats, self.plan
        st.requests_by_model[body["model"]] += 1
        h = plan.request_hash(request.url.path, body)
        attempt = plan.next_attempt(h)
        st.retries_seen += attempt > 0
        try:
            fault = plan.choose(h, attempt, request.headers.get(FAULT_HEADER))
        except ValueError as e:
            return error(400, str(e), "invalid_request_error")
        if fault:
            st.faults[fault] += 1
        rid = {"x-request-id": f"req-sim-{h.hex()[:20]}-{attempt}"}
        if fault in ("rate_limit", "bad_request"):
            return self.fault_error(fault, rid)
        if fault == "timeout":  # hold the answer (stop() releases it early)
            end = time.monotonic() + self.cfg.timeout_hold_s
            while not self.closing and time.monotonic() < end:
                await asyncio.sleep(min(0.05, end - time.monotonic()))
        try:
            build = self.chat if chat else self.complete
            data, prompt_tokens, completion_tokens = build(body, dialect, h, attempt, fault)
        except BadRequest as e:
            return error(400, str(e), "invalid_request_error", e.code, e.param, headers=rid)
        delay = plan.latency_s(h, attempt)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault in FAULT_ERRORS:
            return self.fault_error(fault, rid)
        st.prompt_tokens += prompt_tokens  # usage of answered requests only
        st.completion_tokens += completion_tokens
        if request.headers.get("x-boostqa-preflight") == "1":
            st.preflight_prompt_tokens += prompt_tokens
            st.preflight_completion_tokens += completion_tokens
        return respond(data, headers={**rid, "openai-processing-ms": str(int(delay * 1000))})

    def fault_error(self, fault: str, rid: dict[str, str]) -> Response:
        status, etype, code, message = FAULT_ERRORS[fault]
        retry = self.plan.retry_after() if status in (429, 503) else {}
        return error(status, message, etype, code, headers={**rid, **retry})

    def chat(self, body: dict, dialect: Dialect, h: bytes, attempt: int,
             fault: str | None) -> tuple[bytes, int, int]:
        """The response body, prompt and completion tokens (BadRequest when the dialect refuses).
        A reasoning model's reasoning is written first and counts towards max_tokens."""
        req = read_request(dialect, body)
        messages = [(m.get("role", ""), m.get("content")) for m in body["messages"] if isinstance(m, dict)]
        messages = [(role, c if isinstance(c, str) else "") for role, c in messages]  # text content only
        prompt_tokens = tokens("".join(f"{role}: {c}\n" for role, c in messages))
        last_user = next((c for role, c in reversed(messages) if role == "user"), "")
        r = rng(h, "choice", 0)
        schema = req.schema if req.rf_type == "json_schema" else example_schema("\n".join(c for _, c in messages))
        content = completion(req.rf_type, schema, r, mc_letters(last_user))
        content, finish = corrupt(fault, req.rf_type, content, r)
        reasoning = "[simulated reasoning] " + text(r, (2, 4)) if req.reasoner else None
        budget = None if req.max_tokens is None else req.max_tokens - tokens(reasoning or "")
        if budget is not None and tokens(content) > budget:
            content, finish = content[: max(0, budget) * 4], "length"
        completion_tokens = tokens(content) + tokens(reasoning or "")
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}
        if reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": tokens(reasoning)}
        choice = {"index": 0, "message": shape_message(dialect, content, reasoning), "logprobs": None,
                  "finish_reason": finish}
        data = _dumps({"id": f"chatcmpl-sim-{h.hex()[:24]}-{attempt}", "object": "chat.completion",
                       "created": int(time.time()), "model": body["model"], "system_fingerprint": SIM_NAME,
                       "choices": [choice], "usage": usage})
        if fault == "malformed" and req.rf_type == "text":
            data = broken_body(data)  # a 200 whose JSON does not parse
        return data, prompt_tokens, completion_tokens

    def complete(self, body: dict, dialect: Dialect, h: bytes, attempt: int,
                 fault: str | None) -> tuple[bytes, int, int]:
        """A legacy completion, as a base checkpoint continues a few-shot prompt: after a
        multiple-choice question (option lines, prompt ending in "Answer:") one option letter with
        its alternatives' log-probabilities; otherwise a short answer line."""
        prompt, r = body["prompt"], rng(h, "completion", 0)
        max_tokens = body.get("max_tokens") or 16
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest("max_tokens must be a positive integer", "max_tokens")
        k = body.get("logprobs")
        if k is not None and (not isinstance(k, int) or not 0 <= k <= 20):
            raise BadRequest("logprobs must be an integer in 0..20", "logprobs")
        letters = mc_letters(prompt.rsplit("\n\n", 1)[-1])
        if letters:
            weights = sorted((r.random() for _ in letters), reverse=True)
            order = r.sample(letters, len(letters))
            total = sum(w * w for w in weights)
            alts = {f" {x}": round(math.log(w * w / total), 4) for x, w in zip(order, weights)}
            toks = [(f" {order[0]}", alts)]
        else:
            words = [f" {r.choice(('7', '7', '7', str(r.randint(0, 99))))}", "\n"]
            toks = [(w, {w: round(-0.05 - r.random(), 4)}) for w in words]
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        for i, (t, _) in enumerate(toks):
            if any(s and s in t for s in stops):
                toks = toks[:i]
                break
        finish = "length" if fault == "truncated" or len(toks) > max_tokens else "stop"
        toks = toks[:max_tokens]
        out = "".join(t for t, _ in toks)
        logprobs = None
        if k is not None:
            top = [dict(sorted(a.items(), key=lambda kv: -kv[1])[: max(k, 1)]) for _, a in toks]
            if dialect.chat_shape_logprobs:  # llama-server: the chat shape, even on completions
                logprobs = {"content": [{"token": t, "logprob": a[t], "bytes": list(t.encode()),
                                         "top_logprobs": [{"token": x, "logprob": v} for x, v in tp.items()]}
                                        for (t, a), tp in zip(toks, top)]}
            else:
                offsets = [len(prompt) + sum(len(t) for t, _ in toks[:i]) for i in range(len(toks))]
                logprobs = {"tokens": [t for t, _ in toks], "token_logprobs": [a[t] for t, a in toks],
                            "top_logprobs": top, "text_offset": offsets}
        prompt_tokens, completion_tokens = tokens(prompt), len(toks)
        choice = {"index": 0, "text": out, "logprobs": logprobs, "finish_reason": finish}
        data = _dumps({"id": f"cmpl-sim-{h.hex()[:24]}-{attempt}", "object": "text_completion",
                       "created": int(time.time()), "model": body["model"], "system_fingerprint": SIM_NAME,
                       "choices": [choice], "usage": {"prompt_tokens": prompt_tokens,
                                                      "completion_tokens": completion_tokens,
                                                      "total_tokens": prompt_tokens + completion_tokens}})
        return data, prompt_tokens, completion_tokens

"""The simulator's HTTP API as a Starlette app: routes, auth, capacity, faults, stats.

``POST /v1/chat/completions`` and ``GET /v1/models``; unauthenticated ``GET /health`` and
``GET /stats``. Every response carries ``X-Boostqa-Simulated: true`` and ``Server:
boostqa-simulator``; answers carry ``system_fingerprint: "boostqa-simulator"`` (how the client
recognises the simulator).
"""

from __future__ import annotations

import asyncio
import json
import logging
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
from boostqa.llm.sim.content import SIM_NAME, completion, mc_letters, rng, text, tokens
from boostqa.llm.sim.dialect import BadRequest, read_request, shape_message
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
    max_in_flight_seen: int = 0
    capacity_rejections: int = 0
    auth_failures: int = 0
    retries_seen: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    prompt_tokens: int = 0
    completion_tokens: int = 0


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
        def api(route: str, handler: Callable[[Request], Awaitable[Response]], method: str) -> Route:
            return Route(f"/v1{route}", self.counted(handler), methods=[method])

        return Starlette(routes=[
            Route("/health", self.health), Route("/stats", self.stats_endpoint),
            api("/models", self.models, "GET"), api("/chat/completions", self.call, "POST"),
        ], exception_handlers={HTTPException: self.http_error})

    # -- bookkeeping ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        s = {k: dict(v) if isinstance(v, dict) else v for k, v in vars(self.stats).items()}
        prompt, completion_tokens = s.pop("prompt_tokens"), s.pop("completion_tokens")
        return {"simulator": SIM_NAME, "uptime_s": round(time.time() - s.pop("started"), 3), **s,
                "in_flight": self.in_flight, "faults_total": sum(s["faults"].values()),
                "tokens": {"prompt": prompt, "completion": completion_tokens, "total": prompt + completion_tokens},
                "unique_requests": len(self.plan.attempts),
                "config": {**self.cfg.model_dump(exclude={"api_key"}), "auth": self.cfg.api_key is not None}}

    def counted(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable:
        """An API route: counted in the stats, behind the API key; a simulator bug answers 500."""

        async def run(request: Request) -> Response:
            self.stats.requests_by_endpoint[request.url.path.removeprefix("/v1")] += 1
            self.stats.requests += 1
            try:
                resp = self.check_auth(request) or await handler(request)
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

    async def models(self, request: Request) -> Response:
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": SIM_NAME} for m in self.cfg.models]
        return respond(_dumps({"object": "list", "data": data}))

    # -- chat completions: capacity, faults, latency ---------------------------------------------
    async def call(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            if not isinstance(body.get("model"), str) or not body["model"]:
                raise BadRequest("you must provide a model parameter", "model")
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                raise BadRequest("messages must be a non-empty list", "messages")
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
            return await self.answer(request, body)
        finally:
            self.in_flight -= 1

    async def answer(self, request: Request, body: dict) -> Response:
        st, plan = self.stats, self.plan
        st.requests_by_model[body["model"]] += 1
        h = plan.request_hash("/chat/completions", body)
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
            data, prompt_tokens, completion_tokens = self.chat(body, h, attempt, fault)
        except BadRequest as e:
            return error(400, str(e), "invalid_request_error", None, e.param, headers=rid)
        delay = plan.latency_s(h, attempt)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault in FAULT_ERRORS:
            return self.fault_error(fault, rid)
        st.prompt_tokens += prompt_tokens  # usage of answered requests only
        st.completion_tokens += completion_tokens
        return respond(data, headers={**rid, "openai-processing-ms": str(int(delay * 1000))})

    def fault_error(self, fault: str, rid: dict[str, str]) -> Response:
        status, etype, code, message = FAULT_ERRORS[fault]
        retry = self.plan.retry_after() if status in (429, 503) else {}
        return error(status, message, etype, code, headers={**rid, **retry})

    def chat(self, body: dict, h: bytes, attempt: int, fault: str | None) -> tuple[bytes, int, int]:
        """The response body, prompt and completion tokens (BadRequest when the dialect refuses)."""
        req = read_request(self.cfg.dialect, body)
        messages = [(m.get("role", ""), m.get("content")) for m in body["messages"] if isinstance(m, dict)]
        messages = [(role, c if isinstance(c, str) else "") for role, c in messages]  # text content only
        prompt_tokens = tokens("".join(f"{role}: {c}\n" for role, c in messages))
        last_user = next((c for role, c in reversed(messages) if role == "user"), "")
        r = rng(h, "choice", 0)
        content = completion(req.rf_type, req.schema, r, mc_letters(last_user))
        content, finish = corrupt(fault, req.rf_type, content, r)
        if req.max_tokens is not None and tokens(content) > req.max_tokens:
            content, finish = content[: req.max_tokens * 4], "length"
        reasoning = "[simulated reasoning] " + text(r, (2, 4)) if req.reasoner else None
        completion_tokens = tokens(content) + tokens(reasoning or "")
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}
        if reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": tokens(reasoning)}
        choice = {"index": 0, "message": shape_message(self.cfg.dialect, content, reasoning), "logprobs": None,
                  "finish_reason": finish}
        data = _dumps({"id": f"chatcmpl-sim-{h.hex()[:24]}-{attempt}", "object": "chat.completion",
                       "created": int(time.time()), "model": body["model"], "system_fingerprint": SIM_NAME,
                       "choices": [choice], "usage": usage})
        if fault == "malformed" and req.rf_type == "text":
            data = broken_body(data)  # a 200 whose JSON does not parse
        return data, prompt_tokens, completion_tokens

"""Which fault a request gets, how long it takes, and how a fault breaks an answer.

Faults come from ``SimConfig.faults`` rates, or are forced per request with the header
``X-Sim-Fault: <kind>[:N]`` (then only on the first N attempts). The draw depends on the request
hash and the attempt (how often the server already admitted that same request), so a retry can
succeed. Every fault is an ordinary HTTP response, so no raw socket is needed: FAULT_ERRORS are
error statuses; timeout holds the answer ``timeout_hold_s``; malformed makes JSON content invalid
(json_schema / json_object) or cuts a text answer's body in half; truncated cuts the content
with finish_reason "length"; blank answers an empty content with finish_reason "stop" (as DeepSeek
does under load).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from typing import TYPE_CHECKING

from boostqa.llm.sim.content import rng

if TYPE_CHECKING:
    from boostqa.llm.sim.config import SimConfig

FAULT_HEADER = "x-sim-fault"
FAULT_KINDS = ("rate_limit", "server_error", "unavailable", "timeout", "malformed", "truncated", "bad_request",
               "blank")
#: the kinds `--fault-rate` spreads over (bad_request and blank stay off unless asked for)
DEFAULT_FAULT_KINDS = ("rate_limit", "server_error", "unavailable", "timeout", "malformed", "truncated")
#: kind -> (HTTP status, error type, error code, message); rate_limit and bad_request answer at once
FAULT_ERRORS = {
    "rate_limit": (429, "rate_limit_exceeded", "rate_limit_exceeded", "Rate limit reached (simulated fault)"),
    "bad_request": (400, "invalid_request_error", None, "Invalid request (simulated fault)"),
    "server_error": (500, "server_error", None,
                     "The server had an error while processing your request (simulated fault)"),
    "unavailable": (503, "service_unavailable", None, "The server is overloaded or not ready yet (simulated fault)"),
}
_MAX_TRACKED = 1_000_000  # attempt counters kept; beyond, the oldest half is forgotten


class FaultPlan:
    """Request hashes, attempt counters, fault and latency draws of one server."""

    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.seed_bytes = f"boostqa-sim:{cfg.seed}:".encode()
        self.attempts: dict[bytes, int] = {}
        self.table: list[tuple[float, str]] = []  # cumulative rate -> kind
        acc = 0.0
        for kind in FAULT_KINDS:
            if cfg.faults.get(kind, 0.0) > 0:
                acc += cfg.faults[kind]
                self.table.append((acc, kind))

    def request_hash(self, route: str, body: dict) -> bytes:
        data = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
        return hashlib.sha256(self.seed_bytes + route.encode() + b"\x1f" + data).digest()

    def next_attempt(self, h: bytes) -> int:
        """How many times this request was admitted before (0 for the first)."""
        seen = self.attempts.get(h, 0)
        if len(self.attempts) >= _MAX_TRACKED and h not in self.attempts:
            for old in list(self.attempts)[: len(self.attempts) // 2]:
                del self.attempts[old]
        self.attempts[h] = seen + 1
        return seen

    def choose(self, h: bytes, attempt: int, forced: str | None) -> str | None:
        """The fault of this attempt, or None; ValueError for a bad X-Sim-Fault header."""
        if forced:
            kind, _, n = forced.strip().partition(":")
            kind = kind.strip().lower()
            if kind in ("none", "off", ""):
                return None
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown X-Sim-Fault kind {kind!r}; kinds: {', '.join(FAULT_KINDS)}")
            try:
                limit = int(n) if n.strip() else None
            except ValueError:
                raise ValueError(f"bad X-Sim-Fault attempt count {n!r}") from None
            return kind if limit is None or attempt < limit else None
        u = rng(h, attempt, "fault").random() if self.table else 1.0
        return next((kind for acc, kind in self.table if u < acc), None)

    def latency_s(self, h: bytes, attempt: int) -> float:
        cfg = self.cfg
        if cfg.latency == "none":
            return 0.0
        ms = cfg.latency_ms
        if cfg.latency == "lognormal":
            ms *= math.exp(cfg.latency_sigma * rng(h, attempt, "latency").gauss(0.0, 1.0))
        return min(ms, cfg.latency_max_ms) / 1000.0

    def retry_after(self) -> dict[str, str]:
        s = self.cfg.retry_after_s
        return {"Retry-After": str(max(1, math.ceil(s)) if s > 0 else 0), "retry-after-ms": str(int(s * 1000))}


def corrupt(fault: str | None, rf_type: str, content: str, r: random.Random) -> tuple[str, str]:
    """Content and finish_reason after a malformed (JSON formats), truncated or blank fault."""
    finish = "stop"
    if fault == "blank":
        return "", finish
    if fault == "malformed" and rf_type != "text":
        content = _break_json(content, r)
    if fault == "truncated":
        cut = max(1, int(len(content) * (0.3 + 0.4 * r.random())))
        content, finish = content[:cut], "length"
    return content, finish


def _break_json(content: str, r: random.Random) -> str:
    """Invalid JSON in one of three ways real models produce."""
    variant = r.randrange(3)
    if variant == 0:  # cut mid-way
        return content[: max(1, len(content) // 2)]
    if variant == 1:  # a python-ish repr with single quotes and a trailing comma
        return content.replace('"', "'").rstrip("}") + ",}"
    # valid JSON wrapped in chatter and a code fence (a lenient parser recovers it)
    return f"Sure! Here is the JSON you asked for:\n```json\n{content}\n``` (simulated)"


def broken_body(data: bytes) -> bytes:
    """A response body cut in half: still a well-formed HTTP response, but its JSON does not parse."""
    return data[: max(1, len(data) // 2)]

"""LLM simulator: a real HTTP server speaking enough of the OpenAI API for the official SDK.

It serves tests, load/fault benchmarks and the offline demo. Every response is labelled as
simulated: header ``X-Boostqa-Simulated: true``, ``system_fingerprint: "boostqa-simulator"``,
ids ``chatcmpl-sim-...``, models ``owned_by: "boostqa-simulator"``, plain-text content starts
with ``[simulated]``. Nothing here is a model: outputs are pseudo-random, derived from a sha256
of the canonical request body plus a server seed, so identical requests get identical content.

Endpoints: ``POST /v1/chat/completions`` (json_schema / json_object / text, ``n``, streaming,
``reasoning_content`` for "reasoner" models), ``POST /v1/embeddings`` (float or base64),
``GET /v1/models``, ``GET /health``, ``GET /stats`` (``POST /stats/reset``).

Faults (``SimConfig.faults`` rates, or forced per request with ``X-Sim-Fault: <kind>[:N]``, the
fault then applying to the first N attempts only): rate_limit (429 + Retry-After), server_error
(500), unavailable (503), timeout (the answer is held ``timeout_hold_s``), malformed (invalid
JSON content for JSON formats, else a broken body), truncated (content cut, finish_reason
"length"), bad_request (400). The fault draw depends on (request hash, attempt); the attempt is
how many times the server has already admitted that same request, so a retry can succeed.

The HTTP layer is a small asyncio HTTP/1.1 server (keep-alive, Content-Length or chunked
bodies): standard library only, no web framework.

    with SimulatorServer(SimConfig(faults={"server_error": 0.1})) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sim")
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hashlib
import hmac
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

log = logging.getLogger(__name__)

SIM_NAME = "boostqa-simulator"
SIM_HEADER = "X-Boostqa-Simulated"
FAULT_HEADER = "x-sim-fault"
FAULT_KINDS = ("rate_limit", "server_error", "unavailable", "timeout", "malformed", "truncated", "bad_request")
#: the kinds `--fault-rate` spreads over (bad_request stays off unless asked for)
DEFAULT_FAULT_KINDS = ("rate_limit", "server_error", "unavailable", "timeout", "malformed", "truncated")
DEFAULT_MODELS = ("sim-generator", "sim-refiner", "sim-annotator", "sim-probe", "sim-reasoner", "sim-embed")
# request keys that change the transport, not the answer
_TRANSPORT_KEYS = frozenset({"stream", "stream_options"})


class SimConfig(BaseModel):
    """Every knob of the simulator. Defaults: 127.0.0.1 on a free port, ~20 ms latency, no faults."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    seed: int = 0  # server seed, mixed into every request hash
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    strict_models: bool = False  # True: unknown models get 404 (default: any model is served)
    reasoning_markers: list[str] = Field(default_factory=lambda: ["reasoner"])  # model-name substrings
    text_prefix: str = "[simulated] "  # label at the start of plain-text content

    # latency, drawn per (request, attempt) and applied with asyncio.sleep
    latency: Literal["lognormal", "fixed", "none"] = "lognormal"
    latency_ms: float = Field(20.0, ge=0)  # median (lognormal) or the fixed value
    latency_sigma: float = Field(0.5, ge=0)  # sigma of log(latency)
    latency_max_ms: float = Field(2000.0, ge=0)  # cap on the drawn latency
    latency_per_token_ms: float = Field(0.0, ge=0)  # added per completion token

    # capacity: more than this many requests in flight -> 429 + Retry-After
    max_in_flight: int | None = Field(None, ge=1)
    retry_after_s: float = Field(1.0, ge=0)  # sent as Retry-After (ceil, seconds) and retry-after-ms

    # faults: kind -> rate in 0..1 (sum <= 1)
    faults: dict[str, float] = Field(default_factory=dict)
    timeout_hold_s: float = Field(30.0, ge=0)  # how long a `timeout` fault holds the answer
    attempt_source: Literal["counter", "header"] = "counter"  # header: X-Stainless-Retry-Count when sent

    api_key: SecretStr | None = None  # when set, `Authorization: Bearer <key>` is required
    embedding_dim: int = Field(384, ge=1, le=65536)
    max_n: int = Field(16, ge=1)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_tracked_requests: int = Field(1_000_000, ge=1000)  # attempt counters kept in memory

    @field_validator("faults")
    @classmethod
    def _check_faults(cls, v: dict[str, float]) -> dict[str, float]:
        for kind, rate in v.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; kinds: {', '.join(FAULT_KINDS)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for {kind} must be in 0..1, got {rate}")
        if sum(v.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {sum(v.values()):.3f} > 1")
        return v

    @model_validator(mode="after")
    def _check_models(self) -> SimConfig:
        if not self.models:
            raise ValueError("models must not be empty")
        return self

    @classmethod
    def with_fault_rate(cls, rate: float, kinds: Iterable[str] = DEFAULT_FAULT_KINDS, **kw: Any) -> SimConfig:
        """A config whose total fault rate `rate` is split evenly over `kinds`."""
        kinds = [k.strip() for k in kinds if k.strip()]
        faults = {k: rate / len(kinds) for k in kinds} if rate > 0 and kinds else {}
        faults.update(kw.pop("faults", None) or {})
        return cls(faults=faults, **kw)

    def public(self) -> dict[str, Any]:
        """The config without secrets (for /stats and logs)."""
        d = self.model_dump(exclude={"api_key"})
        d["auth"] = self.api_key is not None
        return d


# ------------------------------------------------------------------------------------------------
# deterministic content
# ------------------------------------------------------------------------------------------------

_WORDS = (
    "amber", "anchor", "apple", "arch", "atlas", "autumn", "basin", "beacon", "birch", "bridge", "brook",
    "canyon", "cedar", "channel", "circle", "cliff", "cloud", "coral", "crane", "crystal", "delta", "desert",
    "drift", "echo", "ember", "field", "fjord", "flint", "forest", "garden", "glacier", "granite", "grove",
    "harbor", "hollow", "horizon", "island", "ivory", "jade", "lagoon", "lantern", "ledger", "lemon", "marble",
    "meadow", "mirror", "orbit", "orchard", "pebble", "pepper", "pine", "prairie", "prism", "quarry", "quartz",
    "raven", "reef", "ridge", "river", "saddle", "sable", "signal", "silver", "slate", "spruce", "summit",
    "thistle", "timber", "tunnel", "valley", "velvet", "willow", "winter", "zephyr", "sample", "synthetic",
    "placeholder", "simulated", "token", "vector", "matrix", "number", "value", "method", "result", "answer",
)
_VERBS = ("moves", "holds", "shows", "keeps", "finds", "turns", "meets", "marks", "joins", "tests", "builds")
_QWORDS = ("What", "Which", "How", "Why", "Where", "When")
_MC_RE = re.compile(r"^[ \t]*(?:\(([A-Z])\)|([A-Z])[.):])[ \t]+\S", re.MULTILINE)
_CHOICE_FIELD = re.compile(r"question|prompt|query", re.IGNORECASE)


def _rng(*parts: Any) -> random.Random:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\x1f")
    return random.Random(int.from_bytes(h.digest()[:16], "big"))


def _sentence(rng: random.Random, lo: int = 4, hi: int = 9, end: str = ".") -> str:
    n = rng.randint(lo, hi)
    words = [rng.choice(_WORDS) for _ in range(n)]
    if n >= 3:
        words.insert(2, rng.choice(_VERBS))
    text = " ".join(words)
    return text[0].upper() + text[1:] + end


def _question(rng: random.Random) -> str:
    return f"{rng.choice(_QWORDS)} {_sentence(rng, 3, 7, '?').lower()}"


def _text(rng: random.Random, sentences: tuple[int, int] = (2, 3)) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(*sentences)))


def _answer(rng: random.Random, bare: bool) -> str:
    """A worked answer (or, bare, just the final answer) for fields named answer/final_answer: a
    quarter give no final answer at all; the rest usually agree on 7, so independent requests
    about one question give a deterministic mix of agreeing, disagreeing and undecidable pairs."""
    if rng.random() < 0.25:
        return "" if bare else _text(rng, (1, 2))
    value = "7" if rng.random() < 0.7 else str(rng.randint(0, 99))
    return value if bare else f"{_text(rng, (1, 2))} The answer is {value}."


def _msg_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def mc_letters(text: str) -> list[str]:
    """Option letters of a multiple-choice question (lines like `A. ..`, `(B) ..`, `C) ..`), else []."""
    seen: list[str] = []
    for m in _MC_RE.finditer(text):
        letter = m.group(1) or m.group(2)
        if letter not in seen:
            seen.append(letter)
    return seen if len(seen) >= 2 and "A" in seen else []


# ------------------------------------------------------------------------------------------------
# JSON Schema -> a value that validates
# ------------------------------------------------------------------------------------------------

_MAX_DEPTH = 8


class SchemaGen:
    """Generate a JSON value that validates against a JSON Schema (the subset pydantic emits)."""

    def __init__(self, root: dict[str, Any], rng: random.Random):
        self.root = root if isinstance(root, dict) else {}
        self.rng = rng

    def generate(self) -> Any:
        return self.gen(self.root, 0, "")

    # -- helpers -------------------------------------------------------------------------------
    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            ref = schema["$ref"]
            target: Any = self.root
            if not isinstance(ref, str) or not ref.startswith("#"):
                return {k: v for k, v in schema.items() if k != "$ref"}
            for part in [p for p in ref[1:].split("/") if p]:
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part, {}) if isinstance(target, dict) else {}
            siblings = {k: v for k, v in schema.items() if k not in ("$ref",)}
            schema = {**target, **siblings} if siblings else target
            seen += 1
        return schema if isinstance(schema, dict) else {}

    def merge_all_of(self, schema: dict[str, Any]) -> dict[str, Any]:
        parts = [self.resolve(p) for p in schema.get("allOf", []) if isinstance(p, dict)]
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for p in parts:
            p = self.merge_all_of(p) if "allOf" in p else p
            for k, v in p.items():
                if k == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **v}
                elif k == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *v]))
                elif k not in merged:
                    merged[k] = v
        return merged

    # -- generator -----------------------------------------------------------------------------
    def gen(self, schema: Any, depth: int, name: str) -> Any:
        rng = self.rng
        if schema is True or not isinstance(schema, dict):
            return _sentence(rng, 2, 4)
        schema = self.resolve(schema)
        if "allOf" in schema:
            schema = self.merge_all_of(schema)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if "enum" in schema and schema["enum"]:
            return copy.deepcopy(rng.choice(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema and schema[key]:
                opts = [self.resolve(o) if isinstance(o, dict) else o for o in schema[key]]
                rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf", "discriminator")}
                return self.gen({**rest, **self.pick(opts, depth)} if rest else self.pick(opts, depth), depth, name)
        typ = schema.get("type")
        if isinstance(typ, list):
            types = [t for t in typ if t != "null"]
            typ = "null" if not types or ("null" in typ and (depth >= _MAX_DEPTH or rng.random() < 0.2)) else (
                rng.choice(types))
        if typ is None:
            if "properties" in schema or "additionalProperties" in schema:
                typ = "object"
            elif "items" in schema or "prefixItems" in schema:
                typ = "array"
            else:
                typ = "string"
        if typ == "object":
            return self.gen_object(schema, depth)
        if typ == "array":
            return self.gen_array(schema, depth, name)
        if typ == "string":
            return self.gen_string(schema, name)
        if typ == "integer":
            return self.gen_number(schema, integer=True)
        if typ == "number":
            return self.gen_number(schema, integer=False)
        if typ == "boolean":
            return rng.random() < 0.5
        if typ == "null":
            return None
        return _sentence(rng, 2, 4)

    def pick(self, opts: list[Any], depth: int) -> Any:
        null = [o for o in opts if isinstance(o, dict) and o.get("type") == "null"]
        other = [o for o in opts if o not in null]
        if null and (not other or depth >= _MAX_DEPTH or self.rng.random() < 0.2):
            return null[0]
        if depth >= _MAX_DEPTH:  # prefer a leaf to end recursion
            leaves = [o for o in other if isinstance(o, dict) and o.get("type") not in ("object", "array")
                      and "$ref" not in o and "properties" not in o]
            if leaves:
                return leaves[0]
        return self.rng.choice(other)

    def gen_object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        rng = self.rng
        props: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        out: dict[str, Any] = {}
        optional = [k for k in props if k not in required]
        for k, sub in props.items():
            if k in required or (depth < _MAX_DEPTH and rng.random() < 0.6):
                out[k] = self.gen(sub, depth + 1, k)
        min_p = int(schema.get("minProperties", 0))
        for k in optional:
            if len(out) >= min_p:
                break
            if k not in out:
                out[k] = self.gen(props[k], depth + 1, k)
        addl = schema.get("additionalProperties")
        if not props and addl is not False:
            # a mapping (dict[str, X]): a few synthetic keys
            max_p = int(schema.get("maxProperties", max(min_p, 3)))
            lo = min(max(min_p, 0 if depth >= _MAX_DEPTH else 1), max_p)
            n = rng.randint(lo, max(lo, min(max_p, lo + 2)))
            key_schema = schema.get("propertyNames") if isinstance(schema.get("propertyNames"), dict) else {}
            for i in range(n * 4):
                if len(out) >= n:
                    break
                key = self.gen_string(key_schema, "key") if key_schema else f"{rng.choice(_WORDS)}_{i}"
                if isinstance(key, str) and key not in out:
                    out[key] = self.gen(addl if isinstance(addl, dict) else {}, depth + 1, key)
        return out

    def gen_array(self, schema: dict[str, Any], depth: int, name: str) -> list[Any]:
        rng = self.rng
        mn = int(schema.get("minItems", 0))
        mx = schema.get("maxItems")
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        if items is False or (isinstance(items, list)):  # closed tuple / draft-4 tuple
            prefix = prefix or (items if isinstance(items, list) else [])
            items = None if items is False or schema.get("additionalItems") is False else {}
        if mx is not None:
            mx = int(mx)
        elif items is None:
            mx = len(prefix)
        else:
            mx = max(mn, len(prefix)) + 3
        lo = mn
        if depth < 4:  # non-empty and tuple-complete near the top
            lo = max(lo, min(max(len(prefix), 1), mx))
        hi = max(lo, min(mx, lo + 2))
        target = rng.randint(lo, hi)
        unique = bool(schema.get("uniqueItems"))
        out: list[Any] = []
        seen: set[str] = set()
        tries = 0
        while len(out) < target and tries < target * 8 + 8:
            tries += 1
            idx = len(out)
            sub = prefix[idx] if idx < len(prefix) else items
            if sub is None:
                break
            value = self.gen(sub, depth + 1, name)
            if unique:
                key = json.dumps(value, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
            out.append(value)
        return out

    def gen_string(self, schema: dict[str, Any], name: str) -> str:
        rng = self.rng
        mn = int(schema.get("minLength", 0))
        mx = schema.get("maxLength")
        mx = int(mx) if mx is not None else None
        pattern = schema.get("pattern")
        fmt = schema.get("format")
        if isinstance(pattern, str):
            for _ in range(24):
                s = _regex_sample(pattern, rng)
                if s is not None and len(s) >= mn and (mx is None or len(s) <= mx) and _search(pattern, s):
                    return s
        if fmt:
            s = _format_sample(fmt, rng)
            if s is not None:
                return s
        if name in ("answer", "final_answer"):  # answers end in a final answer that often agrees
            s = _answer(rng, bare=name == "final_answer")
        elif _CHOICE_FIELD.search(name or ""):
            s = _question(rng)
        elif mx is not None and mx < 24:
            s = rng.choice(_WORDS)
        else:
            s = _sentence(rng, 3, 8)
        while len(s) < mn:
            s += " " + rng.choice(_WORDS)
        if mx is not None and len(s) > mx:
            cut = s.rfind(" ", 0, mx + 1)  # prefer a word boundary
            s = s[:cut] if cut >= max(mn, 1) else s[:mx]
        return s

    def gen_number(self, schema: dict[str, Any], integer: bool) -> int | float:
        rng = self.rng
        lo, hi = schema.get("minimum"), schema.get("maximum")
        xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if xlo is True:  # draft 4 booleans
            xlo, lo = lo, None
        if xhi is True:
            xhi, hi = hi, None
        xlo = None if isinstance(xlo, bool) else xlo
        xhi = None if isinstance(xhi, bool) else xhi
        mult = schema.get("multipleOf")
        if integer:
            a = max([v for v in (math.ceil(lo) if lo is not None else None,
                                 math.floor(xlo) + 1 if xlo is not None else None) if v is not None], default=None)
            b = min([v for v in (math.floor(hi) if hi is not None else None,
                                 math.ceil(xhi) - 1 if xhi is not None else None) if v is not None], default=None)
            a, b = _default_range(a, b, 100)
            if mult and mult > 0:
                k_lo, k_hi = math.ceil(a / mult), math.floor(b / mult)
                if k_lo <= k_hi:
                    return int(rng.randint(k_lo, k_hi) * mult)
            return rng.randint(a, max(a, b))
        a = max([v for v in (lo, xlo) if v is not None], default=None)
        b = min([v for v in (hi, xhi) if v is not None], default=None)
        a, b = _default_range(a, b, 100.0)
        if mult and mult > 0:
            k_lo, k_hi = math.ceil(a / mult), math.floor(b / mult)
            if k_lo <= k_hi:
                v = rng.randint(k_lo, k_hi) * mult
                if (xlo is None or v > xlo) and (xhi is None or v < xhi):
                    return float(v)
        for _ in range(8):
            v = round(a + (b - a) * rng.random(), 3)
            if a <= v <= b and (xlo is None or v > xlo) and (xhi is None or v < xhi):
                return v
        return (a + b) / 2


def _default_range(a: Any, b: Any, span: Any) -> tuple[Any, Any]:
    if a is None and b is None:
        return 0 * span, span
    if a is None:
        return (b - span if b >= 0 else b - span), b
    if b is None:
        return a, a + span
    return a, b


def _search(pattern: str, s: str) -> bool:
    try:
        return re.search(pattern, s) is not None
    except re.error:
        return False


def _format_sample(fmt: str, rng: random.Random) -> str | None:
    y, mo, d = rng.randint(2000, 2030), rng.randint(1, 12), rng.randint(1, 28)
    hh, mm, ss = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    if fmt == "date-time":
        return f"{y:04d}-{mo:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}Z"
    if fmt == "date":
        return f"{y:04d}-{mo:02d}-{d:02d}"
    if fmt == "time":
        return f"{hh:02d}:{mm:02d}:{ss:02d}Z"
    if fmt == "email":
        return f"sim.{rng.choice(_WORDS)}{rng.randint(1, 999)}@example.com"
    if fmt in ("uri", "url", "iri", "uri-reference"):
        return f"https://example.com/sim/{rng.choice(_WORDS)}/{rng.randint(1, 9999)}"
    if fmt == "uuid":
        b = bytearray(rng.getrandbits(8) for _ in range(16))
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        h = b.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if fmt == "ipv4":
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    if fmt == "duration":
        return f"PT{rng.randint(1, 59)}M"
    return None


_SAFE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-."


def _regex_sample(pattern: str, rng: random.Random) -> str | None:
    """A string matching a simple regex (literals, classes, repeats, groups, alternation), or None."""
    try:
        from re import _parser as sre  # Python 3.11+
    except ImportError:  # pragma: no cover
        import sre_parse as sre  # type: ignore[no-redef]
    try:
        tree = sre.parse(pattern)
    except Exception:
        return None
    groups: dict[int, str] = {}

    def cls_chars(items: list[Any]) -> list[str]:
        negate = False
        chars: set[str] = set()
        for op, av in items:
            n = op.name
            if n == "NEGATE":
                negate = True
            elif n == "LITERAL":
                chars.add(chr(av))
            elif n == "RANGE":
                lo, hi = av
                chars.update(chr(c) for c in range(lo, min(hi, lo + 256) + 1))
            elif n == "CATEGORY":
                chars.update(cat_chars(av.name))
        if negate:
            return [c for c in _SAFE_CHARS if c not in chars]
        return sorted(chars)

    def cat_chars(cat: str) -> str:
        return {"CATEGORY_DIGIT": "0123456789", "CATEGORY_NOT_DIGIT": "abcxyz", "CATEGORY_SPACE": " ",
                "CATEGORY_NOT_SPACE": "abcxyz019", "CATEGORY_WORD": "abcdefghijklmnopqrstuvwxyz0123456789_",
                "CATEGORY_NOT_WORD": " -."}.get(cat, "a")

    def emit(seq: Any) -> str:
        out = []
        for op, av in seq:
            n = op.name
            if n == "LITERAL":
                out.append(chr(av))
            elif n == "NOT_LITERAL":
                out.append(next(c for c in _SAFE_CHARS if ord(c) != av))
            elif n == "ANY":
                out.append(rng.choice("abcdefghijklmnopqrstuvwxyz"))
            elif n == "IN":
                chars = cls_chars(av)
                if not chars:
                    raise ValueError("empty class")
                out.append(rng.choice(chars))
            elif n in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                lo, hi, sub = av
                hi = lo + 3 if hi > 10_000 else hi
                for _ in range(rng.randint(lo, max(lo, min(hi, lo + 3)))):
                    out.append(emit(sub))
            elif n == "SUBPATTERN":
                gid, sub = av[0], av[-1]
                s = emit(sub)
                if gid is not None:
                    groups[gid] = s
                out.append(s)
            elif n == "ATOMIC_GROUP":
                out.append(emit(av))
            elif n == "BRANCH":
                out.append(emit(rng.choice(av[1])))
            elif n == "GROUPREF":
                out.append(groups.get(av, ""))
            elif n in ("AT", "ASSERT", "ASSERT_NOT"):
                continue
            else:
                raise ValueError(f"unsupported regex op {n}")
        return "".join(out)

    try:
        return emit(tree)
    except (ValueError, StopIteration, RecursionError):
        return None


# ------------------------------------------------------------------------------------------------
# request handling
# ------------------------------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class _Resp:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _error(status: int, message: str, etype: str, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> _Resp:
    body = {"error": {"message": f"{message} (boostqa LLM simulator)", "type": etype, "param": param, "code": code}}
    return _Resp(status, _json_bytes(body), headers or {})


class _BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.time()
        self.requests = 0
        self.by_endpoint: dict[str, int] = {}
        self.by_status: dict[str, int] = {}
        self.by_model: dict[str, int] = {}
        self.max_in_flight_seen = 0
        self.capacity_rejections = 0
        self.auth_failures = 0
        self.retries_seen = 0
        self.faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.embedding_inputs = 0
        self.choices = 0


class _Sim:
    """The request logic (runs on the server's event loop; not thread-safe by itself)."""

    def __init__(self, config: SimConfig):
        self.cfg = config
        self.stats = _Stats()
        self.in_flight = 0
        self.attempts: dict[bytes, int] = {}
        self.seed_bytes = f"boostqa-sim:{config.seed}:".encode()
        self.fault_table: list[tuple[float, str]] = []
        acc = 0.0
        for kind in FAULT_KINDS:
            rate = config.faults.get(kind, 0.0)
            if rate > 0:
                acc += rate
                self.fault_table.append((acc, kind))
        key = config.api_key.get_secret_value() if config.api_key is not None else None
        self._auth = f"Bearer {key}".encode() if key else None

    # -- shared ----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "simulator": SIM_NAME,
            "uptime_s": round(time.time() - s.started, 3),
            "requests": s.requests,
            "requests_by_endpoint": dict(s.by_endpoint),
            "responses_by_status": dict(s.by_status),
            "requests_by_model": dict(s.by_model),
            "in_flight": self.in_flight,
            "max_in_flight_seen": s.max_in_flight_seen,
            "capacity_rejections": s.capacity_rejections,
            "auth_failures": s.auth_failures,
            "retries_seen": s.retries_seen,
            "faults": dict(s.faults),
            "faults_total": sum(s.faults.values()),
            "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens,
                       "total": s.prompt_tokens + s.completion_tokens},
            "choices": s.choices,
            "embedding_inputs": s.embedding_inputs,
            "unique_requests": len(self.attempts),
            "config": self.cfg.public(),
        }

    def request_hash(self, kind: str, body: dict[str, Any]) -> bytes:
        canon = {k: v for k, v in body.items() if k not in _TRANSPORT_KEYS}
        data = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
        return hashlib.sha256(self.seed_bytes + kind.encode() + b"\x1f" + data).digest()

    def next_attempt(self, h: bytes, headers: dict[str, str]) -> int:
        seen = self.attempts.get(h, 0)
        if len(self.attempts) >= self.cfg.max_tracked_requests and h not in self.attempts:
            for old in list(self.attempts)[: len(self.attempts) // 2]:  # forget the oldest half
                del self.attempts[old]
        self.attempts[h] = seen + 1
        if self.cfg.attempt_source == "header":
            try:
                return int(headers["x-stainless-retry-count"])
            except (KeyError, ValueError):
                pass
        return seen

    def choose_fault(self, h: bytes, attempt: int, headers: dict[str, str]) -> str | None:
        forced = headers.get(FAULT_HEADER)
        if forced:
            kind, _, n = forced.strip().partition(":")
            kind = kind.strip().lower()
            if kind in ("none", "off", ""):
                return None
            if kind not in FAULT_KINDS:
                raise _BadRequest(f"unknown X-Sim-Fault kind {kind!r}; kinds: {', '.join(FAULT_KINDS)}")
            try:
                limit = int(n) if n.strip() else None
            except ValueError:
                raise _BadRequest(f"bad X-Sim-Fault attempt count {n!r}") from None
            return kind if limit is None or attempt < limit else None
        if not self.fault_table:
            return None
        u = _rng(h, attempt, "fault").random()
        for acc, kind in self.fault_table:
            if u < acc:
                return kind
        return None

    def latency_s(self, h: bytes, attempt: int, completion_tokens: int = 0) -> float:
        cfg = self.cfg
        if cfg.latency == "none":
            ms = 0.0
        elif cfg.latency == "fixed":
            ms = cfg.latency_ms
        else:
            ms = cfg.latency_ms * math.exp(cfg.latency_sigma * _rng(h, attempt, "latency").gauss(0.0, 1.0))
        ms = min(ms, cfg.latency_max_ms) + cfg.latency_per_token_ms * completion_tokens
        return ms / 1000.0

    def retry_after_headers(self) -> dict[str, str]:
        s = self.cfg.retry_after_s
        return {"Retry-After": str(max(1, math.ceil(s)) if s > 0 else 0), "retry-after-ms": str(int(s * 1000))}

    def check_auth(self, headers: dict[str, str]) -> _Resp | None:
        if self._auth is None:
            return None
        got = headers.get("authorization", "").encode()
        if hmac.compare_digest(got, self._auth):
            return None
        self.stats.auth_failures += 1
        return _error(401, "Incorrect API key provided" if got else "Missing API key (Authorization: Bearer)",
                      "invalid_request_error", "invalid_api_key")

    # -- dispatch --------------------------------------------------------------------------------
    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Resp:
        path = path.split("?", 1)[0].rstrip("/") or "/"
        if path.startswith("/v1/"):
            route = path[3:]
        else:
            route = path
        st = self.stats
        st.by_endpoint[route] = st.by_endpoint.get(route, 0) + 1
        if route == "/health":
            return _Resp(200, _json_bytes({"status": "ok", "simulator": SIM_NAME, "in_flight": self.in_flight}))
        if route == "/stats":
            if method == "POST":
                self.stats.reset()
            return _Resp(200, _json_bytes(self.snapshot()))
        if route == "/stats/reset" and method == "POST":
            self.stats.reset()
            return _Resp(200, _json_bytes(self.snapshot()))
        st.requests += 1
        try:
            resp = await self.api_route(method, path, route, headers, body)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in the simulator: answer 500, keep serving
            log.exception("simulator error")
            resp = _error(500, f"simulator internal error: {type(e).__name__}", "server_error")
        key = str(resp.status)
        st.by_status[key] = st.by_status.get(key, 0) + 1
        return resp

    async def api_route(self, method: str, path: str, route: str, headers: dict[str, str], body: bytes) -> _Resp:
        denied = self.check_auth(headers)
        if denied is not None:
            return denied
        if route == "/models" and method == "GET":
            return _Resp(200, _json_bytes({"object": "list", "data": [self.model_obj(m) for m in self.cfg.models]}))
        if route.startswith("/models/") and method == "GET":
            mid = route[len("/models/"):]
            if mid in self.cfg.models or not self.cfg.strict_models:
                return _Resp(200, _json_bytes(self.model_obj(mid)))
            return self.not_found_model(mid)
        if route in ("/chat/completions", "/embeddings"):
            if method != "POST":
                return _error(405, f"{method} not allowed on {path}", "invalid_request_error")
            return await self.api_call(route, headers, body)
        return _error(404, f"Unknown endpoint {method} {path}", "invalid_request_error", "unknown_url")

    def model_obj(self, mid: str) -> dict[str, Any]:
        return {"id": mid, "object": "model", "created": 1700000000, "owned_by": SIM_NAME}

    def not_found_model(self, model: str) -> _Resp:
        return _error(404, f"The model `{model}` does not exist (served: {', '.join(self.cfg.models)})",
                      "invalid_request_error", "model_not_found", "model")

    async def api_call(self, route: str, headers: dict[str, str], raw: bytes) -> _Resp:
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise _BadRequest("request body must be a JSON object")
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise _BadRequest("you must provide a model parameter", "model")
            if route == "/chat/completions":
                msgs = body.get("messages")
                if not isinstance(msgs, list) or not msgs:
                    raise _BadRequest("messages must be a non-empty list", "messages")
            elif "input" not in body:
                raise _BadRequest("input is required", "input")
        except (ValueError, UnicodeDecodeError) as e:
            param = e.param if isinstance(e, _BadRequest) else None
            return _error(400, f"Invalid request: {e}", "invalid_request_error", None, param)
        if self.cfg.strict_models and model not in self.cfg.models:
            return self.not_found_model(model)
        cap = self.cfg.max_in_flight
        if cap is not None and self.in_flight >= cap:
            self.stats.capacity_rejections += 1
            return _error(429, f"Too many requests in flight (max_in_flight={cap}); retry later",
                          "rate_limit_exceeded", "rate_limit_exceeded", headers=self.retry_after_headers())
        self.in_flight += 1
        st = self.stats
        st.max_in_flight_seen = max(st.max_in_flight_seen, self.in_flight)
        try:
            st.by_model[model] = st.by_model.get(model, 0) + 1
            h = self.request_hash(route, body)
            attempt = self.next_attempt(h, headers)
            if attempt > 0:
                st.retries_seen += 1
            try:
                fault = self.choose_fault(h, attempt, headers)
            except _BadRequest as e:
                return _error(400, str(e), "invalid_request_error")
            if fault == "truncated" and route == "/embeddings":
                fault = None  # nothing to cut in an embedding
            if fault:
                st.faults[fault] += 1
            rid = {"x-request-id": f"req-sim-{h.hex()[:20]}-{attempt}"}
            if fault == "rate_limit":
                return _error(429, "Rate limit reached (simulated fault)", "rate_limit_exceeded",
                              "rate_limit_exceeded", headers={**rid, **self.retry_after_headers()})
            if fault == "bad_request":
                return _error(400, "Invalid request (simulated fault)", "invalid_request_error", headers=rid)
            if fault == "timeout":
                await asyncio.sleep(self.cfg.timeout_hold_s)
            try:
                if route == "/chat/completions":
                    resp, counts = self.chat(body, h, attempt, fault)
                else:
                    resp, counts = self.embeddings(body, h, fault)
            except _BadRequest as e:
                return _error(400, str(e), "invalid_request_error", None, e.param, headers=rid)
            delay = self.latency_s(h, attempt, counts[1])
            if delay > 0:
                await asyncio.sleep(delay)
            if fault == "server_error":
                return _error(500, "The server had an error while processing your request (simulated fault)",
                              "server_error", headers=rid)
            if fault == "unavailable":
                return _error(503, "The server is overloaded or not ready yet (simulated fault)",
                              "service_unavailable", headers={**rid, **self.retry_after_headers()})
            # usage counters: answered requests only (prompt, completion, choices, embedding inputs)
            st.prompt_tokens += counts[0]
            st.completion_tokens += counts[1]
            st.choices += counts[2]
            st.embedding_inputs += counts[3]
            resp.headers.update(rid)
            resp.headers["openai-processing-ms"] = str(int(delay * 1000))
            return resp
        finally:
            self.in_flight -= 1

    # -- chat ------------------------------------------------------------------------------------
    def chat(self, body: dict[str, Any], h: bytes, attempt: int, fault: str | None) -> tuple[_Resp, tuple]:
        cfg = self.cfg
        model = body["model"]
        messages = body["messages"]
        n = body.get("n") or 1
        if not isinstance(n, int) or n < 1 or n > cfg.max_n:
            raise _BadRequest(f"n must be an integer in 1..{cfg.max_n}", "n")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise _BadRequest("max_tokens must be a positive integer", "max_tokens")
        rf = body.get("response_format") or {}
        if not isinstance(rf, dict):
            raise _BadRequest("response_format must be an object", "response_format")
        rf_type = rf.get("type", "text")
        schema = None
        if isinstance(body.get("guided_json"), dict):  # vLLM extension
            rf_type, schema = "json_schema", body["guided_json"]
        elif rf_type == "json_schema":
            js = rf.get("json_schema") or {}
            schema = js.get("schema") if isinstance(js, dict) else None
            schema = schema if isinstance(schema, dict) else {"type": "object"}
        elif rf_type not in ("text", "json_object"):
            raise _BadRequest(f"unsupported response_format type {rf_type!r}", "response_format.type")

        prompt_text = "".join(f"{m.get('role', '')}: {_msg_text(m.get('content'))}\n" for m in messages
                              if isinstance(m, dict))
        prompt_tokens = _tokens(prompt_text)
        last_user = next((_msg_text(m.get("content")) for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        letters = mc_letters(last_user)
        reasoner = any(mk in model for mk in cfg.reasoning_markers)

        choices = []
        completion_tokens = reasoning_tokens = 0
        for i in range(n):
            rng = _rng(h, "choice", i)
            if rf_type == "json_schema":
                content = json.dumps(SchemaGen(schema or {}, rng).generate(), ensure_ascii=False)
            elif rf_type == "json_object":
                ans = f"({rng.choice(letters)})" if letters else str(rng.randint(0, 999))
                content = json.dumps({"answer": ans, "explanation": _text(rng, (1, 2)), "simulator": SIM_NAME})
            else:
                ending = (f"The answer is ({rng.choice(letters)})." if letters
                          else f"The answer is {rng.randint(0, 999)}.")
                content = f"{cfg.text_prefix}{_text(rng)} {ending}"
            finish = "stop"
            if fault == "malformed" and rf_type != "text":
                content = _break_json(content, rng)
            if fault == "truncated":
                cut = max(1, int(len(content) * (0.3 + 0.4 * rng.random())))
                content, finish = content[:cut], "length"
            if max_tokens is not None and _tokens(content) > max_tokens:
                content, finish = content[: max_tokens * 4], "length"
            msg: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            ctoks = _tokens(content)
            if reasoner:
                reasoning = "[simulated reasoning] " + _text(rng, (2, 4))
                msg["reasoning_content"] = reasoning
                rt = _tokens(reasoning)
                reasoning_tokens += rt
                ctoks += rt
            completion_tokens += ctoks
            choices.append({"index": i, "message": msg, "logprobs": None, "finish_reason": finish})

        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}
        if reasoner:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        counts = (prompt_tokens, completion_tokens, n, 0)
        obj = {
            "id": f"chatcmpl-sim-{h.hex()[:24]}-{attempt}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SIM_NAME,
            "choices": choices,
            "usage": usage,
        }
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return _Resp(200, _sse(obj, include_usage), content_type="text/event-stream"), counts
        data = _json_bytes(obj)
        if fault == "malformed" and rf_type == "text":
            data = data[: max(1, len(data) // 2)]  # a broken body
        return _Resp(200, data), counts

    # -- embeddings ------------------------------------------------------------------------------
    def embeddings(self, body: dict[str, Any], h: bytes, fault: str | None) -> tuple[_Resp, tuple]:
        model = body["model"]
        inp = body["input"]
        if isinstance(inp, str) or (isinstance(inp, list) and inp and isinstance(inp[0], int)):
            inputs: list[Any] = [inp]
        elif isinstance(inp, list) and inp:
            inputs = inp
        else:
            raise _BadRequest("input must be a string, a list of strings or token arrays", "input")
        dim = body.get("dimensions") or self.cfg.embedding_dim
        if not isinstance(dim, int) or not 1 <= dim <= 65536:
            raise _BadRequest("dimensions must be an integer in 1..65536", "dimensions")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise _BadRequest("encoding_format must be 'float' or 'base64'", "encoding_format")
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                tokens += _tokens(item)
            elif isinstance(item, list):
                tokens += len(item)
            else:
                raise _BadRequest("input items must be strings or token arrays", "input")
            vec = embedding_vector(item, model, dim, self.cfg.seed)
            emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        obj = {"object": "list", "data": data, "model": model, "system_fingerprint": SIM_NAME,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        raw = _json_bytes(obj)
        if fault == "malformed":
            raw = raw[: max(1, len(raw) // 2)]
        return _Resp(200, raw), (tokens, 0, 0, len(inputs))


def embedding_vector(item: Any, model: str, dim: int, seed: int = 0):
    """The simulator's deterministic unit vector (float32 numpy array) for one input."""
    import numpy as np

    key = item if isinstance(item, str) else json.dumps(item)
    digest = hashlib.sha256(f"boostqa-sim-embed:{seed}:{model}:{dim}\x1f".encode() + key.encode()).digest()
    v = np.random.default_rng(int.from_bytes(digest[:16], "big")).standard_normal(dim)
    v /= np.linalg.norm(v) or 1.0
    return v.astype(np.float32)


def _break_json(content: str, rng: random.Random) -> str:
    """Make JSON content invalid in one of a few realistic ways."""
    variant = rng.randrange(3)
    if variant == 0:  # cut mid-way
        return content[: max(1, len(content) // 2)]
    if variant == 1:  # a python-ish repr with single quotes and a trailing comma
        return content.replace('"', "'").rstrip("}") + ",}"
    return f"Sure! Here is the JSON you asked for:\n```json\n{content}\n``` (simulated)"


def _sse(obj: dict[str, Any], include_usage: bool) -> bytes:
    base = {k: obj[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    events = []
    for ch in obj["choices"]:
        i, msg = ch["index"], ch["message"]
        events.append({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]})
        if msg.get("reasoning_content"):
            events.append({**base, "choices": [{"index": i, "delta": {"reasoning_content": msg["reasoning_content"]},
                                                "finish_reason": None}]})
        text = msg["content"] or ""
        for j in range(0, len(text), 32):
            events.append({**base, "choices": [{"index": i, "delta": {"content": text[j:j + 32]},
                                                "finish_reason": None}]})
        events.append({**base, "choices": [{"index": i, "delta": {}, "finish_reason": ch["finish_reason"]}]})
    if include_usage:
        events.append({**base, "choices": [], "usage": obj["usage"]})
    out = b"".join(b"data: " + _json_bytes(e) + b"\n\n" for e in events)
    return out + b"data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------------
# HTTP/1.1 over asyncio streams
# ------------------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        max_body: int) -> tuple[str, str, str, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise _HttpError(400, "bad request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _HttpError(400, "bad header line")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                break
            total += size
            if total > max_body:
                raise _HttpError(413, "request body too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        length = int(headers.get("content-length", "0") or 0)
        if length > max_body:
            raise _HttpError(413, "request body too large")
        if length:
            body = await reader.readexactly(length)
    return method.upper(), target, version, headers, body


def _encode_response(resp: _Resp, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}",
            f"Content-Type: {resp.content_type}" + ("; charset=utf-8" if "json" in resp.content_type else ""),
            f"Content-Length: {len(resp.body)}",
            f"{SIM_HEADER}: true",
            f"Server: {SIM_NAME}",
            "Connection: keep-alive" if keep_alive else "Connection: close"]
    head.extend(f"{k}: {v}" for k, v in resp.headers.items())
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body


class _HttpServer:
    def __init__(self, config: SimConfig):
        self.cfg = config
        self.sim = _Sim(config)
        self.server: asyncio.base_events.Server | None = None
        self.conns: set[asyncio.Task] = set()
        self.port: int | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle_conn, self.cfg.host, self.cfg.port,
                                                 backlog=4096, limit=256 * 1024, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.conns):
            t.cancel()
        if self.conns:
            await asyncio.gather(*self.conns, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def handle_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.conns.add(task)
        try:
            while True:
                try:
                    method, target, version, headers, body = await _read_request(reader, writer,
                                                                                self.cfg.max_body_bytes)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                except (asyncio.LimitOverrunError, ValueError) as e:
                    status = 431 if isinstance(e, asyncio.LimitOverrunError) else 400
                    writer.write(_encode_response(_error(status, "malformed HTTP request", "invalid_request_error"),
                                                  False))
                    break
                except _HttpError as e:
                    writer.write(_encode_response(_error(e.status, str(e), "invalid_request_error"), False))
                    break
                conn = headers.get("connection", "").lower()
                keep_alive = "close" not in conn and (version != "HTTP/1.0" or "keep-alive" in conn)
                resp = await self.sim.handle(method, target, headers, body)
                if writer.is_closing():
                    break
                writer.write(_encode_response(resp, keep_alive))
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self.conns.discard(task)
            try:
                writer.close()
            except Exception:
                pass


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------


class SimulatorServer:
    """The simulator on a background thread with its own event loop.

    ``start()`` binds (port 0 = a free port) and returns once it accepts connections;
    ``base_url`` is ``http://host:port/v1``; ``stats()`` returns the /stats counters; ``stop()``
    closes everything. Also a context manager.
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any):
        if config is None:
            config = SimConfig(**overrides)
        elif overrides:
            config = config.model_copy(update=overrides)
            config = SimConfig.model_validate(config.model_dump())
        self.config = config
        self._http: _HttpServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> SimulatorServer:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="boostqa-llm-sim", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError(f"LLM simulator failed to start: {self._error}") from self._error
        if not self._ready.is_set():
            raise RuntimeError("LLM simulator did not start within 30 s")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._http = _HttpServer(self.config)
        await self._http.start()
        self._ready.set()
        await self._stopped.wait()
        await self._http.close()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:
                pass
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- info ------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._http is None or self._http.port is None:
            raise RuntimeError("simulator not started")
        return self._http.port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _call(self, fn):
        if self._loop is None or self._http is None or self._thread is None:
            raise RuntimeError("simulator not started")

        async def run():
            return fn(self._http.sim)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stats(self) -> dict[str, Any]:
        """The /stats counters (requests, in-flight, max in-flight seen, faults by kind, tokens, ...)."""
        return self._call(lambda sim: sim.snapshot())

    def reset_stats(self) -> None:
        self._call(lambda sim: sim.stats.reset())


def serve(config: SimConfig | None = None, *, announce=print) -> None:
    """Run the simulator in the foreground until interrupted (Ctrl-C / SIGTERM)."""
    import signal

    config = config or SimConfig()

    async def main() -> None:
        http = _HttpServer(config)
        await http.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        if announce:
            faults = ", ".join(f"{k}={v:g}" for k, v in config.faults.items()) or "none"
            lat = "none" if config.latency == "none" else (
                f"{config.latency} median {config.latency_ms:g} ms" + (
                    f" sigma {config.latency_sigma:g}" if config.latency == "lognormal" else ""))
            announce(f"boostqa LLM SIMULATOR (not a real model) on http://{config.host}:{http.port}/v1  "
                     f"models: {', '.join(config.models)}; latency: {lat}; faults: {faults}; "
                     f"max_in_flight: {config.max_in_flight or 'unlimited'}; "
                     f"auth: {'required' if config.api_key else 'none'}")
        try:
            await stop.wait()
        finally:
            await http.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def config_from_args(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    latency_ms: float = 20.0,
    latency_sigma: float = 0.5,
    latency: str = "lognormal",
    fault_rate: float = 0.0,
    fault_kinds: str | Iterable[str] | None = None,
    faults: dict[str, float] | str | None = None,
    max_in_flight: int | None = None,
    retry_after_s: float = 1.0,
    timeout_hold_s: float = 30.0,
    api_key: str | None = None,
    seed: int = 0,
    models: str | Iterable[str] | None = None,
    embedding_dim: int = 384,
    **extra: Any,
) -> SimConfig:
    """A SimConfig from CLI-style arguments.

    `fault_rate` is split evenly over `fault_kinds` (comma list; default all but bad_request);
    `faults` adds explicit rates (a dict or "kind=rate,kind=rate"); `models` is a comma list.
    """
    if isinstance(fault_kinds, str):
        fault_kinds = fault_kinds.split(",")
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if isinstance(faults, str):
        parsed: dict[str, float] = {}
        for part in faults.split(","):
            if part.strip():
                k, _, v = part.partition("=")
                parsed[k.strip()] = float(v)
        faults = parsed
    kw: dict[str, Any] = dict(host=host, port=port, latency_ms=latency_ms, latency_sigma=latency_sigma,
                              latency=latency, max_in_flight=max_in_flight, retry_after_s=retry_after_s,
                              timeout_hold_s=timeout_hold_s, api_key=api_key or None, seed=seed,
                              embedding_dim=embedding_dim, faults=faults or {}, **extra)
    if models:
        kw["models"] = list(models)
    return SimConfig.with_fault_rate(fault_rate, fault_kinds or DEFAULT_FAULT_KINDS, **kw)


def main_from_args(**kwargs: Any) -> None:
    """Blocking entry point for `boostqa llm-sim` (see `config_from_args` for the arguments)."""
    serve(config_from_args(**kwargs))


def _cli(argv: list[str] | None = None) -> None:
    import os

    p = argparse.ArgumentParser(prog="python -m boostqa.llm.simulator",
                                description="boostqa LLM simulator (OpenAI-compatible, deterministic, fake)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency", choices=["lognormal", "fixed", "none"], default="lognormal")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--latency-sigma", type=float, default=0.5)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-kinds", default=",".join(DEFAULT_FAULT_KINDS))
    p.add_argument("--faults", default=None, help="explicit rates: kind=rate,kind=rate")
    p.add_argument("--max-in-flight", type=int, default=None)
    p.add_argument("--retry-after-s", type=float, default=1.0)
    p.add_argument("--timeout-hold-s", type=float, default=30.0)
    p.add_argument("--api-key-env", default=None, help="name of an env var holding the required API key")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default=None, help="comma list")
    p.add_argument("--embedding-dim", type=int, default=384)
    a = vars(p.parse_args(argv))
    env = a.pop("api_key_env")
    a["api_key"] = os.environ.get(env) if env else None
    main_from_args(**a)


__all__ = ["SimConfig", "SimulatorServer", "SchemaGen", "serve", "config_from_args", "main_from_args",
           "embedding_vector", "mc_letters", "FAULT_KINDS", "DEFAULT_FAULT_KINDS", "SIM_NAME", "SIM_HEADER"]

if __name__ == "__main__":
    _cli()

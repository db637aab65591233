"""Deterministic content: a value for a JSON schema, or plain text.

Nothing here is a model. Every draw comes from a `random.Random` seeded by a sha256 of the request
(see `rng`), so the same request always gets the same content. Field semantics the pipeline
relies on: strings named ``answer`` / ``final_answer`` end in a final answer that is usually 7
(so independent answers to one question agree, disagree or say nothing in a fixed mix); strings
named like ``question`` / ``prompt`` are questions; strings in ``knowledge_points`` are KP names
from a small recurring vocabulary (``KP_NAMES``); text answers to a multiple-choice prompt
name one of its option letters.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import re
from typing import Any

SIM_NAME = "boostqa-simulator"
TEXT_PREFIX = "[simulated] "  # the label at the start of plain-text content

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
# knowledge-point names (LinkQA's kp_extract: a string in an array named "knowledge_points"): a
# small vocabulary drawn Zipf-like (weight 1/rank), so KPs recur across seeds and a few are popular,
# as real ones do; free sentences would make every KP unique and the KP graph a set of cliques
KP_NAMES = (
    "unit conversion", "proportional reasoning", "definitions", "linear equation", "probability",
    "conservation of energy", "cause and effect", "graph interpretation", "ratio", "classification",
    "chronology", "estimation", "percentages", "evidence evaluation", "derivative", "modular arithmetic",
    "rate of change", "symmetry", "counting principle", "primary sources", "equilibrium", "algebraic identity",
    "vectors", "inequality", "recursion", "statistics", "logical inference", "exponential growth",
    "scientific notation", "geometry of triangles", "feedback loop", "comparative analysis",
)
_KP_WEIGHTS = tuple(1.0 / (i + 1) for i in range(len(KP_NAMES)))
_VERBS = ("moves", "holds", "shows", "keeps", "finds", "turns", "meets", "marks", "joins", "tests", "builds")
_QWORDS = ("What", "Which", "How", "Why", "Where", "When")
_MC_RE = re.compile(r"^[ \t]*(?:\(([A-Z])\)|([A-Z])[.):])[ \t]+\S", re.MULTILINE)
_QUESTION_FIELD = re.compile(r"question|prompt|query", re.IGNORECASE)
_MAX_DEPTH = 8


def rng(*parts: Any) -> random.Random:
    """A generator seeded by the sha256 of `parts` (bytes as they are, anything else as str)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\x1f")
    return random.Random(int.from_bytes(h.digest()[:16], "big"))


def sentence(r: random.Random, lo: int = 4, hi: int = 9, end: str = ".") -> str:
    n = r.randint(lo, hi)
    words = [r.choice(_WORDS) for _ in range(n)]
    if n >= 3:
        words.insert(2, r.choice(_VERBS))
    text = " ".join(words)
    return text[0].upper() + text[1:] + end


def text(r: random.Random, sentences: tuple[int, int] = (2, 3)) -> str:
    return " ".join(sentence(r) for _ in range(r.randint(*sentences)))


def _answer(r: random.Random, bare: bool) -> str:
    """A worked answer (or, bare, just the final answer): a quarter give no final answer at all;
    the rest usually agree on 7, so independent requests about one question give a deterministic
    mix of agreeing, disagreeing and undecidable pairs."""
    if r.random() < 0.25:
        return "" if bare else text(r, (1, 2))
    value = "7" if r.random() < 0.7 else str(r.randint(0, 99))
    return value if bare else f"{text(r, (1, 2))} The answer is {value}."


def tokens(s: str) -> int:
    """The simulator's token count: a token per 4 characters."""
    return max(1, math.ceil(len(s) / 4)) if s else 0


def mc_letters(s: str) -> list[str]:
    """Option letters of a multiple-choice question (lines like `A. ..`, `(B) ..`, `C) ..`), else []."""
    seen: list[str] = []
    for m in _MC_RE.finditer(s):
        letter = m.group(1) or m.group(2)
        if letter not in seen:
            seen.append(letter)
    return seen if len(seen) >= 2 and "A" in seen else []


def completion(rf_type: str, schema: dict | None, r: random.Random, letters: list[str]) -> str:
    """The answer content for a response format. With a schema (json_schema, or the JSON example
    a json_object / text prompt carries, see `example_schema`): a schema-valid object, bare in the
    JSON modes and inside chatter and a code fence in text mode. Without: a small JSON object, or
    text ending in "The answer is ..." (an offered option letter for multiple choice, else a number)."""
    if schema is not None:
        obj = json.dumps(SchemaGen(schema, r).generate(), ensure_ascii=False)
        return obj if rf_type != "text" else f"{TEXT_PREFIX}Here is the object.\n```json\n{obj}\n```"
    if rf_type == "json_object":
        ans = f"({r.choice(letters)})" if letters else str(r.randint(0, 999))
        return json.dumps({"answer": ans, "explanation": text(r, (1, 2)), "simulator": SIM_NAME})
    ending = f"The answer is ({r.choice(letters)})." if letters else f"The answer is {r.randint(0, 999)}."
    return f"{TEXT_PREFIX}{text(r)} {ending}"


_EXAMPLE_MARK = "the values show the expected type):"
_ONE_OF = re.compile(r"^<one of: (.*)>$")


def example_schema(prompt: str) -> dict | None:
    """A JSON schema read off the example object a json_object / text prompt carries (the wording
    of ``boostqa.llm.schema.json_instruction``): ``"<one of: a | b>"`` is an enum, ``"<string>"`` a
    string, ``0`` an integer, ``0.0`` a number, ``true`` a boolean. None without such an example."""
    at = prompt.rfind(_EXAMPLE_MARK)
    if at < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(prompt[at + len(_EXAMPLE_MARK):].lstrip())
    except ValueError:
        return None
    return _schema_of(obj) if isinstance(obj, dict) else None


def _schema_of(v: Any) -> dict:
    if isinstance(v, dict):
        return {"type": "object", "properties": {k: _schema_of(x) for k, x in v.items()}, "required": list(v)}
    if isinstance(v, list):
        return {"type": "array", "items": _schema_of(v[0]) if v else {}, "minItems": 1}
    if isinstance(v, bool):
        return {"type": "boolean"}
    if isinstance(v, int):
        return {"type": "integer", "minimum": 0, "maximum": 100}
    if isinstance(v, float):
        return {"type": "number", "minimum": 0.0, "maximum": 1.0}
    m = _ONE_OF.match(v) if isinstance(v, str) else None
    if m:
        return {"enum": [_literal(x) for x in m.group(1).split(" | ")]}
    return {"type": "string"}


def _literal(s: str) -> Any:
    try:
        return json.loads(s)  # numbers and booleans of a Literal enum
    except ValueError:
        return s


class SchemaGen:
    """A JSON value that validates against a JSON Schema, for the constructs pydantic emits: local
    $ref, anyOf/oneOf (Optional, unions), const/enum (Literal), objects and mappings, arrays, bounded
    strings and numbers, booleans. Not honoured: pattern, format, multipleOf, prefixItems (tuples),
    uniqueItems (sets), allOf and type lists (no pipeline schema has them)."""

    def __init__(self, root: dict[str, Any], r: random.Random):
        self.root = root if isinstance(root, dict) else {}
        self.rng = r

    def generate(self) -> Any:
        return self.gen(self.root, 0, "")

    def resolve(self, schema: Any) -> Any:
        """The schema a local "$ref" ("#/$defs/Name") points to, merged with the keys next to it."""
        for _ in range(32):  # a bound on chains of references
            if not isinstance(schema, dict) or not str(schema.get("$ref", "")).startswith("#"):
                break
            target: Any = self.root
            for part in [p for p in schema["$ref"][1:].split("/") if p]:
                target = target.get(part, {}) if isinstance(target, dict) else {}
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def gen(self, schema: Any, depth: int, name: str) -> Any:
        schema, r = self.resolve(schema), self.rng
        if not isinstance(schema, dict):
            return sentence(r, 2, 4)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if schema.get("enum"):
            return copy.deepcopy(r.choice(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if schema.get(key):  # one option; null (Optional) a fifth of the time, always when deep
                opts = [self.resolve(o) for o in schema[key]]
                null = [o for o in opts if isinstance(o, dict) and o.get("type") == "null"]
                other = [o for o in opts if o not in null]
                picked = null[0] if null and (not other or depth >= _MAX_DEPTH or r.random() < 0.2) \
                    else r.choice(other)
                rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf", "discriminator")}
                return self.gen({**rest, **picked} if rest else picked, depth, name)
        typ = schema.get("type") or ("object" if "properties" in schema or "additionalProperties" in schema
                                     else "array" if "items" in schema else "string")
        if typ == "object":
            return self.gen_object(schema, depth)
        if typ == "array":
            return self.gen_array(schema, depth, name)
        if typ in ("integer", "number"):
            return self.gen_number(schema, integer=typ == "integer")
        if typ == "boolean":
            return r.random() < 0.5
        return None if typ == "null" else self.gen_string(schema, name)

    def gen_object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """Required properties, and each optional one with p = 0.6 (never when deep)."""
        props: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        out = {k: self.gen(sub, depth + 1, k) for k, sub in props.items()
               if k in required or (depth < _MAX_DEPTH and self.rng.random() < 0.6)}
        addl = schema.get("additionalProperties")
        if not props and addl is not False:  # a mapping (dict[str, X]): a few synthetic keys
            lo = 0 if depth >= _MAX_DEPTH else 1
            for i in range(self.rng.randint(lo, lo + 2)):
                key = f"{self.rng.choice(_WORDS)}_{i}"
                out[key] = self.gen(addl if isinstance(addl, dict) else {}, depth + 1, key)
        return out

    def gen_array(self, schema: dict[str, Any], depth: int, name: str) -> list[Any]:
        mn, mx = int(schema.get("minItems", 0)), schema.get("maxItems")
        mx = int(mx) if mx is not None else mn + 3
        lo = max(mn, min(1, mx)) if depth < 4 else mn  # non-empty near the top
        n = self.rng.randint(lo, max(lo, min(mx, lo + 2)))
        return [self.gen(schema.get("items", {}), depth + 1, name) for _ in range(n)]

    def gen_string(self, schema: dict[str, Any], name: str) -> str:
        r = self.rng
        mn, mx = int(schema.get("minLength", 0)), schema.get("maxLength")
        mx = None if mx is None else int(mx)
        if name in ("answer", "final_answer"):  # answers end in a final answer that often agrees
            s = _answer(r, bare=name == "final_answer")
        elif name == "knowledge_points":  # LinkQA KP names: a recurring vocabulary (KP_NAMES)
            s = r.choices(KP_NAMES, weights=_KP_WEIGHTS)[0]
        elif _QUESTION_FIELD.search(name or ""):
            s = f"{r.choice(_QWORDS)} {sentence(r, 3, 7, '?').lower()}"
        elif mx is not None and mx < 24:
            s = r.choice(_WORDS)
        else:
            s = sentence(r, 3, 8)
        while len(s) < mn:
            s += " " + r.choice(_WORDS)
        if mx is not None and len(s) > mx:
            cut = s.rfind(" ", 0, mx + 1)  # prefer a word boundary
            s = s[:cut] if cut >= max(mn, 1) else s[:mx]
        return s

    def gen_number(self, schema: dict[str, Any], integer: bool) -> int | float:
        """Within minimum/maximum and exclusiveMinimum/exclusiveMaximum (default span: 100)."""
        lo, hi = schema.get("minimum"), schema.get("maximum")
        xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if integer:
            a = _bound(max, lo if lo is None else math.ceil(lo), xlo if xlo is None else math.floor(xlo) + 1)
            b = _bound(min, hi if hi is None else math.floor(hi), xhi if xhi is None else math.ceil(xhi) - 1)
            a, b = _default_range(a, b, 100)
            return self.rng.randint(a, max(a, b))
        a, b = _default_range(_bound(max, lo, xlo), _bound(min, hi, xhi), 100.0)
        for _ in range(8):
            v = round(a + (b - a) * self.rng.random(), 3)
            if a <= v <= b and (xlo is None or v > xlo) and (xhi is None or v < xhi):
                return v
        return (a + b) / 2


def _bound(pick, *values: Any) -> Any:
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def _default_range(a: Any, b: Any, span: Any) -> tuple[Any, Any]:
    if a is None and b is None:
        return 0 * span, span
    if a is None:
        return b - span, b
    return (a, a + span) if b is None else (a, b)

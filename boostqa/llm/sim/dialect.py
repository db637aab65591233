"""Provider dialects: what a provider accepts in a request and how its answer looks.

The simulator serves each dialect under its own path prefix (``/deepseek/v1``, ``/openai/v1``, ...;
plain ``/v1`` is ``SimConfig.dialect``), so one server stands in for every provider of a pipeline
run. Provider differences live here and nowhere else: `read_request` (what is refused with a 400)
and `shape_message` (where reasoning goes). The rules are the documented behaviour the client's
provider profiles (``boostqa/llm/providers.py``) are written against:

- deepseek: ``json_schema`` is refused; ``json_object`` needs the word "json" in the prompt; the
  reasoner returns ``reasoning_content`` and its reasoning counts towards ``max_tokens``; no
  completions API.
- openai: a ``strict`` json_schema must close every object (``additionalProperties: false``, every
  property required); reasoning models (o1/o3/o4/gpt-5, or a name with "reasoner") refuse
  ``max_tokens`` and a non-default ``temperature``, and hide their reasoning (only
  ``completion_tokens_details.reasoning_tokens``).
- vllm: reasoning in ``reasoning`` (newer vLLM's field, started with a reasoning parser).
- llamacpp: reasoning as ``<think>...</think>`` at the start of the content (no reasoning format);
  log-probabilities of completions in the chat shape.
- sglang, openai_compatible: ``reasoning_content``.
- databricks: no completions API; reasoning hidden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

REASONING_MARKER = "reasoner"  # model-name substring of reasoning models (as in deepseek-reasoner)
_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)")


@dataclass(frozen=True)
class Dialect:
    name: str
    formats: tuple[str, ...] = ("json_schema", "json_object", "text")  # accepted response_format types
    strict: bool = False  # validates a strict json_schema the way OpenAI does
    json_word: bool = False  # json_object needs "json" somewhere in the messages
    reasoning: str = "field"  # field | think | hidden: where a reasoning model's reasoning goes
    reasoning_field: str = "reasoning_content"
    reasoning_in_budget: bool = True  # max_tokens covers reasoning + answer
    reasoning_params: bool = False  # reasoning models refuse max_tokens and temperature != 1
    completions: bool = True  # serves /v1/completions
    chat_shape_logprobs: bool = False  # completions log-probabilities as chat ``content`` objects


DIALECTS: dict[str, Dialect] = {d.name: d for d in (
    Dialect("openai", strict=True, reasoning="hidden", reasoning_params=True),
    Dialect("deepseek", formats=("json_object", "text"), json_word=True, completions=False),
    Dialect("vllm", reasoning_field="reasoning"),
    Dialect("sglang"),
    Dialect("llamacpp", reasoning="think", chat_shape_logprobs=True),
    Dialect("databricks", reasoning="hidden", completions=False),
    Dialect("openai_compatible"),
)}


class BadRequest(ValueError):
    """A request the provider answers with HTTP 400 (`param` names the offending field)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class ChatRequest:
    rf_type: str  # json_schema | json_object | text
    schema: dict | None  # the json_schema's schema
    max_tokens: int | None
    reasoner: bool  # the model writes reasoning apart from its answer


def is_reasoner(model: str) -> bool:
    return REASONING_MARKER in model or bool(_OPENAI_REASONING.match(model))


def read_request(dialect: Dialect, body: dict[str, Any]) -> ChatRequest:
    """What the answer must look like, or BadRequest. Streaming and n > 1 are not simulated."""
    if body.get("stream"):
        raise BadRequest("stream is not supported by the simulator", "stream")
    if body.get("n") not in (None, 1):
        raise BadRequest("n must be 1 (the simulator answers one choice)", "n")
    reasoner = is_reasoner(body["model"])
    if dialect.reasoning_params and reasoner:
        _reasoning_params(body)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("max_tokens must be a positive integer", "max_tokens")
    rf = body.get("response_format") or {}
    if not isinstance(rf, dict):
        raise BadRequest("response_format must be an object", "response_format")
    rf_type, schema = rf.get("type", "text"), None
    if rf_type not in dialect.formats:
        raise BadRequest("This response_format type is unavailable now" if rf_type in ("json_schema", "json_object")
                         else f"unsupported response_format type {rf_type!r}", "response_format")
    if rf_type == "json_schema":
        js = rf.get("json_schema") or {}
        schema = js.get("schema") if isinstance(js, dict) else None
        schema = schema if isinstance(schema, dict) else {"type": "object"}
        if dialect.strict and js.get("strict"):
            _check_strict(schema, js.get("name", "response"))
    if rf_type == "json_object" and dialect.json_word and "json" not in _all_text(body).lower():
        raise BadRequest("Prompt must contain the word 'json' in some form to use 'response_format' of type "
                         "'json_object'.", "response_format")
    return ChatRequest(rf_type, schema, max_tokens, reasoner)


def _reasoning_params(body: dict[str, Any]) -> None:
    if body.get("max_tokens") is not None:
        raise BadRequest("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                         "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
    if body.get("temperature") not in (None, 1, 1.0):
        raise BadRequest(f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                         "model. Only the default (1) value is supported.", "temperature", "unsupported_value")


def _check_strict(schema: dict, name: str) -> None:
    """OpenAI's strict-mode rules for objects: closed, and every property required."""
    def walk(node: Any, where: tuple[str, ...]) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, where)
            return
        if not isinstance(node, dict):
            return
        props = node.get("properties")
        if node.get("type") == "object" or props is not None:
            ctx = f"In context=({', '.join(repr(w) for w in where)})"
            if node.get("additionalProperties") is not False:
                raise BadRequest(f"Invalid schema for response_format '{name}': {ctx}, 'additionalProperties' is "
                                 "required to be supplied and to be false.", "response_format")
            missing = [k for k in props or {} if k not in (node.get("required") or [])]
            if missing:
                raise BadRequest(f"Invalid schema for response_format '{name}': {ctx}, 'required' is required to "
                                 f"be supplied and to be an array including every key in properties. Missing "
                                 f"'{missing[0]}'.", "response_format")
        for key in ("properties", "$defs"):
            for k, sub in (node.get(key) or {}).items():
                walk(sub, (*where, key, k))
        for key in ("items", "anyOf"):
            if key in node:
                walk(node[key], (*where, key))

    walk(schema, ())


def _all_text(body: dict[str, Any]) -> str:
    return "\n".join(m.get("content") for m in body.get("messages", [])
                     if isinstance(m, dict) and isinstance(m.get("content"), str))


def shape_message(dialect: Dialect, content: str, reasoning: str | None) -> dict[str, Any]:
    """The assistant message of a choice."""
    if reasoning is not None and dialect.reasoning == "think":
        content = f"<think>\n{reasoning}\n</think>\n\n{content}"
    msg: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning is not None and dialect.reasoning == "field":
        msg[dialect.reasoning_field] = reasoning
    return msg

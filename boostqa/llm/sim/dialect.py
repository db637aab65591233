"""Provider dialects: what a provider accepts in a chat request and how its answer message looks.

``SimConfig.dialect`` selects one. Only ``openai`` exists: the OpenAI chat API as the openai SDK
speaks it (json_schema / json_object / text response formats), with DeepSeek-style
``reasoning_content`` on models whose name contains "reasoner". Provider differences belong in
these two functions and nowhere else: `read_request` (e.g. a provider that rejects json_schema
with a 400, or counts reasoning in max_tokens) and `shape_message` (e.g. reasoning as
``<think>...</think>`` inside the content, or a blank content now and then).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REASONING_MARKER = "reasoner"  # model-name substring of reasoning models (as in deepseek-reasoner)


class BadRequest(ValueError):
    """A request the provider answers with HTTP 400 (`param` names the offending field)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatRequest:
    rf_type: str  # json_schema | json_object | text
    schema: dict | None  # the json_schema's schema
    max_tokens: int | None
    reasoner: bool  # the model writes reasoning apart from its answer


def read_request(dialect: str, body: dict[str, Any]) -> ChatRequest:
    """What the answer must look like, or BadRequest. Streaming and n > 1 are not simulated."""
    if body.get("stream"):
        raise BadRequest("stream is not supported by the simulator", "stream")
    if body.get("n") not in (None, 1):
        raise BadRequest("n must be 1 (the simulator answers one choice)", "n")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("max_tokens must be a positive integer", "max_tokens")
    rf = body.get("response_format") or {}
    if not isinstance(rf, dict):
        raise BadRequest("response_format must be an object", "response_format")
    rf_type, schema = rf.get("type", "text"), None
    if rf_type == "json_schema":
        js = rf.get("json_schema") or {}
        schema = js.get("schema") if isinstance(js, dict) else None
        schema = schema if isinstance(schema, dict) else {"type": "object"}
    elif rf_type not in ("text", "json_object"):
        raise BadRequest(f"unsupported response_format type {rf_type!r}", "response_format.type")
    return ChatRequest(rf_type, schema, max_tokens, REASONING_MARKER in body["model"])


def shape_message(dialect: str, content: str, reasoning: str | None) -> dict[str, Any]:
    """The assistant message of a choice."""
    msg: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg

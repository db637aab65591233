"""Reading a model's reply: reasoning kept apart, the JSON object found, fields validated.

Replies differ by provider: reasoning may come in a separate field (``reasoning_content``,
``reasoning``) or as ``<think>…</think>`` inside the content; the JSON object may be fenced or
wrapped in prose; a strict schema turns an optional field into an explicit ``null``. These
functions make all of them one shape before the stage's pydantic model decides.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ValidationError

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_THINK = re.compile(r"^\s*<think>(.*?)(?:</think>|$)", re.S)
REASONING_FIELDS = ("reasoning_content", "reasoning")


def split_think(content: str | None) -> tuple[str | None, str | None]:
    """(content without a leading <think> block, the block's text); an unclosed block is all
    reasoning (the answer never came: truncated)."""
    if not content:
        return content, None
    m = _THINK.match(content)
    if not m:
        return content, None
    return content[m.end():].lstrip(), m.group(1).strip()


def extract_json(text: str) -> str:
    """The JSON object in a reply: fenced block, else the outermost {...}, else the text."""
    m = _FENCE.search(text)
    if m:
        return m.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else text


def _without_null_defaults(obj, schema: type[BaseModel]):
    """Drop explicit nulls of fields that have a default: strict schemas make optional fields
    nullable, so ``null`` means "not given"."""
    if not isinstance(obj, dict):
        return obj
    fields = schema.model_fields
    return {k: v for k, v in obj.items() if not (v is None and k in fields and not fields[k].is_required())}


def parse_output(text: str | None, schema: type[BaseModel] | None) -> dict | None:
    """Strictly validated fields, or raises ValueError with a short reason."""
    if schema is None:
        return None
    if not text or not text.strip():
        raise ValueError("empty output")
    try:
        obj = json.loads(extract_json(text))
    except ValueError as e:
        raise ValueError(f"json_invalid at root: Invalid JSON: {e}") from None
    try:
        return schema.model_validate(_without_null_defaults(obj, schema)).model_dump(mode="json")
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"{first['type']} at {'.'.join(map(str, first['loc'])) or 'root'}: {first['msg']}") from None

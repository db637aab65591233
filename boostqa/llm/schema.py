"""Structured output that survives any provider: one pydantic model, three ways to ask for it.

- ``json_schema`` mode sends the model's JSON schema; for OpenAI's strict mode it is rewritten by
  ``strict_schema`` (every object closed with ``additionalProperties: false``, every property
  required, an optional one nullable instead, keywords strict mode refuses removed). The reply is
  still validated against the full pydantic model, so nothing is lost by the rewrite.
- ``json_object`` mode only promises *some* JSON object: the prompt carries ``json_instruction``,
  an example of the expected object (it also puts the word "json" in the prompt, which DeepSeek
  requires).
- ``text`` mode relies on the same instruction and on extraction of the object from the reply.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel

# string keywords OpenAI's strict mode does not accept (pydantic validates them after the call)
_DROPPED = ("default", "minLength", "maxLength", "pattern", "format", "examples")


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the form OpenAI's strict structured outputs accept."""
    schema = copy.deepcopy(model.model_json_schema())
    _close(schema)
    for sub in schema.get("$defs", {}).values():
        _close(sub)
    return schema


def _close(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item)
        return
    if not isinstance(node, dict):
        return
    for key in _DROPPED:
        node.pop(key, None)
    props = node.get("properties")
    if node.get("type") == "object" or props is not None:
        props = props or {}
        optional = set(props) - set(node.get("required", []))
        for name in optional:  # strict mode: present but nullable
            props[name] = _nullable(props[name])
        node["properties"] = props
        node["required"] = list(props)
        node["additionalProperties"] = False
    for key in ("properties", "$defs"):
        for sub in (node.get(key) or {}).values():
            _close(sub)
    for key in ("items", "anyOf", "allOf", "prefixItems"):
        if key in node:
            _close(node[key])


def _nullable(prop: dict) -> dict:
    if any(option.get("type") == "null" for option in prop.get("anyOf", [])):
        return prop
    if "anyOf" in prop:
        return {**prop, "anyOf": [*prop["anyOf"], {"type": "null"}]}
    kept = {k: v for k, v in prop.items() if k in ("title", "description")}
    body = {k: v for k, v in prop.items() if k not in ("title", "description")}
    return {**kept, "anyOf": [body, {"type": "null"}]}


def example(model: type[BaseModel]) -> dict[str, Any]:
    """An example object of the model: placeholders that say each field's type or allowed values."""
    schema = model.model_json_schema()
    return {name: _placeholder(prop, schema) for name, prop in schema.get("properties", {}).items()}


def _placeholder(prop: dict, root: dict) -> Any:
    if "$ref" in prop:
        prop = root.get("$defs", {}).get(prop["$ref"].rsplit("/", 1)[-1], {})
    if "enum" in prop:
        values = prop["enum"]
        return f"<one of: {' | '.join(json.dumps(v) if not isinstance(v, str) else v for v in values)}>"
    if "anyOf" in prop:
        return _placeholder(next((p for p in prop["anyOf"] if p.get("type") != "null"), {}), root)
    kind = prop.get("type")
    if kind == "object":
        return {n: _placeholder(p, root) for n, p in prop.get("properties", {}).items()}
    if kind == "array":
        return [_placeholder(prop.get("items", {}), root)]
    return {"boolean": True, "integer": 0, "number": 0.0}.get(kind, f"<{kind or 'value'}>")


def json_instruction(model: type[BaseModel]) -> str:
    """The prompt-side contract: a JSON object only, shaped like this example."""
    return ("Reply with one JSON object and nothing else, with exactly these keys (the values show "
            "the expected type):\n" + json.dumps(example(model), ensure_ascii=False))


def response_format(mode: str, model: type[BaseModel] | None, strict: bool) -> dict | None:
    """The ``response_format`` request field for a mode (None: free text)."""
    if model is None or mode == "text":
        return None
    if mode == "json_object":
        return {"type": "json_object"}
    body = strict_schema(model) if strict else model.model_json_schema()
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": body, "strict": strict}}

"""Provider profiles: what an OpenAI-compatible endpoint really supports, so the client asks in its
dialect instead of assuming OpenAI.

A profile says which structured-output modes the service accepts (in order of preference; the
client falls back along the list when a 400 names ``response_format``), whether a JSON schema must
be OpenAI-strict, where reasoning comes back, whether ``max_tokens`` counts the reasoning, which
parameter names the output budget, which sampling parameters are honoured, and what base-model
probing may use (the legacy completions API, token log-probabilities). Facts, per provider:

- deepseek: ``json_object`` only (a ``json_schema`` request is a 400), and the prompt must contain
  the word "json" with an example; may answer blank content with ``finish_reason: stop``
  (retryable); the reasoner returns ``reasoning_content`` and its chain of thought counts
  towards ``max_tokens``; no legacy completions API (FIM is beta-only).
- openai: strict ``json_schema`` (every property required, nullable instead of optional,
  ``additionalProperties: false``); reasoning models hide their reasoning, count it in
  ``usage.completion_tokens_details.reasoning_tokens`` and take ``max_completion_tokens``.
- vllm / sglang: guided decoding from an OpenAI-style ``json_schema`` (not strict), or
  ``json_object``; reasoning in ``reasoning_content`` (``reasoning`` in newer vLLM) with a
  reasoning parser, else ``<think>…</think>`` inside the content; completions API with
  log-probabilities (the usual way to probe a base checkpoint).
- llamacpp: llama.cpp's ``llama-server`` constrains decoding to a ``json_schema`` (an invalid schema
  is a 400), ``<think>`` in content unless started with a reasoning format; completions API.
- databricks: Databricks model serving (OpenAI-compatible ``/serving-endpoints``): ``json_schema``
  structured outputs and ``json_object``.
- openai_compatible: anything else; every mode is tried in turn, every reasoning form is read.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("json_schema", "json_object", "text")


@dataclass(frozen=True)
class Provider:
    name: str
    modes: tuple[str, ...]  # structured-output modes it accepts, best first
    strict_schema: bool = False  # json_schema must be OpenAI-strict
    json_word: bool = False  # json_object needs the word "json" (and an example) in the prompt
    blank_retry: bool = False  # blank content with finish_reason "stop" happens and is transient
    counts_reasoning: bool = True  # max_tokens includes the reasoning of a reasoning model
    budget_param: str = "max_tokens"  # the parameter that sets the output budget (reasoning models)
    sampling: frozenset[str] = frozenset({"temperature", "top_p", "seed"})  # honoured parameters
    reasoning_sampling: frozenset[str] | None = None  # what a reasoning model honours, if different
    completions: bool = True  # the legacy /v1/completions API (base-model probes)
    logprobs: bool = True  # token log-probabilities on completions


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("deepseek", ("json_object", "text"), json_word=True, blank_retry=True,
             sampling=frozenset({"temperature", "top_p"}), reasoning_sampling=frozenset(), completions=False),
    Provider("openai", MODES, strict_schema=True, budget_param="max_completion_tokens",
             reasoning_sampling=frozenset({"seed"})),
    Provider("vllm", MODES),
    Provider("sglang", MODES),
    Provider("llamacpp", MODES),
    Provider("databricks", MODES, sampling=frozenset({"temperature", "top_p"}), completions=False, logprobs=False),
    Provider("openai_compatible", MODES),
)}


def provider(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}; known: {sorted(PROVIDERS)}") from None


def fallback_modes(name: str, requested: str) -> tuple[str, ...]:
    """The modes to try for an endpoint, starting from the requested one (``auto``: the provider's
    best); a 400 about response_format moves to the next."""
    modes = provider(name).modes
    if requested == "auto":
        return modes
    return (requested, *[m for m in MODES[MODES.index(requested) + 1:] if m in modes or m == "text"])

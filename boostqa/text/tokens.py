"""Exact token counts with the target model's tokenizer, offline. Spark-free kernel.

Why exact: the token ledger and token-budget blending decide how many tokens of each source the
model sees; an approximate tokenizer (or the right vocabulary with the wrong split regex) drifts
by percents on CJK, digits and whitespace. A tokenizer is named by a *spec*:

* ``splintr:<name>`` (default ``splintr:llama3``): a vocabulary compiled into splintr-rs
  (llama3, cl100k_base, o200k_base, qwen3, deepseek_v3, ...). No file, no network, ~12 Mtok/s/core,
  and its llama3 ids equal Meta's reference tokenizer id for id (tests/test_tokens.py).
* ``hf:<path to tokenizer.json>``: Hugging Face ``tokenizers`` (optional 'embed' extra; ~8x slower).
* ``tiktoken:<path to a tiktoken BPE file>`` plus a split regex (``pattern``): "llama3" (default),
  "cl100k", "o200k" or a literal regex. Meta's own Llama-3 ``tokenizer.model`` is such a file.
* a bare name (``llama3``) means ``splintr:<name>``, as the older ``count_tokens(name=...)`` did.

Every kind counts *ordinary* text: a special-token string such as ``<|end_of_text|>`` inside a
document is trained on as text, so it is counted as text, never as one special id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["PATTERNS", "TokenCounter", "count_tokens", "get_counter", "render_training_text"]

#: Split regexes for ``tiktoken:`` specs. llama3 is Meta's pat_str (llama3/tokenizer.py);
#: cl100k and o200k are copied from tiktoken_ext/openai_public.py (tiktoken 0.14.0).
PATTERNS: dict[str, str] = {
    "llama3": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "cl100k": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
        r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    "o200k": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}

_KINDS = ("splintr", "hf", "tiktoken")


class TokenCounter:
    """One loaded tokenizer: ids and counts, plus a fingerprint to store next to every count.

    ``fingerprint`` identifies the tokenizer by content, not location: ``splintr:<name>``, or
    ``<kind>:<file name>@sha256:<12 hex>`` (+ ``+pattern:<name or re:12 hex>`` for tiktoken), so the
    same file in another cache directory (laptop vs cluster) gives the same fingerprint and an
    edited file a different one.
    """

    __slots__ = ("spec", "fingerprint", "encode", "_pattern")

    def __init__(
        self, spec: str, fingerprint: str, encode: Callable[[str], list[int]], pattern: str | None = None
    ) -> None:
        self.spec = spec
        self.fingerprint = fingerprint
        #: encode(text) -> token ids, ordinary text (no special tokens, no BOS/EOS).
        self.encode = encode
        self._pattern = pattern

    def __reduce__(self):
        """Pickles as its spec (the Rust encoders do not pickle): a Spark closure reloads it on the worker."""
        return get_counter, (self.spec, self._pattern)

    def count(self, texts: Iterable[str | None], add_eos: bool = False) -> list[int]:
        """Tokens per document; None/"" count 0. add_eos adds exactly one token per document.

        Why +1 instead of encoding an EOS string: the trainer appends the EOS *id* after the text;
        the string would be counted as several ordinary tokens. Kept a bare comprehension over the
        bound encoder: this is the hot loop of the token ledger.
        """
        enc = self.encode
        if add_eos:
            return [len(enc(t)) + 1 if t else 1 for t in texts]
        return [len(enc(t)) if t else 0 for t in texts]

    def __repr__(self) -> str:
        return f"TokenCounter({self.fingerprint!r})"


@lru_cache(maxsize=32)
def get_counter(spec: str = "splintr:llama3", pattern: str | None = None) -> TokenCounter:
    """The counter for a spec (see the module docstring); loaded once per process and reused.

    Raises ValueError naming the spec (and file) on an unknown kind or name, a missing or unreadable
    file, a pattern given to a kind that has its own, or a bad regex.
    """
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    if not sep:  # bare name: the old count_tokens(name=...) meaning
        kind, arg = "splintr", spec
    if kind not in _KINDS:
        raise ValueError(f"tokenizer spec {spec!r}: unknown kind {kind!r}; use one of {', '.join(_KINDS)}:<...>")
    if not arg:
        raise ValueError(f"tokenizer spec {spec!r}: nothing after {kind!r}:")
    if pattern is not None and kind != "tiktoken":
        raise ValueError(f"tokenizer spec {spec!r}: pattern applies only to tiktoken: specs")
    if kind == "tiktoken" and pattern is None:
        pattern = "llama3"
    return _load(kind, arg, pattern)


@lru_cache(maxsize=16)
def _load(kind: str, arg: str, pattern: str | None) -> TokenCounter:
    spec = f"{kind}:{arg}"
    if kind == "splintr":
        from splintr import Tokenizer

        try:
            tok = Tokenizer.from_pretrained(arg)
        except ValueError as exc:
            raise ValueError(f"tokenizer spec {spec!r}: {exc}") from None
        return TokenCounter(spec, spec, tok.encode_ordinary)

    path = Path(arg).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"tokenizer spec {spec!r}: cannot read tokenizer file {str(path)!r}: {exc}") from None
    sha256 = hashlib.sha256(data).hexdigest()
    fingerprint = f"{kind}:{path.name}@sha256:{sha256[:12]}"

    if kind == "hf":
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as exc:
            raise ImportError(
                f"tokenizer spec {spec!r} needs the `tokenizers` package: pip install 'boostqa[embed]'"
            ) from exc
        try:
            # from the bytes just hashed, so the fingerprint is of exactly what is loaded
            tok = HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"tokenizer spec {spec!r}: {str(path)!r} is not a tokenizer.json: {exc}") from None
        # HF maps special-token strings in the text to their ids even with add_special_tokens=False;
        # this switch makes them ordinary text, as for the other kinds.
        tok.encode_special_tokens = True
        hf_encode = tok.encode
        return TokenCounter(spec, fingerprint, lambda text: hf_encode(text, add_special_tokens=False).ids)

    # tiktoken
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    assert pattern is not None
    regex = PATTERNS.get(pattern, pattern)
    label = next((n for n, r in PATTERNS.items() if r == regex), None)
    label = label or "re:" + hashlib.sha256(regex.encode()).hexdigest()[:12]
    try:
        # expected_hash: tiktoken's path-keyed cache must serve the bytes fingerprinted above
        ranks = load_tiktoken_bpe(str(path), expected_hash=sha256)
        enc = tiktoken.Encoding(name=fingerprint, pat_str=regex, mergeable_ranks=ranks, special_tokens={})
    except Exception as exc:  # bad base64 line, bad regex (ValueError from the Rust core), ...
        raise ValueError(
            f"tokenizer spec {spec!r} (pattern {pattern!r}): cannot load {str(path)!r}: {exc}"
        ) from None
    return TokenCounter(spec, f"{fingerprint}+pattern:{label}", enc.encode_ordinary, pattern)


def count_tokens(texts: Iterable[str | None], name: str = "llama3") -> list[int]:
    """Tokens per text (None/"" -> 0); name is any spec (bare "llama3" = "splintr:llama3")."""
    return get_counter(name).count(texts)


class _BlankMissing(dict):
    """format_map mapping where a field absent from the row renders as ""."""

    def __missing__(self, key: str) -> str:
        return ""


def render_training_text(template: str, fields: Mapping[str, Any]) -> str:
    """The document exactly as it will be trained on, e.g. "Question: {question}\\nAnswer: {answer}".

    Why here: counting tokens of anything but the rendered text (fields separately, or without
    the template's labels) would under-count every row. Missing and None fields render as "";
    literal braces are doubled as in str.format. A malformed template raises ValueError.
    """
    values = _BlankMissing({k: "" if v is None else v for k, v in fields.items()})
    try:
        return template.format_map(values)
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
        raise ValueError(f"malformed training-text template {template!r}: {exc}") from None

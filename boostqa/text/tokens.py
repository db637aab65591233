"""Exact token counts with the target model's tokenizer, offline (splintr bundles the vocabularies).

Llama-3 by default: splintr's ids match Meta's reference tokenizer. ``encode_ordinary`` is used so
special-token strings inside text count as text, as they will be trained on.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=8)
def tokenizer(name: str = "llama3"):
    from splintr import Tokenizer

    return Tokenizer.from_pretrained(name)


def count_tokens(texts, name: str = "llama3") -> list[int]:
    tok = tokenizer(name)
    return [len(tok.encode_ordinary(t)) if t else 0 for t in texts]

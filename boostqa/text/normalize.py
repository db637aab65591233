"""Text normalization and word tokenization on Arrow arrays (Spark-free, vectorised).

Dedup and decontamination compare *normalized* text, so "Ｑ１: What's 2+2?" and "q1 what s 2 2"
hash alike. Everything runs as pyarrow.compute kernels (RE2 regexes, utf8proc case mapping and
Unicode normalization) over whole Arrow batches, so it is fast inside ``mapInArrow`` and gives
the same answer for a row whatever batch it arrives in. The scalar :func:`normalize` goes through
the very same kernels (a one-element array), so scalar and array results can never drift apart
(Python's ``str.lower`` and utf8proc disagree on e.g. "İ" and final sigma).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "NormalizeOptions",
    "as_text_array",
    "normalize_array",
    "normalize",
    "words_array",
    "words",
    "content_hash_array",
    "content_hash",
]

# RE2 syntax (pyarrow's regex engine). RE2's \s is ASCII-only, so whitespace is spelled out:
# \p{Cc} covers \t..\r, \x1c..\x1f and \x85 (Python's str.split also splits on those);
# \p{Z} covers the space separators (NBSP, U+3000, U+2028/2029, ...).
_WS = r"[\p{Cc}\p{Z}]+"
_FORMAT = r"\p{Cf}+"  # zero-width space/joiners, BOM, soft hyphen: invisible, would split words
_PUNCT = r"[\p{P}\p{S}]"  # punctuation and symbols (+ = $ ^ ...), as datatrove's simplify_text
_DIGITS = r"\p{Nd}+"  # any script's decimal digits, not just ASCII
_ACCENTS = r"[\x{0300}-\x{036F}]+"  # Latin/Greek/Cyrillic combining diacritics only: keeps
# Japanese dakuten (U+3099), Devanagari vowel signs etc., which are not "accents"
_CJK = r"([\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}])"
# strip_labels (applied first, on the raw text, before punctuation turns "(a)" into the word "a"):
# a "Q:" / "Question 3." / "Problem:" prefix at the start of a line ...
_PREFIX = r"(?im)^[\p{Z}\t]*(?:q|question|problem|exercise)[\p{Z}\t]*(?:\d{1,4}[\p{Z}\t]*)?[:.)][\p{Z}\t]*"
# ... choice labels "(a)", "a)", "[B]", anywhere a word can start ...
_LABEL_PAREN = r"(?i)(?:^|[\p{Z}\p{Cc}])[\(\[]?[a-e][\)\]](?:[\p{Z}\p{Cc}]|$)"
# ... and "A." / "A:" / "A)" (upper case) at the start of a line or after two spaces or a tab
_LABEL_DOT = r"(?m)(?:^|[\p{Z}][\p{Z}]|\t)[\p{Z}\t]*[A-E][.:)](?:[\p{Z}\p{Cc}]|$)"
# the leading label of an answer column on its own ("B", "(b)") is left alone: it is a whole text


@dataclass(frozen=True)
class NormalizeOptions:
    """How aggressively to fold text before hashing. Frozen and plain, so it pickles into UDFs.

    The defaults follow datatrove/FineWeb's dedup normalization (NFKC, lowercase, punctuation
    and symbols -> space) plus one token per CJK character so Chinese/Japanese text, which has
    no spaces, still yields word n-grams.
    """

    nfkc: bool = True  # full-width letters/digits -> ASCII, ligatures, compatibility forms
    lowercase: bool = True
    strip_punctuation: bool = True  # replaced by a space (so "x+y" -> "x y", not "xy")
    collapse_digits: bool = False  # every digit run -> "0" ("3.14" -> "0 0" with punctuation off)
    split_cjk: bool = True  # each Han/kana/hangul character becomes its own token
    strip_accents: bool = False  # "café" -> "cafe"
    strip_labels: bool = False  # drop "Q:"/"Question 3:" prefixes and choice labels "(a)", "A.", "a)" (decontam)


DEFAULT = NormalizeOptions()


def as_text_array(texts: pa.Array | pa.ChunkedArray | list | None) -> pa.Array:
    """Coerce to a single-chunk string/large_string Arrow array (engines may hand over
    chunked, string_view or Python-list input)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    elif not isinstance(texts, pa.Array):
        texts = pa.array(texts, pa.string())
    if pa.types.is_string_view(texts.type) or pa.types.is_null(texts.type):
        texts = texts.cast(pa.string())
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        raise TypeError(f"expected a string array, got {texts.type}")
    return texts


def normalize_array(texts: pa.Array | pa.ChunkedArray, opts: NormalizeOptions = DEFAULT) -> pa.Array:
    """Normalize every string; nulls stay null. Output has single spaces between tokens and no
    leading/trailing space, so splitting on " " is exact (see engine-notes section 1)."""
    t = as_text_array(texts)
    if opts.strip_labels:
        t = pc.replace_substring_regex(t, _PREFIX, " ")
        t = pc.replace_substring_regex(t, _LABEL_PAREN, " ")
        t = pc.replace_substring_regex(t, _LABEL_DOT, " ")
    if opts.nfkc:
        t = pc.utf8_normalize(t, form="NFKD" if opts.strip_accents else "NFKC")
    elif opts.strip_accents:
        t = pc.utf8_normalize(t, form="NFD")
    if opts.strip_accents:
        t = pc.replace_substring_regex(t, _ACCENTS, "")
        t = pc.utf8_normalize(t, form="NFKC" if opts.nfkc else "NFC")
    if opts.lowercase:
        t = pc.utf8_lower(t)
    t = pc.replace_substring_regex(t, _FORMAT, "")
    if opts.collapse_digits:
        t = pc.replace_substring_regex(t, _DIGITS, "0")
    if opts.strip_punctuation:
        t = pc.replace_substring_regex(t, _PUNCT, " ")
    if opts.split_cjk:
        t = pc.replace_substring_regex(t, _CJK, r" \1 ")
    t = pc.replace_substring_regex(t, _WS, " ")
    return pc.utf8_trim(t, characters=" ")


def normalize(text: str | None, opts: NormalizeOptions = DEFAULT) -> str | None:
    """Scalar form of :func:`normalize_array`, computed by the same kernels (identical results)."""
    return normalize_array(pa.array([text], pa.string()), opts)[0].as_py()


def words_array(texts: pa.Array | pa.ChunkedArray, opts: NormalizeOptions = DEFAULT) -> pa.ListArray:
    """Normalized word tokens per row (list<string>); "" -> [], null -> null.

    Splits the trimmed, single-spaced normalized text on " ": ``utf8_split_whitespace`` on
    untrimmed text yields empty edge tokens, which made n-gram counts vary (engine-notes §1).
    """
    normed = normalize_array(texts, opts)
    toks = pc.split_pattern(normed, " ")
    empty = pa.scalar([], toks.type)
    return pc.if_else(pc.equal(normed, ""), empty, toks)


def words(text: str | None, opts: NormalizeOptions = DEFAULT) -> list[str] | None:
    """Scalar form of :func:`words_array`."""
    return words_array(pa.array([text], pa.string()), opts)[0].as_py()


def content_hash_array(
    questions: pa.Array | pa.ChunkedArray,
    answers: pa.Array | pa.ChunkedArray | None,
    opts: NormalizeOptions = DEFAULT,
    digest: Literal["hex", "int64"] = "hex",
) -> pa.Array:
    """Stable exact-dedup key: SHA-256 of ``norm(question) + "\\x1f" + norm(answer)`` (UTF-8).

    SHA-256 because it is the same everywhere and forever (any language, Spark SQL's ``sha2``),
    which matters for a key that is stored in Delta tables and compared across runs.

    - ``digest="hex"`` (default): first 128 bits as 32 lowercase hex chars, the same scheme as
      ``seed_uid``: collision-free in practice at any corpus size; use it for ``seed_id``.
      Equals ``substr(sha2(concat(nq, '\\x1f', na), 256), 1, 32)`` in Spark SQL.
    - ``digest="int64"``: first 64 bits, big-endian, as a signed int64: compact for
      groupBy/joins; birthday collisions reach ~1e-3 only around 2e8 distinct rows.

    A null answer counts as "" (a seed without answer equals one with an empty answer). A null
    question gives a null hash. One hashlib call per row (no vectorised SHA-256 in numpy or
    Arrow); about 1 µs/row, small next to normalization.
    """
    nq = normalize_array(questions, opts)
    if answers is None:
        na_list = [""] * len(nq)
    else:
        na = normalize_array(answers, opts)
        if len(na) != len(nq):
            raise ValueError(f"questions ({len(nq)}) and answers ({len(na)}) differ in length")
        na_list = pc.fill_null(na, "").to_pylist()
    nq_list = nq.to_pylist()
    sha = hashlib.sha256
    if digest == "hex":
        out = [None if q is None else sha(f"{q}\x1f{a}".encode()).hexdigest()[:32]
               for q, a in zip(nq_list, na_list)]
        return pa.array(out, pa.string())
    if digest == "int64":
        raw = b"".join(b"\0" * 8 if q is None else sha(f"{q}\x1f{a}".encode()).digest()[:8]
                       for q, a in zip(nq_list, na_list))
        vals = np.frombuffer(raw, dtype=">i8").astype(np.int64)
        mask = pc.is_null(nq).to_numpy(zero_copy_only=False) if nq.null_count else None
        return pa.array(vals, pa.int64(), mask=mask)
    raise ValueError(f"digest must be 'hex' or 'int64', got {digest!r}")


def content_hash(question: str | None, answer: str | None, opts: NormalizeOptions = DEFAULT,
                 digest: Literal["hex", "int64"] = "hex") -> str | int | None:
    """Scalar form of :func:`content_hash_array`."""
    return content_hash_array(pa.array([question], pa.string()), pa.array([answer], pa.string()),
                              opts, digest)[0].as_py()

"""Raw source record -> seed fields, or a quarantine reason (Spark-free; runs inside mapInPandas).

One function decides every per-row verdict of ingestion so the rules live in one place and are
testable in milliseconds. Cross-row rules (duplicate ids) need the whole table and live in the
stage.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import pandas as pd

# reason -> what it means (documented in the README; every reason has a test): the verdicts a
# record of any file can get (tests/test_ingest.py shows each in one jsonl file) ...
REASONS = {
    "not_utf8": "the row's bytes are not valid UTF-8 (or a mapped field is binary data that is not UTF-8 text)",
    "unparseable": "the row is not valid JSON / CSV (incl. a CSV row with an unbalanced quote)",
    "too_deep": "the row nests deeper than ingest.max_depth (checked before parsing)",
    "not_an_object": "the row parsed, but is not a record (e.g. a JSON array)",
    "missing_question": "the mapped question field is absent or null",
    "empty_question": "the question is empty, whitespace or invisible (zero-width, format characters)",
    "missing_answer": "the source requires answers and the mapped answer field is absent, null or blank",
    "missing_id": "the source maps an id field and the row has none",
    "wrong_type": "a mapped field has the wrong type (e.g. a number for the question, a string for choices)",
    "not_finite": "a mapped field is a NaN or infinite number",
    "bad_chars": "a mapped text field holds NUL or other control characters, or a lone surrogate",
    "empty_choice": "one of the choices is blank",
    "too_long": "a field, the row or the file is over its configured limit (ingest.max_*)",
    "duplicate_row_id": "another row of the same source has the same row id (the first one is kept)",
}
# ... the verdicts only files that are not plain UTF-8 text get (tests/test_ingest_hostile.py) ...
READER_REASONS = {
    "bad_encoding": "the row's bytes are not valid in the file's UTF-16/UTF-32 encoding (found by BOM or NUL pattern)",
    "corrupt_file": "the file or its compressed stream is truncated or corrupt (the rows before the damage are kept)",
}
# ... and the one no input should ever get: an unforeseen parser failure (a bug) quarantines the
# row instead of stopping the ingest
INTERNAL_ERROR = "internal_error"

SEED_COLUMNS = ["seed_uid", "source_row_id", "question", "answer", "choices", "subject_hint", "lang", "kps",
                "_reason", "_detail"]


@dataclass(frozen=True)
class Rules:
    """Per-source mapping and limits, plain data so it pickles into the UDF."""

    fields: dict[str, str | None]  # id, question, answer, choices, subject, lang, kps -> record path
    lang: str
    require_answer: bool
    max_question_chars: int
    max_answer_chars: int
    max_choices: int
    choices_fields: tuple[str, ...] = ()
    answer_is_label: bool = False
    max_choice_chars: int = 10_000
    max_subject_chars: int = 256
    max_lang_chars: int = 64
    max_id_chars: int = 512
    max_kps: int = 64
    max_kp_chars: int = 1_000


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


_MISSING = object()


def _get(rec: dict, path: str) -> Any:
    node: Any = rec
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


# NUL and other C0 controls (tab, newlines, form feed and vertical tab are text), and lone
# surrogates (from "\ud800"-style escapes: not characters; Arrow cannot even store them)
_BAD_CHARS = re.compile("[\x00-\x08\x0e-\x1f\ud800-\udfff]")
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")  # fillers and the blank braille cell
_BLANK_CATEGORIES = frozenset(("Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me"))


def _check_chars(text: str, field: str, path: str | None) -> str:
    m = _BAD_CHARS.search(text)
    if m:
        ch = m.group()
        what = "a lone surrogate" if "\ud800" <= ch <= "\udfff" else "a NUL" if ch == "\x00" else "a control character"
        raise _Reject("bad_chars", f"field {field!r} (from {path!r}) holds {what} (U+{ord(ch):04X}) "
                                   f"at offset {m.start()}")
    return text


def is_blank(text: str) -> bool:
    """Nothing visible: whitespace, zero-width and format characters, lone combining marks."""
    for ch in text:
        if not (ch.isspace() or ch in _INVISIBLE or unicodedata.category(ch) in _BLANK_CATEGORIES):
            return False
    return True


def _binary(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$base64"}


def _scalar_text(value: Any, field: str, path: str) -> str:
    if isinstance(value, str):
        return _check_chars(value, field, path)
    if isinstance(value, float) and not math.isfinite(value):
        raise _Reject("not_finite", f"field {field!r} (from {path!r}) is {value}, not a finite number")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if _binary(value):
        raise _Reject("not_utf8", f"field {field!r} (from {path!r}) is binary data that is not UTF-8 text")
    raise _Reject("wrong_type", f"field {field!r} (from {path!r}) is {type(value).__name__}, expected string or number")


def seed_uid(source: str, source_row_id: str) -> str:
    return hashlib.sha256(f"{source}\x1f{source_row_id}".encode()).hexdigest()[:32]


def _label_to_choice(label: str, choices: list[str] | None) -> str:
    """'C' or '2' -> the text of that choice, so n-grams and embeddings see the real answer."""
    label = label.strip().rstrip(".):")
    idx = ord(label.upper()) - ord("A") if len(label) == 1 and label.isalpha() else \
        int(label) if label.isdecimal() and len(label) <= 4 else -1
    if not choices or not 0 <= idx < len(choices):
        raise _Reject("wrong_type", f"answer label {label!r} does not name one of {len(choices or [])} choices")
    return choices[idx]


def parse_record(raw: str, read_error: str | None, rules: Rules, source: str, locator: str) -> dict:
    """One raw record -> seed fields; raises _Reject with a reason and a human detail.

    The checks run in a fixed order (record, question, answer, choices, subject/lang, id, lengths,
    knowledge points), so a row with several faults always gets the same, first, reason."""
    rec = _load_object(raw, read_error)
    f = rules.fields
    q = _question(rec, f["question"] or "question")
    answer = _optional_text(rec, f, "answer")
    if rules.require_answer and answer is None:
        raise _Reject("missing_answer", f"no answer in field {f.get('answer')!r} and the source requires one")
    choices = _choices(rec, rules)
    if rules.answer_is_label and answer is not None:
        answer = _label_to_choice(answer, choices)
    subject, lang = _optional_text(rec, f, "subject"), _optional_text(rec, f, "lang")
    row_id = _row_id(rec, f.get("id"), locator)
    _check_lengths(q, answer, rules)
    _check_other_lengths(choices, subject, lang, row_id if f.get("id") else None, rules)
    kps = _kps(rec, f.get("kps"), rules)
    return {"seed_uid": seed_uid(source, row_id), "source_row_id": row_id, "question": q, "answer": answer,
            "choices": choices, "subject_hint": subject, "lang": lang or rules.lang, "kps": kps}


def _load_object(raw: str, read_error: str | None) -> dict:
    """The record as a dict; a read error from the reader ("reason: detail") becomes its reject."""
    if read_error:
        reason, _, detail = read_error.partition(": ")
        raise _Reject(reason, detail or read_error)
    try:
        rec = json.loads(raw)
    except RecursionError:
        raise _Reject("too_deep", "the record nests too deep to parse") from None
    except ValueError as e:  # JSONDecodeError, and ints over Python's digit limit
        raise _Reject("unparseable", f"invalid JSON: {e}") from None
    if not isinstance(rec, dict):
        raise _Reject("not_an_object", f"expected a JSON object, got {type(rec).__name__}")
    return rec


def _lookup(rec: dict, path: str | None) -> Any:
    """The value at a mapped path; None when the path is unmapped, absent from the record or null,
    which every field treats alike."""
    if not path:
        return None
    v = _get(rec, path)
    return None if v is _MISSING else v


def _question(rec: dict, q_path: str) -> str:
    """The stripped question: the one field every seed must have, as a non-empty string (no number)."""
    q = _lookup(rec, q_path)
    if q is None:
        raise _Reject("missing_question", f"no question field {q_path!r}")
    if _binary(q):
        raise _Reject("not_utf8", f"field 'question' (from {q_path!r}) is binary data that is not UTF-8 text")
    if not isinstance(q, str):
        raise _Reject("wrong_type", f"field 'question' (from {q_path!r}) is {type(q).__name__}, expected string")
    q = _check_chars(q, "question", q_path).strip()
    if not q:
        raise _Reject("empty_question", f"field {q_path!r} is empty")
    if is_blank(q):
        raise _Reject("empty_question", f"field {q_path!r} has no visible character (only zero-width/format "
                                        f"characters or marks: {q[:8].encode('unicode_escape').decode()})")
    return q


def _optional_text(rec: dict, fields: dict[str, str | None], name: str) -> str | None:
    """An optional scalar field (answer, subject, lang) as stripped text; None when unmapped, absent,
    null or blank, so callers need one test for "no value"."""
    path = fields.get(name)
    v = _lookup(rec, path)
    if v is None:
        return None
    text = _scalar_text(v, name, path).strip()
    return None if not text or is_blank(text) else text


def _choices(rec: dict, rules: Rules) -> list[str] | None:
    """The answer options: one column per choice (``choices_fields``, absent ones skipped), or one
    list/dict field (a dict's values in key order, "A", "B", ...), capped at ``max_choices``."""
    if rules.choices_fields:
        parts = [_get(rec, p) for p in rules.choices_fields]
        choices = [_scalar_text(x, "choices[]", p).strip() for x, p in zip(parts, rules.choices_fields)
                   if x is not _MISSING and x is not None]
        return _no_blank_choice(choices, ", ".join(rules.choices_fields))
    path = rules.fields.get("choices")
    c = _lookup(rec, path)
    if c is None:
        return None
    if isinstance(c, dict):  # {"A": "...", "B": "..."}
        c = [c[k] for k in sorted(c)]
    if not isinstance(c, list):
        raise _Reject("wrong_type", f"field 'choices' (from {path!r}) is {type(c).__name__}, expected list")
    if len(c) > rules.max_choices:
        raise _Reject("wrong_type", f"{len(c)} choices > limit {rules.max_choices}")
    choices = [_scalar_text(x, "choices[]", path) for x in c]
    return _no_blank_choice(choices, path)


def _no_blank_choice(choices: list[str], path: str | None) -> list[str]:
    for i, c in enumerate(choices):
        if is_blank(c):
            raise _Reject("empty_choice", f"field 'choices[{i}]' (from {path!r}) is blank")
    return choices


def _kps(rec: dict, path: str | None, rules: Rules) -> list[str] | None:
    """Knowledge points the source supplies (LinkQA, ``fields.kps``): a list of strings, each
    stripped; blank names are dropped, and none left (or unmapped, absent, null) is None: the
    seed's KPs are then asked of the LLM. Anything but a list of strings is ``wrong_type``."""
    v = _lookup(rec, path)
    if v is None:
        return None
    if not isinstance(v, list):
        raise _Reject("wrong_type", f"field 'kps' (from {path!r}) is {type(v).__name__}, expected a list of strings")
    if len(v) > rules.max_kps:
        raise _Reject("too_long", f"{len(v)} knowledge points > limit {rules.max_kps} (ingest.max_kps)")
    out: list[str] = []
    for i, x in enumerate(v):
        if _binary(x):
            raise _Reject("not_utf8", f"field 'kps[{i}]' (from {path!r}) is binary data that is not UTF-8 text")
        if not isinstance(x, str):
            raise _Reject("wrong_type", f"field 'kps[{i}]' (from {path!r}) is {type(x).__name__}, expected string")
        name = _check_chars(x, f"kps[{i}]", path).strip()
        if len(name) > rules.max_kp_chars:
            raise _Reject("too_long", f"kps[{i}] has {len(name)} chars > limit {rules.max_kp_chars} "
                                      "(ingest.max_kp_chars)")
        if name and not is_blank(name) and name not in out:
            out.append(name)
    return out or None


def _row_id(rec: dict, id_path: str | None, locator: str) -> str:
    """The source's own id when it maps one (then it is required), else the file:row locator."""
    if not id_path:
        return locator
    rid = _lookup(rec, id_path)
    if rid is None or rid == "" or isinstance(rid, str) and is_blank(rid):
        raise _Reject("missing_id", f"no id in field {id_path!r}")
    return _scalar_text(rid, "id", id_path)


def _check_lengths(q: str, answer: str | None, rules: Rules) -> None:
    """Reject over-long text last, after the answer label has become the choice text it names."""
    if len(q) > rules.max_question_chars:
        raise _Reject("too_long", f"question has {len(q)} chars > limit {rules.max_question_chars}")
    if answer is not None and len(answer) > rules.max_answer_chars:
        raise _Reject("too_long", f"answer has {len(answer)} chars > limit {rules.max_answer_chars}")


def _check_other_lengths(choices: list[str] | None, subject: str | None, lang: str | None, row_id: str | None,
                         rules: Rules) -> None:
    """Every other text a seed carries has a limit too (they reach prompts and paid endpoints)."""
    for i, c in enumerate(choices or ()):
        if len(c) > rules.max_choice_chars:
            raise _Reject("too_long", f"choices[{i}] has {len(c)} chars > limit {rules.max_choice_chars} "
                                      "(ingest.max_choice_chars)")
    for name, text, limit in (("subject", subject, rules.max_subject_chars), ("lang", lang, rules.max_lang_chars),
                              ("id", row_id, rules.max_id_chars)):
        if text is not None and len(text) > limit:
            raise _Reject("too_long", f"{name} has {len(text)} chars > limit {limit} (ingest.max_{name}_chars)")


def parse_batch(pdf: pd.DataFrame, rules_by_source: dict[str, Rules]) -> pd.DataFrame:
    """Apply parse_record to a batch of raw records; rejected rows carry _reason/_detail."""
    out = []
    for source, file, row, raw, err in zip(pdf["source"], pdf["source_file"], pdf["source_row"], pdf["raw"],
                                           pdf["read_error"]):
        locator = f"{file}:{row}"
        try:
            rec = parse_record(raw, err if isinstance(err, str) else None, rules_by_source[source], source, locator)
            rec["_reason"] = rec["_detail"] = None
        except _Reject as r:
            rec = dict.fromkeys(SEED_COLUMNS)
            rec["_reason"], rec["_detail"] = r.reason, _safe(f"{locator}: {r.detail}")
        except Exception as e:  # never let one row stop the ingest
            rec = dict.fromkeys(SEED_COLUMNS)
            rec["_reason"], rec["_detail"] = INTERNAL_ERROR, _safe(f"{locator}: {type(e).__name__}: {e}")
        out.append(rec)
    return pd.DataFrame(out, columns=SEED_COLUMNS)


def _safe(text: str) -> str:
    """A detail Arrow can store (a lone surrogate quoted from the data is escaped)."""
    return text.encode("utf-8", "backslashreplace").decode()


DOCUMENT_COLUMNS = ["record_key", "source_row_id", "text", "_reason", "_detail"]


def parse_documents(raw: pd.DataFrame, text_field: dict[str, str], id_field: dict[str, str | None]) -> pd.DataFrame:
    """General-corpus raw records -> (record_key, source_row_id, text, _reason, _detail): one text
    field per source (dotted paths allowed); a row without usable text gets a reason and a detail
    naming source, file, row and field."""
    out = []
    for key, src, file, row, body, err in zip(raw["record_key"], raw["source"], raw["source_file"],
                                              raw["source_row"], raw["raw"], raw["read_error"]):
        where = f"{src}:{file}:{row}"
        if err:
            reason, _, detail = err.partition(":")
            out.append((key, None, None, reason, f"{where}: {detail.strip() or reason}"))
            continue
        try:
            rec = json.loads(body)
        except (ValueError, RecursionError) as e:
            out.append((key, None, None, "unparseable", f"{where}: {type(e).__name__}: {e}"))
            continue
        field = text_field[src]
        text = _get(rec, field) if isinstance(rec, dict) else None
        if not isinstance(rec, dict):
            out.append((key, None, None, "not_an_object", f"{where}: a {type(rec).__name__}, not an object"))
        elif text is _MISSING or text is None:
            out.append((key, None, None, "missing_text", f"{where}: no field '{field}'"))
        elif not isinstance(text, str):
            out.append((key, None, None, "bad_text_type", f"{where}: field '{field}' is {type(text).__name__}"))
        elif not text.strip() or is_blank(text):
            out.append((key, None, None, "empty_text", f"{where}: field '{field}' is blank"))
        elif _BAD_CHARS.search(text):
            m = _BAD_CHARS.search(text)
            out.append((key, None, None, "bad_chars", f"{where}: field '{field}' holds U+{ord(m.group()):04X} "
                                                      f"at offset {m.start()}"))
        else:
            rid = _get(rec, id_field[src]) if id_field[src] else None
            rid = None if rid is None or rid is _MISSING else _safe(str(rid))
            out.append((key, rid, text, None, None))
    return pd.DataFrame(out, columns=DOCUMENT_COLUMNS)

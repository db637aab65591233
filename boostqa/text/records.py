"""Raw source record -> seed fields, or a quarantine reason (Spark-free; runs inside mapInPandas).

One function decides every per-row verdict of ingestion so the rules live in one place and are
testable in milliseconds. Cross-row rules (duplicate ids) need the whole table and live in the
stage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

# reason -> what it means (documented in the README; every reason has a test)
REASONS = {
    "not_utf8": "the row's bytes are not valid UTF-8",
    "unparseable": "the row is not valid JSON / CSV",
    "not_an_object": "the row parsed, but is not a record (e.g. a JSON array)",
    "missing_question": "the mapped question field is absent or null",
    "empty_question": "the question is empty or whitespace",
    "missing_answer": "the source requires answers and the mapped answer field is absent, null or empty",
    "missing_id": "the source maps an id field and the row has none",
    "wrong_type": "a mapped field has the wrong type (e.g. a number for the question, a string for choices)",
    "too_long": "the question or answer is over the configured length limit",
    "duplicate_row_id": "another row of the same source has the same row id (the first one is kept)",
}

SEED_COLUMNS = ["seed_uid", "source_row_id", "question", "answer", "choices", "subject_hint", "lang",
                "_reason", "_detail"]


@dataclass(frozen=True)
class Rules:
    """Per-source mapping and limits, plain data so it pickles into the UDF."""

    fields: dict[str, str | None]  # id, question, answer, choices, subject, lang -> record path
    lang: str
    require_answer: bool
    max_question_chars: int
    max_answer_chars: int
    max_choices: int
    choices_fields: tuple[str, ...] = ()
    answer_is_label: bool = False


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


def _scalar_text(value: Any, field: str, path: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _Reject("wrong_type", f"field {field!r} (from {path!r}) is {type(value).__name__}, expected string or number")


def seed_uid(source: str, source_row_id: str) -> str:
    return hashlib.sha256(f"{source}\x1f{source_row_id}".encode()).hexdigest()[:32]


def _label_to_choice(label: str, choices: list[str] | None) -> str:
    """'C' or '2' -> the text of that choice, so n-grams and embeddings see the real answer."""
    label = label.strip().rstrip(".):")
    idx = ord(label.upper()) - ord("A") if len(label) == 1 and label.isalpha() else \
        int(label) if label.isdigit() else -1
    if not choices or not 0 <= idx < len(choices):
        raise _Reject("wrong_type", f"answer label {label!r} does not name one of {len(choices or [])} choices")
    return choices[idx]


def parse_record(raw: str, read_error: str | None, rules: Rules, source: str, locator: str) -> dict:
    """One raw record -> seed fields; raises _Reject with a reason and a human detail.

    The checks run in a fixed order (record, question, answer, choices, subject/lang, id, lengths),
    so a row with several faults always gets the same, first, reason."""
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
    return {"seed_uid": seed_uid(source, row_id), "source_row_id": row_id, "question": q, "answer": answer,
            "choices": choices, "subject_hint": subject, "lang": lang or rules.lang}


def _load_object(raw: str, read_error: str | None) -> dict:
    """The record as a dict; a read error from the reader ("reason: detail") becomes its reject."""
    if read_error:
        reason, _, detail = read_error.partition(": ")
        raise _Reject(reason, detail or read_error)
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError as e:
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
    if not isinstance(q, str):
        raise _Reject("wrong_type", f"field 'question' (from {q_path!r}) is {type(q).__name__}, expected string")
    q = q.strip()
    if not q:
        raise _Reject("empty_question", f"field {q_path!r} is empty")
    return q


def _optional_text(rec: dict, fields: dict[str, str | None], name: str) -> str | None:
    """An optional scalar field (answer, subject, lang) as stripped text; None when unmapped, absent,
    null or blank, so callers need one test for "no value"."""
    path = fields.get(name)
    v = _lookup(rec, path)
    return None if v is None else _scalar_text(v, name, path).strip() or None


def _choices(rec: dict, rules: Rules) -> list[str] | None:
    """The answer options: one column per choice (``choices_fields``, absent ones skipped), or one
    list/dict field (a dict's values in key order, "A", "B", ...), capped at ``max_choices``."""
    if rules.choices_fields:
        parts = [_get(rec, p) for p in rules.choices_fields]
        return [_scalar_text(x, "choices[]", p).strip() for x, p in zip(parts, rules.choices_fields)
                if x is not _MISSING and x is not None]
    path = rules.fields.get("choices")
    c = _lookup(rec, path)
    if c is None:
        return None
    if isinstance(c, dict):  # {"A": "...", "B": "..."}
        c = [c[k] for k in sorted(c)]
    if not isinstance(c, list):
        raise _Reject("wrong_type", f"field 'choices' (from {path!r}) is {type(c).__name__}, expected list")
    choices = [_scalar_text(x, "choices[]", path) for x in c]
    if len(choices) > rules.max_choices:
        raise _Reject("wrong_type", f"{len(choices)} choices > limit {rules.max_choices}")
    return choices


def _row_id(rec: dict, id_path: str | None, locator: str) -> str:
    """The source's own id when it maps one (then it is required), else the file:row locator."""
    if not id_path:
        return locator
    rid = _lookup(rec, id_path)
    if rid is None or rid == "":
        raise _Reject("missing_id", f"no id in field {id_path!r}")
    return _scalar_text(rid, "id", id_path)


def _check_lengths(q: str, answer: str | None, rules: Rules) -> None:
    """Reject over-long text last, after the answer label has become the choice text it names."""
    if len(q) > rules.max_question_chars:
        raise _Reject("too_long", f"question has {len(q)} chars > limit {rules.max_question_chars}")
    if answer is not None and len(answer) > rules.max_answer_chars:
        raise _Reject("too_long", f"answer has {len(answer)} chars > limit {rules.max_answer_chars}")


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
            rec["_reason"], rec["_detail"] = r.reason, f"{locator}: {r.detail}"
        out.append(rec)
    return pd.DataFrame(out, columns=SEED_COLUMNS)


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
        except ValueError as e:
            out.append((key, None, None, "unparseable", f"{where}: {e}"))
            continue
        field = text_field[src]
        text = _get(rec, field) if isinstance(rec, dict) else None
        if not isinstance(rec, dict):
            out.append((key, None, None, "not_an_object", f"{where}: a {type(rec).__name__}, not an object"))
        elif text is _MISSING or text is None:
            out.append((key, None, None, "missing_text", f"{where}: no field '{field}'"))
        elif not isinstance(text, str):
            out.append((key, None, None, "bad_text_type", f"{where}: field '{field}' is {type(text).__name__}"))
        elif not text.strip():
            out.append((key, None, None, "empty_text", f"{where}: field '{field}' is blank"))
        else:
            rid = _get(rec, id_field[src]) if id_field[src] else None
            out.append((key, None if rid is None or rid is _MISSING else str(rid), text, None, None))
    return pd.DataFrame(out, columns=DOCUMENT_COLUMNS)

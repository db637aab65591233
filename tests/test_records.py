"""Every per-row ingestion verdict, Spark-free."""

import json

import pandas as pd
import pytest

from boostqa.text.records import REASONS, Rules, parse_batch, parse_record, seed_uid

RULES = Rules(fields={"id": "id", "question": "q", "answer": "a", "choices": "opts", "subject": "meta.subject",
                      "lang": None}, lang="en", require_answer=True, max_question_chars=50, max_answer_chars=20,
              max_choices=4)


def verdict(obj, rules=RULES, read_error=None):
    raw = obj if isinstance(obj, str) else json.dumps(obj)
    pdf = pd.DataFrame({"source": ["s"], "source_file": ["f.jsonl"], "source_row": [7], "raw": [raw],
                        "read_error": [read_error]})
    return parse_batch(pdf, {"s": rules}).iloc[0]


def test_valid_record_mapping_and_coercion():
    r = verdict({"id": 12, "q": "  What is 2+2? ", "a": 4, "opts": {"B": "4", "A": "3"}, "meta": {"subject": "math"}})
    assert r["_reason"] is None
    assert (r["question"], r["answer"], list(r["choices"]), r["subject_hint"], r["lang"]) == \
        ("What is 2+2?", "4", ["3", "4"], "math", "en")
    assert r["source_row_id"] == "12" and r["seed_uid"] == seed_uid("s", "12")


@pytest.mark.parametrize("obj,read_error,reason,detail", [
    (None, "not_utf8: invalid byte 0xff at offset 3", "not_utf8", "0xff"),
    ('{"q": "x", ', None, "unparseable", "invalid JSON"),
    ("[1, 2]", None, "not_an_object", "got list"),
    ({"id": 1, "a": "x"}, None, "missing_question", "'q'"),
    ({"id": 1, "q": None, "a": "x"}, None, "missing_question", "'q'"),
    ({"id": 1, "q": "   ", "a": "x"}, None, "empty_question", "empty"),
    ({"id": 1, "q": 42, "a": "x"}, None, "wrong_type", "is int"),
    ({"id": 1, "q": "ok?", "a": ["x"]}, None, "wrong_type", "'answer'"),
    ({"id": 1, "q": "ok?", "a": "x", "opts": "A or B"}, None, "wrong_type", "'choices'"),
    ({"id": 1, "q": "ok?", "a": "x", "opts": ["a", {"b": 1}]}, None, "wrong_type", "choices[]"),
    ({"id": 1, "q": "ok?", "a": "x", "opts": list("abcde")}, None, "wrong_type", "5 choices > limit 4"),
    ({"id": 1, "q": "ok?", "a": True}, None, "wrong_type", "bool"),
    ({"id": 1, "q": "ok?"}, None, "missing_answer", "requires"),
    ({"id": 1, "q": "ok?", "a": " "}, None, "missing_answer", "requires"),
    ({"q": "ok?", "a": "x"}, None, "missing_id", "'id'"),
    ({"id": 1, "q": "x" * 51, "a": "x"}, None, "too_long", "51 chars > limit 50"),
    ({"id": 1, "q": "ok?", "a": "x" * 21}, None, "too_long", "answer has 21"),
])
def test_each_reason(obj, read_error, reason, detail):
    r = verdict(obj if obj is not None else "", read_error=read_error)
    assert r["_reason"] == reason and reason in REASONS
    assert detail in r["_detail"] and r["_detail"].startswith("f.jsonl:7: ")
    assert r["seed_uid"] is None


def test_answer_optional_and_locator_id():
    rules = Rules(fields={"id": None, "question": "q", "answer": "a", "choices": None, "subject": None, "lang": "lg"},
                  lang="zh", require_answer=False, max_question_chars=100, max_answer_chars=100, max_choices=4)
    r = verdict({"q": "何为仁？"}, rules)
    assert r["_reason"] is None and r["answer"] is None and r["lang"] == "zh"
    assert r["source_row_id"] == "f.jsonl:7"
    assert verdict({"q": "x?", "lg": "de"}, rules)["lang"] == "de"


def test_parse_record_is_deterministic():
    a = parse_record('{"id": "x", "q": "a?", "a": "b"}', None, RULES, "s", "f:1")
    b = parse_record('{"a": "b", "q": "a?", "id": "x"}', None, RULES, "s", "f:2")
    assert a == b  # the id, not the position or key order, identifies a seed


def test_choice_columns_and_answer_label():
    rules = Rules(fields={"id": None, "question": "q", "answer": "label", "choices": None, "subject": None,
                          "lang": None}, lang="en", require_answer=True, max_question_chars=100, max_answer_chars=5,
                  max_choices=4, choices_fields=("A", "B", "C", "D"), answer_is_label=True)
    r = verdict({"q": "Q?", "label": "b", "A": " one ", "B": " two ", "D": 4}, rules)
    assert r["_reason"] is None and r["answer"] == "two" and list(r["choices"]) == ["one", "two", "4"]  # C absent
    r = verdict({"q": "Q?", "label": "C", "A": "one", "B": "two"}, rules)
    assert (r["_reason"], r["_detail"]) == ("wrong_type", "f.jsonl:7: answer label 'C' does not name one of 2 choices")
    r = verdict({"q": "Q?", "label": "C", "A": "one", "B": "two", "C": "a long third"}, rules)
    assert (r["_reason"], r["_detail"]) == ("too_long", "f.jsonl:7: answer has 12 chars > limit 5")  # the choice text

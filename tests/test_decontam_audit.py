"""`boostqa audit` shows which detector removed each seed: dedup by reason and detector,
decontamination by benchmark and detector (issue 13). A real lake built by the real stages, read
by the real command line."""

from __future__ import annotations

import json
import random
from pathlib import Path

from boostqa import cli
from tests.test_cli import invoke, isolate_env, rows
from tests.test_dedup_recall import ITEMS, SEEDS, _decontam, _recall_rows, _text

REPO = Path(__file__).resolve().parent.parent


def test_audit_groups_removals_by_detector(spark, make_settings, tmp_path, monkeypatch):
    rng = random.Random(5)
    long_q = _text(rng, 18)
    edited = long_q[:3] + ["zzz"] + long_q[4:9] + ["yyy"] + long_q[10:15] + long_q[16:]  # 3 edits, no 10-gram left
    items = ITEMS + [{"id": "long", "question": " ".join(long_q), "answer": "yes"}]
    exact = {"id": "exact", "question": SEEDS[4]["question"], "answer": SEEDS[4]["answer"]}  # a clean seed again
    seeds = SEEDS + _recall_rows() + [exact, {"id": "edited", "question": " ".join(edited), "answer": "maybe"}]
    flagged = _decontam(spark, make_settings, tmp_path, seeds, items)
    assert flagged["edited"].detector == "fuzzy_span" and flagged["embedded"].detector == "span"

    isolate_env(monkeypatch, REPO / "conf", tmp_path / "lake", tmp_path / "runs")
    r = invoke("audit", "-p", "local", "-o", "json", "--examples", "20")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    by_reason = {(x["reason"], x["detector"]): x["seeds"] for x in out["dedup: removed seeds by reason"]}
    assert by_reason == {("exact_duplicate", "exact"): 1, ("near_duplicate", "token"): 1}
    assert {x["detector"] for x in out["dedup: examples (lowest similarity first)"]} == {"exact", "token"}
    by_bench = {(x["benchmark"], x["detector"]): x["rows"]
                for x in out["decontamination: hits per benchmark and detector"]}
    assert by_bench == {("quiz", "span"): 1, ("quiz", "ngram+span+choices"): 2, ("quiz", "span+answer"): 1,
                        ("quiz", "fuzzy_span"): 1}
    assert sum(by_bench.values()) == len(flagged)
    ex = {x["detector"] for x in out["decontamination: examples"]}
    assert ex == {d for _, d in by_bench}
    # the table view says the same; no module-level state is left behind by the json run
    assert not hasattr(cli, "_print_df_sink")
    t = invoke("audit", "-p", "local")
    assert t.exit_code == 0, t.output
    assert ["quiz", "fuzzy_span", "1"] in rows(t.stdout, "quiz")
    assert ["near_duplicate", "token", "1"] == rows(t.stdout, "near_duplicate")[0][:3]

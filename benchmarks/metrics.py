"""Score dedup and decontamination predictions against the planted truth (truth.parquet).

Dedup (predictions = the set of doc_ids a system REMOVES as duplicates)
-----------------------------------------------------------------------
A planted group G is one original plus its copies (truth.group_id); every other document
(role unique or leak) is a singleton. An ideal system removes exactly |G|-1 members of each
group and nothing else, so the number of expected removals is the number of copies.

Headline ("lenient", order-free): within a group, removals are correct as long as at least one
member of the group is kept. Per group, TP_G = min(|R ∩ G|, |G| - 1) and the rest of R ∩ G
(1 if the whole group was removed, else 0) is a false positive. Every removed singleton is a
false positive.
    precision = sum TP_G / |R|        recall = sum TP_G / sum (|G| - 1)

"Strict" (the original must be kept: corpus.py puts every original before its copies, so a
keep-first-occurrence policy satisfies it): a removal is correct iff it is a copy and its
original is kept. Removing an original is a false positive.

Per-kind recall, one row per planted copy c with original o:
    detected  = c in R or o in R   (the pair was not left with both kept)
    strict    = c in R and o not in R
broken down by exact kind (verbatim / whitespace / case), near edit rate (0.03 / 0.08 / 0.15)
and, for near copies, by the Jaccard of word 5-grams between copy and original.

Decontamination (predictions = the set of doc_ids a system FLAGS as contaminated)
--------------------------------------------------------------------------------
Positives are the planted leaks (role == leak). precision = |F ∩ L| / |F|, recall = |F ∩ L| / |L|,
recall broken down by leak kind (verbatim / prefixed / paraphrased), by benchmark, by whether the
real benchmark answer was copied too (leak_answer), and by kind x answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

JACCARD_BINS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 1.01))


def load_truth(corpus_dir: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(Path(corpus_dir) / "truth.parquet").to_pylist()


def _pr(tp: int, n_pred: int, n_pos: int) -> dict[str, float | int | None]:
    p = tp / n_pred if n_pred else None
    r = tp / n_pos if n_pos else None
    f1 = 2 * p * r / (p + r) if p is not None and r is not None and (p + r) > 0 else None
    return {"tp": tp, "predicted": n_pred, "positives": n_pos, "precision": p, "recall": r, "f1": f1}


def _rate(hits: int, n: int) -> dict[str, Any]:
    return {"n": n, "hits": hits, "recall": hits / n if n else None}


def dedup_metrics(truth: list[dict[str, Any]], removed: Iterable[str]) -> dict[str, Any]:
    removed = set(removed)
    ids = {t["doc_id"] for t in truth}
    unknown = removed - ids
    groups: dict[str, list[str]] = defaultdict(list)
    role = {}
    for t in truth:
        role[t["doc_id"]] = t["role"]
        if t["group_id"] is not None:
            groups[t["group_id"]].append(t["doc_id"])
    expected = sum(len(m) - 1 for m in groups.values())

    tp_len = fp_in_groups = whole_groups_removed = 0
    for members in groups.values():
        k = sum(1 for m in members if m in removed)
        tp = min(k, len(members) - 1)
        tp_len += tp
        fp_in_groups += k - tp
        whole_groups_removed += int(k == len(members))
    fp_by_role: dict[str, int] = defaultdict(int)
    for d in removed:
        if d in ids and role[d] in ("unique", "leak"):
            fp_by_role[role[d]] += 1
    lenient = _pr(tp_len, len(removed), expected)
    lenient["fp_singletons"] = sum(fp_by_role.values())
    lenient["fp_whole_group_removed"] = fp_in_groups

    tp_strict = 0
    originals_removed = 0
    for t in truth:
        if t["doc_id"] not in removed:
            continue
        if t["role"] == "original":
            originals_removed += 1
        elif t["role"] in ("exact_copy", "near_copy") and t["group_id"] not in removed:
            tp_strict += 1
    strict = _pr(tp_strict, len(removed), expected)
    strict["originals_removed"] = originals_removed

    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # n, detected, strict
    by_jac: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in truth:
        if t["role"] not in ("exact_copy", "near_copy"):
            continue
        c, o = t["doc_id"], t["group_id"]
        det = int(c in removed or o in removed)
        sct = int(c in removed and o not in removed)
        key = f"exact:{t['copy_kind']}" if t["role"] == "exact_copy" else f"near:{t['edit_rate']:.2f}"
        for k in (key, "exact:all" if t["role"] == "exact_copy" else "near:all"):
            v = by_kind[k]
            v[0] += 1
            v[1] += det
            v[2] += sct
        if t["role"] == "near_copy" and t["jaccard5"] is not None:
            for lo, hi in JACCARD_BINS:
                if lo <= t["jaccard5"] < hi:
                    v = by_jac[f"[{lo:.1f},{min(hi, 1.0):.1f}{']' if hi > 1 else ')'}"]
                    v[0] += 1
                    v[1] += det
                    v[2] += sct
    fmt = lambda d: {k: {"n": v[0], "detected": v[1], "recall": v[1] / v[0] if v[0] else None,  # noqa: E731
                         "strict_recall": v[2] / v[0] if v[0] else None} for k, v in sorted(d.items())}
    return {
        "n_docs": len(truth),
        "expected_removals": expected,
        "n_groups": len(groups),
        "removed": len(removed),
        "unknown_ids": len(unknown),
        "lenient": lenient,
        "strict": strict,
        "groups_fully_removed": whole_groups_removed,
        "fp_by_role": dict(fp_by_role),
        "recall_by_kind": fmt(by_kind),
        "recall_by_jaccard5_near": fmt(by_jac),
    }


def decontam_metrics(truth: list[dict[str, Any]], flagged: Iterable[str]) -> dict[str, Any]:
    flagged = set(flagged)
    ids = {t["doc_id"] for t in truth}
    leaks = [t for t in truth if t["role"] == "leak"]
    tp = sum(1 for t in leaks if t["doc_id"] in flagged)
    out: dict[str, Any] = {"n_docs": len(truth), "n_leaks": len(leaks), "flagged": len(flagged),
                           "unknown_ids": len(flagged - ids), **_pr(tp, len(flagged), len(leaks))}
    fp_by_role: dict[str, int] = defaultdict(int)
    for t in truth:
        if t["doc_id"] in flagged and t["role"] != "leak":
            fp_by_role[t["role"]] += 1
    out["fp_by_role"] = dict(fp_by_role)
    for name, key in (("recall_by_kind", lambda t: t["leak_kind"]),
                      ("recall_by_benchmark", lambda t: t["leak_benchmark"]),
                      ("recall_by_answer", lambda t: t["leak_answer"]),
                      ("recall_by_kind_answer", lambda t: f"{t['leak_kind']}+{t['leak_answer']}_answer")):
        acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for t in leaks:
            v = acc[key(t)]
            v[0] += 1
            v[1] += int(t["doc_id"] in flagged)
        out[name] = {k: _rate(v[1], v[0]) for k, v in sorted(acc.items())}
    return out

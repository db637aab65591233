#!/usr/bin/env python
"""Hard cases for dedup and decontamination (issue 13): recall per case and precision, before and after.

    .venv/bin/python benchmarks/recall_bench.py                 # both tasks, before + after, writes results/
    .venv/bin/python benchmarks/recall_bench.py --only dedup --clean 8000
    .venv/bin/python benchmarks/recall_bench.py --only decontam --embed   # + embedding detector (slow)
    .venv/bin/python benchmarks/recall_bench.py --window-cost            # encoder cost of the embedding windows

"before" = the git-HEAD behaviour through config switches that turn the new detectors off
(dedup.recall.enabled=false; decontam: strip_labels=false, choice_ngrams=false, span.enabled=false,
window_words=0); "after" = conf/base.yaml. Each (task, config) runs the real stages on the embedded
engine in its own subprocess, so peak RSS (whole process tree, /proc sampling) is per configuration.

Dedup corpus (doc text = question + answer, like benchmarks/corpus.py):
  clean        generated QA (benchmarks/corpus.py generator) + real MMLU/GSM8K items (each distinct)
  near:R       a generated doc and a copy with round(R x words) word edits (substitute/drop/insert),
               R in 3/5/8/15 %
  near40:K     a real GSM8K question (~40-50 words) and a copy with K in {2, 3} edited words
  format       copies that differ only in case, whitespace and punctuation
  renumbered   a GSM8K problem and the same problem with names and numbers changed (a different
               problem with a different answer: reported, not a goal; merging it is debatable)
  recall = share of planted pairs in one cluster; clean wrongly merged = share of docs whose
  cluster holds a doc from outside their planted group.

Decontam corpus: reference = even-indexed MMLU + GSM8K test items; clean seeds = generated QA, the
odd-indexed MMLU/GSM8K items (real benchmark-style questions that are NOT in the reference) and
GPQA-diamond questions; leaks (from the reference):
  verbatim     the item (MMLU choices in the choices column), benchmark or synthetic answer
  light_edit   2-3 words replaced by synonyms or dropped (corpus._paraphrase)
  embedded     a short MMLU item (question < 10 words) inside a paragraph ("Here is a practice item
               ... Explain your reasoning ..."), options inline; embedded_long: a >= 15-word question
  reformatted  "Q:"/"Question:" prefix, upper case or not, options appended inline as "(a) x (b) y"
               or "A. x\\nB. y", answer as a letter
  renumbered   a GSM8K problem with names and numbers changed (goal >= 0.90 in issue 13)
  paraphrase   RULE-BASED paraphrases of >= 15-word items (``paraphrase()``: phrase templates such
               as "Which of the following" -> "Which one of these", a leading "If/When ..." clause
               moved to the end, and about one word in five swapped for a synonym). They are not
               model paraphrases: a model rewrites more freely, so this case is an upper bound on
               what the detectors catch of real paraphrases. Goal >= 0.90 with --embed.
  recall per case; false-positive rate = flagged clean seeds / clean seeds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import procmon  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE / "work" / "recall"

BEFORE = {
    "dedup": {"dedup": {"recall": {"enabled": False}}},
    "decontam": {"decontam": {"normalize": {"strip_labels": False}, "choice_ngrams": False,
                              "span": {"enabled": False}, "embedding": {"window_words": 0}}},
}
# per-detector cost: "after" minus one new detector
ABLATIONS = {
    "dedup": {},
    "decontam": {"after-no-span": {"decontam": {"span": {"enabled": False}}},  # exact and fuzzy spans off
                 "after-no-fuzzy": {"decontam": {"span": {"fuzzy_enabled": False}}},
                 "after-no-labels-choices": {"decontam": {"normalize": {"strip_labels": False},
                                                          "choice_ngrams": False}},
                 # cost of the embedding windows (only with --embed)
                 "after-no-windows": {"decontam": {"embedding": {"window_words": 0}}}},
}
NUM_RE = re.compile(r"\d+(?:\.\d+)?")


# --------------------------------------------------------------------------- corpora

def _gen_docs(n: int, seed: int) -> tuple[list[tuple[str, str]], corpus._Gen]:
    g = corpus._Gen(seed)
    docs: list[tuple[str, str]] = []
    while len(docs) < n:
        q, a = g.doc()
        if a.strip(" ."):  # seeds need an answer (ingest quarantines the rest)
            docs.append((q, a))
    return docs, g


def _edit_words(text: str, k: int, g: corpus._Gen) -> str:
    """k word edits (substitute / drop / insert) at distinct positions."""
    w = text.split()
    st = g.st
    pos = sorted({st.int(len(w)) for _ in range(k * 3)})[:k]
    while len(pos) < k:
        pos = sorted(set(pos) | {st.int(len(w))})
    for p in reversed(pos):
        op, rnd = st.int(3), g.all_words[st.int(len(g.all_words))]
        if op == 0:
            w[p] = rnd
        elif op == 1 and len(w) > 1:
            del w[p]
        else:
            w.insert(p, rnd)
    return " ".join(w)


def renumber(text: str, st: corpus._Stream, names: dict[str, str]) -> str:
    """Names (capitalised words that are in corpus._NAMES or start a possessive) and every number
    changed; the same name maps to the same new name throughout."""
    def num(m: re.Match) -> str:
        v = m.group(0)
        if "." in v:
            return f"{float(v) + 1 + st.int(9):.2f}".rstrip("0").rstrip(".")
        new = int(v) + 1 + st.int(max(int(v), 9))
        return str(new)

    out = NUM_RE.sub(num, text)

    def name(m: re.Match) -> str:
        w = m.group(0)
        if w in names:
            return names[w]
        if w in corpus._NAMES or m.group(0) + "'" in text or m.group(0) + "’" in text:
            names[w] = corpus._NAMES[st.int(len(corpus._NAMES))]
            while names[w] == w:
                names[w] = corpus._NAMES[st.int(len(corpus._NAMES))]
            return names[w]
        return w

    return re.sub(r"\b[A-Z][a-z]+\b", name, out)


# rule-based paraphrase: phrase templates (applied first), then word synonyms
_PHRASES = [
    (r"\bwhich of the following is\b", "what is"), (r"\bwhich of the following are\b", "what are"),
    (r"\bwhich of the following\b", "which one of these"), (r"\bwhat is the\b", "find the"),
    (r"\bhow many\b", "what number of"), (r"\bhow much\b", "what amount of"),
    (r"\bin order to\b", "to"), (r"\bis able to\b", "can"), (r"\bas well as\b", "and also"),
    (r"\bmost likely\b", "most probably"), (r"\bbecause of\b", "owing to"),
    (r"\bat the end of\b", "by the end of"), (r"\ba lot of\b", "many"),
]
_WORD_SYN = {
    "buys": "purchases", "bought": "purchased", "buy": "purchase", "each": "every", "every": "each",
    "gets": "receives", "got": "received", "makes": "earns", "total": "overall", "large": "big",
    "big": "large", "small": "little", "little": "small", "increase": "rise", "increases": "rises",
    "decrease": "drop", "decreases": "drops", "correct": "right", "true": "accurate", "false": "untrue",
    "statement": "claim", "statements": "claims", "person": "individual", "people": "individuals",
    "cost": "price", "costs": "is priced at", "uses": "employs", "use": "employ", "used": "employed",
    "shows": "displays", "show": "display", "important": "significant", "main": "chief",
    "primary": "principal", "major": "key", "example": "instance", "describes": "characterizes",
    "describe": "characterize", "best": "most accurately", "typically": "usually", "usually": "typically",
    "often": "frequently", "about": "around", "between": "among", "result": "outcome",
    "results": "outcomes", "called": "known as", "known": "recognized", "begins": "starts",
    "begin": "start", "ends": "finishes", "week": "seven days", "needs": "requires", "need": "require",
    "wants": "would like", "want": "would like", "gives": "hands", "gave": "handed", "has": "owns",
    "have": "possess", "many": "numerous", "amount": "quantity", "number": "count", "time": "period",
    "first": "initial", "start": "beginning", "problem": "issue", "reason": "cause", "means": "implies",
    "following": "listed", "happens": "occurs", "happened": "occurred", "change": "alteration",
    "changes": "alterations", "quickly": "rapidly", "slowly": "gradually", "entire": "whole",
    "whole": "entire", "also": "additionally", "however": "nevertheless", "therefore": "thus",
}


def paraphrase(q: str, st: corpus._Stream) -> str:
    """A rule-based paraphrase: phrase templates, a leading conditional clause moved to the end
    of its sentence, and about one word in five (where a synonym is known) swapped."""
    out = q.strip()
    for pat, rep in _PHRASES:
        out = re.sub(pat, lambda m: rep[0].upper() + rep[1:] if m.group(0)[0].isupper() else rep, out,
                     flags=re.IGNORECASE)

    def move_clause(m: re.Match) -> str:  # "If X, Y?" -> "Y if X?"
        lead, cond, main, end = m.group(1), m.group(2), m.group(3), m.group(4)
        return f"{main[0].upper()}{main[1:]} {lead.lower()} {cond}{end}"

    out = re.sub(r"\b(If|When|After|Since|Before)\s+([^,.?!]{3,80}),\s+([^.?!]{3,200})([.?!])", move_clause, out)
    words = out.split()
    cands = [i for i, w in enumerate(words) if w.lower().strip(",.?!;:") in _WORD_SYN]
    want = max(2, len(words) // 5)
    chosen = []
    while cands and len(chosen) < want:
        chosen.append(cands.pop(st.int(len(cands))))
    for i in chosen:
        w = words[i]
        core = w.lower().strip(",.?!;:")
        rep = _WORD_SYN[core]
        if w[:1].isupper():
            rep = rep[0].upper() + rep[1:]
        words[i] = rep + w[len(w.rstrip(",.?!;:")):]
    return " ".join(words)


def build_dedup(n_clean: int, seed: int, bench: list[dict]) -> tuple[list[dict], dict]:
    docs, g = _gen_docs(n_clean, seed)
    st = g.st
    rows: list[dict] = []
    truth: dict[str, tuple[str, str]] = {}  # doc id -> (group, case)

    def add(q: str, a: str, group: str | None, case: str) -> str:
        did = f"d{len(rows):06d}"
        rows.append({"id": did, "question": q, "answer": a})
        truth[did] = (group or did, case)
        return did

    gen_ids = [add(q, a, None, "clean") for q, a in docs]
    mmlu = [it for it in bench if it["benchmark"] == "mmlu"]
    gsm = [it for it in bench if it["benchmark"] == "gsm8k"]
    real_ids = []
    for it in mmlu[:: max(1, len(mmlu) // (n_clean // 8))][: n_clean // 8]:  # spread over subjects
        real_ids.append(add(it["question"] + "\n" + "\n".join(it["choices"]), it["answer"], None, "clean_real"))
    gsm_pool = gsm[: n_clean // 16 + 400]
    for it in gsm_pool[: n_clean // 16]:
        real_ids.append(add(it["question"], it["answer"], None, "clean_real"))
    spare = gsm_pool[n_clean // 16:]
    k = 0  # originals: distinct generated docs
    for rate in (0.03, 0.05, 0.08, 0.15):
        for _ in range(150):
            o = gen_ids[k]
            k += 1
            q, a = docs[int(o[1:])]
            cq, ca, _ = corpus._near_edit(q, a, rate, g)
            truth[o] = (o, "clean")
            add(cq, ca, o, f"near:{int(rate * 100)}%")
    for edits in (2, 3):  # the case: 2-3 edits in a ~40-word question
        for _ in range(100):
            it = spare.pop()
            final = it["answer"].split("####")[-1].strip()  # the final number only: the question is the text
            o = add(it["question"], final, None, "clean_real")
            add(_edit_words(it["question"], edits, g), final, o, f"near40:{edits}")
    for _ in range(100):  # format-only copies
        o = gen_ids[k]
        k += 1
        q, a = docs[int(o[1:])]
        v = st.int(3)
        cq = q.upper() if v == 0 else (corpus._whitespace_variant(q, st) if v == 1 else q.replace(",", " ;"))
        add(cq + "!!", a.lower(), o, "format")
    for _ in range(100):
        it = spare.pop()
        names: dict[str, str] = {}
        o = add(it["question"], it["answer"], None, "clean_real")
        add(renumber(it["question"], st, names), renumber(it["answer"], st, names), o, "renumbered")
    return rows, truth


def build_decontam(n_clean: int, seed: int, bench: list[dict]) -> tuple[list[dict], dict, list[dict]]:
    from boostqa.text.normalize import NormalizeOptions, words

    docs, g = _gen_docs(n_clean, seed + 1)
    st = g.st
    ref = [it for it in bench if it["item_id"] % 2 == 0]
    held = [it for it in bench if it["item_id"] % 2 == 1]
    rows: list[dict] = []
    truth: dict[str, str] = {}

    def add(q, a, choices, case):
        did = f"s{len(rows):06d}"
        rows.append({"id": did, "question": q, "answer": a, "choices": choices})
        truth[did] = case
        return did

    for q, a in docs:
        add(q, a, None, "clean")
    # held-out items that share an 8-word run with a reference item (MMLU questions on one shared
    # passage, repeated stems + options) really overlap it: they are not clean, so left out
    def grams(it):
        w = re.findall(r"\w+", " ".join([it["question"], it["answer"] or "", *(it["choices"] or [])]).lower())
        return {tuple(w[i:i + 8]) for i in range(len(w) - 7)} or {tuple(w)}
    ref_grams = set().union(*(grams(it) for it in ref))
    for it in held[:: max(1, len(held) // (n_clean // 2))]:
        if not grams(it) & ref_grams:
            add(it["question"], it["answer"], it["choices"], "clean_real")
    gpqa = Path(os.path.expanduser("~/.cache/boostqa/gpqa_diamond/gpqa_diamond.jsonl"))
    if gpqa.is_file():
        for line in (x for x in gpqa.read_text().split("\n") if x.strip()):
            r = json.loads(line)
            q = r.get("question") or r.get("Question")
            if q:
                add(q, str(r.get("answer") or r.get("Correct Answer") or ""), None, "clean_real")
    o = NormalizeOptions(strip_labels=True)
    mmlu = [it for it in ref if it["benchmark"] == "mmlu"]
    gsm = [it for it in ref if it["benchmark"] == "gsm8k"]
    rng_order = lambda xs, s: [xs[i] for i in corpus.np.random.default_rng([seed, s]).permutation(len(xs))]  # noqa
    longq = rng_order([it for it in ref if len(it["question"].split()) >= 15], 1)
    shortq = rng_order([it for it in mmlu if len(words(it["question"], o)) < 10], 2)
    gsm = rng_order(gsm, 3)
    per = 120
    for i in range(per):
        it = longq.pop()
        ans = it["answer"] if i % 2 else docs[i][1]
        add(it["question"], ans, it["choices"], "verbatim")
    for i in range(per):
        it = longq.pop()
        q, _ = corpus._paraphrase(it["question"], st)
        add(q, it["answer"] if i % 2 else docs[i][1], it["choices"], "light_edit")
    intro = ["Here is a practice item from last week's review sheet.", "My tutor gave me this one:",
             "Try this warm-up question before the main exercise.", "From the study group notes:"]
    outro = ["Explain your reasoning step by step and state the final answer clearly.",
             "Show all of your work and justify why the other options are wrong.",
             "Write a short paragraph defending your choice."]
    for i in range(per):
        it = shortq.pop()
        opts = " ".join(f"({'abcd'[j]}) {c}" for j, c in enumerate(it["choices"]))
        add(f"{intro[i % 4]} {it['question'].strip()} {opts} {outro[i % 3]}", docs[i][1], None, "embedded_short")
    for i in range(per // 2):
        it = longq.pop()
        add(f"{intro[i % 4]} {it['question'].strip()} {outro[i % 3]}", docs[i][1], None, "embedded_long")
    for i in range(per):
        it = (shortq if i % 2 else longq).pop()
        prefix = ["Q: ", "Question: ", "Question 7. ", "Q1: "][i % 4]
        q = it["question"].strip()
        if i % 3 == 0:
            q = q.upper()
        if it["choices"]:
            if i % 2:
                opts = " ".join(f"({'abcd'[j]}) {c}" for j, c in enumerate(it["choices"]))
                q = f"{prefix}{q} {opts}"
            else:
                q = f"{prefix}{q}\n" + "\n".join(f"{'ABCD'[j]}. {c}" for j, c in enumerate(it["choices"]))
            ans = "ABCD"[it["choices"].index(it["answer"])] if it["answer"] in it["choices"] else "B"
        else:
            q, ans = prefix + q, docs[i][1]
        add(q, ans, None, "reformatted")
    for i in range(per):
        it = gsm.pop()
        names: dict[str, str] = {}
        add(renumber(it["question"], st, names), renumber(it["answer"], st, names) if i % 2 else docs[i][1], None,
            "renumbered")
    # after the other cases, so that they stay what earlier runs measured
    for i in range(per):  # rule-based paraphrases (not model paraphrases: see the module docstring)
        it = longq.pop()
        add(paraphrase(it["question"], st), it["answer"] if i % 2 else docs[i][1], it["choices"], "paraphrase")
    return rows, truth, ref


# --------------------------------------------------------------------------- worker (one config)

def worker(task: str, variant: str, work: Path, embed: bool) -> dict:
    from boostqa import engine
    from boostqa.config import deep_merge, load_settings
    from boostqa.runner import Runner

    data = json.loads((work / "data.json").read_text())
    root = work / variant
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    src = root / "seeds.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in data["rows"]))
    fields = {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}
    over = {"lake": {"root": str(root / "lake")}, "runs_dir": str(root / "runs"), "tracking": {"enabled": False},
            "sources": [{"name": "s", "path": str(src), "fields": fields}]}
    if task == "decontam":
        bdir = root / "bench"
        bdir.mkdir()
        benches = {}
        for it in data["ref"]:
            benches.setdefault(it["benchmark"], []).append(it)
        for name, items in benches.items():
            (bdir / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
        over["benchmarks"] = [{"name": n, "path": str(bdir / f"{n}.jsonl"), "fields": {
            "id": "item_id", "question": "question", "answer": "answer", "choices": "choices"}} for n in benches]
        over["decontam"] = {"embedding": {"enabled": embed}}
    if variant == "before":
        over = deep_merge(over, BEFORE[task])
    elif variant in ABLATIONS[task]:
        over = deep_merge(over, ABLATIONS[task][variant])
    settings = load_settings("local", overrides=over, environ={})
    runner = Runner(settings, spark=engine.get_spark())
    pre = ["ingest"] if task == "dedup" else ["ingest", "bench"] + (["bench_embed"] if embed else [])
    run_id, _ = runner.run(pre)
    mon = procmon.PeakMemory()
    with mon:
        t0 = time.perf_counter()
        if task == "dedup":
            _, res = runner.run(["dedup"])
        else:
            from boostqa.stages import decontam

            stage = decontam.make_stage("decontam_bronze", "bronze.seeds", "silver.bench_clean",
                                        "quarantine.bench_contaminated", "seed_uid")
            res = [runner.run_stage(stage, run_id)]
        secs = time.perf_counter() - t0
    lake = runner.lake
    ids = {r.seed_uid: r.source_row_id for r in lake.read("bronze.seeds").select("seed_uid", "source_row_id").collect()}
    out = {"seconds": secs, "docs": len(data["rows"]), **mon.as_dict(), "metrics": res[0].metrics()}
    if task == "dedup":
        cl = {ids[r.seed_uid]: r.cluster_id for r in lake.read("silver.seeds").select("seed_uid", "cluster_id").collect()}
        det = {}
        for r in lake.read("quarantine.duplicates").collect():
            cl[ids[r.seed_uid]] = r.cluster_id
            det[ids[r.seed_uid]] = getattr(r, "detector", None) or r.reason
        out.update(clusters=cl, detectors=det)
    else:
        q = lake.read("quarantine.bench_contaminated").collect()
        out["flagged"] = {ids[r.seed_uid]: (getattr(r, "detector", None) or r.method) for r in q}
    engine.stop()
    return out


# --------------------------------------------------------------------------- scoring

def score_dedup(truth: dict, res: dict) -> dict:
    cl = {k: v for k, v in res["clusters"].items()}
    by_cluster: dict[str, set] = {}
    for d, c in cl.items():
        by_cluster.setdefault(c, set()).add(truth[d][0])
    cases: dict[str, list[int]] = {}
    for d, (group, case) in truth.items():
        if group != d:  # a planted copy: recall = in its original's cluster
            v = cases.setdefault(case, [0, 0])
            v[0] += 1
            v[1] += int(cl[d] == cl[group])
    wrong = [d for d in truth if len(by_cluster[cl[d]]) > 1]
    wrong_clean = [d for d in wrong if truth[d][1] in ("clean", "clean_real") and truth[d][0] == d
                   and not any(g != d for g in [truth[d][0]])]
    det: dict[str, dict[str, int]] = {}
    for d, x in res["detectors"].items():
        det.setdefault(truth[d][1], {}).setdefault(x, 0)
        det[truth[d][1]][x] += 1
    return {"recall": {k: round(v[1] / v[0], 4) for k, v in sorted(cases.items())},
            "n": {k: v[0] for k, v in sorted(cases.items())},
            "wrongly_merged_docs": len(wrong), "wrongly_merged_rate": round(len(wrong) / len(truth), 5),
            "wrongly_merged_examples": sorted(wrong)[:10], "n_docs": len(truth), "detectors": det,
            "_wrong_clean": len(wrong_clean)}


def score_decontam(truth: dict, res: dict) -> dict:
    flagged = res["flagged"]
    cases: dict[str, list[int]] = {}
    for d, case in truth.items():
        v = cases.setdefault(case, [0, 0])
        v[0] += 1
        v[1] += int(d in flagged)
    det: dict[str, dict[str, int]] = {}
    for d, x in flagged.items():
        det.setdefault(truth[d], {}).setdefault(x, 0)
        det[truth[d]][x] += 1
    clean_n = cases.get("clean", [0, 0])[0] + cases.get("clean_real", [0, 0])[0]
    clean_fp = cases.get("clean", [0, 0])[1] + cases.get("clean_real", [0, 0])[1]
    return {"rate": {k: round(v[1] / v[0], 4) for k, v in sorted(cases.items())},
            "n": {k: v[0] for k, v in sorted(cases.items())},
            "fp_rate_clean": round(clean_fp / clean_n, 5), "fp_clean": clean_fp, "n_clean": clean_n,
            "fp_examples": sorted(d for d in flagged if truth[d].startswith("clean"))[:20], "detectors": det}


# --------------------------------------------------------------------------- embedding windows' cost

def window_cost(clean: int, seed: int, sample: int = 1500) -> dict:
    """Encoder work the 40-word windows add: the decontam corpus' rows embedded whole vs the
    windows ``decontam._windows`` makes of them (``sample`` of each, one embedder, one process, so
    the ratio holds on a busy machine)."""
    import numpy as np
    import pandas as pd

    from boostqa.stages.bench_embed import embedding_text
    from boostqa.stages.decontam import _windows
    from boostqa.text.embed import make_embedder

    rows, _, _ = build_decontam(clean, seed, corpus.load_bench_items())
    texts = embedding_text(pd.Series([r["question"] for r in rows]), pd.Series([r["choices"] for r in rows]))
    wins = [w for t in texts for w in _windows(t, 40, 4)]
    emb = make_embedder({"backend": "onnx", "threads": 1})
    emb.encode(texts[:64])  # model load
    rng = np.random.default_rng(seed)
    secs = []
    for pool in (texts, wins):
        part = [pool[i] for i in rng.choice(len(pool), min(sample, len(pool)), replace=False)]
        t0 = time.perf_counter()
        emb.encode(part)
        secs.append((time.perf_counter() - t0) / len(part))
    whole, extra = secs[0] * len(texts), secs[1] * len(wins)
    return {"rows": len(texts), "rows_over_40_words": sum(len(t.split()) > 40 for t in texts), "windows": len(wins),
            "ms_per_row": round(secs[0] * 1e3, 2), "ms_per_window": round(secs[1] * 1e3, 2),
            "encoder_s_whole": round(whole), "encoder_s_windows": round(extra), "windows_share": round(extra / whole, 3)}


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("dedup", "decontam"))
    ap.add_argument("--clean", type=int, default=6000, help="generated clean docs per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed", action="store_true", help="decontam: embedding detector on (slow: embeds the reference)")
    ap.add_argument("--variants", default=None,
                    help="default: before, after and (decontam) after-no-span, after-no-labels-choices (cost per detector)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--window-cost", action="store_true", help="only measure the embedding windows' encoder cost")
    ap.add_argument("--worker", nargs=3, metavar=("TASK", "VARIANT", "WORK"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        task, variant, work = a.worker
        out = worker(task, variant, Path(work), a.embed)
        (Path(work) / f"{variant}.json").write_text(json.dumps(out))
        return 0
    if a.window_cost:
        print(json.dumps(window_cost(a.clean, a.seed)))
        return 0
    bench = corpus.load_bench_items()
    report: dict = {"date": dt.date.today().isoformat(), "clean": a.clean, "seed": a.seed, "embed": a.embed,
                    "command": "python benchmarks/recall_bench.py " + " ".join(argv or sys.argv[1:])}
    for task in (("dedup", "decontam") if not a.only else (a.only,)):
        work = WORK / f"{task}-{a.clean}-{a.seed}{'-embed' if a.embed else ''}"
        work.mkdir(parents=True, exist_ok=True)
        if task == "dedup":
            rows, truth = build_dedup(a.clean, a.seed, bench)
            ref = []
        else:
            rows, truth, ref = build_decontam(a.clean, a.seed, bench)
        (work / "data.json").write_text(json.dumps({"rows": rows, "ref": ref}))
        report[task] = {}
        variants = a.variants.split(",") if a.variants else [
            "before", "after", *(v for v in ABLATIONS[task] if a.embed or v != "after-no-windows")]
        for variant in variants:
            cmd = [sys.executable, __file__, "--worker", task, variant, str(work)] + (["--embed"] if a.embed else [])
            mon = procmon.run_monitored(cmd)
            if mon["returncode"]:
                raise SystemExit(f"{task}/{variant} failed")
            res = json.loads((work / f"{variant}.json").read_text())
            sc = score_dedup(truth, res) if task == "dedup" else score_decontam(truth, res)
            sc.update(seconds=round(res["seconds"], 2), docs_per_s=round(res["docs"] / res["seconds"], 1),
                      stage_peak_rss_mib=round(res["peak_rss_bytes"] / 2**20),
                      process_peak_rss_mib=round(mon["peak_rss_bytes"] / 2**20),
                      stage_metrics={k: v for k, v in res["metrics"].items() if "." in k or k.startswith("rows")})
            report[task][variant] = sc
            print(task, variant, json.dumps({k: v for k, v in sc.items() if k != "stage_metrics"}), flush=True)
    if not a.no_write:
        RESULTS.mkdir(exist_ok=True)
        stem = RESULTS / f"{report['date']}-recall{'-embed' if a.embed else ''}"
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        stem.with_suffix(".md").write_text(render_md(report))
        print(f"wrote {stem}.md")
    return 0


def render_md(r: dict) -> str:
    out = [f"# dedup / decontam hard cases (issue 13), {r['date']}", "",
           f"Command: `{r['command']}` ({r['clean']} generated clean docs per task, seed {r['seed']}, "
           f"embeddings {'on' if r['embed'] else 'off'}). before = HEAD behaviour via config switches, "
           "after = conf/base.yaml. seconds / docs/s / peak RSS: the dedup or decontam stage alone "
           "(ingest and bench loading excluded), process tree sampled every 0.25 s.", ""]
    for task, key in (("dedup", "recall"), ("decontam", "rate")):
        if task not in r:
            continue
        vs = list(r[task])
        cases = sorted({c for v in vs for c in r[task][v][key]})
        out += [f"## {task}", "", "| case | n | " + " | ".join(vs) + " |", "|---|---|" + "---|" * len(vs)]
        for c in cases:
            n = r[task][vs[0]]["n"].get(c)
            out.append(f"| {c} | {n} | " + " | ".join(f"{r[task][v][key].get(c, 0):.3f}" for v in vs) + " |")
        if task == "dedup":
            out.append("| clean wrongly merged (share of all docs) | " + str(r[task][vs[0]]["n_docs"]) + " | "
                       + " | ".join(f"{r[task][v]['wrongly_merged_rate']:.4f} ({r[task][v]['wrongly_merged_docs']})"
                                    for v in vs) + " |")
        else:
            out.append("| false positives on clean seeds | " + str(r[task][vs[0]]["n_clean"]) + " | "
                       + " | ".join(f"{r[task][v]['fp_rate_clean']:.4f} ({r[task][v]['fp_clean']})" for v in vs)
                       + " |")
        out.append("| stage seconds | | " + " | ".join(str(r[task][v]["seconds"]) for v in vs) + " |")
        out.append("| docs/s | | " + " | ".join(str(r[task][v]["docs_per_s"]) for v in vs) + " |")
        out.append("| peak RSS MiB (stage / whole process) | | "
                   + " | ".join(f"{r[task][v]['stage_peak_rss_mib']} / {r[task][v]['process_peak_rss_mib']}"
                                for v in vs) + " |")
        last = "after" if "after" in vs else vs[-1]
        for v in vs:
            out += ["", f"Detectors per case ({v}): `" + json.dumps(r[task][v]["detectors"]) + "`"]
        out += ["", f"Stage metrics ({last}): `" + json.dumps(r[task][last]["stage_metrics"]) + "`", ""]
        ex = r[task][last].get("wrongly_merged_examples") or r[task][last].get("fp_examples")
        if ex:
            out += [f"Wrongly merged / flagged clean docs ({last}): {ex}", ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())

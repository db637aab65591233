"""Token-ledger throughput: the ledger stage vs the raw Llama-3 encoder loop, same documents, same run.

    .venv/bin/python benchmarks/tokens_bench.py [--docs 400000] [--seed 0]

Documents: the benchmark corpus (corpus.py, synthetic QA with real MMLU/GSM8K items), rendered
in the training format "Question: {question}\\nAnswer: {answer}". Each system runs in its own
subprocess under procmon (wall time, peak RSS of the process tree):

- anchor ``raw``: pyarrow reads the parquet files, Python renders each row with str.format and
  ``len(splintr.encode_ordinary(text))``: the floor any counter pays (one core, as measured best
  for splintr on this machine);
- ``kernel``: boostqa.text.tokens (render_training_text + TokenCounter.count) over the same rows;
- ``ledger``: the real ledger stage on the embedded engine over a Delta table of the documents
  (pandas UDF, group by discipline x difficulty x mode x source, commit to gold.token_ledger),
  timed from stage start to commit, reported as tokens/s of the whole stage.

Every system must report the same token total (checked). Target: ledger >= 0.8x raw.
Results (JSON + markdown) go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from procmon import run_monitored  # noqa: E402

TEMPLATE = "Question: {question}\nAnswer: {answer}"


def _files(corpus: Path) -> list[str]:
    return sorted(str(p) for p in (corpus / "corpus").glob("*.parquet"))


def worker_raw(corpus: Path, _work: Path) -> dict:
    import pyarrow.parquet as pq
    from splintr import Tokenizer

    tok = Tokenizer.from_pretrained("llama3")
    t0 = time.perf_counter()
    total = docs = 0
    for f in _files(corpus):
        t = pq.read_table(f, columns=["question", "answer"])
        for q, a in zip(t.column("question").to_pylist(), t.column("answer").to_pylist()):
            total += len(tok.encode_ordinary(TEMPLATE.format(question=q or "", answer=a or ""))) + 1  # + EOS
            docs += 1
    return {"seconds": time.perf_counter() - t0, "tokens": total, "docs": docs}


def worker_kernel(corpus: Path, _work: Path) -> dict:
    import pyarrow.parquet as pq

    from boostqa.text.tokens import get_counter, render_training_text

    counter = get_counter("splintr:llama3")
    t0 = time.perf_counter()
    total = docs = 0
    for f in _files(corpus):
        t = pq.read_table(f, columns=["question", "answer"]).to_pylist()
        total += sum(counter.count([render_training_text(TEMPLATE, r) for r in t], add_eos=True))
        docs += len(t)
    return {"seconds": time.perf_counter() - t0, "tokens": total, "docs": docs}


def worker_ledger(corpus: Path, work: Path) -> dict:
    import shutil

    from pyspark.sql import functions as F

    from boostqa import engine
    from boostqa.config import load_settings
    from boostqa.runner import Runner
    from boostqa.stages import STAGES

    shutil.rmtree(work, ignore_errors=True)
    settings = load_settings("local", environ={}, overrides={
        "lake": {"root": str(work / "lake")}, "runs_dir": str(work / "runs"), "tracking": {"enabled": False},
        "tokens": {"tables": [{"table": "silver.bench_docs", "template": "qa",
                               "dims": {"source": "'bench'", "mode": "'seed'"}}]}})
    runner = Runner(settings)
    docs = runner.spark.read.parquet(*_files(corpus)).select(
        "doc_id", "question", "answer",
        F.element_at(F.array(*[F.lit(d) for d in ("math", "physics", "history", "law")]),
                     (F.abs(F.xxhash64("doc_id")) % 4 + 1).cast("int")).alias("discipline"),
        (F.abs(F.xxhash64("doc_id", F.lit(1))) % 5 + 1).cast("int").alias("difficulty"))
    runner.lake.overwrite(docs, "silver.bench_docs")  # not timed: the table exists before the ledger runs
    t0 = time.perf_counter()
    res = runner.run_stage(STAGES["ledger"], "bench")
    seconds = time.perf_counter() - t0
    r = runner.lake.read("gold.token_ledger").agg(F.sum("tokens").alias("t"), F.sum("records").alias("n")).first()
    engine.stop()
    return {"seconds": seconds, "tokens": int(r["t"]), "docs": int(r["n"]), "cells": res.kept}


WORKERS = {"raw": worker_raw, "kernel": worker_kernel, "ledger": worker_ledger}


def _run(system: str, corpus: Path, work: Path) -> dict:
    out = work / f"{system}.json"
    mon = run_monitored([sys.executable, __file__, "--_worker", system, str(corpus), str(work / system), str(out)])
    if mon["returncode"] != 0:
        raise RuntimeError(f"{system} failed (exit {mon['returncode']})")
    r = json.loads(out.read_text())
    return {"system": system, "docs": r["docs"], "tokens": r["tokens"], "seconds": round(r["seconds"], 2),
            "mtok_per_s": round(r["tokens"] / r["seconds"] / 1e6, 2),
            "peak_rss_mib": round(mon["peak_rss_bytes"] / 2**20), "foreign_cpu_share": mon["foreign_cpu_share"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=400_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--_worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._worker:
        system, corpus, work, out = a._worker
        Path(out).write_text(json.dumps(WORKERS[system](Path(corpus), Path(work))))
        return

    from corpus import build_corpus, load_bench_items

    work = HERE / "work" / "tokens"
    corpus = HERE / "work" / f"corpus-{a.docs}-{a.seed}"
    if not (corpus / "manifest.json").exists():
        build_corpus(corpus, a.docs, a.seed, load_bench_items())
    work.mkdir(parents=True, exist_ok=True)
    rows = [_run(s, corpus, work) for s in ("raw", "kernel", "ledger")]
    totals = {r["tokens"] for r in rows}
    if len(totals) != 1:
        raise SystemExit(f"token totals differ between systems: {[(r['system'], r['tokens']) for r in rows]}")
    raw = rows[0]["mtok_per_s"]
    for r in rows:
        r["ratio_vs_raw"] = round(r["mtok_per_s"] / raw, 3)
    lines = [f"# Token ledger throughput, {date.today()}", "",
             f"{a.docs:,} documents, {rows[0]['tokens']:,} Llama-3 tokens (training format + EOS), identical in "
             f"every system; machine: {os.cpu_count()} CPUs, Python {platform.python_version()}.", "",
             "| system | docs | tokens | seconds | Mtok/s | ratio vs raw | peak RSS MiB | foreign CPU share |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['system']} | {r['docs']:,} | {r['tokens']:,} | {r['seconds']} | {r['mtok_per_s']} | "
              f"{r['ratio_vs_raw']} | {r['peak_rss_mib']} | {r['foreign_cpu_share']} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        res = HERE / "results"
        res.mkdir(exist_ok=True)
        (res / f"{date.today()}-tokens.md").write_text(text + "\n")
        (res / f"{date.today()}-tokens.json").write_text(json.dumps({"rows": rows, "args": vars(a)}, indent=2))


if __name__ == "__main__":
    main()

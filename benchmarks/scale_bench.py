"""How cost grows with work: dedup, decontamination and the token ledger at 1x, 4x and 16x documents,
on the embedded engine (LakeSail in this process) and on JVM Spark (a Spark Connect server with
Delta, ``boostqa.jvm``, started by the worker so the JVM is part of the measured process tree).

    .venv/bin/python benchmarks/scale_bench.py [--base 20000] [--engines embedded,jvm] [--no-write]

Corpus: corpus.py's synthetic QA (planted copies and benchmark leaks), one per size. One worker
subprocess per (engine, size) runs the three tasks in order, each on a fresh lake (ours.py's
settings: ingest + dedup at Jaccard 0.72 without verification; ingest + bench + the pipeline's
decontamination stage over bronze, 10-grams, embeddings off; the ledger stage over a Delta table
of the documents, written before the clock starts). Per task: wall seconds, CPU seconds of the
worker's whole process tree (JVM and Python workers included; JVM start-up excluded) and peak RSS
of that tree (procmon, 0.25 s samples). Results: results/<date>-scale.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from procmon import PeakMemory, run_monitored  # noqa: E402

TASKS = ("dedup", "decontam", "ledger")


def _settings(work: Path, corpus: Path, bench_dir: Path, engine_cfg: dict):
    from boostqa.config import load_settings

    names = sorted(p.stem for p in bench_dir.glob("*.jsonl"))
    return load_settings("local", environ={}, overrides={
        "lake": {"root": str(work / "lake")}, "runs_dir": str(work / "runs"), "tracking": {"enabled": False},
        "engine": engine_cfg,
        "sources": [{"name": "corpus", "path": str(corpus / "corpus"), "format": "parquet",
                     "fields": {"id": "doc_id", "question": "question", "answer": "answer"}}],
        "benchmarks": [{"name": n, "path": str(bench_dir / f"{n}.jsonl"),
                        "fields": {"id": "item_id", "question": "question", "answer": "answer", "choices": "choices"}}
                       for n in names],
        "decontam": {"embedding": {"enabled": False}},
        "dedup": {"threshold": 0.72, "verify": False},
        "tokens": {"tables": [{"table": "silver.bench_docs", "template": "qa",
                               "dims": {"source": "'bench'", "mode": "'seed'"}}]}})


def _bench_files(corpus: Path, work: Path) -> Path:
    out = work / "bench"
    out.mkdir(parents=True, exist_ok=True)
    by: dict[str, list[str]] = {}
    for line in (corpus / "bench_items.jsonl").read_text().split("\n"):  # not splitlines: U+2028
        if line.strip():
            by.setdefault(json.loads(line)["benchmark"], []).append(line)
    for name, lines in by.items():
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return out


def _task(task: str, runner, corpus: Path) -> int:
    """Run one task; returns the rows it produced (removed, flagged or ledger records)."""
    from pyspark.sql import functions as F

    from boostqa.stages import STAGES, decontam

    lake = runner.lake
    if task == "dedup":
        runner.run(["ingest", "dedup"])
        return lake.read("quarantine.duplicates").count()
    if task == "decontam":
        run_id, _ = runner.run(["ingest", "bench"])
        runner.run_stage(decontam.make_stage("decontam_bronze", "bronze.seeds", "silver.bench_clean",
                                             "quarantine.bench_contaminated", "seed_uid"), run_id)
        return lake.read("quarantine.bench_contaminated").count()
    r = lake.read("gold.token_ledger").agg(F.sum("records").alias("n")).first()
    return int(r["n"])


def _prepare_ledger(runner, corpus: Path) -> None:
    from pyspark.sql import functions as F

    files = sorted(str(p) for p in (corpus / "corpus").glob("*.parquet"))
    docs = runner.spark.read.parquet(*files).select(
        "doc_id", "question", "answer",
        F.element_at(F.array(*[F.lit(d) for d in ("math", "physics", "history", "law")]),
                     (F.abs(F.xxhash64("doc_id")) % 4 + 1).cast("int")).alias("discipline"),
        (F.abs(F.xxhash64("doc_id", F.lit(1))) % 5 + 1).cast("int").alias("difficulty"))
    runner.lake.overwrite(docs, "silver.bench_docs")


def worker(engine_kind: str, corpus: Path, work: Path) -> list[dict]:
    from boostqa import engine, jvm
    from boostqa.runner import Runner
    from boostqa.stages import STAGES

    srv = None
    engine_cfg: dict = {"kind": "embedded"}
    if engine_kind == "jvm":
        srv = jvm.ConnectServer(jvm.fetch(), master="local[2]", driver_memory="3g").start()
        engine_cfg = {"kind": "remote", "remote": srv.url}
    rows = []
    try:
        for task in TASKS:
            tw = work / task
            shutil.rmtree(tw, ignore_errors=True)
            runner = Runner(_settings(tw, corpus, _bench_files(corpus, tw), engine_cfg))
            runner.spark.range(1).count()  # the engine is up before the clock starts
            if task == "ledger":
                _prepare_ledger(runner, corpus)  # not timed: the table exists before the ledger runs
            mon = PeakMemory(os.getpid())
            mon.sample()
            with mon:
                t0 = time.perf_counter()
                if task == "ledger":
                    runner.run_stage(STAGES["ledger"], "scale")
                n = _task(task, runner, corpus)
                seconds = time.perf_counter() - t0
            rows.append({"task": task, "seconds": round(seconds, 2), "cpu_seconds": round(mon.tree_cpu_seconds, 1),
                         "peak_rss_mib": round(mon.peak_rss / 2**20), "processes": mon.max_procs, "output_rows": n})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if srv is not None:
            for s in list(engine._by_url.values()):  # release the server's sessions before it goes
                try:
                    s.stop()
                except Exception:
                    pass
            srv.stop()
        engine.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=20_000)
    ap.add_argument("--factors", default="1,4,16")
    ap.add_argument("--engines", default="embedded,jvm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--collect", action="store_true", help="only tabulate the sizes already measured")
    ap.add_argument("--_worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._worker:
        kind, corpus, work, out = a._worker
        Path(out).write_text(json.dumps(worker(kind, Path(corpus), Path(work))))
        return

    from corpus import build_corpus, load_bench_items

    items = load_bench_items()
    t_start = time.time()
    plan = [(int(f), kind) for f in a.factors.split(",") for kind in a.engines.split(",")]
    for factor, kind in plan:
        if a.collect:
            break
        n = a.base * factor
        corpus = HERE / "work" / f"corpus-scale-{n}-{a.seed}"
        if not (corpus / "manifest.json").exists():
            build_corpus(corpus, n, a.seed, items)
        work = HERE / "work" / "scale" / f"{kind}-{n}"
        work.mkdir(parents=True, exist_ok=True)
        (work / "rows.json").unlink(missing_ok=True)
        mon = run_monitored([sys.executable, __file__, "--_worker", kind, str(corpus), str(work),
                             str(work / "rows.json")])
        (work / "monitor.json").write_text(json.dumps(mon))
        print(f"{kind} {n}: exit {mon['returncode']}", flush=True)
    results = []
    for base_factor in sorted({1, 4, 16} | {f for f, _ in plan}):  # every size measured so far
        for kind in ("embedded", "jvm"):
            n = a.base * base_factor
            work = HERE / "work" / "scale" / f"{kind}-{n}"
            if not (work / "monitor.json").exists():
                continue
            mon = json.loads((work / "monitor.json").read_text())
            if not (work / "rows.json").exists():
                results.append({"engine": kind, "docs": n, "factor": base_factor, "error": f"exit {mon['returncode']}"})
                continue
            for r in json.loads((work / "rows.json").read_text()):
                results.append({"engine": kind, "docs": n, "factor": base_factor, **r,
                                "foreign_cpu_share": mon["foreign_cpu_share"]})
    print(json.dumps(results, indent=1))
    if not a.no_write:
        _write(HERE / "results", a, results, time.time() - t_start)


def _write(res: Path, a, results: list[dict], elapsed: float) -> None:
    ratios = {}
    for r in results:
        if "seconds" in r:
            ratios.setdefault((r["engine"], r["task"]), {})[r["factor"]] = r["seconds"]
    lines = [f"# Scale: dedup, decontamination, token ledger at 1x/4x/16x documents, {date.today()}", "",
             f"Command: `.venv/bin/python benchmarks/scale_bench.py --base {a.base} --factors {a.factors} "
             f"--engines {a.engines}`; machine: {os.cpu_count()} CPUs, shared with other jobs (see foreign CPU "
             "share: the rest of the machine's use of all cores during the worker; timings are noisy). "
             "JVM = Apache Spark 4.0.1 + Delta 4.0.0 as a Spark Connect server on local[2], driver heap 3g, "
             "started by the worker (start-up not timed; its memory is in the tree). Seconds: the task "
             "from first read to last commit; CPU s and peak RSS: the worker's whole process tree.", "",
             "| engine | task | docs | seconds | CPU s | peak RSS MiB | output rows | foreign CPU share |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['engine']} | (all) | {r['docs']:,} | failed: {r['error']} | | | | |")
        else:
            lines.append(f"| {r['engine']} | {r['task']} | {r['docs']:,} | {r['seconds']} | {r['cpu_seconds']} | "
                         f"{r['peak_rss_mib']} | {r['output_rows']:,} | {r['foreign_cpu_share']} |")
    lines += ["", "| engine | task | time 16x/1x (goal <= 18) | time 4x/1x |", "|---|---|---|---|"]
    for (eng, task), by in ratios.items():
        r16 = f"{by[16] / by[1]:.1f}" if 16 in by and 1 in by else "not run"
        r4 = f"{by[4] / by[1]:.1f}" if 4 in by and 1 in by else "not run"
        lines.append(f"| {eng} | {task} | {r16} | {r4} |")
    lines.append("\nRows come from the per-worker files under benchmarks/work/scale/ (one worker per engine and "
                 "size; `--collect` tabulates them without running).")
    res.mkdir(exist_ok=True)
    (res / f"{date.today()}-scale.md").write_text("\n".join(lines) + "\n")
    (res / f"{date.today()}-scale.json").write_text(json.dumps({"args": {k: v for k, v in vars(a).items()
                                                                          if k != "_worker"}, "rows": results}, indent=2))


if __name__ == "__main__":
    main()

"""LLM-layer throughput: boostqa's client and annotate stage vs a bare asyncio + openai loop.

    .venv/bin/python benchmarks/llm_bench.py [--requests 4000] [--concurrency 64] [--latency-ms 20]

The simulator runs in its own process (so its CPU is not charged to the client). Each system
runs in its own subprocess, measured by procmon (wall time, peak RSS of the process tree):

- anchor ``bare``: asyncio.Semaphore(C) + AsyncOpenAI.chat.completions.create with the same
  json_schema response format, no retries, no parsing: the floor any client pays;
- ``client``: boostqa.llm.client.run_requests (sliding window C, retries, breaker, strict pydantic
  parsing, usage/latency bookkeeping) on the same requests;
- ``stage``: the annotate stage end to end on the embedded engine (render prompts, mapInPandas,
  the call log, Delta commits) over N seeds, reported as calls/s of the whole stage.

Memory flatness: the client is also run on 4x the requests; its peak RSS should barely move.
Results (JSON + markdown) go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from procmon import run_monitored  # noqa: E402

SCHEMA_NAME = "Label"


def _schema():
    from typing import Literal

    from pydantic import BaseModel, Field

    class Label(BaseModel):
        discipline: Literal["mathematics/algebra", "physics/mechanics", "history/modern", "law/contracts"]
        difficulty: Literal["H1", "H2", "H3", "H4", "H5"]
        rationale: str = Field(..., min_length=1, max_length=600)

    return Label


def _messages(i: int) -> list[dict]:
    return [{"role": "system", "content": "You label exam questions. Answer with JSON."},
            {"role": "user", "content": f"Question {i}: what is {i} + {i * 7 % 13}? Explain the steps briefly."}]


# ------------------------------------------------------------------------------------ workers
def worker_bare(url: str, n: int, c: int) -> dict:
    import asyncio

    from openai import AsyncOpenAI

    schema = _schema()
    fmt = {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema.model_json_schema(),
                                                  "strict": True}}

    async def main():
        client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)
        sem = asyncio.Semaphore(c)
        ok = 0

        async def one(i):
            nonlocal ok
            async with sem:
                r = await client.chat.completions.create(model="sim-annotator", messages=_messages(i),
                                                         response_format=fmt, max_tokens=256)
                ok += bool(r.choices[0].message.content)

        await asyncio.gather(*(one(i) for i in range(n)))
        await client.close()
        return ok

    t0 = time.perf_counter()
    ok = asyncio.run(main())
    return {"seconds": time.perf_counter() - t0, "ok": ok}


def worker_client(url: str, n: int, c: int) -> dict:
    from boostqa.llm.client import Endpoint, Request, run_requests

    ep = Endpoint(name="bench", base_url=url, model="sim-annotator", max_concurrency=c, max_tokens=256)
    reqs = (Request(f"k{i}", _messages(i)) for i in range(n))
    t0 = time.perf_counter()
    res = run_requests(ep, reqs, _schema())
    return {"seconds": time.perf_counter() - t0, "ok": sum(r.status == "ok" for r in res)}


def worker_stage(url: str, n: int, c: int, work: str) -> dict:
    import json as _json

    from boostqa import engine
    from boostqa.config import load_settings
    from boostqa.runner import Runner

    import shutil

    work_dir = Path(work)
    shutil.rmtree(work_dir, ignore_errors=True)  # a fresh lake: a reused call log would make no calls
    work_dir.mkdir(parents=True, exist_ok=True)
    src = work_dir / "seeds.jsonl"
    with open(src, "w") as f:
        for i in range(n):
            f.write(_json.dumps({"id": i, "question": _messages(i)[1]["content"], "answer": str(i)}) + "\n")
    bench = work_dir / "bench.jsonl"
    bench.write_text('{"question": "an unrelated reference question about nothing at all", "answer": "x"}\n')
    settings = load_settings("local", environ={}, overrides={
        "lake": {"root": str(work_dir / "lake")}, "runs_dir": str(work_dir / "runs"),
        "sources": [{"name": "s", "path": str(src), "fields": {"id": "id"}}],
        "benchmarks": [{"name": "b", "path": str(bench)}],
        "decontam": {"embedding": {"enabled": False}},
        "llm": {"chunk_rows": n, "parallel_tasks": 2,
                "endpoints": {"annotator": {"base_url": url, "model": "sim-annotator", "max_concurrency": c,
                                            "rpm": None}}}})
    runner = Runner(settings)
    runner.run(["ingest", "bench", "dedup", "decontam"])
    t0 = time.perf_counter()
    _, [res] = runner.run(["annotate"])
    seconds = time.perf_counter() - t0
    engine.stop()
    return {"seconds": seconds, "ok": res.kept}


# ------------------------------------------------------------------------------------ driver
def _run(system: str, url: str, n: int, c: int, work: Path) -> dict:
    out = work / f"{system}-{n}.json"
    cmd = [sys.executable, __file__, "--_worker", system, url, str(n), str(c), str(work), str(out)]
    mon = run_monitored(cmd)
    if mon["returncode"] != 0:
        raise RuntimeError(f"{system} failed (exit {mon['returncode']})")
    r = json.loads(out.read_text())
    return {"system": system, "requests": n, "concurrency": c, "seconds": round(r["seconds"], 2),
            "req_per_s": round(n / r["seconds"], 1), "ok": r["ok"],
            "peak_rss_mib": round(mon["peak_rss_bytes"] / 2**20), "foreign_cpu_share": mon["foreign_cpu_share"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--_worker", nargs=6, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._worker:
        system, url, n, c, work, out = a._worker
        fn = {"bare": worker_bare, "client": worker_client}.get(system)
        r = fn(url, int(n), int(c)) if fn else worker_stage(url, int(n), int(c), str(Path(work) / "stage"))
        Path(out).write_text(json.dumps(r))
        return

    work = HERE / "work" / "llm"
    work.mkdir(parents=True, exist_ok=True)
    port = 18000 + os.getpid() % 1000
    sim = subprocess.Popen([sys.executable, "-m", "boostqa.llm.sim", "--port", str(port), "--latency", "fixed",
                            "--latency-ms", str(a.latency_ms)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        n, c = a.requests, a.concurrency
        rows = [_run("bare", url, n, c, work), _run("client", url, n, c, work),
                _run("client", url, 4 * n, c, work), _run("stage", url, n, c, work)]
    finally:
        sim.terminate()
        sim.wait()
    bare = rows[0]["req_per_s"]
    for r in rows:
        r["ratio_vs_bare"] = round(r["req_per_s"] / bare, 3)
    growth = rows[2]["peak_rss_mib"] - rows[1]["peak_rss_mib"]
    lines = [f"# LLM layer throughput, {date.today()}", "",
             f"Simulator in its own process, fixed {a.latency_ms} ms latency; concurrency {a.concurrency}; "
             f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}.", "",
             "| system | requests | req/s | ratio vs bare | peak RSS MiB | ok | foreign CPU share |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['system']} | {r['requests']} | {r['req_per_s']} | {r['ratio_vs_bare']} | {r['peak_rss_mib']} | "
              f"{r['ok']} | {r['foreign_cpu_share']} |" for r in rows]
    lines += ["", f"client peak RSS growth from {n} to {4 * n} requests: {growth} MiB"]
    text = "\n".join(lines)
    print(text)
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / f"{date.today()}-llm.md").write_text(text + "\n")
    (res_dir / f"{date.today()}-llm.json").write_text(json.dumps({"rows": rows, "rss_growth_mib": growth,
                                                                  "args": vars(a)}, indent=2))


if __name__ == "__main__":
    main()

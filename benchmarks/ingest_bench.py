"""Reading sources on the driver vs by Spark on the executors (sources.read_raw), same kernel.

    .venv/bin/python benchmarks/ingest_bench.py [--rows 200000] [--repeat 3]

Inputs: the demo sources (5 small jsonl files, incl. CHAMP from the data cache when fetched), one
generated jsonl source of --rows rows, the same rows split into 20 files, and the same rows as
gzip. Each is read (listed, decoded, staged, counted) with ``driver_max_mb`` high (driver) and 0
(Spark), after one warm-up; the median of --repeat runs is printed as JSON lines, with MB and
rows/s. The default ``ingest.driver_max_mb`` is set where the driver stops winning.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boostqa import engine, sources  # noqa: E402
from boostqa.config import IngestConfig, SourceConfig, load_settings  # noqa: E402


def generate(root: Path, rows: int) -> dict[str, list[SourceConfig]]:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "theta", "sigma", "omega", "kappa", "lambda", "zeta"]
    lines = [json.dumps({"id": f"r{i}", "question": " ".join(rng.choice(words) for _ in range(30)) + "?",
                         "answer": " ".join(rng.choice(words) for _ in range(60)),
                         "choices": [rng.choice(words) for _ in range(4)], "subject": "math"}) for i in range(rows)]
    (root / "one").mkdir()
    (root / "one" / "all.jsonl").write_text("\n".join(lines) + "\n")
    (root / "many").mkdir()
    for k in range(20):
        (root / "many" / f"part-{k:02d}.jsonl").write_text("\n".join(lines[k::20]) + "\n")
    (root / "gz").mkdir()
    (root / "gz" / "all.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), 6))
    fields = {"id": "id", "question": "question", "answer": "answer", "choices": "choices", "subject": "subject"}
    out = {f"{rows // 1000}k rows, 1 file": [SourceConfig(name="gen", path=str(root / "one"), fields=fields)],
           f"{rows // 1000}k rows, 20 files": [SourceConfig(name="gen", path=str(root / "many"), fields=fields)],
           f"{rows // 1000}k rows, 1 gzip file": [SourceConfig(name="gen", path=str(root / "gz"), fields=fields)]}
    for n in (1000, 10_000, 50_000):
        (root / f"small{n}").mkdir()
        (root / f"small{n}" / "x.jsonl").write_text("\n".join(lines[:n]) + "\n")
        out[f"{n // 1000}k rows, 1 file"] = [SourceConfig(name="gen", path=str(root / f"small{n}"), fields=fields)]
    return out


def measure(spark, srcs, cache_dir, mb: float, repeat: int) -> dict:
    times, result = [], None
    for i in range(repeat + 1):
        stage = tempfile.mkdtemp(prefix="bench-stage-") + "/raw.parquet"
        t0 = time.perf_counter()
        raw = sources.read_raw(spark, srcs, cache_dir, stage, IngestConfig(driver_max_mb=mb))
        n = raw.df.count()
        dt = time.perf_counter() - t0
        if i:  # the first run warms the engine and the OS cache
            times.append(dt)
        result = (raw.reader, n, sum(f.size for f in raw.files))
    med = statistics.median(times)
    return {"reader": result[0], "rows": result[1], "mb": round(result[2] / 2**20, 2), "seconds": round(med, 3),
            "rows_per_s": round(result[1] / med), "runs": [round(t, 3) for t in times]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    spark = engine.get_spark()
    settings = load_settings("demo", environ={})
    inputs = {"demo sources": list(settings.sources)}
    try:
        for s in inputs["demo sources"]:
            sources.list_source(None, s, settings.cache_dir())
    except sources.SourceError:  # CHAMP not fetched: the bundled ones only
        inputs["demo sources"] = [s for s in settings.sources if not s.path.startswith("cache://")]
    with tempfile.TemporaryDirectory() as tmp:
        inputs.update(generate(Path(tmp), args.rows))
        for name, srcs in inputs.items():
            for mb in (1e6, 0):
                r = measure(spark, srcs, settings.cache_dir(), mb, args.repeat)
                print(json.dumps({"input": name, **r}), flush=True)
    engine.stop()


if __name__ == "__main__":
    main()

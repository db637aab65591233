"""The LLM stages under every provider dialect of the simulator: calls per accepted QA and the
outcome mix (what the issue's closing note quotes). Not a quality measure: the simulator's
answers are fake; this shows the protocol per provider (modes used, re-asks, no row lost).

    .venv/bin/python benchmarks/provider_modes.py [--seeds 40] [--providers deepseek,openai,...]

Each provider runs the pipeline annotate -> probe -> weights -> sample -> synthesize -> check ->
refine -> gate on the same seeds in its own lake, every endpoint set to `provider: <p>` with
`base_url: simulator` (which then speaks that provider's dialect). Results go to
benchmarks/results/<date>-providers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PROVIDERS = ("deepseek", "openai", "vllm", "sglang", "llamacpp", "databricks", "openai_compatible")
STAGES = ["ingest", "bench", "dedup", "decontam", "annotate", "probe", "weights", "sample", "synthesize", "check",
          "refine", "gate"]
LLM = ("annotate", "probe", "synthesize", "check", "refine")


def seeds(n: int) -> list[dict]:
    topics = ["optics", "kinematics", "enzymes", "tariffs", "sonnets", "limits", "alloys", "treaties"]
    out = []
    for i in range(n):
        row = {"id": f"s{i}", "question": f"Seed {i} on {topics[i % 8]}: compute {i} times {i + 3} using "
               f"method {i * 11} of the {topics[(i // 8) % 8]} unit", "answer": f"The answer is {i * (i + 3)}."}
        if i % 3 == 0:
            row["choices"] = [str(i * (i + 3)), str(i), str(i + 3), str(2 * i)]
            row["answer"] = "A"
        out.append(row)
    return out


def run_provider(provider: str, n: int, root: Path) -> dict:
    from boostqa.config import load_settings
    from boostqa.runner import Runner
    from boostqa.stages import llm

    src = root / "seeds.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in seeds(n)))
    (root / "bench.jsonl").write_text(json.dumps({"question": "Which river flows through Cairo?", "answer": "Nile"}) + "\n")
    eps = {name: {"provider": provider, "base_url": "simulator"}
           for name in ("annotator", "generator", "refiner", "probe")}
    if provider == "openai":  # its reasoning models take max_completion_tokens and the default temperature
        eps["generator"].update(model="o4-mini-reasoner")
    settings = load_settings("local", environ={}, overrides={
        "sources": [{"name": "s", "path": str(src),
                     "fields": {"id": "id", "question": "question", "answer": "answer", "choices": "choices"}}],
        "benchmarks": [{"name": "b", "path": str(root / "bench.jsonl")}],
        "decontam": {"embedding": {"enabled": False}}, "lake": {"root": str(root / "lake")},
        "runs_dir": str(root / "runs"), "tracking": {"enabled": False}, "probe": {"per_cell": 3},
        "synthesis": {"budget_qa": 3 * n}, "llm": {"endpoints": eps}})
    llm.stop_simulator()
    runner = Runner(settings)
    t0 = time.monotonic()
    _, results = runner.run(STAGES)
    wall = time.monotonic() - t0
    llm.stop_simulator()
    outcome: dict[str, dict[str, int]] = {}
    for r in results:
        if r.stage in LLM:
            o = outcome.setdefault(r.stage, {"pending": 0, "kept": 0, "rejected": 0, "deferred": 0})
            for k in o:
                o[k] += getattr(r, k)
    calls = runner.lake.read("ops.llm_calls").toPandas()
    gold = runner.lake.read("gold.boostqa").count() if runner.lake.exists("gold.boostqa") else 0
    return {"provider": provider, "wall_s": round(wall, 1), "calls": len(calls), "accepted_qa": gold,
            "calls_per_accepted_qa": round(len(calls) / gold, 2) if gold else None,
            "modes": calls.groupby("response_format").size().to_dict(),
            "statuses": calls.groupby("status").size().to_dict(),
            "lost": sum(o["pending"] - o["kept"] - o["rejected"] - o["deferred"] for o in outcome.values()),
            "outcomes": outcome}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    args = ap.parse_args()
    rows = []
    for p in args.providers.split(","):
        with tempfile.TemporaryDirectory() as d:
            rows.append(run_provider(p, args.seeds, Path(d)))
            print(json.dumps(rows[-1]), flush=True)
    out = HERE / "results" / f"{date.today()}-providers"
    out.with_suffix(".json").write_text(json.dumps({"seeds": args.seeds, "python": platform.python_version(),
                                                    "rows": rows}, indent=1))
    lines = [f"# LLM stages per simulator provider dialect, {date.today()}", "",
             f"{args.seeds} seeds; the whole pipeline per provider; simulator answers (fake), so this shows "
             "the protocol, not quality.", "",
             "| provider | output modes used | calls | accepted QA | calls / accepted QA | rows lost | "
             "call statuses | wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['provider']} | {r['modes']} | {r['calls']} | {r['accepted_qa']} | "
                     f"{r['calls_per_accepted_qa']} | {r['lost']} | {r['statuses']} | {r['wall_s']} |")
    lines += ["", "Outcomes per stage (kept / rejected / deferred of pending):", ""]
    for r in rows:
        lines.append(f"- {r['provider']}: " + "; ".join(f"{s} {o['kept']}/{o['rejected']}/{o['deferred']} of "
                                                        f"{o['pending']}" for s, o in r["outcomes"].items()))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""`boostqa plan`: what the pending LLM work would cost, without calling anything.

For each LLM stage: pending rows (as the runner would compute them), their rendered prompts,
requests already answered in ops.llm_calls, exact prompt tokens (target tokenizer), estimated
completion tokens, cost from configured prices, and time at the configured RPM/TPM.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.stages import STAGES, resolve
from boostqa.stages.base import StageContext


def _duration(minutes: float) -> str:
    s = minutes * 60
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def plan_stages(runner, names: list[str] | None = None, tokenizer: str = "llama3") -> list[dict]:
    stages = [s for s in resolve(names) if s.llm] if names else [s for s in STAGES.values() if s.llm]
    out = []
    for stage in stages:
        ep_name, prompt_id, render = stage.llm(runner.settings)
        ep = runner.settings.llm.endpoints[ep_name]
        driving_alias, driving_table = next(iter(stage.input_specs(runner.settings).items()))
        row = {"stage": stage.name, "endpoint": ep_name, "model": ep.model, "pending": 0, "calls": 0, "reused": 0,
               "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "time": "-", "limited_by": "-",
               "tokenizer": tokenizer}
        if not runner.lake.exists(driving_table):
            row["limited_by"] = f"input {driving_table} not built yet"
            out.append(row)
            continue
        ctx = StageContext(runner.spark, runner.settings, "plan", stage)
        driving = runner.lake.read(driving_table)
        if stage.prepare:
            driving = stage.prepare(ctx, driving)
        pending = runner._pending(stage, driving)
        others = {a: runner.lake.read(t) for a, t in stage.input_specs(runner.settings).items()
                  if a != driving_alias and not t.startswith("files:") and runner.lake.exists(t)}
        reqs = render(ctx, pending, **others).dropDuplicates(["request_key"])
        if runner.lake.exists("ops.llm_calls"):
            logged = runner.lake.read("ops.llm_calls").where(F.col("prompt_id") == prompt_id).select("request_key")
            row["reused"] = reqs.join(logged, "request_key", "left_semi").count()
            reqs = reqs.join(logged, "request_key", "left_anti")

        def count(batches):
            import json

            from boostqa.text.tokens import count_tokens

            for pdf in batches:
                texts = ["\n".join(m["content"] for m in json.loads(x)) for x in pdf["messages"]]
                yield pd.DataFrame({"n": count_tokens(texts, tokenizer)})

        agg = reqs.select("messages").mapInPandas(count, T.StructType([T.StructField("n", T.LongType())])) \
            .agg(F.count("*").alias("calls"), F.sum("n").alias("tokens")).first()
        calls, tokens = int(agg["calls"] or 0), int(agg["tokens"] or 0)
        completion = calls * ep.est_completion_tokens
        row.update(pending=pending.count(), calls=calls, prompt_tokens=tokens, completion_tokens=completion,
                   cost_usd=tokens / 1e6 * ep.price_input_per_mtok + completion / 1e6 * ep.price_output_per_mtok)
        limits = {k: v for k, v in {"rpm": calls / ep.rpm if ep.rpm else None,
                                    "tpm": (tokens + calls * ep.max_tokens) / ep.tpm if ep.tpm else None}.items()
                  if v is not None}  # minutes each configured limit needs; the largest binds
        if calls == 0:
            row["time"], row["limited_by"] = "0 s", "nothing pending"
        elif limits:
            which = max(limits, key=limits.get)
            row["time"], row["limited_by"] = _duration(limits[which]), which
        else:
            row["time"], row["limited_by"] = "unbounded", "concurrency x latency (no rpm/tpm set)"
        out.append(row)
    return out

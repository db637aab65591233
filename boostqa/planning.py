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
from boostqa.stages.llm import pending_requests


def _duration(minutes: float) -> str:
    s = minutes * 60
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def plan_stages(runner, names: list[str] | None = None, tokenizer: str = "llama3") -> list[dict]:
    """One row per LLM stage: pending rows, calls (new and already logged), tokens, cost, time."""
    stages = [s for s in resolve(names) if s.llm] if names else [s for s in STAGES.values() if s.llm]
    return [_plan_stage(runner, stage, tokenizer) for stage in stages]


def _plan_stage(runner, stage, tokenizer: str) -> dict:
    task = stage.llm.tasks[0](stage.settings_view(runner.settings))
    ep = runner.settings.llm.endpoints[task.endpoint_name]
    driving_table = next(iter(stage.input_specs(runner.settings).values()))
    row = {"stage": stage.name, "endpoint": task.endpoint_name, "model": ep.model, "pending": 0, "calls": 0,
           "reused": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "time": "-", "limited_by": "-",
           "tokenizer": tokenizer}
    if not runner.lake.exists(driving_table):
        row["limited_by"] = f"input {driving_table} not built yet"
        return row
    ctx = runner.context(stage, "plan")
    pending = runner.pending(stage, ctx)
    reqs = pending_requests(ctx, pending).dropDuplicates(["request_key"])
    if runner.lake.exists("ops.llm_calls"):
        logged = runner.lake.read("ops.llm_calls").where(F.col("prompt_id").isin(task.prompt_ids)) \
            .select("request_key")
        row["reused"] = reqs.join(logged, "request_key", "left_semi").count()
        reqs = reqs.join(logged, "request_key", "left_anti")

    calls, tokens = _count(reqs, tokenizer)
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
    return row


def _count(reqs, tokenizer: str) -> tuple[int, int]:
    """(calls, exact prompt tokens) of the requests, counted with the target tokenizer."""
    def count(batches):
        import json

        from boostqa.text.tokens import count_tokens

        for pdf in batches:
            texts = ["\n".join(m["content"] for m in json.loads(x)) for x in pdf["messages"]]
            yield pd.DataFrame({"n": count_tokens(texts, tokenizer)})

    agg = reqs.select("messages").mapInPandas(count, T.StructType([T.StructField("n", T.LongType())])) \
        .agg(F.count("*").alias("calls"), F.sum("n").alias("tokens")).first()
    return int(agg["calls"] or 0), int(agg["tokens"] or 0)

"""The Spark side of LLM stages: endpoints, the call log, and calls from mapInPandas.

A stage renders its prompts into (request_key, messages) rows; ``call`` looks each key up in
``ops.llm_calls`` (a logged ok/invalid response is reused, never paid for again), sends the rest
through the async client inside mapInPandas (one event loop per task, the endpoint's global
concurrency/RPM/TPM budget divided by ``llm.parallel_tasks``), and returns one result row per
key. Stages turn results into outcomes: ok -> kept, invalid -> rejected with the raw text,
failed -> deferred (pending for the next run, error in ``ops.llm_failures``).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable

import pandas as pd
from pydantic import BaseModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.llm.client import Endpoint, Request, run_requests
from boostqa.llm.prompts import Prompt, request_key
from boostqa.stages.base import StageContext, StageError

RESULT_FIELDS = [("request_key", T.StringType()), ("status", T.StringType()), ("raw", T.StringType()),
                 ("reasoning", T.StringType()), ("finish_reason", T.StringType()), ("prompt_tokens", T.LongType()),
                 ("completion_tokens", T.LongType()), ("latency_ms", T.DoubleType()), ("attempts", T.LongType()),
                 ("error", T.StringType()), ("http_status", T.LongType()), ("simulated", T.BooleanType())]
RESULT_SCHEMA = T.StructType([T.StructField(n, t) for n, t in RESULT_FIELDS])
RESULT_COLUMNS = [n for n, _ in RESULT_FIELDS]

_sim_lock = threading.Lock()
_simulator = None


def simulator_url(ctx: StageContext) -> str:
    """Start (once per process) boostqa's simulator on loopback and return its /v1 URL."""
    global _simulator
    from boostqa.llm.simulator import SimConfig, SimulatorServer

    with _sim_lock:
        if _simulator is None:
            c = ctx.settings.llm.simulator
            cfg = SimConfig.with_fault_rate(c.fault_rate, latency_ms=c.latency_ms, seed=c.seed) if c.fault_rate \
                else SimConfig(latency_ms=c.latency_ms, seed=c.seed)
            _simulator = SimulatorServer(cfg)
            _simulator.start()
        return _simulator.base_url


def stop_simulator() -> None:
    global _simulator
    with _sim_lock:
        if _simulator is not None:
            _simulator.stop()
            _simulator = None


def endpoint(ctx: StageContext, name: str, start_simulator: bool = True) -> Endpoint:
    eps = ctx.settings.llm.endpoints
    if name not in eps:
        raise StageError(f"stage {ctx.stage.name} uses LLM endpoint {name!r}, not in llm.endpoints ({sorted(eps)})")
    c = eps[name]
    simulated = c.base_url == "simulator"
    if simulated:
        ctx.extra["llm_simulated"] = 1
    url = (simulator_url(ctx) if start_simulator else "simulator") if simulated else c.base_url
    shared = {f.name for f in dataclasses.fields(Endpoint)}  # config keys the client knows (not prices)
    fields = {k: v for k, v in c.model_dump().items() if k in shared}
    fields.update(name=name, base_url=url, simulated=simulated)
    return Endpoint(**fields)


def outcome_columns() -> list:
    """_outcome/_reason/_detail of a plain LLM stage: ok -> kept, invalid -> rejected (invalid_output),
    failed -> deferred; the detail is the parse error or the transport error."""
    status = F.col("_status")
    return [F.when(status == "ok", "kept").when(status == "invalid", "rejected").otherwise("deferred")
            .alias("_outcome"),
            F.when(status == "invalid", "invalid_output").alias("_reason"),
            F.when(status != "ok", F.coalesce("parse_error", "error")).alias("_detail")]


_STAGED = [("status", T.StringType()), ("fresh", T.BooleanType()), ("messages", T.StringType()),
           *[(n, t) for n, t in RESULT_FIELDS if n not in ("request_key", "status")]]


def call_columns(prefix: str = "") -> list:
    """The call bookkeeping every LLM stage stages next to its rows (for ops.llm_calls and reports),
    from a call's ``_status``, ``_fresh``, ``messages`` and result columns. A second call in the
    same stage stages them under ``prefix`` (``_<prefix>status``...), its request_key included."""
    src = {"status": "_status", "fresh": "_fresh"}
    cols = [F.col(src.get(n, n)).alias(f"_{prefix}{n}") for n, _ in _STAGED]
    return [F.col("request_key").alias(f"_{prefix}request_key"), *cols] if prefix else cols


def no_call_columns(prefix: str) -> list:
    """call_columns(prefix) as nulls of the same types: a second call that was not made."""
    return [F.lit(None).cast(t).alias(f"_{prefix}{n}") for n, t in [("request_key", T.StringType()), *_STAGED]]


def render_requests(rows: DataFrame, key: str, ep: Endpoint, prompt: Prompt, fields: dict[str, str]) -> DataFrame:
    """(key, messages, request_key) of each row rendered with ``prompt``: template field <- column.
    Nothing is called; the request key is what ops.llm_calls is looked up by."""
    params, names, columns = ep.params(), list(fields), list(fields.values())

    def render(batches):
        for pdf in batches:
            msgs = [prompt.render(**dict(zip(names, values))) for values in zip(*(pdf[c] for c in columns))]
            yield pd.DataFrame({key: pdf[key], "messages": [json.dumps(m, ensure_ascii=False) for m in msgs],
                                "request_key": [request_key(ep.model, prompt, m, params) for m in msgs]})

    schema = T.StructType([T.StructField(n, T.StringType()) for n in (key, "messages", "request_key")])
    return rows.select(key, *dict.fromkeys(c for c in columns if c != key)).mapInPandas(render, schema)


def call(ctx: StageContext, requests: DataFrame, ep: Endpoint, schema: Callable[[], type[BaseModel]],
         prompt_id: str, calls_log: DataFrame | None) -> DataFrame:
    """(request_key, messages) -> RESULT_SCHEMA + _fresh, one row per distinct key.

    ``schema`` is a factory (a pydantic model built from config may not pickle; a closure does).
    Results are checkpointed, so each request is sent once however often the plan is evaluated.
    """
    extra = ["sample"] if "sample" in requests.columns else []  # sample index -> the request's seed
    keys = requests.select("request_key", "messages", *extra).dropDuplicates(["request_key"])
    cached = None
    if calls_log is not None:
        cached = (calls_log.where((F.col("prompt_id") == prompt_id) & (F.col("model") == ep.model))
                  .select(*RESULT_COLUMNS).withColumn("_fresh", F.lit(False)))
        keys = keys.join(cached.select("request_key"), "request_key", "left_anti")
    tasks = ctx.settings.llm.parallel_tasks
    share = ep.scaled(1.0 / tasks)

    def run(batches):  # built per call: Connect UDFs need the session first
        parts = [b for b in batches if len(b)]  # the whole partition: one sliding window over it
        if not parts:
            return
        rows = pd.concat(parts, ignore_index=True)
        samples = rows["sample"] if "sample" in rows else [0] * len(rows)
        reqs = [Request(k, json.loads(m), int(n or 0))
                for k, m, n in zip(rows["request_key"], rows["messages"], samples)]
        out = pd.DataFrame([r.as_row() for r in run_requests(share, reqs, schema())])
        out = out.drop(columns=["parsed"])
        for c in ("prompt_tokens", "completion_tokens", "attempts", "http_status"):
            out[c] = out[c].astype("Int64")
        yield out[RESULT_COLUMNS]

    fresh = keys.repartition(tasks).mapInPandas(run, RESULT_SCHEMA).withColumn("_fresh", F.lit(True))
    results = fresh if cached is None else fresh.unionByName(cached)
    return ctx.checkpoint(results)


def _staged(prefix: str):
    """A staged call column: the stage's main call keeps ``request_key`` and ``_status``...; a second
    call in the same stage (e.g. the refine judge) stages ``_<prefix>request_key``, ``_<prefix>status``..."""
    return lambda c: F.col(c if c == "request_key" and not prefix else f"_{prefix}{c}")


def log_rows(ctx: StageContext, staged: DataFrame, ep_name: str, prompt_id, prefix: str = "") -> DataFrame:
    """ops.llm_calls rows: fresh responses worth reusing (ok or invalid, with their raw text).
    ``prompt_id`` is a string or a Column (stages with one prompt per mode)."""
    c = ctx.settings.llm.endpoints[ep_name]
    model, simulated = c.model, c.base_url == "simulator"
    pid = prompt_id if not isinstance(prompt_id, str) else F.lit(prompt_id)
    col = _staged(prefix)
    logged = ("status", "raw", "reasoning", "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms",
              "attempts", "error", "http_status")
    return (staged.where(col("fresh") & col("status").isin("ok", "invalid"))
            .select(col("request_key").alias("request_key"), F.lit(ep_name).alias("endpoint"),
                    F.lit(model).alias("model"), pid.alias("prompt_id"), F.lit(ctx.stage.name).alias("stage"),
                    col("messages").alias("messages"), *[col(n).alias(n) for n in logged],
                    (F.lit(simulated) | F.coalesce(col("simulated"), F.lit(False))).alias("simulated"),
                    F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("created_at"))
            .dropDuplicates(["request_key"]))


def failure_rows(ctx: StageContext, staged: DataFrame, ep_name: str, prefix: str = "") -> DataFrame:
    """ops.llm_failures rows: why a request is still pending after this run."""
    col = _staged(prefix)
    return (staged.where(col("status") == "failed")
            .select(col("request_key").alias("request_key"), F.lit(ep_name).alias("endpoint"),
                    F.lit(ctx.stage.name).alias("stage"), col("error").alias("error"),
                    col("http_status").alias("http_status"), col("attempts").alias("attempts"),
                    F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("failed_at"))
            .dropDuplicates(["request_key"]))


def report(staged: DataFrame, prefix: str = "") -> dict[str, float]:
    """Calls, reuse, tokens and latency of a chunk, for MLflow and the CLI (``llm.<prefix>calls``...)."""
    col = _staged(prefix)
    fresh = F.coalesce(col("fresh"), F.lit(False))
    r = staged.groupBy().agg(
        F.sum(fresh.cast("int")).alias("calls"),
        F.sum((col("fresh") == F.lit(False)).cast("int")).alias("reused"),
        F.sum(F.when(fresh, col("prompt_tokens"))).alias("prompt_tokens"),
        F.sum(F.when(fresh, col("completion_tokens"))).alias("completion_tokens"),
        F.sum(F.when(fresh, col("attempts"))).alias("attempts"),
        F.sum((col("status") == "failed").cast("int")).alias("failed"),
        F.sum((col("status") == "invalid").cast("int")).alias("invalid"),
        F.sum(F.when(fresh, col("latency_ms"))).alias("latency_ms_total"),
        F.sum(F.coalesce(col("simulated"), F.lit(False)).cast("int")).alias("simulated_rows")).first()
    out = {f"llm.{prefix}{k}": float(v or 0) for k, v in r.asDict().items()}
    if out[f"llm.{prefix}simulated_rows"]:
        out["llm_simulated"] = 1.0  # answers came from boostqa's simulator (wherever it was started)
    return out

"""The call half of the LLM-stage template (stages/llm.py): endpoints, requests, calls, the call log.

- ``ready_endpoint``: the client's view of ``llm.endpoints.<name>``, after one preflight request
  per process (wrong key, model or URL stops the stage before a row is spent; the output mode
  that works is found once and kept);
- ``requests``: each row's rendered messages and request key (nothing is called);
- ``call``: keys already in ``ops.llm_calls`` are reused, the rest are sent through the async
  client inside mapInPandas (one event loop per Spark task, the endpoint's budget divided by
  ``llm.parallel_tasks``), or with ``llm.calls_from: driver`` from the driver process (the key
  never leaves it: serverless jobs, whose executors cannot see a secret);
- ``log_rows`` / ``failure_rows`` / ``report``: what a staged chunk adds to ``ops.llm_calls`` and
  ``ops.llm_failures``, and its metrics (every attempt, re-asks included).
"""

from __future__ import annotations

import dataclasses
import json
import threading

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.llm.client import Endpoint, EndpointError, Request, preflight, run_requests
from boostqa.stages.base import StageContext, StageError

RESULT_FIELDS = [("request_key", T.StringType()), ("status", T.StringType()), ("raw", T.StringType()),
                 ("reasoning", T.StringType()), ("finish_reason", T.StringType()), ("prompt_tokens", T.LongType()),
                 ("completion_tokens", T.LongType()), ("latency_ms", T.DoubleType()), ("attempts", T.LongType()),
                 ("error", T.StringType()), ("http_status", T.LongType()), ("simulated", T.BooleanType()),
                 ("reasoning_tokens", T.LongType()), ("response_format", T.StringType()),
                 ("logprobs", T.StringType())]
RESULT_SCHEMA = T.StructType([T.StructField(n, t) for n, t in RESULT_FIELDS])
RESULT_COLUMNS = [n for n, _ in RESULT_FIELDS]
# per attempt, staged next to each row as _<prefix><name> (status: the parsed outcome)
CALL_FIELDS = [("request_key", T.StringType()), ("status", T.StringType()), ("fresh", T.BooleanType()),
               ("messages", T.StringType()), ("prompt_id", T.StringType()), ("model", T.StringType()),
               ("retry", T.LongType()), ("parse_error", T.StringType()),
               *[(n, t) for n, t in RESULT_FIELDS if n not in ("request_key", "status")]]
CALL_STRUCT = T.StructType([T.StructField(n, t) for n, t in CALL_FIELDS])
LOGGED = ("retry", "status", "raw", "reasoning", "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms",
          "attempts", "error", "http_status", "reasoning_tokens", "response_format", "logprobs")

_lock = threading.Lock()
_simulator = None
_ready: dict[tuple, tuple[Endpoint, list[str]]] = {}  # preflighted endpoints of this process


# ---------------------------------------------------------------------------------------------- endpoints
def simulator_url(settings) -> str:
    """Start (once per process) boostqa's simulator on loopback and return its root URL."""
    global _simulator
    from boostqa.llm.sim import SimConfig, SimulatorServer

    with _lock:
        if _simulator is None:
            c = settings.llm.simulator
            cfg = SimConfig.with_fault_rate(c.fault_rate, latency_ms=c.latency_ms, seed=c.seed) if c.fault_rate \
                else SimConfig(latency_ms=c.latency_ms, seed=c.seed)
            _simulator = SimulatorServer(cfg)
            _simulator.start()
        return _simulator.base_url.removesuffix("/v1")


def running_simulator():
    """The SimulatorServer `simulator_url` started in this process, or None."""
    return _simulator


def stop_simulator() -> None:
    global _simulator
    with _lock:
        if _simulator is not None:
            _simulator.stop()
            _simulator = None
        _ready.clear()


def endpoint(settings, name: str, start_simulator: bool = True, **overrides) -> Endpoint:
    """The client's view of ``llm.endpoints.<name>``; ``base_url: simulator`` starts the simulator,
    which then speaks the endpoint's provider dialect, and marks every output simulated."""
    eps = settings.llm.endpoints
    if name not in eps:
        raise StageError(f"LLM endpoint {name!r} is not in llm.endpoints ({sorted(eps)})")
    c = eps[name]
    simulated = c.base_url == "simulator"
    url = c.base_url
    if simulated and settings.lake.catalog and not settings.llm.simulator.allow_in_catalog:
        raise StageError(f"LLM endpoint {name!r} is the simulator (fake answers) but the lake writes catalog "
                         f"{settings.lake.catalog!r}: point llm.endpoints.{name}.base_url at a real endpoint "
                         "(or set llm.simulator.allow_in_catalog: true for a test catalog)")
    if simulated:
        url = f"{simulator_url(settings)}/{c.provider}/v1" if start_simulator else "simulator"
    shared = {f.name for f in dataclasses.fields(Endpoint)}  # config keys the client knows (not prices)
    fields = {k: v for k, v in c.model_dump().items() if k in shared}
    fields.update(name=name, base_url=url, simulated=simulated, **overrides)
    if simulated:
        fields["api_key_env"] = None  # the simulator needs no key (the real service's variable may be unset)
    return Endpoint(**fields)


def ready_endpoint(ctx: StageContext, ep: Endpoint, schema) -> Endpoint:
    """``ep`` after its preflight (once per process and endpoint): a failure stops the stage with
    the endpoint and URL named; what was learned (output mode, refused parameters) is kept and
    tagged on the stage's MLflow run."""
    key = (ep.name, ep.base_url, ep.model, ep.provider, ep.response_format, ep.api, ep.api_key_env,
           schema.__name__ if schema else None)
    with _lock:
        found = _ready.get(key)
    if found is None:
        try:
            found = preflight(ep, schema)
        except EndpointError as e:
            raise StageError(f"stage {ctx.stage.name}: {e}") from None
        with _lock:
            _ready[key] = found
    ready, learned = found
    ctx.stats.tag(f"llm.endpoint.{ep.name}.mode", ready.mode or ep.response_format)
    if learned:
        ctx.stats.tag(f"llm.endpoint.{ep.name}.learned", "; ".join(learned)[:4000])
    return ready


# ---------------------------------------------------------------------------------------------- calls
LOGPROBS = "call_logprobs"  # a pseudo-column a task may list in `columns`: the response's top log-probabilities


def requests(rows: DataFrame, task, row_key: str, retry: int = 0) -> DataFrame:
    """(row_key, request_key, messages, prompt_id, sample, retry) of each row: what would be sent;
    nothing is called."""
    def render(batches):
        for pdf in batches:
            out = [task.render(r, retry) for r in pdf.itertuples(index=False)]
            yield pd.DataFrame({row_key: pdf[row_key], "messages": [o[0] for o in out],
                                "request_key": [o[1] for o in out], "prompt_id": [o[2] for o in out],
                                "sample": pd.array([o[3] for o in out], dtype="int64"),
                                "retry": pd.array([retry] * len(out), dtype="int64")})

    schema = T.StructType([*[T.StructField(c, T.StringType()) for c in (row_key, "messages", "request_key",
                                                                        "prompt_id")],
                           T.StructField("sample", T.LongType()), T.StructField("retry", T.LongType())])
    cols = dict.fromkeys(c for c in (row_key, *task.columns, task.prompt_by, task.sample) if c and c != LOGPROBS)
    return rows.select(*cols).mapInPandas(render, schema)


def call(ctx: StageContext, reqs: DataFrame, ep: Endpoint, task, calls_log: DataFrame | None) -> DataFrame:
    """(request_key, messages, sample, retry) -> RESULT_SCHEMA + _fresh, one row per distinct key.

    The endpoint is preflighted only when something is left to send. Results are checkpointed, so
    each request is sent once however often the plan is evaluated."""
    keys = reqs.select("request_key", "messages", "prompt_id", "sample", "retry").dropDuplicates(["request_key"])
    cached = None
    if calls_log is not None:
        logged = [c for c in RESULT_COLUMNS if c in calls_log.columns]  # a call log of an older version
        cached = (calls_log.where(F.col("prompt_id").isin(task.prompt_ids) & (F.col("model") == ep.model))
                  .select(*logged, *[F.lit(None).cast(t).alias(n) for n, t in RESULT_FIELDS if n not in logged])
                  .withColumn("_fresh", F.lit(False)))
        keys = keys.join(cached.select("request_key"), "request_key", "left_anti")
    if keys.limit(1).count():
        ep = ready_endpoint(ctx, ep, task.response_model())
    tasks = ctx.settings.llm.parallel_tasks
    schema_of, journal = task.response_model, _journal_writer(ctx, ep, task)

    def send(rows: pd.DataFrame, budget: Endpoint) -> pd.DataFrame:
        reqs = [Request(k, json.loads(m), int(n or 0), int(r or 0))
                for k, m, n, r in zip(rows["request_key"], rows["messages"], rows["sample"], rows["retry"])]
        log = journal(reqs, dict(zip(rows["request_key"], rows["prompt_id"])))
        out = pd.DataFrame([r.as_row() for r in run_requests(budget, reqs, schema_of(), on_result=log)],
                           columns=RESULT_COLUMNS)
        if log:
            log.journal.flush()
        for c in ("prompt_tokens", "completion_tokens", "attempts", "http_status", "reasoning_tokens"):
            out[c] = out[c].astype("Int64")
        return out[RESULT_COLUMNS]

    if ctx.settings.llm.calls_from == "driver":  # the key stays in this process; one chunk's requests
        pending = keys.toPandas()                 # (llm.chunk_rows) at a time, the endpoint's whole budget
        out = send(pending, ep) if len(pending) else pd.DataFrame(columns=RESULT_COLUMNS)
        fresh = ctx.spark.createDataFrame(out.astype(object).where(out.notna(), None), RESULT_SCHEMA)
    else:
        share = ep.scaled(1.0 / tasks)

        def run(batches):  # built per call: Connect UDFs need the session first
            parts = [b for b in batches if len(b)]  # the whole partition: one sliding window over it
            if parts:
                yield send(pd.concat(parts, ignore_index=True), share)

        fresh = keys.repartition(tasks).mapInPandas(run, RESULT_SCHEMA)
    fresh = fresh.withColumn("_fresh", F.lit(True))
    return ctx.checkpoint(fresh if cached is None else fresh.unionByName(cached.select(*RESULT_COLUMNS, "_fresh")))


def _journal_writer(ctx: StageContext, ep: Endpoint, task):
    """A factory of per-task journal callbacks (None when the stage keeps no journal)."""
    if not ctx.journal:
        return lambda reqs, prompts: None
    from boostqa.llm.journal import CallJournal

    where, every, simulated = ctx.journal, ctx.settings.llm.journal_rows, ep.simulated
    context = {"endpoint": task.endpoint_name, "model": ep.model, "stage": ctx.stage.name, "run_id": ctx.run_id}

    def make(reqs: list[Request], prompts: dict[str, str]):
        journal, by_key = CallJournal(where, context, every), {r.key: r for r in reqs}

        def log(res) -> None:
            req = by_key[res.request_key]
            journal.add(res, req.messages, prompts[res.request_key], simulated, req.retry)

        log.journal = journal
        return log

    return make


# ---------------------------------------------------------------------------------------------- bookkeeping
def _col(prefix: str, name: str) -> Column:
    """A task's staged call column; the main task's request key is the plain ``request_key``."""
    return F.col("request_key" if name == "request_key" and not prefix else f"_{prefix}{name}")


def attempts(staged: DataFrame, prefix: str) -> DataFrame:
    """Every attempt of a task in a staged chunk: the final one and the earlier ones re-asked."""
    final = staged.select(*[_col(prefix, n).alias(n) for n, _ in CALL_FIELDS])
    earlier = staged.select(F.explode(F.col(f"_{prefix}earlier")).alias("a")).select("a.*")
    return final.unionByName(earlier)


def log_rows(ctx: StageContext, staged: DataFrame, task) -> DataFrame:
    """ops.llm_calls rows: fresh answers worth reusing (ok, invalid or truncated, with their raw
    text), of every attempt."""
    a = attempts(staged, task.prefix)
    return (a.where(F.col("fresh") & F.col("status").isin("ok", "invalid", "truncated"))
            .select("request_key", F.lit(task.endpoint_name).alias("endpoint"), "model", "prompt_id",
                    F.lit(ctx.stage.name).alias("stage"), "messages", *LOGGED, "simulated",
                    F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("created_at"))
            .dropDuplicates(["request_key"]))


def failure_rows(ctx: StageContext, staged: DataFrame, task) -> DataFrame:
    """ops.llm_failures rows: why a request is still pending after this run."""
    return (attempts(staged, task.prefix).where(F.col("status") == "failed")
            .select("request_key", F.lit(task.endpoint_name).alias("endpoint"), F.lit(ctx.stage.name).alias("stage"),
                    "error", "http_status", "attempts", F.lit(ctx.run_id).alias("run_id"),
                    F.current_timestamp().alias("failed_at"))
            .dropDuplicates(["request_key"]))


def report(staged: DataFrame, prefix: str = "") -> dict[str, float]:
    """Calls, reuse, re-asks, tokens and latency of a chunk, for MLflow and the CLI
    (``llm.<prefix>calls``...); statuses are the final ones per row."""
    a = attempts(staged, prefix)
    fresh = F.coalesce("fresh", F.lit(False))
    r = a.groupBy().agg(
        F.sum(fresh.cast("int")).alias("calls"), F.sum((F.col("fresh") == F.lit(False)).cast("int")).alias("reused"),
        F.sum((F.col("retry") > 0).cast("int")).alias("reasks"),
        F.sum(F.when(fresh, F.col("prompt_tokens"))).alias("prompt_tokens"),
        F.sum(F.when(fresh, F.col("completion_tokens"))).alias("completion_tokens"),
        F.sum(F.when(fresh, F.col("reasoning_tokens"))).alias("reasoning_tokens"),
        F.sum(F.when(fresh, F.col("attempts"))).alias("attempts"),
        F.sum(F.when(fresh, F.col("latency_ms"))).alias("latency_ms_total")).first()
    s = staged.groupBy().agg(*[F.sum((_col(prefix, "status") == v).cast("int")).alias(v)
                               for v in ("failed", "invalid", "truncated")],
                             F.sum(F.coalesce(_col(prefix, "simulated"), F.lit(False)).cast("int"))
                             .alias("simulated_rows")).first()
    return {f"llm.{prefix}{k}": float(v or 0) for k, v in {**r.asDict(), **s.asDict()}.items()}

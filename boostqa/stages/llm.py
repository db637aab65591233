"""The LLM-stage template: a stage declares its tasks, the template owns everything else.

An LLM stage is its inputs, output and key plus one or more ``LLMTask`` classes (as distilabel's
``Task``: which endpoint and prompt, what a row gives the prompt, the response model, how a parsed
response becomes output columns) and the output columns it keeps. The template:

- renders each row's request and its key (hash of model, prompt version, messages, params and
  sample index; ``llm.prompts.request_key``);
- looks each key up in ``ops.llm_calls``: a logged ok/invalid response is reused, never paid for
  again;
- sends the rest through the async client inside mapInPandas (one event loop per Spark task, the
  endpoint's concurrency/RPM/TPM budget divided by ``llm.parallel_tasks``);
- parses every response with the current parser (a parser fix re-parses logged responses for
  free) and stages the call bookkeeping next to each row (``_status``, ``_raw``, ...);
- turns results into outcomes (ok -> kept, invalid -> rejected with the raw text, failed ->
  deferred: pending for the next run) unless the stage decides itself;
- declares the call log (``ops.llm_calls``), the failures (``ops.llm_failures``), the per-call
  metrics and the ``boostqa plan`` hook.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd
from pydantic import BaseModel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.llm.client import Endpoint, Request, parse_output, run_requests
from boostqa.llm.prompts import Prompt, load_prompt, request_key
from boostqa.stages.base import Derived, Stage, StageContext, StageError
from boostqa.tracking import SIMULATED_TAG

RESULT_FIELDS = [("request_key", T.StringType()), ("status", T.StringType()), ("raw", T.StringType()),
                 ("reasoning", T.StringType()), ("finish_reason", T.StringType()), ("prompt_tokens", T.LongType()),
                 ("completion_tokens", T.LongType()), ("latency_ms", T.DoubleType()), ("attempts", T.LongType()),
                 ("error", T.StringType()), ("http_status", T.LongType()), ("simulated", T.BooleanType())]
RESULT_SCHEMA = T.StructType([T.StructField(n, t) for n, t in RESULT_FIELDS])
RESULT_COLUMNS = [n for n, _ in RESULT_FIELDS]
# the call bookkeeping staged next to each row as _<prefix><name> (status is the parsed outcome)
STAGED = ("status", "fresh", "messages", "prompt_id", "model", "simulated", "parse_error",
          *[n for n, _ in RESULT_FIELDS if n not in ("request_key", "status", "simulated")])

_sim_lock = threading.Lock()
_simulator = None


# ---------------------------------------------------------------------------------------------- endpoints
def simulator_url(settings) -> str:
    """Start (once per process) boostqa's simulator on loopback and return its /v1 URL."""
    global _simulator
    from boostqa.llm.sim import SimConfig, SimulatorServer

    with _sim_lock:
        if _simulator is None:
            c = settings.llm.simulator
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


def endpoint(settings, name: str, start_simulator: bool = True) -> Endpoint:
    """The client's view of ``llm.endpoints.<name>``; ``base_url: simulator`` starts the simulator
    (unless only request keys are wanted) and marks every output simulated."""
    eps = settings.llm.endpoints
    if name not in eps:
        raise StageError(f"LLM endpoint {name!r} is not in llm.endpoints ({sorted(eps)})")
    c = eps[name]
    simulated = c.base_url == "simulator"
    url = (simulator_url(settings) if start_simulator else "simulator") if simulated else c.base_url
    shared = {f.name for f in dataclasses.fields(Endpoint)}  # config keys the client knows (not prices)
    fields = {k: v for k, v in c.model_dump().items() if k in shared}
    fields.update(name=name, base_url=url, simulated=simulated)
    return Endpoint(**fields)


# ---------------------------------------------------------------------------------------------- tasks
class LLMTask:
    """One kind of request an LLM stage makes. A subclass says where it goes and what it means;
    an instance is built on the driver from the settings and pickled into the UDFs, so whatever
    ``setup`` keeps must be plain data."""

    sections: tuple[str, ...] = ()  # settings sections endpoint_of/prompts_of/setup read
    columns: tuple[str, ...] = ()  # row columns format_input/format_output read
    outputs: tuple[tuple[str, T.DataType], ...] = ()  # the columns format_output returns
    prefix: str = ""  # a second task of one stage stages its calls as _<prefix>status, ...
    prompt_by: str | None = None  # a column whose value picks the prompt (prompts_of returns a dict)
    sample: str | None = None  # a column holding the sample index: distinct requests of one prompt

    def __init__(self, settings):
        self.endpoint_name = self.endpoint_of(settings)
        names = self.prompts_of(settings)
        self.prompts = {k: load_prompt(v) for k, v in (names.items() if isinstance(names, dict) else [(None, names)])}
        self.ep = endpoint(settings, self.endpoint_name, start_simulator=False)  # model + params of the keys
        self.setup(settings)

    # what a subclass declares
    def endpoint_of(self, settings) -> str:
        raise NotImplementedError

    def prompts_of(self, settings) -> str | dict[str, str]:
        raise NotImplementedError

    def setup(self, settings) -> None:
        """Driver-side state for format_input/format_output (e.g. the taxonomy)."""

    def response_model(self) -> type[BaseModel] | None:
        """The structured output each response is validated against; None: free text."""
        return None

    def format_input(self, row) -> dict[str, str]:
        raise NotImplementedError

    def format_output(self, parsed: dict | None, raw: str | None, row) -> dict[str, Any]:
        """Output columns of a response (``parsed``: validated fields); ValueError = invalid."""
        raise NotImplementedError

    # what the template uses
    @property
    def prompt_ids(self) -> list[str]:
        return [p.id for p in self.prompts.values()]

    def render(self, row) -> tuple[str, str, str, int]:
        """(messages JSON, request key, prompt id, sample) of one row."""
        prompt: Prompt = self.prompts[getattr(row, self.prompt_by) if self.prompt_by else None]
        messages = prompt.render(**self.format_input(row))
        sample = int(getattr(row, self.sample)) if self.sample else 0
        return (json.dumps(messages, ensure_ascii=False), request_key(self.ep.model, prompt, messages,
                                                                       self.ep.params(), sample), prompt.id, sample)

    def parse(self, raw: str | None, row) -> tuple[dict[str, Any], str | None]:
        """(output columns, parse error) with the current parser."""
        try:
            return self.format_output(parse_output(raw, self.response_model()), raw, row), None
        except ValueError as e:
            return {}, str(e)


# ---------------------------------------------------------------------------------------------- calls
def requests(rows: DataFrame, task: LLMTask, row_key: str) -> DataFrame:
    """(row_key, request_key, messages, prompt_id, sample) of each row: what would be sent;
    nothing is called."""
    def render(batches):
        for pdf in batches:
            out = [task.render(r) for r in pdf.itertuples(index=False)]
            yield pd.DataFrame({row_key: pdf[row_key], "messages": [o[0] for o in out],
                                "request_key": [o[1] for o in out], "prompt_id": [o[2] for o in out],
                                "sample": pd.array([o[3] for o in out], dtype="int64")})

    schema = T.StructType([*[T.StructField(c, T.StringType()) for c in (row_key, "messages", "request_key",
                                                                        "prompt_id")],
                           T.StructField("sample", T.LongType())])
    cols = dict.fromkeys(c for c in (row_key, *task.columns, task.prompt_by, task.sample) if c)
    return rows.select(*cols).mapInPandas(render, schema)


def call(ctx: StageContext, reqs: DataFrame, ep: Endpoint, task: LLMTask, calls_log: DataFrame | None) -> DataFrame:
    """(request_key, messages, sample) -> RESULT_SCHEMA + _fresh, one row per distinct key.

    Results are checkpointed, so each request is sent once however often the plan is evaluated."""
    keys = reqs.select("request_key", "messages", "sample").dropDuplicates(["request_key"])
    cached = None
    if calls_log is not None:
        cached = (calls_log.where(F.col("prompt_id").isin(task.prompt_ids) & (F.col("model") == ep.model))
                  .select(*RESULT_COLUMNS).withColumn("_fresh", F.lit(False)))
        keys = keys.join(cached.select("request_key"), "request_key", "left_anti")
    tasks = ctx.settings.llm.parallel_tasks
    share = ep.scaled(1.0 / tasks)

    def run(batches):  # built per call: Connect UDFs need the session first
        parts = [b for b in batches if len(b)]  # the whole partition: one sliding window over it
        if not parts:
            return
        rows = pd.concat(parts, ignore_index=True)
        reqs = [Request(k, json.loads(m), int(n or 0)) for k, m, n in zip(rows["request_key"], rows["messages"],
                                                                         rows["sample"])]
        out = pd.DataFrame([r.as_row() for r in run_requests(share, reqs, task.response_model())])
        for c in ("prompt_tokens", "completion_tokens", "attempts", "http_status"):
            out[c] = out[c].astype("Int64")
        yield out[RESULT_COLUMNS]

    fresh = keys.repartition(tasks).mapInPandas(run, RESULT_SCHEMA).withColumn("_fresh", F.lit(True))
    return ctx.checkpoint(fresh if cached is None else fresh.unionByName(cached))


def _parsed(staged: DataFrame, rows: DataFrame, task: LLMTask, row_key: str) -> DataFrame:
    """row_key + the task's output columns + _<prefix>parse_error, for every answered row."""
    p, names = task.prefix, [n for n, _ in task.outputs]
    cols = list(dict.fromkeys((row_key, *task.columns)))

    def parse(batches):
        for pdf in batches:
            out = [task.parse(raw, row) for raw, row in zip(pdf["_raw"], pdf[cols].itertuples(index=False))]
            frame = pd.DataFrame({n: pd.Series([o[0].get(n) for o in out], dtype=object) for n in names})
            frame.insert(0, row_key, pdf[row_key].values)
            frame[f"_{p}parse_error"] = [o[1] for o in out]
            yield frame

    schema = T.StructType([T.StructField(row_key, T.StringType()),
                           *[T.StructField(n, t) for n, t in task.outputs],
                           T.StructField(f"_{p}parse_error", T.StringType())])
    answered = staged.where(F.col("_raw_status") != "failed").select(row_key, F.col(f"_{p}raw").alias("_raw"))
    return answered.join(rows.select(*cols), row_key).mapInPandas(parse, schema)


def ask(ctx: StageContext, rows: DataFrame, task: LLMTask, calls_log: DataFrame | None, row_key: str) -> DataFrame:
    """``rows`` + the task's output columns + its staged call columns (``_<prefix>status``: ok |
    invalid | failed, ``_<prefix>raw``, ...; the main task keeps ``request_key`` unprefixed).
    Columns the task adds replace same-named columns of ``rows``."""
    p, ep = task.prefix, endpoint(ctx.settings, task.endpoint_name)
    reqs = ctx.checkpoint(requests(rows, task, row_key))
    results = call(ctx, reqs, ep, task, calls_log)
    key_name = f"_{p}request_key" if p else "request_key"
    staged = reqs.join(results, "request_key").select(
        row_key, F.col("request_key").alias(key_name), F.col("status").alias("_raw_status"),
        *[F.col(n).alias(f"_{p}{n}") for n in ("messages", "prompt_id", *RESULT_COLUMNS[2:-1])],
        F.col("_fresh").alias(f"_{p}fresh"), F.lit(ep.model).alias(f"_{p}model"),
        (F.lit(ep.simulated) | F.coalesce("simulated", F.lit(False))).alias(f"_{p}simulated"))
    parsed = _parsed(staged, rows, task, row_key)
    status = F.when(F.col("_raw_status") == "failed", "failed") \
        .when(F.col(f"_{p}parse_error").isNull(), "ok").otherwise("invalid")
    added = {key_name, *(n for n, _ in task.outputs)}
    return (rows.drop(*[c for c in rows.columns if c in added]).join(staged, row_key).join(parsed, row_key, "left")
            .withColumn(f"_{p}status", status).drop("_raw_status"))


def call_columns(columns: list[str], prefix: str = "") -> list[str]:
    """The staged call columns of one task present in ``columns``."""
    names = [f"_{prefix}{n}" for n in STAGED] + [f"_{prefix}request_key" if prefix else "request_key"]
    return [n for n in names if n in columns]


_STAGED_TYPES = {"fresh": T.BooleanType(), "simulated": T.BooleanType(), **dict(RESULT_FIELDS)}


def no_call_columns(prefix: str) -> list[Column]:
    """A task's staged call columns as typed nulls: a second call that was not made."""
    names = [*STAGED, "request_key"]
    return [F.lit(None).cast(_STAGED_TYPES.get(n, T.StringType())).alias(f"_{prefix}{n}") for n in names]


def outcome_columns(prefix: str = "") -> list[Column]:
    """_outcome/_reason/_detail of a plain LLM stage: ok -> kept, invalid -> rejected (invalid_output),
    failed -> deferred; the detail is the parse error or the transport error."""
    status = F.col(f"_{prefix}status")
    return [F.when(status == "ok", "kept").when(status == "invalid", "rejected").otherwise("deferred")
            .alias("_outcome"),
            F.when(status == "invalid", "invalid_output").alias("_reason"),
            F.when(status != "ok", F.coalesce(f"_{prefix}parse_error", f"_{prefix}error")).alias("_detail")]


# ---------------------------------------------------------------------------------------------- bookkeeping
def _key_col(prefix: str) -> Column:
    return F.col(f"_{prefix}request_key" if prefix else "request_key")


def log_rows(ctx: StageContext, staged: DataFrame, task: LLMTask) -> DataFrame:
    """ops.llm_calls rows: fresh responses worth reusing (ok or invalid, with their raw text)."""
    p = task.prefix
    logged = ("status", "raw", "reasoning", "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms",
              "attempts", "error", "http_status")
    return (staged.where(F.col(f"_{p}fresh") & F.col(f"_{p}status").isin("ok", "invalid"))
            .select(_key_col(p).alias("request_key"), F.lit(task.endpoint_name).alias("endpoint"),
                    F.col(f"_{p}model").alias("model"), F.col(f"_{p}prompt_id").alias("prompt_id"),
                    F.lit(ctx.stage.name).alias("stage"), F.col(f"_{p}messages").alias("messages"),
                    *[F.col(f"_{p}{n}").alias(n) for n in logged], F.col(f"_{p}simulated").alias("simulated"),
                    F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("created_at"))
            .dropDuplicates(["request_key"]))


def failure_rows(ctx: StageContext, staged: DataFrame, task: LLMTask) -> DataFrame:
    """ops.llm_failures rows: why a request is still pending after this run."""
    p = task.prefix
    return (staged.where(F.col(f"_{p}status") == "failed")
            .select(_key_col(p).alias("request_key"), F.lit(task.endpoint_name).alias("endpoint"),
                    F.lit(ctx.stage.name).alias("stage"), F.col(f"_{p}error").alias("error"),
                    F.col(f"_{p}http_status").alias("http_status"), F.col(f"_{p}attempts").alias("attempts"),
                    F.lit(ctx.run_id).alias("run_id"), F.current_timestamp().alias("failed_at"))
            .dropDuplicates(["request_key"]))


def report(staged: DataFrame, prefix: str = "") -> dict[str, float]:
    """Calls, reuse, tokens and latency of a chunk, for MLflow and the CLI (``llm.<prefix>calls``...)."""
    col = lambda n: F.col(f"_{prefix}{n}")  # noqa: E731
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
    return {f"llm.{prefix}{k}": float(v or 0) for k, v in r.asDict().items()}


# ---------------------------------------------------------------------------------------------- the stage
@dataclasses.dataclass(frozen=True)
class LLMSpec:
    """What makes a stage an LLM stage (``Stage.llm``)."""

    tasks: tuple[type[LLMTask], ...]  # the first is asked for every row; the others by ``extend``
    row_key: str  # a column unique among the rows asked about (names them in requests)
    columns: Callable[[StageContext, DataFrame], list]  # output columns (+ optional _outcome/_reason/_detail)
    rows: Callable[..., DataFrame] | None = None  # (ctx, **inputs) -> rows to ask about (default: driving)
    extend: Callable[[StageContext, DataFrame, DataFrame | None], DataFrame] | None = None  # (ctx, out, calls)

    def build(self, settings) -> list[LLMTask]:
        return [t(settings) for t in self.tasks]

    def rows_of(self, ctx: StageContext, inputs: dict[str, DataFrame | None]) -> DataFrame:
        return self.rows(ctx, **inputs) if self.rows else next(iter(inputs.values()))


def _transform(ctx: StageContext, calls: DataFrame | None = None, **inputs: DataFrame | None) -> DataFrame:
    spec: LLMSpec = ctx.stage.llm
    main = spec.tasks[0](ctx.settings)
    out = ask(ctx, spec.rows_of(ctx, inputs), main, calls, spec.row_key)
    if spec.extend:
        out = spec.extend(ctx, out, calls)
    cols = spec.columns(ctx, out)
    have = out.select(*cols).columns
    res = out.select(*cols, *[c for t in spec.tasks for c in call_columns(out.columns, t.prefix) if c not in have])
    return res if "_outcome" in have else res.select("*", *outcome_columns())


def _summarize(ctx: StageContext, staged: DataFrame) -> None:
    for task in ctx.stage.llm.tasks:
        metrics = report(staged, task.prefix)
        if metrics.pop(f"llm.{task.prefix}simulated_rows"):  # answers from boostqa's simulator
            ctx.stats.set("llm_simulated", 1)
            ctx.stats.tag(SIMULATED_TAG, "true")
        for k, v in metrics.items():
            ctx.stats.add(k, v)


def _call_tables(cls: type[LLMTask]) -> tuple[Derived, Derived]:
    return (Derived("ops.llm_calls", ("request_key",), lambda ctx, st: log_rows(ctx, st, cls(ctx.settings))),
            Derived("ops.llm_failures", ("request_key", "run_id"),
                    lambda ctx, st: failure_rows(ctx, st, cls(ctx.settings))))


def llm_stage(*, name: str, inputs: dict[str, str], output: str, key: tuple[str, ...],
              tasks: tuple[type[LLMTask], ...], columns: Callable, row_key: str | None = None,
              rows: Callable | None = None, extend: Callable | None = None, sections: tuple[str, ...] = (),
              derived: tuple[Derived, ...] = (), summarize: Callable | None = None, **kwargs: Any) -> Stage:
    """A Stage whose rows are asked of an LLM: the call log input (live: reused within the run),
    the call-log and failure tables, call metrics, chunking and the planning hook come with it."""
    def summarize_all(ctx: StageContext, staged: DataFrame) -> None:
        _summarize(ctx, staged)
        if summarize:
            summarize(ctx, staged)

    task_sections = dict.fromkeys(s for t in tasks for s in t.sections)
    return Stage(
        name=name, inputs={**inputs, "calls": "ops.llm_calls"}, output=output, key=key, transform=_transform,
        sections=tuple(dict.fromkeys(("llm", *task_sections, *sections))),
        optional_inputs=(*kwargs.pop("optional_inputs", ()), "calls"), live_inputs=("calls",),
        derived=(*(d for t in tasks for d in _call_tables(t)), *derived), summarize=summarize_all,
        chunk_rows=lambda s: s.llm.chunk_rows,
        llm=LLMSpec(tasks=tasks, row_key=row_key or key[-1], columns=columns, rows=rows, extend=extend),
        **kwargs)


def pending_requests(ctx: StageContext, pending: DataFrame) -> DataFrame:
    """The main task's requests for the pending rows (``boostqa plan``); nothing is called."""
    spec: LLMSpec = ctx.stage.llm
    inputs = dict(ctx.inputs, **{next(iter(ctx.inputs)): pending})
    inputs.pop("calls", None)
    return requests(spec.rows_of(ctx, inputs), spec.tasks[0](ctx.settings), spec.row_key)

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
from collections.abc import Callable
from functools import reduce
from typing import Any

import pandas as pd
from pydantic import BaseModel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.llm.output import parse_output
from boostqa.llm.prompts import Prompt, load_prompt, request_key
from boostqa.llm.schema import json_instruction
from boostqa.stages.base import Derived, Stage, StageContext
from boostqa.stages.llm_calls import (CALL_FIELDS, CALL_STRUCT, LOGPROBS, call, endpoint, failure_rows, log_rows,  # noqa: F401
                                      ready_endpoint, report, requests, running_simulator, simulator_url,
                                      stop_simulator)
from boostqa.tracking import SIMULATED_TAG

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
        self.overrides = self.endpoint_overrides(settings)
        self.ep = endpoint(settings, self.endpoint_name, start_simulator=False, **self.overrides)  # for the keys
        self.setup(settings)
        model = self.response_model()  # the prompt-side contract of every output mode (plain text)
        self.json_hint = json_instruction(model) if model is not None else None

    # what a subclass declares
    def endpoint_of(self, settings) -> str:
        raise NotImplementedError

    def prompts_of(self, settings) -> str | dict[str, str]:
        raise NotImplementedError

    def endpoint_overrides(self, settings) -> dict[str, Any]:
        """Endpoint fields this task sets itself (e.g. the probe's API and log-probabilities)."""
        return {}

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

    def render(self, row, retry: int = 0) -> tuple[str, str, str, int]:
        """(messages JSON, request key, prompt id, sample) of one row (``retry``: a re-ask)."""
        prompt: Prompt = self.prompts[getattr(row, self.prompt_by) if self.prompt_by else None]
        messages = prompt.render(**self.format_input(row))
        if self.json_hint:
            messages[-1]["content"] += "\n\n" + self.json_hint
        sample = int(getattr(row, self.sample)) if self.sample else 0
        key = request_key(self.ep.model, prompt, messages, self.ep.params(), sample, retry)
        return json.dumps(messages, ensure_ascii=False), key, prompt.id, sample

    def parse(self, raw: str | None, row) -> tuple[dict[str, Any], str | None]:
        """(output columns, parse error) with the current parser."""
        try:
            return self.format_output(parse_output(raw, self.response_model()), raw, row), None
        except ValueError as e:
            return {}, str(e)


# ---------------------------------------------------------------------------------------------- asking
AGAIN = ("invalid", "truncated")  # outcomes a re-ask (a new sample index) may change


def _parsed(answered: DataFrame, rows: DataFrame, task: LLMTask, row_key: str) -> DataFrame:
    """row_key + the task's output columns + parse_error, for every answered row."""
    names = [n for n, _ in task.outputs]
    cols = list(dict.fromkeys((row_key, *task.columns)))
    from_rows = [c for c in cols if c != LOGPROBS]

    def parse(batches):
        for pdf in batches:
            out = [task.parse(raw, row) for raw, row in zip(pdf["_raw"], pdf[cols].itertuples(index=False))]
            frame = pd.DataFrame({n: pd.Series([o[0].get(n) for o in out], dtype=object) for n in names})
            frame.insert(0, row_key, pdf[row_key].values)
            frame["parse_error"] = [o[1] for o in out]
            yield frame

    schema = T.StructType([T.StructField(row_key, T.StringType()),
                           *[T.StructField(n, t) for n, t in task.outputs],
                           T.StructField("parse_error", T.StringType())])
    return answered.select(row_key, F.col("raw").alias("_raw"), F.col("logprobs").alias(LOGPROBS)) \
        .join(rows.select(*from_rows), row_key).mapInPandas(parse, schema)


def _attempt(ctx: StageContext, rows: DataFrame, task: LLMTask, ep, calls_log, row_key: str, retry: int) -> DataFrame:
    """One round of asking: row_key, the task's outputs and one CALL_STRUCT-shaped set of columns
    (status: ok | invalid | truncated | failed, by the current parser), checkpointed."""
    reqs = ctx.checkpoint(requests(rows, task, row_key, retry))
    results = call(ctx, reqs, ep, task, calls_log)
    answered = reqs.join(results, "request_key").withColumnRenamed("status", "raw_status") \
        .withColumn("model", F.lit(ep.model)).withColumnRenamed("_fresh", "fresh") \
        .withColumn("simulated", F.lit(ep.simulated) | F.coalesce("simulated", F.lit(False)))
    parsed = _parsed(answered.where(F.col("raw_status") != "failed"), rows, task, row_key)
    raw = F.col("raw_status")
    status = F.when(raw.isin("failed", "truncated"), raw).when(F.col("parse_error").isNull(), "ok") \
        .otherwise("invalid")
    out = answered.join(parsed, row_key, "left").withColumn("status", status)
    return ctx.checkpoint(out.select(row_key, *[n for n, _ in task.outputs], *[n for n, _ in CALL_FIELDS]))


def ask(ctx: StageContext, rows: DataFrame, task: LLMTask, calls_log: DataFrame | None, row_key: str) -> DataFrame:
    """``rows`` + the task's output columns + its staged call columns: ``_<prefix>status`` (ok |
    invalid | truncated | failed), ``_<prefix>raw``, ... (the main task keeps ``request_key``
    unprefixed) and ``_<prefix>earlier`` (the attempts before the final one). An invalid or
    truncated answer is asked again with a new sample index up to ``llm.reasks`` times: each
    re-ask is a new request, logged under its own key, so a rerun replays the same rounds.
    Columns the task adds replace same-named columns of ``rows``."""
    p = task.prefix
    ep = endpoint(ctx.settings, task.endpoint_name, **task.overrides)
    rounds, todo = [], rows
    for retry in range(ctx.settings.llm.reasks + 1):
        rounds.append(_attempt(ctx, todo, task, ep, calls_log, row_key, retry))
        again = rounds[-1].where(F.col("status").isin(*AGAIN)).select(row_key)
        if retry == ctx.settings.llm.reasks or not again.limit(1).count():
            break
        todo = rows.join(again, row_key, "left_semi")
    last = F.max("retry").over(Window.partitionBy(row_key))
    every = rounds[0] if len(rounds) == 1 else reduce(DataFrame.unionByName, rounds)
    every = every.withColumn("_last", F.col("retry") == last)
    final = every.where("_last").drop("_last")
    earlier = every.where(~F.col("_last")).groupBy(row_key).agg(
        F.collect_list(F.struct(*[n for n, _ in CALL_FIELDS])).alias(f"_{p}earlier"))
    staged = final.select(row_key, *[n for n, _ in task.outputs],
                          *[F.col(n).alias("request_key" if n == "request_key" and not p else f"_{p}{n}")
                            for n, _ in CALL_FIELDS])
    added = set(staged.columns) - {row_key}
    return (rows.drop(*[c for c in rows.columns if c in added]).join(staged, row_key)
            .join(earlier, row_key, "left")
            .withColumn(f"_{p}earlier", F.coalesce(f"_{p}earlier", F.array().cast(T.ArrayType(CALL_STRUCT)))))


def call_columns(columns: list[str], prefix: str = "") -> list[str]:
    """The staged call columns of one task present in ``columns``."""
    names = [f"_{prefix}{n}" if n != "request_key" or prefix else n for n, _ in CALL_FIELDS] + [f"_{prefix}earlier"]
    return [n for n in names if n in columns]


def no_call_columns(prefix: str) -> list[Column]:
    """A task's staged call columns as typed nulls: a second call that was not made."""
    return [*[F.lit(None).cast(t).alias(f"_{prefix}{n}") for n, t in CALL_FIELDS],
            F.array().cast(T.ArrayType(CALL_STRUCT)).alias(f"_{prefix}earlier")]


def outcome_columns(prefix: str = "") -> list[Column]:
    """_outcome/_reason/_detail of a plain LLM stage: ok -> kept; invalid or truncated (after the
    re-asks) -> rejected with that reason; failed -> deferred; the detail is the parse error or
    the transport error."""
    status = F.col(f"_{prefix}status")
    return [F.when(status == "ok", "kept").when(status.isin(*AGAIN), "rejected").otherwise("deferred")
            .alias("_outcome"),
            F.when(status == "invalid", "invalid_output").when(status == "truncated", "truncated").alias("_reason"),
            F.when(status != "ok", F.coalesce(f"_{prefix}parse_error", f"_{prefix}error")).alias("_detail")]


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
    return (Derived("ops.llm_calls", ("request_key",), lambda ctx, st: log_rows(ctx, st, cls(ctx.settings)),
                    first=True),
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
        chunk_rows=lambda s: s.llm.chunk_rows, journal="ops.llm_calls",
        llm=LLMSpec(tasks=tasks, row_key=row_key or key[-1], columns=columns, rows=rows, extend=extend),
        **kwargs)


def pending_requests(ctx: StageContext, pending: DataFrame) -> DataFrame:
    """The main task's requests for the pending rows (``boostqa plan``); nothing is called."""
    spec: LLMSpec = ctx.stage.llm
    inputs = dict(ctx.inputs, **{next(iter(ctx.inputs)): pending})
    inputs.pop("calls", None)
    return requests(spec.rows_of(ctx, inputs), spec.tasks[0](ctx.settings), spec.row_key)

"""The stage contract: what a stage declares, and what its transform receives and returns.

A transform is DataFrame -> DataFrame and never touches storage. It returns one DataFrame with
the output columns plus ``_reason`` and ``_detail`` (null reason = kept, otherwise rejected)
and optionally ``_outcome`` ('kept' | 'rejected' | 'deferred': deferred rows, e.g. failed LLM
calls, stay pending for the next run). The runner owns versions, pending rows, chunks,
commits and tracking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from boostqa.config import Settings

class StageError(RuntimeError):
    """A stage broke its contract or cannot run; nothing of the chunk was committed."""


SOURCE_FILES = "files:sources"  # input spec: the seed source files declared in config
BENCHMARK_FILES = "files:benchmarks"  # input spec: the benchmark test-set files declared in config
OUTCOMES = ("kept", "rejected", "deferred")


@dataclass(frozen=True)
class Derived:
    """A table built from a chunk's staged result (all rows, incl. underscore columns), committed
    insert-only on its key right after the main output: e.g. cluster membership or an index."""

    table: str
    key: tuple[str, ...]
    build: Callable[[Any, DataFrame], DataFrame]  # (StageContext, staged) -> rows


@dataclass(frozen=True)
class Stage:
    name: str
    # alias -> logical table or SOURCE_FILES; the first alias drives pending rows. A callable builds
    # them from the settings (e.g. the tables the token ledger counts: all optional)
    inputs: dict[str, str] | Callable[[Settings], dict[str, str]]
    output: str
    key: tuple[str, ...]  # in the driving input, the output and the rejects: the unit of idempotency
    transform: Callable[..., DataFrame]
    rejects: str | None = None
    reject_columns: tuple[str, ...] = ()  # carried into the rejects table next to reason/detail
    chunk_by: tuple[str, ...] = ()  # rows that must be judged together share a chunk (default: key)
    reads_output: bool = False  # transform gets `existing`: the output table as committed so far
    one_to_one: bool = True  # every pending row leaves as exactly one kept/rejected/deferred row
    whole: bool = False  # judge all pending rows together in one chunk (e.g. clustering)
    chunk_rows: int | Callable[[Settings], int] | None = None  # overrides runner.chunk_rows (slow model calls)
    enabled: Callable[[Settings], bool] | None = None  # skipped when this says False
    optional_inputs: tuple[str, ...] | None = ()  # aliases that are None until their table exists (None: all)
    live_inputs: tuple[str, ...] = ()  # aliases read at their current version for each chunk (e.g. the
    # call log the stage itself appends to), not pinned at the start
    derived: tuple[Derived, ...] = ()
    report: Callable[[DataFrame], dict[str, float]] | None = None  # extra metrics from a staged chunk
    # snapshot stages recompute the whole output from their inputs each run and overwrite it
    # (a new Delta version); e.g. aggregates such as sampling weights
    mode: str = "insert"  # insert | overwrite
    prepare: Callable[[Any, DataFrame], DataFrame] | None = None  # (ctx, driving) -> rows to consider
    artifacts: Callable[[Any, DataFrame], dict[str, str]] | None = None  # (ctx, staged) -> {file: text}
    # LLM stages: settings -> (endpoint name, prompt id, requests(ctx, driving) -> request_key, messages)
    llm: Callable[[Settings], tuple[str, str, Callable[..., DataFrame]]] | None = None
    config: Callable[[Settings], Any] | None = None  # the settings section logged with the stage
    description: str = ""

    def input_specs(self, settings: Settings) -> dict[str, str]:
        return self.inputs(settings) if callable(self.inputs) else self.inputs

    def is_optional(self, alias: str) -> bool:
        return self.optional_inputs is None or alias in self.optional_inputs


@dataclass
class StageContext:
    spark: SparkSession
    settings: Settings
    run_id: str
    stage: Stage
    checkpoint: Callable[[DataFrame], DataFrame] = lambda df: df  # materialise an iterative plan
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # input alias -> pinned Delta version
    digests: dict[str, str] = field(default_factory=dict)  # input alias -> content digest of that version
    inputs: dict[str, DataFrame | None] = field(default_factory=dict)  # the pinned inputs (for prepare)
    existing: DataFrame | None = None  # the output as committed so far (reads_output stages)

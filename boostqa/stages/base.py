"""The stage contract: what a stage declares, and what its transform receives and returns.

A transform is DataFrame -> DataFrame and never touches storage. It returns one DataFrame with
the output columns plus ``_reason`` and ``_detail`` (null reason = kept, otherwise rejected)
and optionally ``_outcome`` ('kept' | 'rejected' | 'deferred': deferred rows, e.g. failed LLM
calls, stay pending for the next run). The runner owns versions, pending rows, chunks,
commits and tracking. Whatever a stage reports beyond row counts (metrics, MLflow tags,
artifacts) goes through one channel, ``ctx.stats``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, SparkSession

from boostqa.config import Settings

if TYPE_CHECKING:
    from boostqa.stages.llm import LLMSpec


class StageError(RuntimeError):
    """A stage broke its contract or cannot run; nothing of the chunk was committed."""


SOURCE_FILES = "files:sources"  # input spec: the seed source files declared in config
BENCHMARK_FILES = "files:benchmarks"  # input spec: the benchmark test-set files declared in config
OUTCOMES = ("kept", "rejected", "deferred")

# settings sections a stage may read only when it declares them (Stage.sections); engine, lake,
# runner and tracking belong to the runner and are open to every stage
SECTIONS = frozenset({"ingest", "sources", "benchmarks", "dedup", "decontam", "llm", "annotate", "probe",
                      "synthesis", "refine", "gate", "corpus", "tokens", "blend", "export"})


class SettingsView:
    """The settings as one stage sees them: reading a section it did not declare raises, so every
    cross-section read (gate -> dedup threshold) is written in its Stage declaration."""

    __slots__ = ("_settings", "_sections", "_stage")

    def __init__(self, settings: Settings, sections: frozenset[str], stage: str):
        self._settings, self._sections, self._stage = settings, sections, stage

    def __getattr__(self, name: str) -> Any:
        if name in SECTIONS and name not in self._sections:
            raise StageError(f"stage {self._stage} reads settings.{name} but declares sections "
                             f"{sorted(self._sections)}: add {name!r} to its Stage.sections")
        return getattr(self._settings, name)

    def __reduce__(self):  # UDF closures pickle it
        return SettingsView, (self._settings, self._sections, self._stage)


class Stats:
    """What a stage reports beyond row counts, in one typed channel (cf. datatrove's stat_update):
    counters add up over chunks, gauges keep their last value, tags go on the stage's MLflow run,
    artifacts are text files logged with it."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: dict[str, str] = {}

    def add(self, name: str, value: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + float(value)

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = float(value)

    def tag(self, name: str, value: str) -> None:
        self.tags[name] = value

    def artifact(self, name: str, text: str) -> None:
        self.artifacts[name] = text

    def metrics(self) -> dict[str, float]:
        return {**self.counters, **self.gauges}

    def get(self, name: str, default: float | None = None) -> float | None:
        return self.metrics().get(name, default)

    def __getitem__(self, name: str) -> float:
        return self.metrics()[name]


@dataclass(frozen=True)
class Derived:
    """A table built from a chunk's staged result (all rows, incl. underscore columns), committed
    insert-only on its key right after the main output: e.g. cluster membership or an index."""

    table: str
    key: tuple[str, ...]
    build: Callable[[Any, DataFrame], DataFrame]  # (StageContext, staged) -> rows
    first: bool = False  # committed before the output (the call log: no answered row without its call)


@dataclass(frozen=True)
class Stage:
    name: str
    # alias -> logical table or SOURCE_FILES; the first alias drives pending rows. A callable builds
    # them from the settings (e.g. the tables the token ledger counts: all optional)
    inputs: dict[str, str] | Callable[[Settings], dict[str, str]]
    output: str
    key: tuple[str, ...]  # in the driving input, the output and the rejects: the unit of idempotency
    transform: Callable[..., DataFrame]  # (ctx, **inputs) -> rows; the driving alias holds one chunk
    sections: tuple[str, ...] = ()  # the settings sections the stage reads (logged with its run)
    rejects: str | None = None
    reject_columns: tuple[str, ...] = ()  # carried into the rejects table next to reason/detail
    chunk_by: tuple[str, ...] = ()  # rows that must be judged together share a chunk (default: key)
    reads_output: bool = False  # ctx.existing: the output table as committed so far (refreshed per chunk)
    one_to_one: bool = True  # every pending row leaves as exactly one kept/rejected/deferred row
    whole: bool = False  # judge all pending rows together in one chunk (e.g. clustering)
    chunk_rows: int | Callable[[Settings], int] | None = None  # overrides runner.chunk_rows (slow model calls)
    enabled: Callable[[Settings], bool] | None = None  # skipped when this says False
    optional_inputs: tuple[str, ...] | None = ()  # aliases that are None until their table exists (None: all)
    live_inputs: tuple[str, ...] = ()  # aliases read at their current version for each chunk (e.g. the
    # call log the stage itself appends to), not pinned at the start
    derived: tuple[Derived, ...] = ()
    summarize: Callable[[Any, DataFrame], None] | None = None  # (ctx, staged chunk) -> ctx.stats
    reports: tuple[str, ...] = ()  # lake reports (boostqa.reports.REPORTS) logged once the stage ran
    # snapshot stages recompute the whole output from their inputs each run and overwrite it
    # (a new Delta version); e.g. aggregates such as sampling weights
    mode: str = "insert"  # insert | overwrite
    deferral_is_failure: bool = True  # deferred rows mean something failed (a run leaving them exits non-zero)
    # an earlier stage this one appends work to (check plans booster retries for synthesize): the
    # runner reruns that stage through this one while it has pending rows, so a run converges
    feeds_back: str | None = None
    prepare: Callable[[Any, DataFrame], DataFrame] | None = None  # (ctx, driving) -> rows to consider
    llm: LLMSpec | None = None  # LLM stages (stages/llm.py): their tasks, for planning and the call log
    journal: str | None = None  # a table (keyed on request_key) the tasks' call journal is replayed into
    description: str = ""

    def input_specs(self, settings: Settings) -> dict[str, str]:
        return self.inputs(settings) if callable(self.inputs) else self.inputs

    def is_optional(self, alias: str) -> bool:
        return self.optional_inputs is None or alias in self.optional_inputs

    def settings_view(self, settings: Settings) -> SettingsView:
        return SettingsView(settings, frozenset(self.sections), self.name)

    def config(self, settings: Settings) -> dict[str, Any]:
        """The declared sections' values, logged with the stage's MLflow run."""
        return {s: _dump(getattr(settings, s)) for s in self.sections}


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value.model_dump() if hasattr(value, "model_dump") else value


@dataclass
class StageContext:
    spark: SparkSession
    settings: SettingsView | Settings
    run_id: str
    stage: Stage
    checkpoint: Callable[[DataFrame], DataFrame] = lambda df: df  # materialise an iterative plan
    stats: Stats = field(default_factory=Stats)
    versions: dict[str, int] = field(default_factory=dict)  # input alias -> pinned Delta version
    digests: dict[str, str] = field(default_factory=dict)  # input alias -> content digest of that version
    inputs: dict[str, DataFrame | None] = field(default_factory=dict)  # the pinned inputs (for prepare)
    existing: DataFrame | None = None  # reads_output stages: the output as committed so far
    files: list[Any] = field(default_factory=list)  # source files read for file inputs (logged with the run)
    journal: str | None = None  # where the tasks journal their answered calls (stages with Stage.journal)

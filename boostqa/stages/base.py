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

SOURCE_FILES = "files:sources"  # input spec: the seed source files declared in config
OUTCOMES = ("kept", "rejected", "deferred")


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: dict[str, str]  # alias -> logical table or SOURCE_FILES; the first alias drives pending rows
    output: str
    key: tuple[str, ...]  # in the driving input, the output and the rejects: the unit of idempotency
    transform: Callable[..., DataFrame]
    rejects: str | None = None
    reject_columns: tuple[str, ...] = ()  # carried into the rejects table next to reason/detail
    chunk_by: tuple[str, ...] = ()  # rows that must be judged together share a chunk (default: key)
    reads_output: bool = False  # transform gets `existing`: the output table as committed so far
    one_to_one: bool = True  # every pending row leaves as exactly one kept/rejected/deferred row
    config: Callable[[Settings], Any] | None = None  # the settings section logged with the stage
    description: str = ""


@dataclass
class StageContext:
    spark: SparkSession
    settings: Settings
    run_id: str
    stage: Stage
    extra: dict[str, Any] = field(default_factory=dict)

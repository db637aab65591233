"""The call journal: every answered call on disk within seconds, so a kill re-pays at most one
sub-batch (Spark-free; written by the tasks that make the calls).

A chunk's calls reach ``ops.llm_calls`` when the chunk commits; a process killed before that would
pay for all of them again. So the tasks that call also append each answer to a journal: small
parquet files of ``every`` calls (the last one at the end), each written to a hidden name and
renamed into place, so a file is whole or absent. The runner replays leftover journal files into
``ops.llm_calls`` before a stage computes what it still has to ask, and clears the files of a
chunk once its calls are committed.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from boostqa import crash

FIELDS = [("request_key", pa.string()), ("endpoint", pa.string()), ("model", pa.string()), ("prompt_id", pa.string()),
          ("stage", pa.string()), ("messages", pa.string()), ("status", pa.string()), ("raw", pa.string()),
          ("reasoning", pa.string()), ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()),
          ("completion_tokens", pa.int64()), ("latency_ms", pa.float64()), ("attempts", pa.int64()),
          ("error", pa.string()), ("http_status", pa.int64()), ("reasoning_tokens", pa.int64()),
          ("response_format", pa.string()), ("logprobs", pa.string()), ("retry", pa.int64()), ("simulated", pa.bool_()),
          ("run_id", pa.string()), ("created_at", pa.timestamp("us", tz="UTC"))]
SCHEMA = pa.schema(FIELDS)
KEPT = ("ok", "invalid", "truncated")  # answers worth reusing (failed calls are not answers)


class CallJournal:
    """Appends answered calls of one Spark task to ``directory`` in files of ``every`` calls."""

    def __init__(self, directory: str, context: dict[str, str], every: int = 20):
        self.directory, self.context, self.every = directory, context, max(1, every)
        self.rows: list[dict] = []
        os.makedirs(directory, exist_ok=True)

    def add(self, result, messages: list[dict], prompt_id: str, simulated: bool, retry: int = 0) -> None:
        if result.status not in KEPT:
            return
        row = {k: getattr(result, k) for k in ("request_key", "status", "raw", "reasoning", "finish_reason",
                                                "prompt_tokens", "completion_tokens", "latency_ms", "attempts",
                                                "error", "http_status", "reasoning_tokens", "response_format",
                                                "logprobs")}
        row.update(self.context, messages=json.dumps(messages, ensure_ascii=False), prompt_id=prompt_id, retry=retry,
                   simulated=bool(simulated or result.simulated), created_at=datetime.now(timezone.utc))
        self.rows.append(row)
        if len(self.rows) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=SCHEMA)
        name = f"{uuid.uuid4().hex}.parquet"
        tmp = os.path.join(self.directory, f".{name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, os.path.join(self.directory, name))  # whole or absent
        self.rows = []
        crash.point("journal_flush")


def files(directory: str) -> list[str]:
    """The complete journal files under ``directory`` (any depth), oldest first."""
    out = []
    for root, _, names in os.walk(directory):
        out += [os.path.join(root, n) for n in names if n.endswith(".parquet") and not n.startswith(".")]
    return sorted(out, key=os.path.getmtime)


def clear(paths: list[str]) -> None:
    for p in paths:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass

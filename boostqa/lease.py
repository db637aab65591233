"""One run per stage and lake at a time: a lease held in the lake itself (``ops.stage_leases``).

Two runs of one stage on one lake would each pay for the same LLM calls, and both would report
every row as theirs. Before a stage starts, its run takes the stage's lease: a row (stage, run,
holder, expiry) written with a MERGE that only replaces an expired row or its own. A heartbeat
thread renews the expiry while the stage runs; a crashed holder stops renewing, so its lease
lapses after ``ttl`` seconds instead of blocking forever, and a holder on this same machine whose
process is gone (pid and start time, so a reused pid is not mistaken for it) is broken at once. When two runs race for a free lease
and both rows land, the earliest (acquired_at, run_id) wins and the other withdraws. A second
run waits up to ``wait`` seconds, then stops with a message naming the holder.

Plain SQL (MERGE, UPDATE, DELETE) on a Delta table: the same on Sail, Spark + Delta and Databricks.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from pyspark.sql import functions as F

SCHEMA = "stage string, run_id string, holder string, acquired_at timestamp, expires_at timestamp"
TABLE = "ops.stage_leases"


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_started(pid) or '?'}"


def is_dead(holder: str) -> bool:
    """A holder on this machine whose process no longer exists (never True for another machine's)."""
    host, _, rest = holder.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit() or start in ("", "?"):
        return False
    return _started(int(pid)) != start


class LeaseTaken(RuntimeError):
    """Another live run holds the stage."""


class Lease:
    def __init__(self, lake, stage: str, run_id: str, ttl: float = 120.0, wait: float = 0.0):
        self.lake, self.stage, self.run_id, self.ttl, self.wait = lake, stage, run_id, ttl, wait
        self.holder = holder_id(os.getpid())
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ public
    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        from pyspark.sql.types import _parse_datatype_string

        self.lake.create(TABLE, _parse_datatype_string(SCHEMA))
        deadline = time.monotonic() + self.wait
        while True:
            winner = self._try()
            if winner["run_id"] == self.run_id:
                break
            if is_dead(winner["holder"]):  # killed on this machine: its lease is void
                self._sql(f"DELETE FROM {self._ref} WHERE stage = '{self.stage}' AND run_id = '{winner['run_id']}'")
                continue
            if time.monotonic() >= deadline:
                raise LeaseTaken(f"stage {self.stage} is being run by run {winner['run_id']} ({winner['holder']}) "
                                 f"on this lake; its lease expires at {winner['expires_at']:%Y-%m-%d %H:%M:%S} UTC "
                                 "unless renewed. Wait for it, or set runner.lease_wait_seconds to wait")
            time.sleep(min(5.0, max(0.5, deadline - time.monotonic())))
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease-{self.stage}", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        self._sql(f"DELETE FROM {self._ref} WHERE stage = '{self.stage}' AND run_id = '{self.run_id}'")

    @staticmethod
    def live_runs(lake, stage: str) -> set[str]:
        """Run ids holding an unexpired lease on ``stage``."""
        if not lake.exists(TABLE):
            return set()
        rows = lake.read(TABLE).where((F.col("stage") == stage) & (F.col("expires_at") >= F.current_timestamp()))
        return {r["run_id"] for r in rows.select("run_id").collect()}

    # ------------------------------------------------------------------ steps
    @property
    def _ref(self) -> str:
        return self.lake._sql_ref(TABLE)

    def _sql(self, sql: str) -> None:
        from boostqa.lake import retry_conflicts

        retry_conflicts(lambda: self.lake.spark.sql(sql), self.lake.commit_retries)

    def _try(self) -> dict:
        """Write our claim (only over an expired row or our own) and return the winning row."""
        self._sql(f"""MERGE INTO {self._ref} t USING (SELECT '{self.stage}' AS stage, '{self.run_id}' AS run_id,
            '{self.holder}' AS holder, current_timestamp() AS acquired_at,
            current_timestamp() + make_interval(0, 0, 0, 0, 0, 0, {float(self.ttl)}) AS expires_at) s
            ON t.stage = s.stage
            WHEN MATCHED AND (t.expires_at < current_timestamp() OR t.run_id = s.run_id) THEN UPDATE SET *
            WHEN NOT MATCHED THEN INSERT *""")
        rows = (self.lake.read(TABLE).where((F.col("stage") == self.stage)
                                            & (F.col("expires_at") >= F.current_timestamp()))
                .orderBy("acquired_at", "run_id").collect())
        if not rows:  # our claim expired before we read it back (a very short ttl): try again
            return self._try()
        if rows[0]["run_id"] != self.run_id and any(r["run_id"] == self.run_id for r in rows):
            self._sql(f"DELETE FROM {self._ref} WHERE stage = '{self.stage}' AND run_id = '{self.run_id}'")
        return rows[0].asDict()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self._sql(f"UPDATE {self._ref} SET expires_at = current_timestamp() + "
                          f"make_interval(0, 0, 0, 0, 0, 0, {float(self.ttl)}) "
                          f"WHERE stage = '{self.stage}' AND run_id = '{self.run_id}'")
            except Exception:  # a missed beat only shortens the lease; the next one may succeed
                continue

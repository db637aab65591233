"""The stage contract: pending rows, chunked idempotent commits, resume after a crash, no lost rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from boostqa.lake import Lake, LakeError
from boostqa.runner import Runner, StageError
from boostqa.stages.base import Stage


def toy_transform(ctx, items, **_):
    """Even ids kept (v doubled), odd ids rejected, multiples of 7 deferred (e.g. a failed LLM call)."""
    return items.select(
        "id", (F.col("v") * 2).alias("v2"), F.lit(ctx.run_id).alias("run_id"),
        F.when(F.col("id") % 7 == 0, "deferred").when(F.col("id") % 2 == 1, "rejected").otherwise("kept")
        .alias("_outcome"),
        F.when(F.col("id") % 2 == 1, "odd").alias("_reason"),
        F.when(F.col("id") % 7 == 0, "endpoint timed out").when(F.col("id") % 2 == 1, F.concat(F.lit("id "),
               F.col("id").cast("string"))).alias("_detail"))


TOY = Stage(name="toy", inputs={"items": "silver.items"}, output="gold.toy", rejects="quarantine.toy", key=("id",),
            reject_columns=("id",), transform=toy_transform)


def _seed(spark, lake: Lake, n=100):
    lake.overwrite(spark.range(1, n + 1).withColumn("v", F.col("id") * 10), "silver.items")


def _expected(n=100):
    kept = {i for i in range(1, n + 1) if i % 7 and i % 2 == 0}
    rejected = {i for i in range(1, n + 1) if i % 7 and i % 2 == 1}
    return kept, rejected


def _ids(lake, name):
    return sorted(r.id for r in lake.read(name).collect())


def test_chunks_commit_kept_rejected_and_leave_deferred_pending(spark, make_settings):
    runner = Runner(make_settings(runner={"chunk_rows": 30}), spark=spark)
    _seed(spark, runner.lake)
    res = runner.run_stage(TOY, "r1")
    kept, rejected = _expected()
    assert res.chunks_total == 4 and res.complete
    assert _ids(runner.lake, "gold.toy") == sorted(kept) and _ids(runner.lake, "quarantine.toy") == sorted(rejected)
    assert (res.kept, res.rejected, res.deferred) == (len(kept), len(rejected), 14)
    q = runner.lake.read("quarantine.toy").where("id = 3").first()
    assert (q.reason, q.detail, q.stage, q.run_id) == ("odd", "id 3", "toy", "r1")
    # deferred rows stay pending: the next run sees exactly them
    res2 = runner.run_stage(TOY, "r2")
    assert res2.pending == 14 and res2.deferred == 14 and res2.kept == res2.rejected == 0


def test_groups_judged_together_are_packed_into_chunks_of_at_most_chunk_rows(spark, make_settings):
    """chunk_by groups (a source file) stay whole and are packed, largest first, into the first
    chunk they fit: eight files of 25 rows at chunk_rows 100 make two chunks of 100 (hashing them into
    two buckets had made 150 + 50 on the 200k benchmark corpus), and a file larger than a chunk is
    one of its own."""
    from boostqa.runner import _pack

    assert _pack({g: 25 for g in range(8)}, 100) == [([0, 1, 2, 3], 100), ([4, 5, 6, 7], 100)]
    assert _pack({1: 250, 2: 60, 3: 50, 4: 40, 5: 30, 6: 20}, 100) == [([1], 250), ([2, 4], 100), ([3, 5, 6], 100)]
    assert _pack({}, 10) == []
    by_file = Stage(name="byfile", inputs={"items": "silver.items"}, output="gold.byfile", rejects="quarantine.byfile",
                    key=("id",), reject_columns=("id",), chunk_by=("file",),
                    transform=lambda ctx, items, **_: items.select("id", "file", F.lit(ctx.run_id).alias("run_id"),
                                                                    F.lit(None).cast("string").alias("_reason"),
                                                                    F.lit(None).cast("string").alias("_detail")))
    runner = Runner(make_settings(runner={"chunk_rows": 100}), spark=spark)
    items = spark.range(0, 200).withColumn("file", F.concat(F.lit("f"), (F.col("id") % 8).cast("string")))
    runner.lake.overwrite(items.unionByName(spark.range(1000, 1130).withColumn("file", F.lit("big"))), "silver.items")
    chunks = runner._plan_chunks(by_file, runner.pending(by_file))
    assert sorted(n for _, n in chunks) == [100, 100, 130]
    for where, n in chunks:  # every file whole in one chunk
        files = runner.pending(by_file).where(where).groupBy("file").count().collect()
        assert sum(r["count"] for r in files) == n and all(r["count"] in (25, 130) for r in files)
    res = runner.run_stage(by_file, "r1")
    assert (res.chunks_total, res.kept, res.complete) == (3, 330, True)


def test_resume_after_crash_between_chunks(spark, make_settings, monkeypatch):
    runner = Runner(make_settings(runner={"chunk_rows": 20}), spark=spark)
    _seed(spark, runner.lake)
    calls = {"n": 0}
    real = Lake.insert_new

    def crashing(self, df, name, keys, **kw):
        if name == "gold.toy":
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("simulated crash: executor lost")
        return real(self, df, name, keys, **kw)

    monkeypatch.setattr(Lake, "insert_new", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run_stage(TOY, "crashy")
    done_before = len(_ids(runner.lake, "gold.toy"))
    assert 0 < done_before < len(_expected()[0])  # two chunks landed, the rest did not
    monkeypatch.setattr(Lake, "insert_new", real)
    res = runner.run_stage(TOY, "resume")
    kept, rejected = _expected()
    assert _ids(runner.lake, "gold.toy") == sorted(kept)  # complete, and no duplicates
    assert _ids(runner.lake, "quarantine.toy") == sorted(rejected)
    assert res.kept == len(kept) - done_before  # the rerun did only what was left


def test_max_chunks_then_finish(spark, make_settings):
    runner = Runner(make_settings(runner={"chunk_rows": 25}), spark=spark)
    _seed(spark, runner.lake)
    res = runner.run_stage(TOY, "part", max_chunks=1)
    assert res.chunks_done == 1 and not res.complete
    res = runner.run_stage(TOY, "rest")
    assert res.complete and _ids(runner.lake, "gold.toy") == sorted(_expected()[0])


def test_inputs_are_pinned_and_logged(spark, make_settings):
    runner = Runner(make_settings(), spark=spark)
    _seed(spark, runner.lake, 10)
    res = runner.run_stage(TOY, "p")
    [ref] = res.inputs
    assert (ref.name, ref.version) == ("silver.items", runner.lake.version("silver.items"))
    _seed(spark, runner.lake, 20)  # new input version: only the new keys are pending
    res = runner.run_stage(TOY, "p2")
    assert res.inputs[0].version == ref.version + 1 and res.pending == 10 + 1  # 10 new + id 7 still deferred


def test_a_transform_that_loses_rows_is_refused(spark, make_settings):
    lossy = Stage(name="lossy", inputs={"items": "silver.items"}, output="gold.lossy", key=("id",),
                  transform=lambda ctx, items: toy_transform(ctx, items.where("id > 5")))
    runner = Runner(make_settings(), spark=spark)
    _seed(spark, runner.lake, 10)
    with pytest.raises(StageError, match="returned 5 rows for 10 pending rows"):
        runner.run_stage(lossy, "x")
    assert not runner.lake.exists("gold.lossy")  # nothing of the chunk was committed


def test_duplicate_output_keys_are_refused(spark, make_settings):
    dup = Stage(name="dup", inputs={"items": "silver.items"}, output="gold.dup", key=("k",), one_to_one=False,
                transform=lambda ctx, items: items.select(F.lit(1).alias("k"), F.lit(None).cast("string")
                                                          .alias("_reason"), F.lit(None).cast("string").alias("_detail")))
    runner = Runner(make_settings(), spark=spark)
    _seed(spark, runner.lake, 3)
    with pytest.raises(StageError, match="duplicate keys"):
        runner.run_stage(dup, "x")


def test_missing_input_table_is_a_clear_error(spark, make_settings):
    runner = Runner(make_settings(), spark=spark)
    with pytest.raises(StageError, match="input table silver.items does not exist"):
        runner.run_stage(TOY, "x")


def test_run_ids_and_staging_paths_cannot_leave_the_lake(spark, make_settings, tmp_path):
    runner = Runner(make_settings(), spark=spark)
    _seed(spark, runner.lake)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    for bad in ("../../..", "a/b", "..", ".hidden", "x" * 200, "run id"):
        with pytest.raises(StageError, match="bad run id"):
            runner.run(["ingest"], run_id=bad)
        with pytest.raises(StageError, match="bad run id"):
            runner.run_stage(TOY, bad)
    with pytest.raises(LakeError, match="refused staging path"):
        runner.lake.staging_path("toy", "..")
    assert not runner.lake.inside_staging(str(tmp_path)) and not runner.lake.inside_staging(runner.lake.staging_root + "/../x")
    with pytest.raises(StageError, match="refusing to delete"):
        runner._remove(str(tmp_path))
    assert outside.read_text() == "keep me" and runner.lake.exists("silver.items")


def test_a_second_run_of_a_stage_is_refused_until_the_lease_lapses(spark, make_settings):
    from boostqa.lease import Lease, LeaseTaken

    lake = Runner(make_settings(), spark=spark).lake
    first = Lease(lake, "toy", "run-a", ttl=30)
    first.acquire()
    with pytest.raises(LeaseTaken, match="stage toy is being run by run run-a"):
        Lease(lake, "toy", "run-b", ttl=30).acquire()
    assert Lease.live_runs(lake, "toy") == {"run-a"}
    Lease(lake, "other", "run-b", ttl=30).acquire()  # another stage is free
    first.release()
    with Lease(lake, "toy", "run-b", ttl=30):
        assert Lease.live_runs(lake, "toy") == {"run-b"}
    assert Lease.live_runs(lake, "toy") == set()
    # a crashed holder (no heartbeat, never released) blocks only until its lease lapses
    crashed = Lease(lake, "toy", "run-c", ttl=2)
    crashed.acquire()
    crashed._stop.set()
    with pytest.raises(LeaseTaken):
        Lease(lake, "toy", "run-d", ttl=30).acquire()
    waiting = Lease(lake, "toy", "run-d", ttl=30, wait=10)
    waiting.acquire()  # waits for the lapse, then takes over
    assert Lease.live_runs(lake, "toy") == {"run-d"}
    waiting.release()
    # a holder killed on this machine (its process gone) is broken at once, long lease or not
    import subprocess

    from boostqa.lease import holder_id, is_dead

    child = subprocess.Popen(["sleep", "30"])
    killed = Lease(lake, "toy", "run-e", ttl=600)
    killed.holder = holder_id(child.pid)
    killed.acquire()
    killed._stop.set()
    assert not is_dead(killed.holder) and not is_dead("other-host:1:1")
    with pytest.raises(LeaseTaken):
        Lease(lake, "toy", "run-f", ttl=30).acquire()
    child.kill()
    child.wait()
    assert is_dead(killed.holder)
    with Lease(lake, "toy", "run-f", ttl=30):
        assert Lease.live_runs(lake, "toy") == {"run-f"}


def test_staging_of_dead_runs_is_cleared_by_the_next_run(spark, make_settings):
    runner = Runner(make_settings(), spark=spark)
    _seed(spark, runner.lake)
    dead = Path(runner.lake.staging_path("toy", "killed-run")) / "chunk-00000"
    dead.mkdir(parents=True)
    (dead / "part.parquet").write_bytes(b"x")
    runner.run_stage(TOY, "next-run")
    assert not dead.parent.exists()


def test_an_unchanged_snapshot_is_not_rewritten(spark, make_settings):
    """A snapshot stage's output is compared with the table, run ids aside: equal content writes
    nothing (no new Delta version), a changed value or a new column writes a new version."""
    runner = Runner(make_settings(), spark=spark)
    lake = runner.lake
    rows = [("a", 1, [1.0, 2.0], "r1"), ("b", 2, None, "r1")]
    schema = "k string, n int, xs array<double>, run_id string"
    lake.append(spark.createDataFrame(rows, schema), "gold.snap")

    def same(data, sch=schema):
        return runner._same_snapshot(spark.createDataFrame(data, sch), len(data), "gold.snap")

    assert same([r[:3] + ("r2",) for r in reversed(rows)])
    assert not same([rows[0], ("b", 3, None, "r1")])
    assert not same(rows[:1])  # a row fewer
    assert not same(rows + rows[:1])  # a copy more
    assert not same([rows[0], rows[0]])  # as many rows, one of them twice
    assert not same([r + (0,) for r in rows], schema + ", extra int")

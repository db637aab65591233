import pytest

from boostqa import engine
from boostqa.config import EngineConfig


def test_embedded_session_runs_sql_and_udfs(spark):
    import pandas as pd

    assert spark.sql("select 1 + 1 as x").first()["x"] == 2
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"

    def plus_one(batches):  # built after the session exists (Connect UDF rule)
        for pdf in batches:
            yield pd.DataFrame({"id": pdf["id"] + 1})

    assert spark.range(5).mapInPandas(plus_one, "id long").agg({"id": "sum"}).first()[0] == 15
    assert engine.embedded_running()


def test_second_session_reuses_the_one_server(spark):
    s2 = engine.get_spark(EngineConfig())
    assert s2.range(3).count() == 3
    assert engine.embedded_running()


def test_stop_then_start_again(tmp_path):
    """Stopping is clean (no minute-long client retries) and a new server starts on demand."""
    import time

    t = time.monotonic()
    engine.stop()
    assert not engine.embedded_running()
    assert time.monotonic() - t < 10
    s = engine.get_spark()
    assert s.range(2).count() == 2


def test_remote_without_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    with pytest.raises(engine.EngineError, match="sc://host:port"):
        engine.get_spark(EngineConfig(kind="remote"))


def test_jvm_engine_without_full_pyspark_is_a_clear_error():
    with pytest.raises(engine.EngineError, match=r"boostqa\[spark\]"):
        engine.get_spark(EngineConfig(kind="spark"))


def test_delta_jars_come_from_the_cache_and_need_mvn_only_to_fill_it(tmp_path, monkeypatch):
    from boostqa import jvm

    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no mvn
    with pytest.raises(jvm.JvmError, match="mvn"):
        jvm.delta_jars(tmp_path / "empty")
    names = ["delta-spark_2.13-4.0.0.jar", "delta-storage-4.0.0.jar"]  # mvn dependency:copy's file names
    (tmp_path / "full" / "jars").mkdir(parents=True)
    for name in names:  # a filled cache: no Maven call, the jars in order
        (tmp_path / "full" / "jars" / name).write_bytes(b"PK")
    assert jvm.delta_jars(tmp_path / "full") == [tmp_path / "full" / "jars" / n for n in names]


_START_EMBEDDED = """
from boostqa import engine
from boostqa.config import EngineConfig
print(engine.get_spark(EngineConfig()).range(3).count())
engine.stop()
"""


def _mimalloc_options(script, **env) -> dict[str, str]:
    """Start the embedded engine in a fresh process with mimalloc verbose; the options each
    mimalloc in it reported at start (Sail's reads them when its native code loads). A script
    file, not ``-c``: pyspark looks for SPARK_HOME beside the script and fails on an empty path."""
    import os
    import re
    import subprocess
    import sys

    script.write_text(_START_EMBEDDED)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env={**os.environ, "MIMALLOC_VERBOSE": "1", **env}, timeout=120)
    assert run.returncode == 0 and run.stdout.split()[-1] == "3", run.stderr[-2000:]
    return dict(re.findall(r"option '(\w+)': (\S+)", run.stderr))


def test_release_memory_reaches_sails_allocator_unless_the_environment_has_its_own(monkeypatch, tmp_path):
    """Sail's mimalloc returns freed pages at once (purge delay 0: profiled 200k dedup 2.0 -> 1.6 GB)
    and commits no 1 GiB arena eagerly (purged arena pages stayed resident: 1.03-1.07 -> 0.93 GB).
    Checked where it counts: the options mimalloc itself reports when the engine starts. A value
    the user exported is kept."""
    for name in ("MIMALLOC_PURGE_DELAY", "MIMALLOC_ARENA_EAGER_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    shipped = _mimalloc_options(tmp_path / "start.py")
    assert (shipped["purge_delay"], shipped["arena_eager_commit"]) == ("0", "0")
    exported = _mimalloc_options(tmp_path / "start.py", MIMALLOC_PURGE_DELAY="250", MIMALLOC_ARENA_EAGER_COMMIT="1")
    assert (exported["purge_delay"], exported["arena_eager_commit"]) == ("250", "1")


def test_release_memory_moves_pyarrow_to_the_system_allocator_unless_the_environment_names_one(monkeypatch):
    """pyarrow's own mimalloc kept 80-145 MB of freed pages with nothing allocated (the 200k dedup's
    profiled peak fell 1.16 -> 1.08 GB without it). pyarrow reads ARROW_DEFAULT_MEMORY_POOL at
    import, so the pool itself is set; an exported choice is left alone. Buffers made afterwards
    by compute kernels come from the system pool."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from boostqa import engine

    before = pa.default_memory_pool()
    try:
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
        engine._release_memory_promptly()
        assert pa.default_memory_pool().backend_name == "mimalloc"
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        engine._release_memory_promptly()
        assert pa.default_memory_pool().backend_name == "system"
        held = pa.system_memory_pool().bytes_allocated()
        joined = pc.binary_join_element_wise(pa.array(["x" * 100] * 10_000), pa.array(["y"] * 10_000), " ")
        assert pa.system_memory_pool().bytes_allocated() - held >= 10_000 * 102
        del joined
    finally:
        pa.set_memory_pool(before)


def test_sail_settings_become_its_environment_and_bound_parquet_row_groups(spark, tmp_path):
    """engine.sail keys are Sail's config keys, exported as SAIL_* when the server starts. The
    defaults make Sail stream Parquet in row groups of at most 8,192 rows (its parallel writer
    buffered a whole staged chunk: one row group per file)."""
    import pyarrow.parquet as pq

    assert engine.sail_environment({"parquet.max_row_group_size": 8, "execution.batch_size": "1024"}) == {
        "SAIL_PARQUET__MAX_ROW_GROUP_SIZE": "8", "SAIL_EXECUTION__BATCH_SIZE": "1024"}
    assert EngineConfig().sail["parquet.max_row_group_size"] == "8192"
    spark.range(150_000).selectExpr("id", "repeat('x', 20) as s").write.mode("overwrite").parquet(str(tmp_path / "p"))
    groups = [pq.ParquetFile(f).metadata for f in sorted((tmp_path / "p").glob("*.parquet"))]
    sizes = [m.row_group(i).num_rows for m in groups for i in range(m.num_row_groups)]
    assert sum(sizes) == 150_000 and max(sizes) <= 8_192 and len(sizes) > len(groups)

"""One SparkSession factory for every place the pipeline runs.

- embedded: a LakeSail Spark Connect server inside this process (no JVM), native Delta;
- spark: Apache Spark 4 from pip pyspark (local[N] or a master URL), Delta via delta-spark jars;
- remote: any sc://host:port Spark Connect endpoint;
- databricks: the session a Databricks job provides, or Databricks Connect.

All pipeline code uses the Spark Connect subset (DataFrame API + SQL), so it is engine-blind;
anything engine-specific lives here and in lake.py.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from pyspark.sql import SparkSession

from boostqa.config import EngineConfig


class EngineError(RuntimeError):
    """The requested engine cannot start; the message says what is missing."""


_lock = threading.Lock()
_server = None  # the in-process Sail server, shared by every embedded session of this process
_sessions: list[SparkSession] = []  # stopped before the server, else the client retries for a minute at exit


def _release_memory_promptly() -> None:
    """Freed memory goes back to the OS at once. Sail and pyarrow allocate with mimalloc, which
    keeps freed pages cached for reuse, so the process stayed at the high-water mark of every step
    it had run (profiled 200k-document dedup: peak RSS 2.0 GB; with purge delay 0: 1.6 GB, ~10 % slower).
    The UDF threads' numpy buffers come from glibc, whose per-thread arenas are capped at two.
    pyarrow's buffers (the UDFs' Arrow batches) go to glibc too: pyarrow's own mimalloc kept
    80-145 MB of freed pages with nothing allocated (its UDF threads end with every batch stream);
    profiled 200k dedup: peak 1.16 -> 1.08 GB, same speed. Sail's mimalloc also stops committing
    its 1 GiB arena eagerly: a purge of eagerly committed arena pages only marked them reusable
    (they stayed resident, 100-190 MB at rest); segments mapped on demand are handed back.
    Profiled 200k dedup: peak 1.03-1.07 -> 0.93-0.95 GB, ~6 % more time. An environment setting of
    ``MIMALLOC_PURGE_DELAY``, ``MIMALLOC_ARENA_EAGER_COMMIT``, ``MALLOC_ARENA_MAX`` or
    ``ARROW_DEFAULT_MEMORY_POOL`` wins; must run before pysail's native code loads."""
    os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")
    os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:  # pyarrow reads it at import: set the pool itself
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())
    if "MALLOC_ARENA_MAX" not in os.environ and sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX; affects the threads started after it
        except (OSError, AttributeError):  # not glibc (musl): nothing to cap
            pass


def sail_environment(settings: dict[str, str]) -> dict[str, str]:
    """Sail config keys -> the SAIL_* variables it reads at start (``parquet.max_row_group_size`` ->
    ``SAIL_PARQUET__MAX_ROW_GROUP_SIZE``)."""
    return {"SAIL_" + k.strip().upper().replace(".", "__"): str(v) for k, v in settings.items()}


def _start_sail(cfg: EngineConfig) -> int:
    global _server
    with _lock:
        if _server is None:
            os.environ.setdefault("RUST_LOG", "error")  # Sail logs every session at INFO otherwise
            if cfg.release_memory:
                _release_memory_promptly()
            for k, v in sail_environment(cfg.sail).items():
                os.environ.setdefault(k, v)
            from pysail.spark import SparkConnectServer

            server = SparkConnectServer("127.0.0.1", 0)  # free loopback port
            server.start(background=True)
            _server = server
            atexit.register(stop)
        return _server.listening_address[1]


def _embedded(cfg: EngineConfig) -> SparkSession:
    port = _start_sail(cfg)
    with _lock:
        spark = _own_session(f"sc://127.0.0.1:{port}")
        if spark not in _sessions:
            _sessions.append(spark)
        return spark


_by_url: dict[str, SparkSession] = {}  # the one session per Connect URL this process made


def _own_session(url: str) -> SparkSession:
    """This module's session for ``url`` (made once; again after it was stopped). Not
    ``builder.getOrCreate()``: that returns the process's active session whatever server it is
    on, so an embedded session asked for after a remote one was made would be the remote one.
    ``create()`` still makes the first session the process default, which ``SparkSession.active()``
    callers (DDL parsing) need when it is the only one."""
    spark = _by_url.get(url)
    if spark is None or spark.is_stopped or spark.client.is_closed:
        spark = _by_url[url] = SparkSession.builder.remote(url).create()
    return spark


def _jvm(cfg: EngineConfig) -> SparkSession:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # else workers use the PATH python
    import importlib.util

    builder = SparkSession.builder
    if importlib.util.find_spec("py4j") is None:  # pyspark-client has no JVM gateway
        raise EngineError("engine.kind=spark needs full pyspark: pip install 'boostqa[spark]' "
                          "in its own environment (pyspark-client cannot start a JVM)")
    # markers an earlier Connect session left in this process would turn the builder into a Connect one
    for marker in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        os.environ.pop(marker, None)
    conf = dict(cfg.conf)
    if not {"spark.jars", "spark.jars.packages"} & conf.keys():  # the project's cached jars, not Ivy
        from boostqa import jvm

        try:
            conf["spark.jars"] = ",".join(str(p) for p in jvm.delta_jars(emit=lambda m: print(m, file=sys.stderr)))
        except jvm.JvmError as e:
            raise EngineError(f"engine.kind=spark: {e}; or set engine.conf spark.jars") from e
    for k, v in conf.items():
        builder = builder.config(k, v)
    builder = (builder.master(cfg.master).appName("boostqa")
               .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
               .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
               .config("spark.ui.enabled", "false"))
    spark = builder.getOrCreate()
    try:  # fail now, not at the first Delta write, when the connector jars are missing
        # spark.jars sit on Spark's own class loader, not the system one Class.forName would ask
        loader = spark._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.sql.DeltaSparkSessionExtension")
    except Exception as e:  # py4j raises its own error types
        spark.stop()
        raise EngineError("Delta connector is not on the Spark classpath: pass the delta-spark jars "
                          "(spark.jars / --packages io.delta:delta-spark_2.13:4.0.0) or use the embedded engine") from e
    return spark


def _remote(cfg: EngineConfig) -> SparkSession:
    url = cfg.remote or os.environ.get("SPARK_REMOTE")
    if not url:
        raise EngineError("engine.kind=remote needs engine.remote (sc://host:port) or env SPARK_REMOTE")
    with _lock:
        return _own_session(url)


def _databricks(cfg: EngineConfig) -> SparkSession:
    active = SparkSession.getActiveSession()
    if active is not None:  # inside a Databricks job or notebook
        return active
    try:
        from databricks.connect import DatabricksSession
    except ImportError as e:
        raise EngineError("engine.kind=databricks outside a Databricks job needs databricks-connect: "
                          "pip install 'boostqa[databricks]' and DATABRICKS_HOST/DATABRICKS_TOKEN or a profile") from e
    return DatabricksSession.builder.getOrCreate()


_FACTORIES = {"embedded": _embedded, "spark": _jvm, "remote": _remote, "databricks": _databricks}


def get_spark(cfg: EngineConfig | None = None) -> SparkSession:
    """A SparkSession for the configured engine, with the session settings the pipeline relies on."""
    cfg = cfg or EngineConfig()
    spark = _FACTORIES[cfg.kind](cfg)
    conf = {"spark.sql.session.timeZone": "UTC", "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
            **cfg.conf}
    for k, v in conf.items():
        try:
            spark.conf.set(k, v)
        except Exception:  # Databricks serverless refuses some settings; they are tuning, not semantics
            if k == "spark.sql.session.timeZone":
                raise
    return spark


def stop() -> None:
    """Stop the embedded server (also registered at exit). Sessions on it stop working."""
    global _server
    with _lock:
        while _sessions:
            try:
                _sessions.pop().stop()
            except Exception:  # already closed
                pass
        if _server is not None:
            try:
                _server.stop()
            finally:
                _server = None


def embedded_running() -> bool:
    return _server is not None

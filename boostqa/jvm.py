"""Apache Spark 4 on the JVM with Delta Lake, as a Spark Connect server on loopback.

The pipeline speaks only Spark Connect, so proving it on JVM Spark needs a Connect server with
Delta, not a second client: ``fetch()`` prepares, once per machine, a private virtualenv with
full ``pyspark`` (the JVM jars, ``spark-submit`` and the Connect server jar; kept apart because it
replaces the thin ``pyspark-client`` of the project's environment) and the Delta jars, copied
from Maven Central by ``mvn dependency:copy`` into the project's cache (Ivy is never asked).
``ConnectServer`` starts ``SparkConnectServer`` (Delta extension and catalog; ``master`` is
``local[N]``, or ``local-cluster[W,C,MB]`` for W executor JVMs of C cores and MB MiB each, so
Python UDFs and the jars ship to separate processes as on a cluster) on a free port and stops it with its process group. Python UDFs run in that virtualenv's interpreter,
which sees the calling environment's packages (boostqa, pandas, pyarrow) after its own pyspark
through a ``.pth`` file, so the worker's pyspark matches the JVM's.

    python -m boostqa.jvm fetch          # ~400 MB once: pyspark + delta jars
    python -m boostqa.jvm serve [PORT] [MASTER]   # a Connect server until Ctrl-C (engine.kind: remote)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from boostqa.tracking import file_lock

SPARK_VERSION = "4.0.1"  # pyproject's `spark` extra
DELTA_JARS = ("io.delta:delta-spark_2.13:4.0.0", "io.delta:delta-storage:4.0.0")
CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
# The project's client is pyspark-client 4.2, whose createDataFrame(<local rows>) first reads these
# session settings, unknown to a 4.0 server (SQL_CONF_NOT_FOUND). Values only matter for local data
# over spark.sql.session.localRelationCacheThreshold (64 MB), which a 4.0 server cannot take anyway.
CLIENT_CONFS = {"spark.sql.session.localRelationSizeLimit": str(2**31 - 1),
                "spark.sql.session.localRelationChunkSizeRows": "10000",
                "spark.sql.session.localRelationChunkSizeBytes": str(16 * 2**20),
                "spark.sql.session.localRelationBatchOfChunksSizeBytes": str(128 * 2**20)}


class JvmError(RuntimeError):
    """Java, Maven or the Spark download is missing or failed; the message says which."""


def cache_root() -> Path:
    from boostqa.assets import default_cache_dir

    return Path(default_cache_dir()) / "spark"


def problem() -> str | None:
    """Why JVM Spark cannot run here (None: it can)."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH"
    return None


def _site(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def fetch(root: Path | None = None, emit=print) -> Path:
    """The cache directory holding ``venv/`` (pyspark) and ``jars/`` (Delta), made once (locked)."""
    root = root or cache_root()
    why = problem()
    if why:
        raise JvmError(f"JVM Spark needs Java 17+ and Maven: {why}")
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(str(root / ".lock")):
        venv = root / "venv"
        if not (_site(venv) / "pyspark" / "jars" / f"spark-connect_2.13-{SPARK_VERSION}.jar").exists():
            emit(f"[jvm] creating {venv} with pyspark=={SPARK_VERSION} (~400 MB, once)")
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  f"pyspark=={SPARK_VERSION}"], "pip install pyspark")
        _copy_jars(root, emit)
        # the worker interpreter sees this environment's packages after its own pyspark
        here = [sysconfig.get_paths()["purelib"], str(Path(__file__).resolve().parent.parent)]
        (_site(venv) / "zz_boostqa_caller.pth").write_text("\n".join(here) + "\n")
    return root


def _jar(root: Path, coord: str) -> Path:
    """Where ``mvn dependency:copy`` puts the jar of a ``group:artifact:version`` coordinate."""
    _, artifact, version = coord.split(":")
    return root / "jars" / f"{artifact}-{version}.jar"


def _copy_jars(root: Path, emit=print) -> list[Path]:
    for coord in DELTA_JARS:
        if not _jar(root, coord).exists():
            emit(f"[jvm] mvn dependency:copy {coord}")
            _run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={coord}", f"-DoutputDirectory={root / 'jars'}"],
                 f"mvn dependency:copy {coord}", cwd=root)
    return [_jar(root, c) for c in DELTA_JARS]


def delta_jars(root: Path | None = None, emit=print) -> list[Path]:
    """The Delta jars in the project's cache, copied from Maven Central once (locked): what a
    classic ``engine.kind: spark`` session hands to Spark as ``spark.jars``."""
    root = root or cache_root()
    if shutil.which("mvn") is None and not all(_jar(root, c).exists() for c in DELTA_JARS):
        raise JvmError("the Delta jars are not in the cache and `mvn` is not on PATH to fetch them")
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(str(root / ".lock")):
        return _copy_jars(root, emit)


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode:
        raise JvmError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")


_LOG4J2 = """\
# written by boostqa.jvm: warnings and errors only, plus the Connect server's own start line
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.connect.name = org.apache.spark.sql.connect.service.SparkConnectServer
logger.connect.level = info
"""


def _conf_dir(root: Path) -> Path:
    conf = root / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    if not (conf / "log4j2.properties").exists() or (conf / "log4j2.properties").read_text() != _LOG4J2:
        (conf / "log4j2.properties").write_text(_LOG4J2)
    return conf


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ConnectServer:
    """``SparkConnectServer`` with Delta on 127.0.0.1; a context manager. ``url`` is what
    ``engine.remote`` wants."""

    root: Path
    port: int = 0
    master: str = "local[2]"
    driver_memory: str = "2g"
    startup_timeout: float = 120.0
    log_path: Path | None = None
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        spark_home = _site(self.root / "venv") / "pyspark"
        jars = ",".join(str(p) for p in sorted((self.root / "jars").glob("*.jar")))
        conf = {"spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
                "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
                "spark.connect.grpc.binding.address": "127.0.0.1", "spark.connect.grpc.binding.port": str(self.port),
                "spark.ui.enabled": "false", "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
                "spark.sql.shuffle.partitions": "4", "spark.sql.session.timeZone": "UTC",
                # Delta rebuilds a table's snapshot state in 50 tasks by default: on a laptop-sized
                # lake that was >90% of the tasks (and most of the wall time) of a pipeline run
                "spark.databricks.delta.snapshotPartitions": "2",
                **CLIENT_CONFS}
        return [str(spark_home / "bin" / "spark-submit"), "--class", CONNECT_CLASS, "--master", self.master,
                "--driver-memory", self.driver_memory, "--jars", jars,
                *[x for k, v in conf.items() for x in ("--conf", f"{k}={v}")], "spark-internal"]

    def launch(self) -> ConnectServer:
        """Start the JVM and return at once (it needs 10-20 s; ``wait_ready`` waits for it), so a
        caller can do other work meanwhile."""
        self.port = self.port or _free_port()
        env = {**os.environ, "SPARK_HOME": str(_site(self.root / "venv") / "pyspark"),
               "SPARK_CONF_DIR": str(_conf_dir(self.root)),  # log4j2: warnings only, not ~5 MB of INFO a run
               "SPARK_LOCAL_IP": "127.0.0.1",  # driver and block manager on loopback too, not the LAN address
               "PYSPARK_PYTHON": str(self.root / "venv" / "bin" / "python"), "PYTHONPATH": ""}
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        for old in sorted(logs.glob("connect-*.log"), key=lambda f: f.stat().st_mtime)[:-10]:
            old.unlink(missing_ok=True)  # keep the last ten servers' logs
        self.log_path = self.log_path or logs / f"connect-{self.port}.log"
        with open(self.log_path, "w") as log:
            self._proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        atexit.register(self.stop)  # its own process group: nothing else would stop it if the caller dies
        return self

    def start(self) -> ConnectServer:
        """Launch and wait until the server accepts connections."""
        return self.launch().wait_ready()

    def wait_ready(self) -> ConnectServer:
        if self._proc is None:
            raise JvmError("Spark Connect server was not launched")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise JvmError(f"Spark Connect server exited ({self._proc.returncode}); see {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.5)
        self.stop()
        raise JvmError(f"Spark Connect server not listening after {self.startup_timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc = None

    def __enter__(self) -> ConnectServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("fetch", "serve"):
        print(__doc__)
        return 2
    root = fetch()
    if args[0] == "serve":
        port, master = int(args[1]) if len(args) > 1 else 15002, args[2] if len(args) > 2 else "local[2]"
        with ConnectServer(root, port=port, master=master) as srv:
            print(f"Spark Connect + Delta at {srv.url} (engine.kind: remote, engine.remote: {srv.url}); Ctrl-C stops")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())

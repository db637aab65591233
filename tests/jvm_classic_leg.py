"""The classic-JVM leg of the engine parity test (tests/test_spark_jvm.py), run as a script by
the private virtualenv's interpreter (full pyspark 4.0; ``boostqa.jvm.fetch`` puts this project on
its path): the whole pipeline with ``engine.kind: spark`` on ``local[2]``, the tables read back in
the parity test's normal form and pickled to ``<dir>/tables.pkl``.

    <cache>/spark/venv/bin/python tests/jvm_classic_leg.py DIR   # DIR/base.json: the test's settings
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyspark  # noqa: E402

from tests.test_spark_jvm import _run  # noqa: E402


def main(root: Path) -> None:
    base = json.loads((root / "base.json").read_text())
    # Delta rebuilds snapshot state in 50 tasks by default: most of a laptop-sized run's time
    engine = {"kind": "spark", "master": "local[2]", "conf": {"spark.databricks.delta.snapshotPartitions": "2"}}
    tables = _run(root, base, engine)
    from boostqa import engine as eng
    from boostqa.config import EngineConfig

    spark = eng.get_spark(EngineConfig(**engine))
    classic = type(spark).__module__ == "pyspark.sql.session"  # not pyspark.sql.connect.session
    spark.stop()
    (root / "tables.pkl").write_bytes(pickle.dumps({"pyspark": pyspark.__version__, "classic": classic,
                                                     "tables": tables}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from boostqa.config import LakeConfig
from boostqa.lake import Lake, LakeError, SchemaMismatch


@pytest.fixture
def lake(spark, tmp_path):
    return Lake(spark, LakeConfig(root=str(tmp_path / "lake")))


def _df(spark, rows):
    return spark.createDataFrame(rows, "id string, v long")


def test_names_and_locations(lake, tmp_path):
    assert lake.location("bronze.seeds") == str(tmp_path / "lake" / "bronze" / "seeds")
    for bad in ("seeds", "gold.", "nolayer.x", "bronze.Seeds", "bronze.a-b"):
        with pytest.raises(LakeError, match="bad table name"):
            lake.location(bad)


def test_catalog_names(spark):
    lake = Lake(spark, LakeConfig(catalog="main", schema_prefix="boostqa_"))
    assert lake.location("gold.boostqa") == "main.boostqa_gold.boostqa"


def test_append_overwrite_and_time_travel(lake, spark):
    assert lake.version("silver.t") is None and not lake.exists("silver.t")
    assert lake.append(_df(spark, [("a", 1), ("b", 2)]), "silver.t") == 0
    assert lake.append(_df(spark, [("c", 3)]), "silver.t") == 1
    assert lake.overwrite(_df(spark, [("z", 9)]), "silver.t") == 2
    assert sorted(r.id for r in lake.read("silver.t").collect()) == ["z"]
    assert sorted(r.id for r in lake.read("silver.t", version=1).collect()) == ["a", "b", "c"]
    assert lake.read("silver.t", version=0).count() == 2
    # a real Delta table: the deltalake package reads the same log
    assert DeltaTable(lake.location("silver.t")).version() == 2


def test_strict_schema_on_write(lake, spark):
    lake.append(_df(spark, [("a", 1)]), "silver.t")
    with pytest.raises(SchemaMismatch, match="extra"):
        lake.append(_df(spark, [("b", 2)]).withColumn("x", F.lit(1)), "silver.t")
    with pytest.raises(SchemaMismatch, match=r"v: double != table bigint"):
        lake.append(spark.createDataFrame([("b", 50.5)], "id string, v double"), "silver.t")
    with pytest.raises(SchemaMismatch, match="missing"):
        lake.append(spark.createDataFrame([("b",)], "id string"), "silver.t")
    # column order does not matter
    lake.append(spark.createDataFrame([(3, "c")], "v long, id string"), "silver.t")
    assert lake.read("silver.t").count() == 2
    assert lake.version("silver.t") == 1  # refused writes committed nothing


def test_evolve_adds_new_columns_only(lake, spark):
    """A newer boostqa writes a column the table lacks: added (old rows read null), never dropped."""
    lake.insert_new(_df(spark, [("a", 1)]), "ops.t", ["id"])
    wider = spark.createDataFrame([("b", 2, "x", [1.5])], "id string, v long, note string, xs array<double>")
    with pytest.raises(SchemaMismatch, match="extra"):
        lake.insert_new(wider, "ops.t", ["id"])
    lake.insert_new(wider, "ops.t", ["id"], evolve=True)
    rows = {r.id: r.asDict() for r in lake.read("ops.t").collect()}
    assert rows == {"a": {"id": "a", "v": 1, "note": None, "xs": None}, "b": {"id": "b", "v": 2, "note": "x", "xs": [1.5]}}
    with pytest.raises(SchemaMismatch, match="missing"):  # a narrower write is still refused
        lake.insert_new(spark.createDataFrame([("c",)], "id string"), "ops.t", ["id"], evolve=True)
    with pytest.raises(SchemaMismatch, match="type"):
        lake.append(spark.createDataFrame([("c", 1.5, "y", [1.0])], "id string, v double, note string, xs array<double>"),
                    "ops.t", evolve=True)


def test_insert_new_is_idempotent(lake, spark):
    lake.insert_new(_df(spark, [("a", 1), ("b", 2)]), "silver.t", ["id"])
    v = lake.insert_new(_df(spark, [("b", 20), ("c", 3)]), "silver.t", ["id"])
    rows = {r.id: r.v for r in lake.read("silver.t").collect()}
    assert rows == {"a": 1, "b": 2, "c": 3}  # insert-only: the existing b is untouched
    lake.insert_new(_df(spark, [("a", 1), ("c", 3)]), "silver.t", ["id"])
    assert lake.read("silver.t").count() == 3
    assert v >= 1


def test_insert_new_with_null_and_composite_keys(lake, spark):
    df = spark.createDataFrame([("a", None), ("a", 1)], "id string, v long")
    lake.insert_new(df, "silver.k", ["id", "v"])
    lake.insert_new(df, "silver.k", ["id", "v"])  # null-safe key match: no duplicate of ("a", null)
    assert lake.read("silver.k").count() == 2


def test_create_empty_and_schema_conflict(lake, spark):
    schema = _df(spark, [("a", 1)]).schema
    assert lake.create("ops.e", schema) is True
    assert lake.create("ops.e", schema) is False
    assert lake.read("ops.e").count() == 0
    with pytest.raises(SchemaMismatch):
        lake.create("ops.e", spark.createDataFrame([], "id long").schema)


def test_history_info_tables_digest(lake, spark):
    lake.insert_new(_df(spark, [("a", 1), ("b", 2)]), "bronze.x", ["id"])
    lake.append(_df(spark, [("c", 3)]), "bronze.x")
    lake.append(_df(spark, [("q", 1)]), "gold.y")
    ops = [h["operation"] for h in lake.history("bronze.x")]
    assert ops[0] == "WRITE" and "MERGE" in ops and ops[-1] == "CREATE TABLE"
    info = lake.info("bronze.x")
    assert (info.rows, info.version) == (3, 2) and info.files >= 2 and info.size_bytes > 0
    assert lake.tables() == ["bronze.x", "gold.y"]
    d1, d2 = lake.digest("bronze.x", 1), lake.digest("bronze.x", 2)
    assert d1 != d2 and d1 == lake.digest("bronze.x", 1) and len(d1) == 16


def test_sql_names_follow_new_versions(lake, spark):
    lake.append(_df(spark, [("a", 1)]), "bronze.sq")
    assert "bronze.sq" in lake.register_sql_names()
    assert spark.sql("select count(*) c from bronze.sq").first()["c"] == 1
    lake.append(_df(spark, [("b", 2)]), "bronze.sq")
    lake.register_sql_names()
    assert spark.sql("select count(*) c from bronze.sq").first()["c"] == 2


def test_read_missing_table_is_a_clear_error(lake):
    with pytest.raises(LakeError, match="does not exist yet"):
        lake.read("silver.nothing")


def test_sql_names_point_at_the_current_lake(spark, tmp_path):
    """Registering a second lake in the same process re-points the names and loses no data."""
    a, b = Lake(spark, LakeConfig(root=str(tmp_path / "a"))), Lake(spark, LakeConfig(root=str(tmp_path / "b")))
    a.append(_df(spark, [("a", 1)]), "silver.same")
    b.append(_df(spark, [("b", 1), ("c", 2)]), "silver.same")
    a.register_sql_names()
    assert spark.sql("select count(*) c from silver.same").first()["c"] == 1
    b.register_sql_names()
    assert spark.sql("select count(*) c from silver.same").first()["c"] == 2
    assert a.read("silver.same").count() == 1


def test_time_travel_past_ten_commits(lake, spark):
    """Sail cannot read a version older than a checkpoint: path tables never checkpoint."""
    for i in range(12):
        lake.append(_df(spark, [(f"r{i}", i)]), "silver.many")
    assert lake.read("silver.many", version=2).count() == 3  # versions 0, 1, 2 each appended one row
    assert lake.read("silver.many").count() == 12
    assert DeltaTable(lake.location("silver.many")).metadata().configuration["delta.checkpointInterval"] == "1000000"

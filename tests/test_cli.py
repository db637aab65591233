"""The real `boostqa` command line (typer app) against a real temporary lake and MLflow store.

One lake is built once for the module by `boostqa run` (two small jsonl sources with good and bad
rows); the read-only commands are checked against it. Tests that need an empty lake or a broken
profile point the env at their own directories.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable
from rich.console import Console
from typer.testing import CliRunner

from boostqa import cli
from boostqa.cli import app
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parent.parent
PROFILE = "t"
RUN_ID = re.compile(r"pipeline run (\d{8}T\d{6}Z-[0-9a-f]{6})")
# alpha: 3 good rows, one unparseable line, one whitespace question; beta: 2 good, one empty question
ALPHA = [{"id": "a1", "question": "What is 2+2?", "answer": "4"},
         {"id": "a2", "question": "What is 3+3?", "answer": "6"},
         {"id": "a3", "question": "What is 4+4?", "answer": "8"},
         "{not json",
         {"id": "a5", "question": "   ", "answer": "x"}]
BETA = [{"id": "b1", "question": "Capital of France?", "answer": "Paris"},
        {"id": "b2", "question": "Capital of Italy?", "answer": "Rome"},
        {"id": "b3", "question": "", "answer": "none"}]
KEPT = {"alpha": 3, "beta": 2}
REJECTED = {"unparseable": 1, "empty_question": 2}


def make_conf(root: Path) -> Path:
    """<root>/conf with base.yaml, profile t (sources alpha + beta) and profile missing (one absent file)."""
    conf, data = root / "conf", root / "data"
    shutil.copytree(REPO / "conf", conf)  # base.yaml, prompts, taxonomy
    write_jsonl(data / "a.jsonl", ALPHA)
    write_jsonl(data / "b.jsonl", BETA)
    fields = "{id: id, question: question, answer: answer}"
    (conf / f"{PROFILE}.yaml").write_text(
        "benchmarks: []\n"  # the CLI is under test here: the stages after ingest find nothing to do
        "decontam: {embedding: {enabled: false}}\n"
        "sources:\n"
        f"  - {{name: alpha, path: '{data / 'a.jsonl'}', fields: {fields}}}\n"
        f"  - {{name: beta, path: '{data / 'b.jsonl'}', fields: {fields}}}\n")
    (conf / "missing.yaml").write_text(
        "sources:\n"
        f"  - {{name: alpha, path: '{data / 'a.jsonl'}', fields: {fields}}}\n"
        f"  - {{name: ghost, path: '{data / 'nothere.jsonl'}'}}\n")
    return conf


def isolate_env(mp: pytest.MonkeyPatch, conf: Path, lake: Path, runs: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BOOSTQA"):  # BOOSTQA_PROFILE, BOOSTQA__* from the caller's shell
            mp.delenv(name)
    mp.setenv("BOOSTQA_CONF_DIR", str(conf))
    mp.setenv("BOOSTQA__LAKE__ROOT", str(lake))
    mp.setenv("BOOSTQA__RUNS_DIR", str(runs))
    mp.setenv("COLUMNS", "200")
    # rich reads COLUMNS when a Console is built (at import of boostqa.cli); fresh consoles make the
    # width independent of the shell that started pytest. No colours: plain text to assert on.
    mp.setattr(cli, "console", Console(width=200, color_system=None))
    mp.setattr(cli, "err", Console(stderr=True, width=1000, color_system=None))  # long paths stay on one line


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def rows(output: str, first: str) -> list[list[str]]:
    """Cells of the rich table rows whose first cell is `first`."""
    out = []
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
        if cells and cells[0] == first:
            out.append(cells)
    return out


def stage_row(output: str, stage: str = "ingest") -> dict[str, str]:
    cols = ("stage", "pending", "kept", "rejected", "deferred", "chunks", "seconds", "reasons")
    found = rows(output, stage)
    assert len(found) == 1, output
    return dict(zip(cols, found[0]))


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def parse_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def delta_rows(path: Path) -> int:
    return DeltaTable(str(path)).to_pyarrow_table().num_rows


@pytest.fixture(scope="module")
def built(tmp_path_factory, _engine):
    """One `boostqa run` over a fresh lake; the env stays set for every test of the module."""
    root = tmp_path_factory.mktemp("cli")
    conf = make_conf(root)
    with pytest.MonkeyPatch.context() as mp:
        isolate_env(mp, conf, root / "lake", root / "runs")
        first = invoke("run", "-p", PROFILE)
        assert first.exit_code == 0, first.output
        m = RUN_ID.search(first.stdout)
        assert m, first.stdout
        yield {"root": root, "conf": conf, "lake": root / "lake", "runs": root / "runs", "run": first,
               "run_id": m.group(1)}


@pytest.fixture
def fresh(tmp_path, monkeypatch, built):
    """The module's conf dir, but an empty lake and MLflow store of this test's own."""
    isolate_env(monkeypatch, built["conf"], tmp_path / "lake", tmp_path / "runs")
    return tmp_path


# ---------------------------------------------------------------------------------------------- run
def test_run_reports_stage_counts_and_outputs(built):
    out = built["run"].stdout
    row = stage_row(out)
    assert (row["pending"], row["kept"], row["rejected"], row["deferred"], row["chunks"]) == ("8", "5", "3", "0", "1/1")
    assert row["reasons"] == "empty_question=2, unparseable=1"
    lake = built["lake"].resolve()
    assert f"ingest -> bronze.seeds version 1  ({lake / 'bronze' / 'seeds'})" in out
    assert f"ingest -> quarantine.seeds version 1  ({lake / 'quarantine' / 'seeds'})" in out
    assert f"(profile {PROFILE})" in out and f"boostqa lineage {built['run_id']}" in out
    assert "stopped before the end" not in out
    assert delta_rows(lake / "bronze" / "seeds") == 5 and delta_rows(lake / "quarantine" / "seeds") == 3


def test_rerun_does_no_new_work(built):
    bronze = built["lake"] / "bronze" / "seeds"
    before = DeltaTable(str(bronze)).version()
    again = invoke("run", "-p", PROFILE)
    assert again.exit_code == 0, again.output
    row = stage_row(again.stdout)
    assert (row["pending"], row["kept"], row["rejected"], row["chunks"]) == ("0", "0", "0", "0/0")
    assert RUN_ID.search(again.stdout).group(1) != built["run_id"]  # a new pipeline run ...
    assert "ingest -> bronze.seeds version 1 " in again.stdout  # ... that committed nothing
    assert delta_rows(bronze) == 5 and DeltaTable(str(bronze)).version() == before


# ---------------------------------------------------------------------------------------------- lake
def test_tables_lists_tables_with_row_counts(built):
    r = invoke("tables", "-p", PROFILE)
    assert r.exit_code == 0, r.output
    got = {cells[0]: cells for cells in rows(r.stdout, "bronze.seeds") + rows(r.stdout, "quarantine.seeds")}
    assert set(got) == {"bronze.seeds", "quarantine.seeds"}
    # table | version | rows | files | size | location
    assert got["bronze.seeds"][1:3] == ["1", "5"]
    assert got["quarantine.seeds"][1:3] == ["1", "3"]
    assert got["bronze.seeds"][5] == str(built["lake"].resolve() / "bronze" / "seeds")


def test_sql_csv_counts_per_source(built):
    r = invoke("sql", "select source, count(*) n from bronze.seeds group by source", "-p", PROFILE,
               "--format", "csv")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == "source,n"
    assert {row["source"]: int(row["n"]) for row in parse_csv(r.stdout)} == KEPT


def test_sql_json(built):
    r = invoke("sql", "select source, count(*) n from bronze.seeds group by source order by source", "-p", PROFILE,
               "--format", "json")
    assert r.exit_code == 0, r.output
    assert parse_jsonl(r.stdout) == [{"source": "alpha", "n": 3}, {"source": "beta", "n": 2}]


def test_sql_limit_and_table_format(built):
    r = invoke("sql", "select source_row_id from bronze.seeds order by source_row_id", "-p", PROFILE,
               "--limit", "2")
    assert r.exit_code == 0, r.output
    assert [c[0] for c in rows(r.stdout, "a1") + rows(r.stdout, "a2") + rows(r.stdout, "b1")] == ["a1", "a2"]


def test_show_version_0_is_the_empty_create(built):
    loc = str(built["lake"] / "bronze" / "seeds")
    history = {h["version"]: h["operation"] for h in DeltaTable(loc).history()}
    assert history == {0: "CREATE TABLE", 1: "MERGE"}
    assert DeltaTable(loc, version=0).to_pyarrow_table().num_rows == 0  # the claim, checked without the CLI

    r = invoke("show", "bronze.seeds", "--version", "0", "-p", PROFILE, "--format", "csv")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("seed_uid,record_key,source,")  # header, zero data rows

    table = invoke("show", "bronze.seeds", "--version", "0", "-p", PROFILE)
    assert table.exit_code == 0, table.output
    assert "bronze.seeds @ version 0" in table.stdout and "alpha" not in table.stdout

    now = invoke("show", "bronze.seeds", "-p", PROFILE, "--format", "csv")
    assert len(parse_csv(now.stdout)) == 5  # the same command without --version: the current rows


def test_show_where_and_limit(built):
    r = invoke("show", "bronze.seeds", "-p", PROFILE, "--where", "source = 'beta'", "--format", "json")
    assert r.exit_code == 0, r.output
    got = parse_jsonl(r.stdout)
    assert sorted(x["source_row_id"] for x in got) == ["b1", "b2"]
    assert {x["answer"] for x in got} == {"Paris", "Rome"}
    r = invoke("show", "bronze.seeds", "-p", PROFILE, "--limit", "2", "--format", "json")
    assert len(parse_jsonl(r.stdout)) == 2


def test_show_quarantine_json_has_reasons(built):
    r = invoke("show", "quarantine.seeds", "-p", PROFILE, "--format", "json")
    assert r.exit_code == 0, r.output
    got = parse_jsonl(r.stdout)
    by_place = {(x["source"], x["source_file"], x["source_row"]): x for x in got}
    assert set(by_place) == {("alpha", "a.jsonl", 4), ("alpha", "a.jsonl", 5), ("beta", "b.jsonl", 3)}
    assert by_place[("alpha", "a.jsonl", 4)]["reason"] == "unparseable"
    assert by_place[("alpha", "a.jsonl", 4)]["raw"] == "{not json"
    assert by_place[("alpha", "a.jsonl", 5)]["reason"] == "empty_question"
    assert by_place[("beta", "b.jsonl", 3)]["reason"] == "empty_question"
    for (_, file, row), x in by_place.items():
        assert x["detail"].startswith(f"{file}:{row}: ")
        assert x["stage"] == "ingest" and x["run_id"] == built["run_id"]


def test_history_shows_create_then_merge(built):
    r = invoke("history", "bronze.seeds", "-p", PROFILE)
    assert r.exit_code == 0, r.output
    merge, create = rows(r.stdout, "1"), rows(r.stdout, "0")
    assert len(merge) == 1 and merge[0][2] == "MERGE"
    assert len(create) == 1 and create[0][2] == "CREATE TABLE"
    assert r.stdout.index("MERGE") < r.stdout.index("CREATE TABLE")  # newest first
    assert '"numTargetRowsInserted": 5' in r.stdout


def test_lineage_of_the_run(built):
    run_id = built["run_id"]
    r = invoke("lineage", run_id, "-p", PROFILE, "--format", "csv")
    assert r.exit_code == 0, r.output
    got = parse_csv(r.stdout)
    assert {(x["stage"], x["context"], x["table"]) for x in got} == {
        ("ingest", "input", "alpha/a.jsonl"), ("ingest", "input", "beta/b.jsonl"),
        ("ingest", "output", "bronze.seeds"), ("ingest", "rejects", "quarantine.seeds"),
        # the whole pipeline ran: dedup read the bronze version ingest wrote; later stages had no input
        ("dedup", "input", "bronze.seeds"), ("dedup", "output", "silver.seeds"),
        ("dedup", "rejects", "quarantine.duplicates")}
    assert all(x["status"] == "FINISHED" for x in got)
    versions = {(x["stage"], x["table"]): x["version"] for x in got}
    assert versions[("dedup", "bronze.seeds")] == versions[("ingest", "bronze.seeds")]
    tables = {x["table"]: x for x in got if x["context"] != "input" and x["stage"] == "ingest"}
    lake = built["lake"].resolve()
    assert tables["bronze.seeds"]["location"] == str(lake / "bronze" / "seeds")
    assert tables["quarantine.seeds"]["location"] == str(lake / "quarantine" / "seeds")
    # "1.0" today, see test_lineage_versions_are_integers
    assert float(tables["bronze.seeds"]["version"]) == 1 and float(tables["quarantine.seeds"]["version"]) == 1
    inputs = {x["table"]: x for x in got if x["context"] == "input"}
    assert inputs["alpha/a.jsonl"]["location"] == str(built["root"] / "data" / "a.jsonl")

    table = invoke("lineage", run_id, "-p", PROFILE)
    assert table.exit_code == 0 and f"lineage of pipeline run {run_id}" in table.stdout


def test_lineage_versions_are_integers(built):
    r = invoke("lineage", built["run_id"], "-p", PROFILE, "--format", "json")
    got = {x["table"]: x["version"] for x in parse_jsonl(r.stdout)}
    assert got["bronze.seeds"] == 1 and isinstance(got["bronze.seeds"], int)


def test_lineage_of_an_unknown_run(built):
    r = invoke("lineage", "no-such-run", "-p", PROFILE)
    assert r.exit_code == 2
    assert "no pipeline run 'no-such-run'" in r.stderr and "Traceback" not in r.output


def test_error_messages_keep_their_quotes(built):
    r = invoke("lineage", "no-such-run", "-p", PROFILE)
    assert r.stderr.strip().endswith("in experiment 'boostqa'")


def test_stages_lists_every_stage(monkeypatch):
    from boostqa.stages import STAGES

    monkeypatch.setattr(cli, "console", Console(width=220, color_system=None))

    r = invoke("stages")
    assert r.exit_code == 0, r.output
    for s in STAGES.values():
        (cells,) = rows(r.stdout, s.name)
        assert cells[2] == s.output and cells[3] == (s.rejects or "") and cells[4] == ",".join(s.key)


# ---------------------------------------------------------------------------------------------- chunks
def test_max_chunks_leaves_work_and_a_rerun_finishes_it(fresh, monkeypatch):
    monkeypatch.setenv("BOOSTQA__RUNNER__CHUNK_ROWS", "2")
    bronze, quarantine = fresh / "lake" / "bronze" / "seeds", fresh / "lake" / "quarantine" / "seeds"
    first = invoke("run", "-p", PROFILE, "--max-chunks", "1")
    assert first.exit_code == 1, first.output  # work left: not a success
    row1 = stage_row(first.stdout)
    # 8 pending rows / 2 per chunk = 4 buckets; ingest keeps a file in one bucket, so only the
    # non-empty buckets (here: one per file) are chunks
    assert row1["pending"] == "8" and row1["chunks"] == "1/2"
    assert "work left: rerun the same command" in first.stdout
    assert "ingest: stopped after 1 of 2 chunks; rerun to finish" in first.stdout
    done1 = delta_rows(bronze) + delta_rows(quarantine)
    assert done1 < 8 and done1 == int(row1["kept"]) + int(row1["rejected"])

    second = invoke("run", "-p", PROFILE)
    assert second.exit_code == 0, second.output
    row2 = stage_row(second.stdout)
    assert int(row2["pending"]) == 8 - done1
    done, total = row2["chunks"].split("/")
    assert done == total
    assert "work left" not in second.stdout
    assert int(row1["kept"]) + int(row2["kept"]) == 5 and int(row1["rejected"]) + int(row2["rejected"]) == 3
    assert delta_rows(bronze) == 5 and delta_rows(quarantine) == 3

    third = invoke("run", "-p", PROFILE)
    assert stage_row(third.stdout)["pending"] == "0"


def test_repeated_max_chunks_runs_make_progress(fresh, monkeypatch):
    monkeypatch.setenv("BOOSTQA__RUNNER__CHUNK_ROWS", "2")
    codes = []
    for _ in range(4):  # at most 4 chunks of work in all
        r = invoke("run", "-p", PROFILE, "--max-chunks", "1")
        codes.append(r.exit_code)
        assert r.exit_code in (0, 1), r.output  # 1 while work is left, 0 once it is done
        if r.exit_code == 0:
            break
    assert codes[-1] == 0 and set(codes[:-1]) <= {1}
    assert delta_rows(fresh / "lake" / "bronze" / "seeds") == 5


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_profile_is_one_line_exit_2(fresh):
    r = invoke("run", "-p", "nope")
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown profile 'nope'"), r.stderr
    assert "nope.yaml" in lines[0] and "Traceback" not in r.output
    assert not (fresh / "lake").exists()


def test_missing_source_file_exit_2_and_nothing_written(fresh, built):
    r = invoke("run", "-p", "missing")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    missing = str(built["root"] / "data" / "nothere.jsonl")
    assert lines[0].startswith("error: source 'ghost'") and missing in lines[0]
    assert "Traceback" not in r.output
    assert not DeltaTable.is_deltatable(str(fresh / "lake" / "bronze" / "seeds"))
    assert not DeltaTable.is_deltatable(str(fresh / "lake" / "quarantine" / "seeds"))
    assert not (fresh / "lake" / "bronze").exists()


def test_unknown_stage_exit_2(fresh):
    r = invoke("run", "nosuch", "-p", PROFILE)
    assert r.exit_code == 2
    assert "unknown stage(s) ['nosuch']" in r.stderr and "'ingest'" in r.stderr


def test_show_unknown_table_exit_2(built):
    r = invoke("show", "bronze.nothere", "-p", PROFILE)
    assert r.exit_code == 2 and "table bronze.nothere does not exist yet" in r.stderr
    r = invoke("show", "nolayer.x", "-p", PROFILE)
    assert r.exit_code == 2 and "bad table name 'nolayer.x'" in r.stderr


def test_sql_bad_query_fails(built):
    r = invoke("sql", "select * from bronze.no_such_table", "-p", PROFILE)
    assert r.exit_code != 0
    assert r.stdout == ""
    r = invoke("sql", "selec nonsense", "-p", PROFILE, "--format", "csv")
    assert r.exit_code != 0 and r.stdout == ""
    r = invoke("sql", "select * fro bronze.seeds", "-p", PROFILE)
    assert r.exit_code == 2 and "  select * fro bronze.seeds\n               ^^^^^^" in r.stderr  # the position


def test_sql_error_positions():
    assert cli._sql_error("select 1\nfrom x wher y", "found wher at 16:20 expected ...") == \
        "found wher at 16:20 expected ...\n  from x wher y\n         ^^^^"
    assert cli._sql_error("select * frm t", "[PARSE_SYNTAX_ERROR] Syntax error at or near 'frm'. "
                          "SQLSTATE: 42601 (line 1, pos 9)").endswith("  select * frm t\n           ^")
    assert cli._sql_error("select 1", "no position here") == "no position here"


# ---------------------------------------------------------------------------------------------- hostile text
def test_markup_in_data_and_errors_is_printed_as_text(built, monkeypatch):
    """Cells holding rich markup ([/], [bold]) print as they are; error text keeps its brackets."""
    r = invoke("sql", "select '[/]' as a, '[bold]x[/bold]' as b, 'ok' as `[red]c`", "-p", PROFILE)
    assert r.exit_code == 0, r.output
    assert "[/]" in r.stdout and "[bold]x[/bold]" in r.stdout and "[red]c" in r.stdout
    r = invoke("show", "bronze.seeds", "-p", PROFILE, "--where", "question = '[/]'")
    assert r.exit_code == 0, r.output
    r = invoke("show", "silver.[x]", "-p", PROFILE)
    assert r.exit_code == 2 and "bad table name 'silver.[x]'" in r.stderr


def test_sql_is_read_only_unless_write(built):
    before = delta_rows(built["lake"] / "bronze" / "seeds")
    for stmt in ("delete from bronze.seeds", "INSERT INTO bronze.seeds SELECT * FROM bronze.seeds",
                 "  /* sneaky */ update bronze.seeds set answer = 'x'", "drop table bronze.seeds",
                 "select 1; delete from bronze.seeds"):
        r = invoke("sql", stmt, "-p", PROFILE)
        assert r.exit_code == 2 and "read-only" in r.stderr and "--write" in r.stderr, (stmt, r.output)
    assert delta_rows(built["lake"] / "bronze" / "seeds") == before
    r = invoke("sql", "/* a comment */ with x as (select 1 as n) -- trailing\n select n from x", "-p", PROFILE,
               "--format", "csv")
    assert r.exit_code == 0 and r.stdout.split() == ["n", "1"]


# ---------------------------------------------------------------------------------------------- newcomer
def test_did_you_mean_for_a_misspelt_stage(fresh):
    r = invoke("run", "anotate", "-p", PROFILE)
    assert r.exit_code == 2 and "did you mean 'anotate' -> annotate" in r.stderr


def test_version_and_bad_output_format():
    from importlib.metadata import version

    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"boostqa {version('boostqa')}"
    r = invoke("stages", "-o", "xml")
    assert r.exit_code == 2 and "'xml' is not one of table, json, csv" in r.output


def test_every_data_command_speaks_json(built):
    """-o json: one JSON object per line (a row) or one object (multi-section reports)."""
    def lines(*args: str) -> list[dict]:
        r = invoke(*args, "-p", PROFILE, "-o", "json") if args[0] not in ("stages",) else invoke(*args, "-o", "json")
        assert r.exit_code == 0, r.output
        return parse_jsonl(r.stdout)

    assert {t["name"] for t in lines("tables")} >= {"bronze.seeds", "silver.seeds"}
    assert any(s["stage"] == "ingest" for s in lines("stages"))
    assert lines("sql", "select count(*) as n from silver.seeds") == [{"n": 5}]
    assert len(lines("show", "silver.seeds")) == 5
    assert lines("history", "silver.seeds")[0]["version"] >= 1
    assert {r["stage"] for r in lines("lineage", built["run_id"])} >= {"ingest"}
    assert built["run_id"] in {r["pipeline_run"] for r in lines("runs")}
    (audit,) = lines("audit")
    assert "dedup: removed seeds by reason" in audit
    (cfg,) = parse_jsonl(invoke("config", "show", "-p", PROFILE, "-o", "json", "--origin").stdout)
    assert cfg["settings"]["profile"] == PROFILE and len(cfg["settings"]["sources"]) == 2
    assert cfg["origins"]["sources"].endswith(f"{PROFILE}.yaml") and cfg["origins"]["lake.root"] == "env BOOSTQA__*"
    assert cfg["origins"]["dedup.threshold"].endswith("base.yaml")


def test_no_sources_says_so(fresh, tmp_path):
    (built_conf := tmp_path / "emptyconf").mkdir()
    (built_conf / "empty.yaml").write_text("sources: []\n")
    from boostqa.config import set_conf_dir

    try:
        r = invoke("--conf", str(built_conf), "run", "-p", "empty")
    finally:
        set_conf_dir(None)  # --conf holds for the process, as in a real invocation
    assert r.exit_code == 2 and "profile 'empty' has no sources" in r.stderr and "boostqa init" in r.stderr


def test_newcomer_init_run_query(tmp_path, monkeypatch, _engine):
    """`boostqa init` in an empty directory, their own questions dropped in, the pipeline on the
    simulator, the answer read back with `sql -o json`."""
    import os

    from boostqa.stages import llm

    for name in list(os.environ):
        if name.startswith("BOOSTQA"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "console", Console(width=200, color_system=None))
    project = tmp_path / "myproject"
    r = invoke("init", str(project))
    assert r.exit_code == 0, r.output
    assert {p.name for p in (project / "conf").iterdir()} == {"local.yaml", "taxonomy.yaml", "prompts"}
    assert (project / ".gitignore").read_text().split() == ["lake/", "runs/", "exports/"]
    mine = [{"id": f"m{i}", "question": f"My question {i}: how many legs do {i + 2} spiders have in total?",
             "answer": f"{8 * (i + 2)}"} for i in range(6)]
    write_jsonl(project / "data" / "questions.jsonl", mine)
    monkeypatch.chdir(project)
    monkeypatch.setenv("BOOSTQA__DECONTAM__EMBEDDING__ENABLED", "false")  # keep the test short
    llm.stop_simulator()
    r = invoke("run", "ingest", "bench", "dedup", "decontam", "annotate")
    llm.stop_simulator()
    assert r.exit_code == 0, r.output
    assert (project / "lake" / "silver" / "seeds_annotated").is_dir()
    # off a terminal: plain timestamped lines, a start line per stage, LLM calls and tokens
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d annotate: started, 6 rows pending in 1 chunks$", r.stdout, re.M)
    assert re.search(r"annotate: chunk 1/1, 6/6 rows \(kept 6, rejected 0, deferred 0\), 6 LLM calls, [\d,]+ tokens, "
                     r"0 failed", r.stdout), r.stdout
    q = invoke("sql", "-o", "json", "select source_row_id, discipline, difficulty, llm_simulated "
               "from silver.seeds_annotated order by source_row_id")
    got = parse_jsonl(q.stdout)
    assert [g["source_row_id"] for g in got] == [m["id"] for m in mine]
    assert all(g["llm_simulated"] is True and 1 <= g["difficulty"] <= 5 for g in got)

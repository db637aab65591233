"""The Databricks bundle (databricks.yml + the resources/*.yml it includes) stays in step with the code:
wheel entry point, stage names, task parameters as Databricks passes them, DAG, environments, targets.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from boostqa.config import load_settings
from boostqa.jobs import overrides, parse
from boostqa.stages import STAGES

REPO = Path(__file__).resolve().parent.parent
BUNDLE_FILE = REPO / "databricks.yml"
PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}|\$\{([^}]*)\}")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@pytest.fixture(scope="module")
def bundle() -> dict:
    """databricks.yml with the resources of every file its `include` globs name merged in (as the CLI
    does); each job gets `_file`, the file it is declared in (its relative paths resolve against it)."""
    root = yaml.safe_load(BUNDLE_FILE.read_text(encoding="utf-8"))
    resources = root.setdefault("resources", {})
    for pattern in root.get("include") or []:
        files = sorted(BUNDLE_FILE.parent.glob(pattern))
        assert files, f"databricks.yml includes {pattern!r}, which matches no file"
        for path in files:
            for kind, items in ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("resources") or {}).items():
                declared = resources.setdefault(kind, {})
                for name, spec in items.items():
                    assert name not in declared, f"{path.name}: {kind}.{name} is declared twice"
                    declared[name] = {**spec, "_file": path}
    for spec in (resources.get("jobs") or {}).values():
        spec.setdefault("_file", BUNDLE_FILE)
    return root


def _jobs(bundle: dict) -> dict[str, dict]:
    jobs = (bundle.get("resources") or {}).get("jobs") or {}
    assert jobs, "the bundle declares no job"
    return jobs


def _wheel_tasks(bundle: dict) -> list[tuple[str, dict, dict]]:
    out = [(job, spec, t) for job, spec in _jobs(bundle).items() for t in spec.get("tasks", [])
           if "python_wheel_task" in t]
    assert out, "no python_wheel_task in the bundle"
    return out


def task_argv(job: dict, task: dict) -> list[str]:
    """The command line Databricks gives the wheel's entry point: `parameters` as they are, or
    `named_parameters` plus the job parameters pushed down to it (a job parameter wins over a task
    parameter of the same name), each as --name=value."""
    wheel = task["python_wheel_task"]
    if "parameters" in wheel:
        assert "named_parameters" not in wheel, f"{task['task_key']}: parameters and named_parameters exclude each other"
        return [str(p) for p in wheel["parameters"]]
    named = {**(wheel.get("named_parameters") or {}),
             **{p["name"]: p.get("default", "") for p in job.get("parameters", [])}}
    return [f"--{name}={value}" for name, value in named.items()]


def task_stage(job: dict, task: dict) -> str:
    """The one stage a task runs (its arguments parsed as boostqa-job parses them)."""
    stages = parse(_dummy(task_argv(job, task))).stages
    assert len(stages) == 1, f"{task['task_key']}: a task runs exactly one stage, got {stages or 'the whole pipeline'}"
    return stages[0]


def _dummy(params: list[str]) -> list[str]:
    return [PLACEHOLDER.sub("x", p) for p in params]


# ---------------------------------------------------------------------------------------------- tasks
def test_tasks_run_the_boostqa_job_entry_point_of_this_package(bundle):
    scripts = PROJECT.get("scripts") or {}
    for job, _, task in _wheel_tasks(bundle):
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == PROJECT["name"], f"{job}.{task['task_key']}: package {wheel['package_name']!r}"
        assert scripts.get(wheel.get("entry_point")) == "boostqa.jobs:main", \
            f"{job}.{task['task_key']}: entry point {wheel.get('entry_point')!r} is not boostqa.jobs:main in pyproject.toml"
    for job, spec in _jobs(bundle).items():
        other = [t["task_key"] for t in spec.get("tasks", []) if "python_wheel_task" not in t]
        assert not other, f"{job}: tasks {other} do not run the wheel"


def test_task_parameters_parse(bundle):
    for job, spec, task in _wheel_tasks(bundle):
        params = _dummy(task_argv(spec, task))
        try:
            args = parse(params)
        except SystemExit as e:
            pytest.fail(f"{job}.{task['task_key']}: parameters {params} do not parse: exit {e.code}")
        assert len(args.stages) == 1, f"{job}.{task['task_key']}: names no single --stage"
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
            if "python_wheel_task" not in task:
                continue
            for target_name, target in targets.items():
                args = parse([resolve(p, job_params, target) for p in task_argv(spec, task)])
                assert args.profile and (REPO / "conf" / f"{args.profile}.yaml").is_file(), \
                    f"{job}.{task['task_key']} [{target_name}]: profile {args.profile!r} has no conf file"
                s = load_settings(args.profile, directory=REPO / "conf", overrides=overrides(args.set), environ={})
                if target_name in ("dev", "prod"):
                    expected = (target.get("variables") or {}).get("catalog", variables.get("catalog"))
                    assert s.lake.catalog == expected, \
                        f"{job}.{task['task_key']} [{target_name}]: catalog {s.lake.catalog!r}, expected {expected!r}"


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


def test_environments_install_the_bundle_wheel(bundle):
    """A wheel task's environment installs the wheel the bundle's artifact builds (pip wheel -w dist)."""
    artifacts = bundle.get("artifacts") or {}
    assert any(a.get("type") == "whl" and "-w dist" in a.get("build", "") and
               (BUNDLE_FILE.parent / a.get("path", ".")).resolve() == REPO for a in artifacts.values()), \
        "no whl artifact builds this project into dist/"
    for job, spec in _jobs(bundle).items():
        envs = {e["environment_key"]: e.get("spec") or {} for e in spec.get("environments", [])}
        for t in spec.get("tasks", []):
            if "python_wheel_task" not in t:
                continue
            env = envs.get(t.get("environment_key"))
            assert env is not None, f"{job}.{t['task_key']}: a wheel task needs an environment with the wheel"
            wheels = [(spec["_file"].parent / d).resolve() for d in env.get("dependencies", []) if d.endswith(".whl")]
            assert REPO / "dist" / "*.whl" in wheels, \
                f"{job}.{t['task_key']}: environment dependencies {env.get('dependencies')} miss dist/*.whl " \
                f"(paths are relative to {spec['_file'].name})"
            assert "client" not in env and env.get("environment_version"), \
                f"{job}: environment spec needs environment_version (client is deprecated)"


def test_every_stage_has_a_task_in_pipeline_order(bundle):
    for job, spec in _jobs(bundle).items():
        tasks = {t["task_key"]: t for t in spec.get("tasks", [])}
        by_stage: dict[str, str] = {}
        for key, t in tasks.items():
            if "python_wheel_task" in t:
                stage = task_stage(spec, t)
                assert stage not in by_stage, f"{job}: stage {stage} runs in two tasks"
                by_stage[stage] = key
        missing = [s for s in STAGES if s not in by_stage]
        assert not missing, f"{job}: no task for stage(s) {missing}: add a task with named_parameters: {{stage: ...}}"

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
        assert schedule.get("pause_status") == "PAUSED", f"{job}: paused unless a target unpauses it (dev stays paused)"
        assert spec.get("max_concurrent_runs") == 1, f"{job}: stages are single-writer per output table"


def test_jobs_validate_against_databricks_typed_models(bundle):
    """Each job as Databricks' own typed models read it (databricks-bundles): an unknown or
    misspelt field is an error there, not a silent no-op at deploy time."""
    from databricks.bundles.jobs import Job

    for spec in _jobs(bundle).values():
        plain = {k: v for k, v in spec.items() if k != "_file"}
        job = Job.from_dict(plain)
        assert len(job.tasks) == len(plain["tasks"]) and all(t.python_wheel_task for t in job.tasks)
        with pytest.raises(ValueError, match="Unexpected field 'scheduel'"):
            Job.from_dict({**plain, "scheduel": plain["schedule"]})


def test_prod_target_deploys_to_a_shared_root(bundle):
    prod = bundle["targets"]["prod"]
    assert prod["mode"] == "production" and (prod.get("workspace", {}).get("root_path") or prod.get("run_as"))

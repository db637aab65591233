"""The Databricks bundle (databricks.yml + the resources/*.yml it includes) stays in step with the code:
wheel entry point, stage names, task parameters as Databricks passes them, DAG, environments, targets,
the lake's schemas and volumes, the job-cluster variant's secrets and the notebook task. Databricks
is not reachable from here: the bundle is resolved per target the way the CLI resolves it (variables,
development mode's name prefix, resource references) and validated against Databricks' own typed
models (databricks-bundles); tests/test_bundle_jobs.py runs the tasks' command lines locally.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from boostqa.config import load_settings
from boostqa.jobs import ASSETS_STEP, overrides, parse, settings_overrides
from boostqa.lake import LAYERS
from boostqa.stages import STAGES

REPO = Path(__file__).resolve().parent.parent
BUNDLE_FILE = REPO / "databricks.yml"
PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}|\$\{([^}]*)\}")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SHORT_NAME = "jane_doe"  # stands in for ${workspace.current_user.short_name} (the CLI's, already normalised)
SECRET_REF = re.compile(r"^\{\{secrets/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)\}\}$")


@pytest.fixture(scope="module")
def bundle() -> dict:
    return load_bundle()


def load_bundle() -> dict:
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
        other = [t["task_key"] for t in spec.get("tasks", []) if not {"python_wheel_task", "notebook_task"} & set(t)]
        assert not other, f"{job}: tasks {other} run neither the wheel nor a notebook"


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


def normalize_prefix(prefix: str) -> str:
    """How the CLI puts a name prefix into Unity Catalog names (normalizePrefix in
    bundle/config/mutator/apply_presets.go: lower case, every character that is not a letter or
    digit becomes '_'). Its handling of '[dev jane] '-style brackets has changed between CLI
    versions, so development targets here spell out a bracket-free presets.name_prefix."""
    assert "[" not in prefix and "]" not in prefix, f"name_prefix {prefix!r}: use a bracket-free prefix"
    return "".join(c if c.isalnum() else "_" for c in prefix.strip(" ").lower())


def deployed(bundle: dict, target: str) -> dict:
    """What a deploy of ``target`` creates, as far as these tests read it: target variables over the
    defaults; schema names with the target's name prefix (development mode: '[dev <user>] ' unless
    presets.name_prefix says otherwise); a ``resolve(text, job_params)`` for ${var.*},
    ${workspace.current_user.short_name}, ${bundle.*}, ${resources.<kind>.<key>.<field>} and
    {{job.parameters.*}} (other {{...}} run-time references stay as they are)."""
    spec = (bundle.get("targets") or {})[target]
    variables = {**{k: v.get("default") for k, v in (bundle.get("variables") or {}).items()},
                 **(spec.get("variables") or {})}
    resources = {kind: {key: {k: v for k, v in item.items() if k != "_file"} for key, item in items.items()}
                 for kind, items in (bundle.get("resources") or {}).items()}

    def resolve(text, job_params: dict | None = None):
        if not isinstance(text, str):
            return text

        def one(m: re.Match) -> str:
            ref = m.group(1) or m.group(2)
            if m.group(1) is not None:  # {{...}}: Databricks resolves these at run time
                if ref.startswith("job.parameters."):
                    name = ref[len("job.parameters."):]
                    assert job_params is not None and name in job_params, f"{{{{{ref}}}}}: no job parameter {name!r}"
                    return str(job_params[name])
                return m.group(0)
            if ref.startswith("var."):
                assert ref[4:] in variables, f"${{{ref}}}: no variable {ref[4:]!r} declared"
                return str(variables[ref[4:]])
            if ref == "workspace.current_user.short_name":
                return SHORT_NAME
            if ref in ("bundle.target", "bundle.name"):
                return target if ref == "bundle.target" else bundle["bundle"]["name"]
            if ref.startswith("resources."):
                kind, key, field = ref.split(".")[1:]
                assert key in resources.get(kind, {}), f"${{{ref}}}: no {kind}.{key} in the bundle"
                assert field in resources[kind][key], f"${{{ref}}}: {kind}.{key} has no field {field!r}"
                return str(resources[kind][key][field])
            raise AssertionError(f"${{{ref}}}: unknown reference")

        for _ in range(10):  # references to references (a volume's schema_name is a schema's name)
            text, before = PLACEHOLDER.sub(one, text), text
            if text == before:
                return text
        raise AssertionError(f"{text!r}: references do not resolve")

    prefix = (spec.get("presets") or {}).get("name_prefix") or ""
    assert prefix or spec.get("mode") != "development", \
        f"target {target}: development mode prefixes schema names; spell out presets.name_prefix"
    for item in resources.get("schemas", {}).values():
        item["name"] = normalize_prefix(resolve(prefix)) + resolve(item["name"])
    return {"variables": variables, "resources": resources, "resolve": resolve}


def volume_path(dep: dict, key: str) -> str:
    v = dep["resources"]["volumes"][key]
    return "/Volumes/" + "/".join(dep["resolve"](v[f]) for f in ("catalog_name", "schema_name", "name"))


def test_task_parameters_resolve_to_valid_settings(bundle):
    """Per target, each wheel task's command line (job parameters resolved as deployed) loads valid
    settings whose catalog, schemas and volume paths are the ones the bundle creates."""
    for target in bundle.get("targets") or {}:
        dep = deployed(bundle, target)
        schemas = dep["resources"].get("schemas", {})
        for job, spec in _jobs(bundle).items():
            job_params = {p["name"]: dep["resolve"](p.get("default")) for p in spec.get("parameters", [])}
            for task in spec.get("tasks", []):
                if "python_wheel_task" not in task:
                    continue
                where = f"{job}.{task['task_key']} [{target}]"
                args = parse([dep["resolve"](p, job_params) for p in task_argv(spec, task)])
                assert args.profile and (REPO / "conf" / f"{args.profile}.yaml").is_file(), \
                    f"{where}: profile {args.profile!r} has no conf file"
                s = load_settings(args.profile, directory=REPO / "conf", overrides=settings_overrides(args), environ={})
                catalog = dep["variables"]["catalog"]
                assert s.lake.catalog == catalog, f"{where}: catalog {s.lake.catalog!r}, expected {catalog!r}"
                for layer in LAYERS:
                    assert layer in schemas, f"the bundle declares no schema for lake layer {layer!r}"
                    assert dep["resolve"](schemas[layer]["catalog_name"]) == catalog
                    assert s.lake.schema_prefix + layer == schemas[layer]["name"], \
                        f"{where}: the lake reads {s.lake.schema_prefix + layer}, the bundle creates {schemas[layer]['name']}"
                assert (s.data_cache, s.lake.root, s.export.dir) == \
                    (volume_path(dep, "assets"), volume_path(dep, "scratch"), volume_path(dep, "exports")), where
        for key, volume in dep["resources"].get("volumes", {}).items():
            assert dep["resolve"](volume["schema_name"]) in {v["name"] for v in schemas.values()}, \
                f"volumes.{key} [{target}]: its schema is not one the bundle creates"


def test_schemas_and_volumes_validate_against_databricks_typed_models(bundle):
    """One schema per lake layer and the three volumes, in ${var.catalog}, as Databricks' typed
    models read them; a volume names its schema by reference (the deploy creates the schema first)."""
    from databricks.bundles.schemas import Schema
    from databricks.bundles.volumes import Volume

    res = bundle["resources"]
    assert set(res.get("schemas") or {}) == set(LAYERS)
    assert set(res.get("volumes") or {}) == {"assets", "scratch", "exports"}
    for kind, model in (("schemas", Schema), ("volumes", Volume)):
        for key, item in res[kind].items():
            plain = {k: v for k, v in item.items() if k != "_file"}
            model.from_dict(plain)
            assert plain["catalog_name"] == "${var.catalog}", f"{kind}.{key}: not in the target's catalog"
            with pytest.raises(ValueError, match="Unexpected field 'nmae'"):
                model.from_dict({**plain, "nmae": plain["name"]})
    for key, item in res["volumes"].items():
        assert re.fullmatch(r"\$\{resources\.schemas\.[a-z]+\.name\}", item["schema_name"]), \
            f"volumes.{key}: schema_name must reference a bundle schema, got {item['schema_name']!r}"


def test_jobs_reference_the_schemas_and_volumes(bundle):
    """Every job names each lake schema and each volume through a resource reference: the deploy
    orders them before the job and development mode's prefixed names reach the tasks."""
    for job, spec in _jobs(bundle).items():
        text = yaml.safe_dump({k: v for k, v in spec.items() if k != "_file"})
        for kind in ("schemas", "volumes"):
            for key in bundle["resources"][kind]:
                assert f"${{resources.{kind}.{key}." in text, f"{job}: does not reference {kind}.{key}"


def test_development_mode_prefix_reaches_the_tasks(bundle):
    """In dev the deployed schemas carry the user's prefix, and the tasks' lake follows it (the
    resolution above models the CLI; this pins the expected names so the model cannot drift unseen)."""
    dev = deployed(bundle, "dev")
    assert dev["resources"]["schemas"]["bronze"]["name"] == f"dev_{SHORT_NAME}_boostqa_bronze"
    assert volume_path(dev, "assets") == f"/Volumes/dev/dev_{SHORT_NAME}_boostqa_ref/assets"
    prod = deployed(bundle, "prod")
    assert prod["resources"]["schemas"]["bronze"]["name"] == "boostqa_bronze"
    assert normalize_prefix("dev_Jane.Doe_") == "dev_jane_doe_"


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
    """A task gets the wheel the bundle's artifact builds (pip wheel -w dist): on serverless through
    its environment (environment_version, not the deprecated client), on a job cluster as a task library."""
    artifacts = bundle.get("artifacts") or {}
    assert any(a.get("type") == "whl" and "-w dist" in a.get("build", "") and
               (BUNDLE_FILE.parent / a.get("path", ".")).resolve() == REPO for a in artifacts.values()), \
        "no whl artifact builds this project into dist/"
    for job, spec in _jobs(bundle).items():
        envs = {e["environment_key"]: e.get("spec") or {} for e in spec.get("environments", [])}
        clusters = {c["job_cluster_key"] for c in spec.get("job_clusters", [])}
        for t in spec.get("tasks", []):
            if "job_cluster_key" in t:
                assert t["job_cluster_key"] in clusters, f"{job}.{t['task_key']}: unknown job cluster"
                assert "environment_key" not in t, f"{job}.{t['task_key']}: a cluster task has no environment"
                wheels = [(spec["_file"].parent / lib["whl"]).resolve() for lib in t.get("libraries", []) if "whl" in lib]
                assert REPO / "dist" / "*.whl" in wheels, f"{job}.{t['task_key']}: libraries miss dist/*.whl"
                continue
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

        assert ASSETS_STEP in by_stage, f"{job}: no task fetches the seed and benchmark files (stage: assets)"
        order = [ASSETS_STEP, *STAGES]
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
    misspelt field, or a value outside an enum, is an error there, not a silent no-op at deploy time."""
    from databricks.bundles.jobs import Job

    for spec in _jobs(bundle).values():
        plain = {k: v for k, v in spec.items() if k != "_file"}
        job = Job.from_dict(plain)
        assert len(job.tasks) == len(plain["tasks"])
        assert all(t.python_wheel_task or t.notebook_task for t in job.tasks)
        with pytest.raises(ValueError, match="Unexpected field 'scheduel'"):
            Job.from_dict({**plain, "scheduel": plain["schedule"]})
        for cluster in plain.get("job_clusters", []):
            bad = {**cluster, "new_cluster": {**cluster["new_cluster"], "data_security_mode": "SINGLE_USR"}}
            with pytest.raises(ValueError, match="SINGLE_USR"):
                Job.from_dict({**plain, "job_clusters": [bad]})


def test_prod_target_deploys_to_a_shared_root(bundle):
    prod = bundle["targets"]["prod"]
    assert prod["mode"] == "production" and (prod.get("workspace", {}).get("root_path") or prod.get("run_as"))


# ----------------------------------------------------------------------------- the job-cluster variant
def _cluster_jobs(bundle: dict) -> dict[str, dict]:
    out = {job: spec for job, spec in _jobs(bundle).items() if spec.get("job_clusters")}
    assert out, "no job runs on a job cluster (the variant whose LLM keys come from a secret scope)"
    return out


def _dag(spec: dict) -> dict[str, tuple]:
    return {t["task_key"]: (task_stage(spec, t) if "python_wheel_task" in t else None,
                            tuple(sorted(d["task_key"] for d in t.get("depends_on", []))))
            for t in spec.get("tasks", []) if "python_wheel_task" in t}


def test_serverless_stays_the_default_and_the_cluster_job_mirrors_it(bundle):
    jobs = _jobs(bundle)
    serverless = jobs["boostqa_pipeline"]
    assert "job_clusters" not in serverless and all("environment_key" in t for t in serverless["tasks"])
    for job, spec in _cluster_jobs(bundle).items():
        assert _dag(spec) == _dag(serverless), f"{job}: wheel tasks differ from boostqa_pipeline's"
        assert spec["parameters"] == serverless["parameters"], f"{job}: job parameters differ from boostqa_pipeline's"
        prod = ((bundle["targets"]["prod"].get("resources") or {}).get("jobs") or {}).get(job, {})
        assert (prod.get("schedule") or {}).get("pause_status") != "UNPAUSED", f"{job}: two schedules would run the lake"


def api_key_envs(profile: str) -> set[str]:
    """The variables the profile's LLM endpoints (and an embedding endpoint) read their keys from."""
    s = load_settings(profile, directory=REPO / "conf", environ={})
    names = {e.api_key_env for e in s.llm.endpoints.values() if e.api_key_env}
    return names | ({s.decontam.embedding.api_key_env} if s.decontam.embedding.api_key_env else set())


def test_cluster_keys_come_from_the_secret_scope(bundle):
    """Spark 4 runtime, and every key the profile's endpoints read is a {{secrets/boostqa/...}}
    reference in spark_env_vars (driver and executors: the calls run in executor tasks)."""
    variables = {k: v.get("default") for k, v in (bundle.get("variables") or {}).items()}
    for job, spec in _cluster_jobs(bundle).items():
        profile = next(p["default"] for p in spec["parameters"] if p["name"] == "profile")
        profile = PLACEHOLDER.sub(lambda m: str(variables[(m.group(2) or "")[4:]]), profile)
        needed = api_key_envs(profile)
        assert needed, f"profile {profile} reads no API key"
        for cluster in spec["job_clusters"]:
            new = cluster["new_cluster"]
            major = re.fullmatch(r"(\d+)\.\d+\.x-scala2\.13", new.get("spark_version", ""))
            assert major and int(major.group(1)) >= 17, \
                f"{job}: spark_version {new.get('spark_version')!r} is not a Spark 4 runtime (DBR 17+)"
            env = new.get("spark_env_vars") or {}
            secrets = {k: SECRET_REF.match(str(v)) for k, v in env.items() if SECRET_REF.match(str(v))}
            assert needed <= set(secrets), f"{job}: keys {sorted(needed - set(secrets))} are not from a secret scope"
            assert set(secrets) <= needed, f"{job}: secrets {sorted(set(secrets) - needed)} are read by no endpoint"
            assert {m.group(1) for m in secrets.values()} == {"boostqa"}
            assert {m.group(2) for m in secrets.values()} == {n.lower() for n in needed}, \
                "secret keys are the variables' names in lower case (docs/databricks.md lists them)"


SECRET_NAME = re.compile(r"(?i)(?:^|_)(?:api_?key|secret|password|passwd|credentials?|token)$")
SECRET_VALUE = re.compile(r"dapi[0-9a-f]{32}|\bsk-[A-Za-z0-9_-]{16,}|\bghp_[A-Za-z0-9]{30,}|eyJ[A-Za-z0-9_-]{20,}\.")


def secret_values(node, path: str = "") -> list[str]:
    """Where a mapping holds a literal secret: a secret-named key whose value is not a
    {{secrets/scope/key}} reference, or any string shaped like a token (Databricks PAT, sk-..., JWT)."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, (str, int, float)) and SECRET_NAME.search(str(k)) and not SECRET_REF.match(str(v)):
                found.append(f"{path}.{k}")
            found += secret_values(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += secret_values(v, f"{path}[{i}]")
    elif isinstance(node, str) and SECRET_VALUE.search(node):
        found.append(path)
    return found


def test_no_secret_value_in_any_bundle_file():
    files = [BUNDLE_FILE, *sorted((REPO / "resources").glob("*.yml")), REPO / "conf" / "databricks.yaml"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not SECRET_VALUE.search(text), f"{path.name}: a token-shaped string"
        found = secret_values(yaml.safe_load(text))
        assert not found, f"{path.name}: literal secrets at {found}"
    # the check can fail: a literal key where a reference belongs, and a pasted token anywhere
    pasted = {"spark_env_vars": {"DATABRICKS_TOKEN": "dapi" + "0" * 32}}
    assert set(secret_values(pasted)) == {".spark_env_vars.DATABRICKS_TOKEN"}
    assert secret_values({"spark_env_vars": {"PROBE_API_KEY": "hunter2"}}) == [".spark_env_vars.PROBE_API_KEY"]
    assert secret_values({"parameters": [{"default": "sk-" + "a" * 20}]}) == [".parameters[0].default"]
    assert secret_values({"spark_env_vars": {"DATABRICKS_TOKEN": "{{secrets/boostqa/databricks_token}}"}}) == []


# ---------------------------------------------------------------------------------------- notebooks
def test_notebook_tasks_pass_the_catalog_the_notebook_reads(bundle):
    """A notebook task names a notebook of this repo; each base parameter is a widget its
    parameter cell reads through boostqa.explore.parameter; the catalog is the target's."""
    tasks = [(job, spec, t) for job, spec in _jobs(bundle).items()
             for t in spec.get("tasks", []) if "notebook_task" in t]
    assert tasks, "no notebook task"
    for job, spec, t in tasks:
        nb = t["notebook_task"]
        path = (spec["_file"].parent / nb["notebook_path"]).resolve()
        assert path.is_file() and path.parent == REPO / "notebooks", f"{job}.{t['task_key']}: {nb['notebook_path']}"
        assert nb["base_parameters"].get("catalog") == "${var.catalog}"
        import json

        code = "".join("".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                       if c["cell_type"] == "code")
        for name in nb["base_parameters"]:
            assert re.search(rf"parameter\(\s*[\"']{name}[\"']", code), f"{path.name} reads no widget {name!r}"
        assert t.get("job_cluster_key") and any("whl" in lib for lib in t.get("libraries", [])), \
            f"{job}.{t['task_key']}: the notebook imports boostqa: run it where the wheel is installed"


def test_notebook_lake_on_the_cluster_is_the_deployed_one(bundle):
    """The notebook task reads the lake through the profile: the cluster's BOOSTQA__LAKE__SCHEMA_PREFIX
    must name the deployed schemas in every target (the wheel tasks derive theirs from --schemas)."""
    for target in bundle["targets"]:
        dep = deployed(bundle, target)
        for job, spec in _cluster_jobs(bundle).items():
            for cluster in spec["job_clusters"]:
                prefix = dep["resolve"](cluster["new_cluster"]["spark_env_vars"]["BOOSTQA__LAKE__SCHEMA_PREFIX"])
                for layer in LAYERS:
                    assert prefix + layer == dep["resources"]["schemas"][layer]["name"], f"{job} [{target}]"

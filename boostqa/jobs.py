"""The one entry point of scheduled jobs: ``boostqa-job [--stage NAME ...] [--profile P] [--run-id ID]``.

It runs the same three ways:

- the console script ``boostqa-job`` (``[project.scripts]``), wherever the package is installed;
- a Databricks ``python_wheel_task`` (``package_name: boostqa``, ``entry_point: boostqa-job``):
  ``parameters`` arrive as given (``--stage ingest``), ``named_parameters`` and the job parameters
  pushed down to the task as ``--key=value`` (``--stage=ingest``, ``--run-id=123``); argparse reads both;
- ``spark-submit "$(python -c 'import boostqa.jobs as j; print(j.__file__)')" --stage ingest ...``
  (this file run as a script).

No ``--stage`` runs the whole pipeline in order. ``--stage assets`` is a job step before the
pipeline, not a stage: it fetches the pinned benchmark and seed files the profile reads from
``cache://`` into its data cache (on Databricks a Unity Catalog volume), without Spark.
``--set KEY=VALUE`` overrides a setting; so does ``--set.KEY=VALUE`` (or ``--set.KEY VALUE``), the
form a job parameter named ``set.KEY`` arrives in. ``--schemas`` names the lake's Unity Catalog
schemas as the bundle deployed them (development mode prefixes them with the user's name), and
``lake.schema_prefix`` is derived from them. Every task of one Databricks job run passes the same
``--run-id``, so all stages land under one MLflow parent run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # run as a file (spark-submit): the package directory must not shadow top-level modules
    # (config, engine, llm, text, ...); `boostqa` itself is imported from the installed package
    sys.path.pop(0)

from boostqa.config import load_settings  # noqa: E402

SET_PREFIX = "--set."
ASSETS_STEP = "assets"  # a job step, not a stage: fetch the cache:// files the profile reads


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="boostqa-job", description="run boostqa stages (default: the whole pipeline, in order)",
        epilog="Databricks passes named parameters as --key=value; --set.KEY=VALUE is --set KEY=VALUE.")
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="stage to run (repeatable, or comma-separated); several run in pipeline order")
    p.add_argument("--profile", default=None, help="conf profile (default: env BOOSTQA_PROFILE or local)")
    p.add_argument("--run-id", default=None, help="pipeline run id shared by the tasks of one job run")
    p.add_argument("--max-chunks", type=int, default=None, help="stop after N committed chunks")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set lake.catalog=dev (repeatable; VALUE parsed as YAML)")
    p.add_argument("--schemas", default=None, metavar="NAMES",
                   help="the lake's Unity Catalog schemas as deployed, comma-separated (<prefix><layer> each); "
                        "sets lake.schema_prefix")
    return p


def normalize(argv: list[str]) -> list[str]:
    """``--set.lake.catalog=dev`` / ``--set.lake.catalog dev`` -> ``--set lake.catalog=dev``; the rest as is."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith(SET_PREFIX):
            out.append(arg)
            continue
        key, sep, value = arg[len(SET_PREFIX):].partition("=")
        if not sep:
            value = next(args, None)
            if value is None:
                raise SystemExit(f"{arg} expects a value")
        out += ["--set", f"{key}={value}"]
    return out


def overrides(pairs: list[str]) -> dict:
    """['lake.catalog=dev', 'runner.chunk_rows=5000'] -> nested dict with YAML-typed values."""
    import yaml

    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:  # e.g. an unquoted {{...}}: YAML reads a mapping
            raise SystemExit(f"--set {key}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                             "quote it, e.g. --set KEY='{{secrets/scope/key}}'") from None
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed arguments; ``args.stages`` is the list of stage names (empty: the whole pipeline)."""
    p = parser()
    args = p.parse_args(normalize(sys.argv[1:] if argv is None else list(argv)))
    args.stages = [n.strip() for value in args.stage for n in value.split(",") if n.strip()]
    from boostqa.stages import STAGES  # after parsing: --help needs no stage imports

    unknown = [n for n in args.stages if n not in STAGES and n != ASSETS_STEP]
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; known: {ASSETS_STEP} (job step), {', '.join(STAGES)}")
    return args


def schema_prefix(names: str) -> str:
    """The one prefix of deployed schema names ``<prefix><layer>`` (``dev_ann_boostqa_bronze,...``
    -> ``dev_ann_boostqa_``): the lake then finds the tables where the bundle created the schemas.
    Names that do not fit are a ConfigError (exit 2), not a guess."""
    from boostqa.config import ConfigError
    from boostqa.lake import LAYERS

    prefixes: dict[str, str] = {}
    for name in (n.strip() for n in names.split(",") if n.strip()):
        layer = next((la for la in LAYERS if name.endswith(la)), None)
        if layer is None or layer in prefixes:
            raise ConfigError(f"--schemas: {name!r} is not <prefix><layer> for a new layer of {', '.join(LAYERS)}")
        prefixes[layer] = name[:-len(layer)]
    if len(set(prefixes.values())) != 1:
        raise ConfigError(f"--schemas: the schemas do not share one prefix: {prefixes or names!r}")
    return next(iter(prefixes.values()))


def settings_overrides(args: argparse.Namespace) -> dict:
    """``--set`` pairs, plus ``lake.schema_prefix`` from ``--schemas`` when given."""
    out = overrides(args.set)
    if args.schemas:
        out.setdefault("lake", {})["schema_prefix"] = schema_prefix(args.schemas)
    return out


def needed_assets(settings) -> list[str]:
    """Assets the enabled sources, benchmarks and corpus read from ``cache://<asset>/...``."""
    from boostqa.sources import CACHE_PREFIX

    names = [src.path[len(CACHE_PREFIX):].split("/", 1)[0]
             for src in [*settings.sources, *settings.benchmarks, *settings.corpus]
             if src.enabled and src.path and src.path.startswith(CACHE_PREFIX)]
    return list(dict.fromkeys(names))


def fetch_assets(settings) -> dict:
    """Put the pinned files the pipeline reads into the data cache (idempotent: present files stay)."""
    from boostqa.assets import ASSETS, AssetError, fetch

    names = needed_assets(settings)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise AssetError(f"cache:// names unknown asset(s) {', '.join(unknown)}; known: {', '.join(ASSETS)}")
    cache = settings.cache_dir()
    print(f"[{ASSETS_STEP}] {', '.join(names) or 'nothing'} -> {cache}", flush=True)
    return fetch(names, cache, on_event=lambda m: print(f"[{ASSETS_STEP}] {m}", flush=True)) if names else {}


def main(argv: list[str] | None = None) -> int:
    """0: every stage finished its work; 1: work left (rows deferred, chunks left); 2: an error the
    message explains (bad config, unreachable endpoint, missing input)."""
    args = parse(argv)
    from boostqa.assets import AssetError
    from boostqa.config import ConfigError
    from boostqa.lake import LakeError
    from boostqa.runner import StageError
    from boostqa.sources import SourceError

    try:
        return _run(args)
    except (ConfigError, StageError, LakeError, SourceError, AssetError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


def _run(args: argparse.Namespace) -> int:
    from boostqa.runner import Runner

    settings = load_settings(args.profile, overrides=settings_overrides(args))
    if ASSETS_STEP in args.stages:
        fetch_assets(settings)
    stages = [n for n in args.stages if n != ASSETS_STEP]
    if args.stages and not stages:
        return 0  # only the assets step: no Spark session

    def report(p):
        print(f"[{p.stage}] chunk {p.chunk}/{p.chunks} rows {p.rows_done}/{p.rows_total} kept {p.kept} "
              f"rejected {p.rejected} deferred {p.deferred} elapsed {p.elapsed:.0f}s"
              + (f" eta {p.eta:.0f}s" if p.eta is not None else ""), flush=True)

    from boostqa.llm.keys import keys_from_secrets

    read = keys_from_secrets(settings.llm.endpoints, settings.llm.calls_from)
    if read:  # those keys exist in this process only: the calls go out from here
        settings.llm.calls_from = "driver"
        print(f"{', '.join(read)}: read from the secret scope on the driver; LLM calls go out from the driver",
              flush=True)  # the names, never the values
    runner = Runner(settings, progress=report)
    run_id, results = runner.run(stages or None, args.run_id, args.max_chunks, skip_missing=True)
    for r in results:
        if r.skipped:
            print(f"[{r.stage}] skipped: {r.skipped}", flush=True)
            continue
        print(f"[{r.stage}] pending {r.pending} kept {r.kept} rejected {r.rejected} deferred {r.deferred} "
              f"chunks {r.chunks_done}/{r.chunks_total} rejected_by_reason {r.rejected_by_reason}", flush=True)
    problems = runner.problems(run_id, results)
    for line in problems:  # a scheduled job that left work fails its task: it is not green with empty tables
        print(f"run {run_id}: work left: {line}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

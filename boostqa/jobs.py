"""The one entry point of scheduled jobs: ``boostqa-job [--stage NAME ...] [--profile P] [--run-id ID]``.

It runs the same three ways:

- the console script ``boostqa-job`` (``[project.scripts]``), wherever the package is installed;
- a Databricks ``python_wheel_task`` (``package_name: boostqa``, ``entry_point: boostqa-job``):
  ``parameters`` arrive as given (``--stage ingest``), ``named_parameters`` and the job parameters
  pushed down to the task as ``--key=value`` (``--stage=ingest``, ``--run-id=123``); argparse reads both;
- ``spark-submit "$(python -c 'import boostqa.jobs as j; print(j.__file__)')" --stage ingest ...``
  (this file run as a script).

No ``--stage`` runs the whole pipeline in order. ``--set KEY=VALUE`` overrides a setting; so does
``--set.KEY=VALUE`` (or ``--set.KEY VALUE``), the form a job parameter named ``set.KEY`` arrives in.
Every task of one Databricks job run passes the same ``--run-id``, so all stages land under one
MLflow parent run.
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
        node[parts[-1]] = yaml.safe_load(value)
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed arguments; ``args.stages`` is the list of stage names (empty: the whole pipeline)."""
    p = parser()
    args = p.parse_args(normalize(sys.argv[1:] if argv is None else list(argv)))
    args.stages = [n.strip() for value in args.stage for n in value.split(",") if n.strip()]
    from boostqa.stages import STAGES  # after parsing: --help needs no stage imports

    unknown = [n for n in args.stages if n not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """0: every stage finished its work; 1: work left (rows deferred, chunks left); 2: an error the
    message explains (bad config, unreachable endpoint, missing input)."""
    args = parse(argv)
    from boostqa.config import ConfigError
    from boostqa.lake import LakeError
    from boostqa.runner import StageError
    from boostqa.sources import SourceError

    try:
        return _run(args)
    except (ConfigError, StageError, LakeError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


def _run(args: argparse.Namespace) -> int:
    from boostqa.runner import Runner

    settings = load_settings(args.profile, overrides=overrides(args.set))

    def report(p):
        print(f"[{p.stage}] chunk {p.chunk}/{p.chunks} rows {p.rows_done}/{p.rows_total} kept {p.kept} "
              f"rejected {p.rejected} deferred {p.deferred} elapsed {p.elapsed:.0f}s"
              + (f" eta {p.eta:.0f}s" if p.eta is not None else ""), flush=True)

    runner = Runner(settings, progress=report)
    run_id, results = runner.run(args.stages or None, args.run_id, args.max_chunks, skip_missing=True)
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

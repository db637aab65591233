"""Entry points for scheduled jobs (spark-submit, Databricks spark_python_task).

Arguments are plain argparse so a job runs wherever Python and the package are installed; every
task of one Databricks job run passes the same --run-id, so all stages land under one MLflow
parent run.
"""

from __future__ import annotations

import argparse
import sys

from boostqa.config import load_settings


def parser(stage: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"boostqa-job-{stage or 'pipeline'}",
                                description=f"run boostqa stage {stage}" if stage else "run boostqa stages")
    if stage is None:
        p.add_argument("--stages", default="", help="comma-separated stages (default: all)")
    p.add_argument("--profile", default=None, help="conf profile (default: env BOOSTQA_PROFILE or local)")
    p.add_argument("--run-id", default=None, help="pipeline run id shared by the tasks of one job run")
    p.add_argument("--max-chunks", type=int, default=None, help="stop after N committed chunks")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set lake.catalog=dev (repeatable; VALUE parsed as YAML)")
    return p


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


def main(stage: str | None = None, argv: list[str] | None = None) -> int:
    args = parser(stage).parse_args(sys.argv[1:] if argv is None else argv)
    from boostqa.runner import Runner

    settings = load_settings(args.profile, overrides=overrides(args.set))
    names = [stage] if stage else [s for s in args.stages.split(",") if s]

    def report(p):
        print(f"[{p.stage}] chunk {p.chunk}/{p.chunks} rows {p.rows_done}/{p.rows_total} kept {p.kept} "
              f"rejected {p.rejected} deferred {p.deferred} elapsed {p.elapsed:.0f}s"
              + (f" eta {p.eta:.0f}s" if p.eta is not None else ""), flush=True)

    run_id, results = Runner(settings, progress=report).run(names or None, args.run_id, args.max_chunks,
                                                             skip_missing=True)
    for r in results:
        if r.skipped:
            print(f"[{r.stage}] skipped: {r.skipped}", flush=True)
            continue
        print(f"[{r.stage}] pending {r.pending} kept {r.kept} rejected {r.rejected} deferred {r.deferred} "
              f"chunks {r.chunks_done}/{r.chunks_total} rejected_by_reason {r.rejected_by_reason}", flush=True)
    incomplete = [r.stage for r in results if not r.complete]
    if incomplete:
        print(f"run {run_id}: incomplete stages {incomplete}; rerun to finish", flush=True)
    return 0

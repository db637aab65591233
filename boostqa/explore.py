"""Small helpers shared by the exploration notebooks (notebooks/*.ipynb).

The notebooks read the lake through the same ``Lake`` API as the pipeline, so one notebook runs
against the demo's path lake (embedded engine) and against Unity Catalog tables on Databricks
(profile ``databricks``: the notebook's own ``spark`` session). Matplotlib only.

A notebook that silently plots nothing looks like "no data" when the table is simply missing
or the profile points at the wrong lake, so every read here fails loudly instead.
"""

from __future__ import annotations

import os

import pandas as pd

from boostqa.config import Settings, load_settings
from boostqa.engine import get_spark
from boostqa.lake import Lake, LakeError

DEFAULT_PROFILE = "demo"
LEVELS = [f"H{i}" for i in range(1, 6)]
SIMULATED = "SIMULATED LLM output (boostqa simulator): random, not a model's"


def default_profile() -> str:
    """The profile a notebook runs against: env BOOSTQA_PROFILE, else the demo."""
    return os.environ.get("BOOSTQA_PROFILE") or DEFAULT_PROFILE


def parameter(name: str, default: str) -> str:
    """A notebook parameter: a Databricks widget where ``dbutils`` exists (interactive or as a
    bundle task's base parameter), else the environment (``BOOSTQA_<NAME>``), else ``default``."""
    import __main__

    dbutils = getattr(__main__, "dbutils", None)
    if dbutils is not None:
        dbutils.widgets.text(name, default)
        return dbutils.widgets.get(name)
    import os

    return os.environ.get(f"BOOSTQA_{name.upper()}", default)


def open_lake(profile: str | None = None, catalog: str | None = None) -> tuple[Settings, Lake]:
    """Settings of the profile (with BOOSTQA__* env overrides) and a Lake on its engine;
    ``catalog`` puts the lake in that Unity Catalog catalog.

    The engine comes from the profile: embedded starts LakeSail in this process; databricks
    reuses the session the notebook already has."""
    settings = load_settings(profile or default_profile(),
                             overrides={"lake": {"catalog": catalog}} if catalog else None)
    spark = get_spark(settings.engine)
    return settings, Lake(spark, settings.lake, settings.runner.commit_retries)


def require(lake: Lake, *names: str) -> None:
    """Raise naming every missing table (and where it was looked for), instead of plotting nothing."""
    missing = [f"{n} ({lake.location(n)})" for n in names if not lake.exists(n)]
    if missing:
        raise LakeError("missing table(s): " + ", ".join(missing) +
                        ": run the pipeline for this profile first (`boostqa run --profile ...`)")


def read(lake: Lake, name: str, version: int | None = None, nonempty: bool = True):
    """A Spark DataFrame of the table (aggregate in Spark, then ``toPandas`` the small result).

    An empty table raises too (a demo or production run fills every table the notebooks read);
    ``nonempty=False`` for tables that may rightly be empty, such as a quarantine."""
    require(lake, name)
    df = lake.read(name, version)
    if nonempty and df.limit(1).count() == 0:
        raise LakeError(f"table {name} ({lake.location(name)}) is empty")
    return df


def table(lake: Lake, name: str, version: int | None = None, columns: list[str] | None = None,
          max_rows: int = 200_000) -> pd.DataFrame:
    """A small table as pandas. Refuses more than ``max_rows`` rows: on a real lake aggregate
    with :func:`read` first rather than pulling a billion-row table to the driver."""
    df = read(lake, name, version)
    if columns:
        df = df.select(*columns)
    n = df.count()
    if n > max_rows:
        raise LakeError(f"{name} has {n:,} rows (> max_rows={max_rows:,}): aggregate it with explore.read()")
    return df.toPandas()


def simulated_note(df) -> str:
    """Whether a table's rows came from the LLM simulator (column ``llm_simulated``), counted in
    Spark, so simulator output is never presented as a model's."""
    from pyspark.sql import functions as F

    r = df.agg(F.count("*").alias("n"), F.sum(F.col("llm_simulated").cast("int")).alias("sim")).first()
    n, sim = int(r["n"]), int(r["sim"] or 0)
    if sim == 0:
        return f"real LLM output ({n:,} rows, llm_simulated = false)"
    if sim == n:
        return f"{SIMULATED} ({n:,} rows)"
    return f"MIXED: {sim:,} of {n:,} rows are {SIMULATED}"


def by_level(pdf: pd.DataFrame, value: str, index: str = "discipline", aggfunc: str = "sum") -> pd.DataFrame:
    """Pivot rows with an integer ``difficulty`` (1..5) into ``index`` x H1..H5 (missing cells NaN)."""
    p = pdf.assign(level=pdf["difficulty"].map(lambda d: f"H{int(d)}" if pd.notna(d) else "none")) \
        .pivot_table(index=index, columns="level", values=value, aggfunc=aggfunc)
    return p.reindex(columns=LEVELS + sorted(c for c in p.columns if c not in LEVELS)).sort_index()


def heatmap(ax, pivot: pd.DataFrame, title: str, fmt: str = "{:.0f}", cmap: str = "viridis",
            vmin: float | None = None, vmax: float | None = None):
    """An annotated heatmap of a pivot table (NaN cells stay blank), so exact numbers are readable."""
    import numpy as np

    data = pivot.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(data.shape[1]), [str(c) for c in pivot.columns])
    ax.set_yticks(range(data.shape[0]), [str(i) for i in pivot.index])
    ax.set_title(title)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                r, g, b, _ = im.cmap(im.norm(data[i, j]))  # dark cell -> white text
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return im


def strip(path: str) -> bool:
    """Clear outputs and execution counts of a notebook in place (notebooks are committed
    stripped); True when it changed. ``python -m boostqa.explore notebooks/*.ipynb``."""
    import nbformat

    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        if cell.metadata.pop("execution", None) is not None:  # timings some front ends record
            changed = True
    if nb.metadata.get("language_info", {"name": "python"}) != {"name": "python"}:
        nb.metadata["language_info"], changed = {"name": "python"}, True  # no local Python version in git
    if changed:
        nbformat.write(nb, path)
    return changed


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        print(("stripped " if strip(p) else "clean    ") + p)

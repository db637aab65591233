"""Anchor: HuggingFace datatrove's MinHash dedup and n-gram decontamination on the benchmark corpus.

Runs ONLY in benchmarks/.venv-datatrove (see setup_anchor.sh), never in the project venv:

    benchmarks/.venv-datatrove/bin/python benchmarks/anchor_datatrove.py \
        --corpus-dir benchmarks/work/corpus-<key> --work-dir benchmarks/work/anchor --task dedup --out res.json

Input: <corpus-dir>/corpus/*.parquet (doc_id, question, answer) and <corpus-dir>/bench_items.jsonl.
Document text = question + "\\n" + answer (same rule as corpus.py's manifest "text_rule").

Dedup = datatrove's 4-stage MinHash pipeline with MinhashConfig() defaults (5-word shingles of
the simplify_text-normalised text, 14 buckets x 8 hashes = 112 permutations, 64-bit xxhash, seed 1):
  1 MinhashDedupSignature  (tasks = --tasks, one rank per group of parquet shards)
  2 MinhashDedupBuckets    (tasks = 14: datatrove needs tasks % num_buckets == 0; --workers at a time)
  3 MinhashDedupCluster    (tasks = 1: datatrove asserts world_size == 1)
  4 MinhashDedupFilter     (same reader and task count as stage 1; removed docs go to an
                            exclusion ParquetWriter, kept docs to a ParquetWriter)
Prediction = ids of the documents stage 4 drops.

Decontamination = datatrove's NGramsDecontIndexer logic + NGramsDecontFilter, one run per config
(default: "n12" = NGramsDecontConfig() as shipped; "n12q" and "n10q" = find_query_ngrams=True
with n_grams 12 / 10). The shipped indexer always imports lighteval and loads its task registry
from the Hugging Face hub, which is impossible offline (and lighteval is not installed). So
OfflineNGramsDecontIndexer below is a PipelineStep that reuses NGramsDecontIndexer.compute_hashes
verbatim (same tokenizer, same simplify_text normalisation, same xxhash64, same query / label /
overlap n-gram rule) and the same index file format (<task>.index.hashes, raw uint64), fed with our
bench_items.jsonl as the documented "documents" path: text = gold answer, metadata.query = question,
metadata.task = benchmark. The filter is the unmodified NGramsDecontFilter.
Prediction = ids of the documents the filter drops.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from procmon import PeakMemory  # noqa: E402

from datatrove.data import Document  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.io import get_datafolder  # noqa: E402
from datatrove.pipeline.base import PipelineStep  # noqa: E402
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer  # noqa: E402
from datatrove.pipeline.dedup import (  # noqa: E402
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig  # noqa: E402
from datatrove.pipeline.readers import ParquetReader  # noqa: E402
from datatrove.pipeline.writers import ParquetWriter  # noqa: E402
from datatrove.utils.hashing import create_hash_func  # noqa: E402
from datatrove.utils.logging import logger  # noqa: E402
from datatrove.utils.typeshelper import Languages  # noqa: E402
from datatrove.utils.word_tokenizers import load_word_tokenizer  # noqa: E402

DECONT_CONFIGS = {
    "n12": dict(n_grams=12, find_query_ngrams=False, find_overlap_ngrams=True),  # datatrove's shipped default
    "n12q": dict(n_grams=12, find_query_ngrams=True, find_overlap_ngrams=True),
    "n10q": dict(n_grams=10, find_query_ngrams=True, find_overlap_ngrams=True),  # boostqa's n
    "n13q": dict(n_grams=13, find_query_ngrams=True, find_overlap_ngrams=True),
}


# --------------------------------------------------------------------------- adapters (picklable)


def qa_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
    return {"text": f"{data['question']}\n{data['answer']}", "id": data["doc_id"], "media": [], "metadata": {}}


def id_only(self, document: Document) -> dict:
    return {"id": document.id}


def decont_exclusion(self, document: Document) -> dict:
    return {"id": document.id, "task": document.metadata.get("contaminated_task"),
            "ngram": document.metadata.get("contaminated_ngram")}


# --------------------------------------------------------------------------- offline indexer


class OfflineNGramsDecontIndexer(PipelineStep):
    """NGramsDecontIndexer without the lighteval part: indexes only the input documents.

    Input documents: text = gold label (answer), metadata["query"] = prompt (question),
    metadata["task"] = task name. Writes <output_folder>/<task>.index.hashes exactly as upstream.
    """

    type = NGramsDecontIndexer.type
    name = "💥 N-grams build index (reference docs, no lighteval)"
    compute_hashes = NGramsDecontIndexer.compute_hashes  # the upstream function, unchanged

    def __init__(self, output_folder, config: NGramsDecontConfig | None = None, language: str = Languages.english):
        super().__init__()
        self.output_folder = get_datafolder(output_folder)
        self.config = config or NGramsDecontConfig()
        self.tokenizer = load_word_tokenizer(language)
        self.hash_func = create_hash_func(self.config.hash_config)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError("Decontamination index building requires a single worker.")
        hashes = defaultdict(set)
        for doc in data or ():  # upstream's "documents" branch, verbatim semantics
            if not self.config.find_query_ngrams and "query" not in doc.metadata:
                raise ValueError("only_label_ngrams is False but could not find 'query' field in documents metadata")
            self.stat_update("reference_docs")
            hashes[doc.metadata.get("task", "input")].update(
                self.compute_hashes(doc.text, doc.metadata.get("query", None))
            )
        for task_name, task_hashes in hashes.items():
            arr = np.array(list(task_hashes), dtype=self.config.hash_config.np_descr)
            logger.info(f"Saving {len(task_hashes)} hashes for {task_name}")
            self.stat_update(f"hashes_{task_name}", value=len(task_hashes))
            with self.output_folder.open(f"{task_name.replace(' ', '_')}.index.hashes", mode="wb") as f:
                if self.output_folder.is_local():
                    arr.tofile(f)
                else:
                    f.write(arr.tobytes())
        return
        yield  # a generator step, like upstream


def bench_docs(bench_jsonl: str):
    def gen(data=None, rank: int = 0, world_size: int = 1):
        with open(bench_jsonl, encoding="utf-8") as f:
            for line in f:
                it = json.loads(line)
                yield Document(text=it["answer"], id=f"{it['benchmark']}:{it['item_id']}",
                               metadata={"query": it["question"], "task": it["benchmark"]})

    return gen


# --------------------------------------------------------------------------- helpers


def _stage(name: str, executor: LocalPipelineExecutor, stages: list[dict]) -> None:
    with PeakMemory() as mon:
        t0 = time.perf_counter()
        executor.run()
        secs = time.perf_counter() - t0
    stages.append({"name": name, "seconds": round(secs, 3), "tasks": executor.tasks,
                   "workers": executor.workers, **mon.as_dict()})
    print(f"[anchor] {name}: {secs:.1f}s, {mon.tree_cpu_seconds:.1f} CPU s, peak tree RSS {mon.peak_rss / 2**20:.0f} MiB",
          file=sys.stderr, flush=True)


def _peaks(stages: list[dict]) -> dict:
    out = {k: max(s[k] for s in stages) for k in ("peak_rss_bytes", "peak_pss_bytes", "max_processes")}
    out["cpu_seconds"] = round(sum(s["cpu_seconds_sampled"] for s in stages), 2)
    return out


def _read_ids(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    out: list[dict] = []
    for p in sorted(folder.glob("*.parquet")):
        out.extend(pq.read_table(p).to_pylist())
    return out


def _reader(corpus: Path) -> ParquetReader:
    return ParquetReader(str(corpus), adapter=qa_adapter, glob_pattern="*.parquet")


def _executor(pipeline, tasks: int, workers: int, logs: Path) -> LocalPipelineExecutor:
    # skip_completed=False: a benchmark must never skip work because an old completion marker exists
    return LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs),
                                 skip_completed=False)


def count_docs(corpus: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(corpus.glob("*.parquet")))


# --------------------------------------------------------------------------- dedup


def run_dedup(corpus: Path, work: Path, tasks: int, workers: int) -> dict:
    cfg = MinhashConfig()  # datatrove defaults
    w = work / "dedup"
    shutil.rmtree(w, ignore_errors=True)
    stages: list[dict] = []
    t0 = time.perf_counter()  # stages run back to back; each samples its own peak (one sampler at a time)
    _stage("1_signatures", _executor([_reader(corpus), MinhashDedupSignature(str(w / "sigs"), config=cfg,
                                                                               language=Languages.english)],
                                     tasks, workers, w / "logs/s1"), stages)
    _stage("2_buckets", _executor([MinhashDedupBuckets(str(w / "sigs"), str(w / "buckets"), config=cfg)],
                                  cfg.num_buckets, workers, w / "logs/s2"), stages)
    _stage("3_cluster", _executor([MinhashDedupCluster(str(w / "buckets"), str(w / "remove_ids"), config=cfg)],
                                  1, 1, w / "logs/s3"), stages)
    _stage("4_filter", _executor([
        _reader(corpus),
        MinhashDedupFilter(str(w / "remove_ids"),
                           exclusion_writer=ParquetWriter(str(w / "removed"), adapter=id_only)),
        ParquetWriter(str(w / "kept")),
    ], tasks, workers, w / "logs/s4"), stages)
    seconds = time.perf_counter() - t0
    removed = sorted({r["id"] for r in _read_ids(w / "removed")})
    pred = work / "dedup_removed.txt"
    pred.write_text("".join(f"{x}\n" for x in removed))
    return {
        "system": "datatrove",
        "task": "dedup",
        "config": {"n_grams": cfg.n_grams, "num_buckets": cfg.num_buckets, "hashes_per_bucket": cfg.hashes_per_bucket,
                   "permutations": cfg.num_buckets * cfg.hashes_per_bucket, "seed": cfg.seed,
                   "hash": str(cfg.hash_config), "norm": vars(cfg.norm_config), "language": "eng (spaCy blank 'en')",
                   "approx_threshold": round((1 / cfg.num_buckets) ** (1 / cfg.hashes_per_bucket), 3),
                   "text": "question + '\\n' + answer",
                   "tasks": {"1_signatures": tasks, "2_buckets": cfg.num_buckets, "3_cluster": 1, "4_filter": tasks},
                   "workers": workers},
        "seconds": round(seconds, 3),
        "stages": stages,
        **_peaks(stages),
        "n_predicted": len(removed),
        "predictions_file": str(pred),
    }


# --------------------------------------------------------------------------- decontamination


def run_decontam(corpus: Path, bench_jsonl: str, work: Path, tasks: int, workers: int, name: str) -> dict:
    cfg = NGramsDecontConfig(**DECONT_CONFIGS[name])
    w = work / f"decontam-{name}"
    shutil.rmtree(w, ignore_errors=True)
    stages: list[dict] = []
    t0 = time.perf_counter()
    _stage("1_index", _executor([bench_docs(bench_jsonl), OfflineNGramsDecontIndexer(str(w / "index"), config=cfg)],
                                1, 1, w / "logs/index"), stages)
    _stage("2_filter", _executor([
        _reader(corpus),
        NGramsDecontFilter(str(w / "index"), config=cfg,
                           exclusion_writer=ParquetWriter(str(w / "flagged"), adapter=decont_exclusion)),
        ParquetWriter(str(w / "kept")),
    ], tasks, workers, w / "logs/filter"), stages)
    seconds = time.perf_counter() - t0
    flagged = _read_ids(w / "flagged")
    by_task: dict[str, int] = defaultdict(int)
    for r in flagged:
        by_task[r.get("task") or "?"] += 1
    ids = sorted({r["id"] for r in flagged})
    pred = work / f"decontam_{name}_flagged.txt"
    pred.write_text("".join(f"{x}\n" for x in ids))
    n_hashes = {p.name: p.stat().st_size // 8 for p in sorted((w / "index").glob("*.index.hashes"))}
    return {
        "system": f"datatrove-{name}",
        "task": "decontam",
        "config": {"n_grams": cfg.n_grams, "find_query_ngrams": cfg.find_query_ngrams,
                   "find_overlap_ngrams": cfg.find_overlap_ngrams, "hash": str(cfg.hash_config),
                   "norm": vars(cfg.norm_config), "reference": "bench_items.jsonl: text=answer, query=question",
                   "index_hashes": n_hashes, "tasks": {"1_index": 1, "2_filter": tasks}, "workers": workers},
        "seconds": round(seconds, 3),
        "stages": stages,
        **_peaks(stages),
        "n_predicted": len(ids),
        "flagged_by_task": dict(by_task),
        "predictions_file": str(pred),
    }


# --------------------------------------------------------------------------- main


def environment() -> dict:
    pk = {}
    for name in ("datatrove", "spacy", "xxhash", "numpy", "pyarrow", "regex", "multiprocess", "fsspec"):
        try:
            pk[name] = md.version(name)
        except md.PackageNotFoundError:
            pk[name] = None
    return {"python": platform.python_version(), "executable": sys.executable, "packages": pk}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus-dir", required=True, type=Path)
    ap.add_argument("--work-dir", required=True, type=Path)
    ap.add_argument("--task", choices=["dedup", "decontam", "all"], default="all")
    ap.add_argument("--tasks", type=int, default=2, help="datatrove tasks (ranks) for the per-document stages")
    ap.add_argument("--workers", type=int, default=2, help="concurrent worker processes")
    ap.add_argument("--decont-configs", default="n12,n12q,n10q", help=f"comma list of {sorted(DECONT_CONFIGS)}")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus = args.corpus_dir / "corpus"
    bench = str(args.corpus_dir / "bench_items.jsonl")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    n_docs = count_docs(corpus)
    results = []
    if args.task in ("dedup", "all"):
        results.append(run_dedup(corpus, args.work_dir, args.tasks, args.workers))
    if args.task in ("decontam", "all"):
        for name in [c.strip() for c in args.decont_configs.split(",") if c.strip()]:
            results.append(run_decontam(corpus, bench, args.work_dir, args.tasks, args.workers, name))
    for r in results:
        r["n_docs"] = n_docs
        r["docs_per_s"] = round(n_docs / r["seconds"], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

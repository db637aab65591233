"""Stage registry in pipeline order. Each stage module declares exactly one STAGE (stages/base.py);
base, llm (the LLM-stage template), lsh and training are shared helpers, not stages."""

from __future__ import annotations

from boostqa.stages import (annotate, bench, bench_embed, blend, check, corpus, decontam, dedup, export, gate,
                            ingest, kp_extract, kp_graph, kp_walk, ledger, probe, refine, sample, synthesize, weights)
from boostqa.stages.base import Stage

PIPELINE = (
    ingest,       # seed source files -> bronze.seeds
    bench,        # benchmark test sets -> ref.bench_items
    bench_embed,  # benchmark item vectors -> ref.bench_embeddings
    dedup,        # exact + MinHash-LSH near duplicates -> silver.seeds
    decontam,     # n-gram + embedding overlap with benchmarks -> silver.seeds_clean
    annotate,     # LLM discipline x difficulty -> silver.seeds_annotated
    probe,        # the model under training per cell -> gold.probe_results
    weights,      # accuracy -> sampling weights -> gold.sampling_weights
    kp_extract,   # LinkQA (linkqa.enabled): LLM knowledge points per seed -> silver.seed_kps
    kp_graph,     # LinkQA: KP co-occurrence graph -> gold.kp_nodes, gold.kp_edges
    kp_walk,      # LinkQA: value-guided walks -> silver.kp_paths + linkqa tasks in silver.synth_plan
    sample,       # weighted synthesis tasks -> silver.synth_plan
    synthesize,   # LLM generator -> silver.synth_raw
    check,        # LLM re-annotation, degraded booster output -> silver.synth_checked
    refine,       # LLM solvability + answer (+ judge) -> silver.synth_refined
    gate,         # length, dedup, decontamination of outputs -> gold.boostqa
    corpus,       # general-corpus files -> bronze.corpus
    blend,        # token-budget blend -> gold.mix
    export,       # gold.mix version -> training shards
    ledger,       # exact token counts -> gold.token_ledger
)
STAGES: dict[str, Stage] = {m.STAGE.name: m.STAGE for m in PIPELINE}


def resolve(names: list[str] | None) -> list[Stage]:
    """The named stages (all when empty) in pipeline order; unknown names fail with the known ones."""
    if not names:
        return list(STAGES.values())
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise KeyError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    return [s for n, s in STAGES.items() if n in names]

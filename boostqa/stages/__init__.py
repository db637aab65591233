"""Stage registry in pipeline order. Each module declares one STAGE (see stages/base.py)."""

from __future__ import annotations

from boostqa.stages import (annotate, bench, blend, corpus, decontam, dedup, gate, ingest, ledger, probe,
                            publish, synth)
from boostqa.stages.base import Stage

STAGES: dict[str, Stage] = {s.name: s for s in (ingest.STAGE, bench.STAGE, bench.EMBED_STAGE, dedup.STAGE,
                                                decontam.STAGE, annotate.STAGE,
                                                probe.STAGE, probe.WEIGHTS_STAGE, synth.SAMPLE_STAGE,
                                                synth.SYNTHESIZE_STAGE, synth.CHECK_STAGE, synth.REFINE_STAGE,
                                                gate.STAGE, corpus.STAGE, blend.STAGE,
                                                publish.STAGE, ledger.STAGE)}


def resolve(names: list[str] | None) -> list[Stage]:
    """The named stages (all when empty) in pipeline order; unknown names fail with the known ones."""
    if not names:
        return list(STAGES.values())
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise KeyError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    return [s for n, s in STAGES.items() if n in names]

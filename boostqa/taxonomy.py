"""The two-level discipline taxonomy (conf/taxonomy.yaml): labels, STEM flags, prompt text."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Taxonomy:
    stem: dict[str, bool]  # discipline -> is STEM
    subfields: dict[str, tuple[str, ...]]

    @property
    def labels(self) -> list[str]:
        """Every valid "discipline/subfield" label, in file order."""
        return [f"{d}/{s}" for d, subs in self.subfields.items() for s in subs]

    def is_stem(self, label: str) -> bool:
        return self.stem[label.split("/", 1)[0]]

    def prompt_text(self) -> str:
        return "\n".join(f"- {d} ({'STEM' if self.stem[d] else 'non-STEM'}): "
                         + ", ".join(f"{d}/{s}" for s in subs) for d, subs in self.subfields.items())


@lru_cache(maxsize=8)
def load_taxonomy(path: str | None = None) -> Taxonomy:
    from boostqa.config import conf_file

    p = Path(path) if path else conf_file("taxonomy.yaml")
    data = yaml.safe_load(p.read_text(encoding="utf-8"))["disciplines"]
    return Taxonomy(stem={d: bool(v["stem"]) for d, v in data.items()},
                    subfields={d: tuple(v["subfields"]) for d, v in data.items()})

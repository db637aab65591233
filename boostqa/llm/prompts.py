"""Versioned prompt templates (conf/prompts/<name>.yaml) and deterministic request keys.

The request key hashes everything that decides a response: endpoint model, template name and
version, the rendered messages, generation parameters and the sample index. Identical keys are
identical requests, so a logged response can be reused instead of paying for the call again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Prompt:
    name: str
    version: int
    system: str
    user: str

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    def render(self, **fields: str) -> list[dict[str, str]]:
        """Chat messages with the fields filled in (a missing field is an error, not a blank)."""
        try:
            system, user = self.system.format(**fields), self.user.format(**fields)
        except KeyError as e:
            raise KeyError(f"prompt {self.id} needs field {e.args[0]!r}") from None
        return [{"role": "system", "content": system.strip()}, {"role": "user", "content": user.strip()}]


def load_prompt(name: str, directory: Path | None = None) -> Prompt:
    from boostqa.config import conf_dir

    path = (directory or conf_dir() / "prompts") / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no prompt template {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = {"name", "version", "system", "user"} - set(data)
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)}")
    return Prompt(str(data["name"]), int(data["version"]), str(data["system"]), str(data["user"]))


def request_key(model: str, prompt: Prompt, messages: list[dict[str, str]], params: dict, sample: int = 0) -> str:
    body = json.dumps({"model": model, "prompt": prompt.id, "messages": messages, "params": params,
                       "sample": sample}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()[:32]

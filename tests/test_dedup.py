"""dedup end to end on the embedded engine: planted exact / near duplicates, real Delta tables,
real MLflow store. Expectations come from the test's own shingling (plain Python), not from the
stage's kernels."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from boostqa import engine
from boostqa.config import deep_merge, load_settings
from boostqa.runner import Runner
from boostqa.stages.lsh import lsh_shape
from boostqa.text.minhash import lsh_params
from boostqa.text.normalize import words as norm_words
from boostqa.text.records import seed_uid
from boostqa.tracking import STAGE_TAG
from tests.conftest import write_jsonl

FIELDS = {"id": "id", "question": "question", "answer": "answer"}
THRESHOLD = 0.8  # conf/base.yaml dedup.threshold (asserted below)
N = 5  # conf/base.yaml dedup.shingle_words


# ---------------------------------------------------------------- planted data

def _vocab(size: int = 600) -> list[str]:
    """Pronounceable lowercase pseudo-words: random 40-80 word texts over 600 of them share no
    5-word shingle, so unplanted seeds are clearly distinct."""
    rng, cons, vows = random.Random(1729), "bcdfghjklmnprstvz", "aeiou"
    out: set[str] = set()
    while len(out) < size:
        out.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.randint(2, 3))))
    return sorted(out)


VOCAB = _vocab()


@dataclass(frozen=True)
class Seed:
    source: str
    id: str
    words: tuple[str, ...]
    split: int  # words[:split] are the question, the rest the answer
    style: int = 0  # 0: plain; 1, 2: the same words with other case / whitespace / punctuation

    @property
    def uid(self) -> str:
        return seed_uid(self.source, self.id)

    def record(self) -> dict:
        q, a = list(self.words[:self.split]), list(self.words[self.split:])
        if self.style == 1:
            question = "  " + "  ".join(w.upper() for w in q) + " ?!"
            answer = "\t" + ", ".join(w.title() for w in a) + " ... "
        elif self.style == 2:
            question = " ".join(w + (";" if i % 4 == 3 else "") for i, w in enumerate(q)).capitalize() + "??"
            answer = "(" + " \u00a0".join(w.upper() if i % 2 else w for i, w in enumerate(a)) + ")!"
        else:
            question = " ".join(q).capitalize() + "?"
            answer = " ".join(a) + "."
        return {"id": self.id, "question": question, "answer": answer}

    @property
    def answer_len(self) -> int:
        return len(self.record()["answer"].strip())  # ingest strips; longest_answer uses length(answer)


def _make_seed(rng: random.Random, source: str, sid: str, n_words: int | None = None) -> Seed:
    n = n_words or rng.randint(40, 80)
    return Seed(source, sid, tuple(rng.choice(VOCAB) for _ in range(n)), split=rng.randint(n // 3, n // 2))


def _after(orig: Seed, tag: str, source: str | None = None) -> str:
    """An id for a copy of ``orig`` whose seed_uid sorts after the original's, so smallest_id
    keeps the original."""
    source = source or orig.source
    j = 0
    while seed_uid(source, f"{orig.id}-{tag}{j}") <= orig.uid:
        j += 1
    return f"{orig.id}-{tag}{j}"


def _before(orig: Seed, tag: str, source: str) -> str:
    j = 0
    while seed_uid(source, f"{orig.id}-{tag}{j}") >= orig.uid:
        j += 1
    return f"{orig.id}-{tag}{j}"


def exact_copy(orig: Seed, tag: str, style: int, source: str | None = None, sid: str | None = None) -> Seed:
    source = source or orig.source
    return replace(orig, source=source, id=sid or _after(orig, tag, source), style=style)


def near_copy(orig: Seed, tag: str, positions: list[int], source: str | None = None,
              sid: str | None = None) -> Seed:
    """1-2 words replaced by other vocabulary words."""
    w = list(orig.words)
    for p in positions:
        w[p] = VOCAB[(VOCAB.index(w[p]) + 97) % len(VOCAB)]
    source = source or orig.source
    return replace(orig, source=source, id=sid or _after(orig, tag, source), words=tuple(w))


def tokens(rec: dict) -> list[str]:
    """Independent normaliser: lowercase, punctuation -> space, split (enough for ASCII words)."""
    return re.sub(r"[^\w\s]|_", " ", f"{rec['question']} {rec['answer']}".lower()).split()


def shingles(toks: list[str]) -> set[tuple[str, ...]]:
    return {tuple(toks[i:i + N]) for i in range(max(len(toks) - N + 1, 1))}


def true_jaccard(x: Seed, y: Seed) -> float:
    a, b = shingles(tokens(x.record())), shingles(tokens(y.record()))
    return len(a & b) / len(a | b)


@dataclass
class Plant:
    copy: Seed
    original: Seed  # the expected representative
    reason: str


def planted_corpus():
    """40 distinct seeds; 6 exact copies of 5 of them, near copies (1-2 words changed) of 5 others,
    an original with one copy of each kind, and a chain a~b~c whose ends are below the threshold.
    Near copies keep a true Jaccard >= 0.87: with datasketch's 9 bands x 13 rows for 0.8, LSH
    makes a pair at exactly the threshold a candidate only ~40% of the time (~84% at 0.877), so
    near-threshold pairs are found by luck of the hash draw, not by design."""
    rng = random.Random(20240607)
    src = "planted"
    lengths = {8: 80, 9: 70, 12: 80}  # room for mid-text changes that stay above the threshold
    seeds = [_make_seed(rng, src, f"s{i:02d}", lengths.get(i)) for i in range(40)]
    s = seeds
    plants = [Plant(exact_copy(s[0], "x", 1), s[0], "exact_duplicate"),
              Plant(exact_copy(s[0], "y", 2), s[0], "exact_duplicate")]
    plants += [Plant(exact_copy(s[i], "x", 1 + i % 2), s[i], "exact_duplicate") for i in range(1, 5)]
    n6, n7 = len(s[6].words), len(s[7].words)
    plants += [Plant(near_copy(s[5], "n", [1]), s[5], "near_duplicate"),  # 1 word
               Plant(near_copy(s[6], "n", [0, n6 - 1]), s[6], "near_duplicate"),  # 2 words
               Plant(near_copy(s[7], "n", [n7 - 2]), s[7], "near_duplicate"),  # 1 word
               Plant(near_copy(s[8], "n", [40]), s[8], "near_duplicate"),  # 1 word mid-text (80 words)
               Plant(near_copy(s[9], "n", [66, 67]), s[9], "near_duplicate")]  # 2 adjacent words (70 words)
    plants += [Plant(exact_copy(s[11], "x", 2), s[11], "exact_duplicate"),
               Plant(near_copy(s[11], "n", [len(s[11].words) - 1]), s[11], "near_duplicate")]
    a = s[12]
    b = near_copy(a, "b", [25])
    c = near_copy(b, "c", [55], sid=_after(a, "c"))
    plants += [Plant(b, a, "near_duplicate"), Plant(c, a, "near_duplicate")]
    assert len({x.uid for x in seeds} | {p.copy.uid for p in plants}) == len(seeds) + len(plants)
    return seeds, plants, (a, b, c)


# ---------------------------------------------------------------- helpers

def _settings(root: Path, sources: list[dict], tracking: bool = False, **overrides):
    """MLflow tracking only where a test reads it (it costs ~1 s a run)."""
    base = {"lake": {"root": str(root / "lake")}, "runs_dir": str(root / "runs"), "sources": sources,
            "tracking": {"enabled": tracking}}
    return load_settings("local", overrides=deep_merge(base, overrides), environ={})


def _source(name: str, path: Path) -> dict:
    return {"name": name, "path": str(path), "fields": FIELDS}


def _write(path: Path, seeds: list[Seed]) -> Path:
    return write_jsonl(path, [x.record() for x in seeds])


def _table(runner: Runner, name: str) -> dict:
    return {r.seed_uid: r.asDict() for r in runner.lake.read(name).collect()}


def _rows(runner: Runner, name: str) -> list:
    return runner.lake.read(name).collect()


def _run(runner: Runner):
    run_id, results = runner.run(["ingest", "dedup"])
    assert [r.stage for r in results] == ["ingest", "dedup"] and all(r.complete for r in results)
    return run_id, results[0], results[1]


@pytest.fixture(scope="module")
def planted(_engine, tmp_path_factory):
    """One ingest+dedup run over the planted corpus, shared by the read-only checks below."""
    root = tmp_path_factory.mktemp("planted")
    seeds, plants, chain = planted_corpus()
    rows = seeds + [p.copy for p in plants]
    random.Random(3).shuffle(rows)  # copies are not simply after their originals in the file
    settings = _settings(root, [_source("planted", _write(root / "src" / "planted.jsonl", rows))], tracking=True)
    runner = Runner(settings, spark=engine.get_spark())
    run_id, ingest, dedup = _run(runner)
    return SimpleNamespace(settings=settings, runner=runner, run_id=run_id, ingest=ingest, dedup=dedup,
                           seeds=seeds, plants=plants, chain=chain,
                           silver=_table(runner, "silver.seeds"), dups=_table(runner, "quarantine.duplicates"),
                           clusters=_table(runner, "silver.seed_clusters"))


# ---------------------------------------------------------------- 1. recall and precision

def test_planted_data_is_what_it_claims():
    """The fixture itself: the independent tokeniser agrees with the stage's normaliser, copies
    are what they say, and the chain's ends are below the threshold."""
    seeds, plants, (a, b, c) = planted_corpus()
    for p in plants:
        r1, r2 = p.copy.record(), p.original.record()
        assert tokens(r1) == norm_words(f"{r1['question']} {r1['answer']}")
        if p.reason == "exact_duplicate":
            assert r1 != r2 and tokens(r1) == tokens(r2)
        else:
            assert 1 <= sum(x != y for x, y in zip(p.copy.words, p.original.words)) <= 2 + (p.copy is c)
    for p in plants:
        if p.reason == "near_duplicate" and p.copy is not c:
            assert true_jaccard(p.copy, p.original) >= THRESHOLD + 0.05
    assert true_jaccard(a, b) >= 0.85 and true_jaccard(b, c) >= 0.85 and true_jaccard(a, c) < THRESHOLD
    for i, x in enumerate(seeds):  # unrelated seeds share nothing
        assert 40 <= len(x.words) <= 80
        for y in seeds[i + 1:]:
            assert true_jaccard(x, y) < 0.05


def test_recall_and_precision_on_planted_duplicates(planted):
    p = planted
    originals = {x.uid for x in p.seeds}
    copies = {pl.copy.uid: pl for pl in p.plants}
    assert set(p.dups) == set(copies)  # every planted copy, and nothing else, removed
    assert set(p.silver) == originals  # every original and every unrelated seed kept
    assert (p.dedup.pending, p.dedup.kept, p.dedup.rejected) == (len(originals) + len(copies), len(originals),
                                                                 len(copies))
    assert p.dedup.rejected_by_reason == {"exact_duplicate": 7, "near_duplicate": 8}
    for uid, pl in copies.items():
        d = p.dups[uid]
        assert (d["reason"], d["representative"]) == (pl.reason, pl.original.uid), pl.copy.id
        if pl.reason == "exact_duplicate":
            assert d["similarity"] == 1.0 and d["seed_id"] == p.silver[pl.original.uid]["seed_id"]
        else:
            assert d["seed_id"] != p.silver[pl.original.uid]["seed_id"]
            tj = true_jaccard(pl.copy, pl.original)
            assert abs(d["similarity"] - tj) <= 0.1, (pl.copy.id, d["similarity"], tj)
            if pl.copy is not p.chain[2]:  # a planted near duplicate: a direct match
                assert d["similarity"] >= THRESHOLD, (pl.copy.id, d["similarity"], tj)


def test_chain_ends_in_one_cluster(planted):
    a, b, c = planted.chain
    d = planted.dups
    assert d[b.uid]["representative"] == d[c.uid]["representative"] == a.uid
    assert d[b.uid]["cluster_id"] == d[c.uid]["cluster_id"] == planted.silver[a.uid]["cluster_id"]
    assert planted.silver[a.uid]["cluster_size"] == 3
    # c matched a only through b: its estimated similarity to the representative is below the
    # threshold (true Jaccard 0.767), so a pairwise rule alone would have kept it
    assert d[c.uid]["similarity"] < THRESHOLD <= d[b.uid]["similarity"]


# ---------------------------------------------------------------- 2. auditability

def test_every_removal_is_auditable(planted):
    p = planted
    for uid, d in p.dups.items():
        rep = d["representative"]
        assert rep in p.silver and rep != uid
        assert d["similarity"] is not None and 0.0 < d["similarity"] <= 1.0
        assert d["cluster_id"] == p.silver[rep]["cluster_id"]
        assert f"duplicate of seed {rep}" in d["detail"] and d["cluster_id"] in d["detail"]
        assert f"{d['similarity']:.3f}" in d["detail"]
        assert (d["stage"], d["run_id"], d["source"]) == ("dedup", p.run_id, "planted")

    # silver.seed_clusters: every member of every multi-member cluster, one representative each
    expected: dict[str, set[str]] = {}
    for pl in p.plants:
        expected.setdefault(pl.original.uid, {pl.original.uid}).add(pl.copy.uid)
    by_cluster: dict[str, list[dict]] = {}
    for r in p.clusters.values():
        by_cluster.setdefault(r["cluster_id"], []).append(r)
    assert sorted(map(sorted, ({r["seed_uid"] for r in rs} for rs in by_cluster.values()))) == \
        sorted(map(sorted, expected.values()))
    for cid, rs in by_cluster.items():
        reps = [r for r in rs if r["is_representative"]]
        assert len(reps) == 1
        rep = reps[0]["seed_uid"]
        members = {r["seed_uid"] for r in rs}
        assert rep == min(members) == cid  # smallest_id; cluster_id = smallest member
        assert rep in p.silver and (members - {rep}) <= set(p.dups)
        assert all(r["representative"] == rep and r["run_id"] == p.run_id for r in rs)
        assert reps[0]["similarity"] == 1.0 and reps[0]["reason"] is None
        for r in rs:
            if r["seed_uid"] != rep:
                d = p.dups[r["seed_uid"]]
                assert (r["reason"], r["similarity"], r["seed_id"]) == (d["reason"], d["similarity"], d["seed_id"])
        # silver.seeds.cluster_size matches
        assert p.silver[rep]["cluster_size"] == len(members) and p.silver[rep]["cluster_id"] == cid
    for uid, row in p.silver.items():
        if uid not in expected:
            assert (row["cluster_size"], row["cluster_id"]) == (1, uid) and uid not in p.clusters


# ---------------------------------------------------------------- 6. LSH parameters are logged

def test_lsh_shape_is_datasketch_choice_and_logged(planted):
    p, s = planted, planted.settings
    assert (s.dedup.threshold, s.dedup.num_perm, s.dedup.shingle_words, s.dedup.keep) == (THRESHOLD, 128, N,
                                                                                        "smallest_id")
    from datasketch.lsh import _optimal_param

    bands, rows = lsh_shape(s.dedup)
    fp = s.dedup.false_positive_weight
    assert (bands, rows) == lsh_params(0.8, 128, fp, 1 - fp) == tuple(_optimal_param(0.8, 128, fp, 1 - fp)) == (14, 9)
    assert bands * rows <= 128

    client = MlflowClient(s.tracking_uri())
    exp = client.get_experiment_by_name(s.tracking.experiment)
    [run] = client.search_runs([exp.experiment_id], f"tags.`{STAGE_TAG}` = 'dedup'")
    assert run.info.run_id == p.dedup.mlflow_run_id
    params, metrics = run.data.params, run.data.metrics
    assert (metrics["lsh.bands"], metrics["lsh.rows_per_band"]) == (bands, rows)
    assert float(params["config.dedup.threshold"]) == THRESHOLD and params["config.dedup.keep"] == "smallest_id"
    assert metrics["rows_pending"] == p.dedup.pending and metrics["rows_rejected"] == len(p.plants)
    assert metrics["rejected.exact_duplicate"] == 7 and metrics["rejected.near_duplicate"] == 8
    assert metrics["cc_rounds"] >= 2  # the chain needs at least one propagation round + a quiet one
    # every kept seed is indexed with one hash per band
    bands_rows = p.runner.lake.read("silver.seed_bands").groupBy("seed_uid").count().collect()
    assert {r.seed_uid: r["count"] for r in bands_rows} == {u: bands for u in p.silver}


# ---------------------------------------------------------------- 3. keep policies

def _policy_corpus():
    """Two sources; 'pref' holds copies with longer answers for two clusters and a shorter one
    for a third, so each policy picks a different representative somewhere."""
    rng = random.Random(99)
    main = [_make_seed(rng, "main", f"m{i}") for i in range(6)]
    o1, o2, o3 = main[:3]
    c1 = near_copy(o1, "p", [1], source="pref")
    c1 = replace(c1, words=c1.words + ("extra",))  # + one answer word: longer answer
    c2 = exact_copy(o2, "p", 2, source="pref")  # punctuation makes its raw answer longer
    c3 = near_copy(o3, "p", [0], source="pref")
    c3 = replace(c3, words=c3.words[:-1])  # first word replaced, last one dropped: shorter answer
    c3b = exact_copy(o3, "q", 1, source="main", sid=_before(o3, "q", "main"))  # smallest uid of its cluster
    assert c1.answer_len > o1.answer_len and c2.answer_len > o2.answer_len and c3.answer_len < o3.answer_len
    assert c3b.uid < o3.uid and c3b.answer_len != o3.answer_len
    clusters = [[o1, c1], [o2, c2], [o3, c3, c3b]]
    return main, clusters


@pytest.mark.parametrize("keep", ["smallest_id", "source_priority", "longest_answer"])
def test_keep_policy(spark, tmp_path, keep):
    main, clusters = _policy_corpus()
    pref = [x for cl in clusters for x in cl if x.source == "pref"]
    extra_main = [x for cl in clusters for x in cl if x.source == "main" and x not in main]
    sources = [_source("main", _write(tmp_path / "main.jsonl", main + extra_main)),
               _source("pref", _write(tmp_path / "pref.jsonl", pref))]
    dedup = {} if keep == "smallest_id" else {"keep": keep, "source_priority": ["pref", "main"]}  # default
    runner = Runner(_settings(tmp_path, sources, dedup=dedup), spark=spark)
    assert runner.settings.dedup.keep == keep
    _run(runner)
    order = {"smallest_id": lambda x: x.uid,
             "source_priority": lambda x: (["pref", "main"].index(x.source), x.uid),
             "longest_answer": lambda x: (-x.answer_len, x.uid)}[keep]
    reps = [min(cl, key=order) for cl in clusters]
    if keep == "source_priority":
        assert [r.source for r in reps] == ["pref"] * 3  # the copy in the preferred source is kept
    if keep == "longest_answer":
        assert reps[:2] == [clusters[0][1], clusters[1][1]]  # the longer copies win
    silver, dups = _table(runner, "silver.seeds"), _table(runner, "quarantine.duplicates")
    singles = {x.uid for x in main[3:]}
    assert set(silver) == singles | {r.uid for r in reps}
    assert set(dups) == {x.uid for cl in clusters for x in cl} - {r.uid for r in reps}
    for cl, rep in zip(clusters, reps):
        for x in cl:
            if x is not rep:
                d = dups[x.uid]
                assert d["representative"] == rep.uid
                same_text = tokens(x.record()) == tokens(rep.record())
                assert d["reason"] == ("exact_duplicate" if same_text else "near_duplicate")
        assert silver[rep.uid]["cluster_size"] == len(cl)
    # what each policy changes relative to smallest_id
    smallest = [min(cl, key=lambda x: x.uid) for cl in clusters]
    assert (reps == smallest) == (keep == "smallest_id")


# ---------------------------------------------------------------- 4. incremental

def test_incremental_run_matches_new_seeds_against_kept_index(spark, tmp_path):
    rng = random.Random(4242)
    run1 = [_make_seed(rng, "first", f"f{i}") for i in range(10)]
    run1_copy = exact_copy(run1[0], "x", 1)
    src1 = _source("first", _write(tmp_path / "first.jsonl", run1 + [run1_copy]))
    runner = Runner(_settings(tmp_path, [src1]), spark=spark)
    _, _, d1 = _run(runner)
    assert (d1.kept, d1.rejected) == (10, 1)
    silver1 = _table(runner, "silver.seeds")
    bands1 = {tuple(r) for r in _rows(runner, "silver.seed_bands")}
    sigs1 = {r.seed_uid: list(r.minhash) for r in _rows(runner, "silver.seed_signatures")}
    dups1 = _table(runner, "quarantine.duplicates")
    clusters1 = _table(runner, "silver.seed_clusters")
    assert set(silver1) == set(sigs1) == {x.uid for x in run1}

    # second file: (a) near copy of a kept seed (the representative of a run-1 cluster), (b) exact
    # copy of another (a run-1 singleton), (c) new distinct seeds. (a) and (b) sort *before* the
    # run-1 seeds: a seed kept earlier still wins under smallest_id.
    near = near_copy(run1[0], "n", [1], source="second", sid=_before(run1[0], "n", "second"))
    exact = exact_copy(run1[5], "x", 2, source="second", sid=_before(run1[5], "x", "second"))
    fresh = [_make_seed(rng, "second", f"g{i}") for i in range(3)]
    src2 = _source("second", _write(tmp_path / "second.jsonl", [near, exact] + fresh))
    runner2 = Runner(_settings(tmp_path, [src1, src2]), spark=spark)
    _, i2, d2 = _run(runner2)
    assert i2.pending == 5
    assert d2.pending == 5  # only the new rows were sketched; run-1 signatures are read from the index
    assert (d2.kept, d2.rejected, d2.rejected_by_reason) == (3, 2, {"near_duplicate": 1, "exact_duplicate": 1})

    dups2 = _table(runner2, "quarantine.duplicates")
    assert set(dups2) == set(dups1) | {near.uid, exact.uid}
    assert (dups2[near.uid]["reason"], dups2[near.uid]["representative"]) == ("near_duplicate", run1[0].uid)
    assert dups2[near.uid]["similarity"] >= THRESHOLD
    assert (dups2[exact.uid]["reason"], dups2[exact.uid]["representative"], dups2[exact.uid]["similarity"]) == \
        ("exact_duplicate", run1[5].uid, 1.0)
    assert all(dups2[u] == dups1[u] for u in dups1)

    silver2 = _table(runner2, "silver.seeds")
    assert set(silver2) == set(silver1) | {x.uid for x in fresh}
    assert {u: silver2[u] for u in silver1} == silver1  # run-1 rows untouched

    bands2 = {tuple(r) for r in _rows(runner2, "silver.seed_bands")}
    sigs2 = {r.seed_uid: list(r.minhash) for r in _rows(runner2, "silver.seed_signatures")}
    n_bands, _ = lsh_shape(runner2.settings.dedup)
    cols = runner2.lake.read("silver.seed_bands").columns
    new_band_uids = {dict(zip(cols, r))["seed_uid"] for r in bands2 - bands1}
    assert bands1 <= bands2 and new_band_uids == {x.uid for x in fresh}
    assert len(bands2) - len(bands1) == n_bands * len(fresh)
    assert set(sigs2) == set(sigs1) | {x.uid for x in fresh}
    assert {u: sigs2[u] for u in sigs1} == sigs1

    # a removal joins its representative's cluster as stored in run 1, and silver.seed_clusters
    # holds every member of each cluster with one representative row
    for x, rep in ((near, run1[0]), (exact, run1[5])):
        assert dups2[x.uid]["cluster_id"] == silver1[rep.uid]["cluster_id"]
        assert f"in cluster {silver1[rep.uid]['cluster_id']} " in dups2[x.uid]["detail"]
    clusters2 = _table(runner2, "silver.seed_clusters")
    assert {u: clusters2[u] for u in clusters1} == clusters1
    groups: dict[str, dict[str, bool]] = {}
    for u, r in clusters2.items():
        groups.setdefault(r["cluster_id"], {})[u] = r["is_representative"]
    assert sorted(groups.values(), key=len) == [{run1[5].uid: True, exact.uid: False},
                                                {run1[0].uid: True, run1_copy.uid: False, near.uid: False}]
    assert clusters2[run1[5].uid]["representative"] == run1[5].uid and clusters2[run1[5].uid]["similarity"] == 1.0

    # a third run with nothing new does nothing
    _, i3, d3 = _run(runner2)
    assert (i3.pending, d3.pending) == (0, 0) and len(_rows(runner2, "silver.seed_bands")) == len(bands2)


# ---------------------------------------------------------------- 5. determinism

def test_same_result_with_1_or_8_shuffle_partitions(spark, tmp_path):
    seeds, plants, _ = planted_corpus()
    rows = seeds + [p.copy for p in plants]
    path = _write(tmp_path / "src" / "planted.jsonl", rows)
    before = spark.conf.get("spark.sql.shuffle.partitions")
    out = {}
    try:
        for n in (1, 8):
            spark.conf.set("spark.sql.shuffle.partitions", str(n))
            settings = _settings(tmp_path / f"p{n}", [_source("planted", path)], engine={"shuffle_partitions": n})
            runner = Runner(settings, spark=spark)
            _run(runner)
            silver = _table(runner, "silver.seeds")
            dups = _table(runner, "quarantine.duplicates")
            assign = {u: (r["cluster_id"], u) for u, r in silver.items()}
            assign.update({u: (r["cluster_id"], r["representative"]) for u, r in dups.items()})
            sims = {u: r["similarity"] for u, r in dups.items()}
            out[n] = (set(silver), assign, sims, _table(runner, "silver.seed_clusters").keys())
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
    assert out[1][0] == out[8][0] == {x.uid for x in seeds}
    assert out[1][1] == out[8][1] and len(out[1][1]) == len(rows)
    assert out[1][2] == out[8][2] and set(out[1][3]) == set(out[8][3])

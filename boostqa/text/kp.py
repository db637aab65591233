"""Knowledge points (KPs) and the LinkQA walk: Spark-free kernels (docs/linkqa.md).

- ``canonical_kp`` / ``canonical_kps`` / ``kp_id``: one spelling per KP (case, Unicode width,
  whitespace, punctuation, a leading article, a small synonym map) and a stable id per
  (discipline, canonical name);
- ``Graph``: a KP graph in memory (nodes with discipline, popularity and seeds; weighted edges),
  built from the gold tables (``Graph.from_frames``) or from raw (seed, KP) memberships
  (``Graph.from_memberships``, the same counts as stage kp_graph: tests compare the two);
- ``walk``: value-guided walks. A path starts at a KP drawn for a target discipline x difficulty
  cell, then moves along edges with probability ~ strength x value(next KP), value(kp) =
  popularity^alpha x (1 + visits)^-beta; visits are counted per round and updated between rounds.
  At each KP one seed containing it (and not yet on the path) joins the path;
- ``uniform_paths``: the baseline of uniform seed sampling (same number of paths, same lengths);
- measurements (pure functions of paths): ``coverage``, ``gini``, ``mix_report``,
  ``item_stats``, ``compare_strategies``.

Everything is deterministic: inputs are sorted, random draws come from numpy generators seeded
by (seed, round), ids are sha256 hashes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# ------------------------------------------------------------------------------------------ names
MAX_KPS = 8
# spelling variants that mean the same KP (after lowercasing and punctuation removal); kept small
# and explicit: a wrong merge is worse than a missed one
SYNONYMS: dict[str, str] = {
    "newtons second law": "newtons second law of motion",
    "f ma": "newtons second law of motion",
    "second law of newton": "newtons second law of motion",
    "pythagoras theorem": "pythagorean theorem",
    "pythagoras": "pythagorean theorem",
    "ideal gas equation": "ideal gas law",
    "pv nrt": "ideal gas law",
    "derivatives": "derivative",
    "differentiation": "derivative",
    "integrals": "integral",
    "integration": "integral",
    "probabilities": "probability",
    "linear equations": "linear equation",
    "quadratic equations": "quadratic equation",
    "conservation of linear momentum": "conservation of momentum",
    "momentum conservation": "conservation of momentum",
    "energy conservation": "conservation of energy",
    "stoichiometry calculations": "stoichiometry",
}
_ARTICLE = re.compile(r"^(?:the|a|an) ")
_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def canonical_kp(name: str | None) -> str:
    """One spelling of a KP name: NFKC, lowercase, apostrophes dropped ("Newton's" -> "newtons"),
    other punctuation and underscores -> space, whitespace collapsed, a leading article dropped,
    then the synonym map. Empty when nothing is left."""
    if name is None:
        return ""
    s = unicodedata.normalize("NFKC", str(name)).lower()
    s = s.replace("'", "").replace("\u2019", "")
    s = _PUNCT.sub(" ", s).replace("_", " ")
    s = _SPACE.sub(" ", s).strip()
    s = _ARTICLE.sub("", s)
    return SYNONYMS.get(s, s)


def canonical_kps(names: Iterable[str | None], max_kps: int = MAX_KPS) -> list[str]:
    """Canonical names in first-seen order, duplicates and empties dropped, at most ``max_kps``."""
    out: list[str] = []
    for n in names or ():
        c = canonical_kp(n)
        if c and c not in out:
            out.append(c)
    return out[:max_kps]


def kp_id(discipline: str | None, canonical: str) -> str:
    """Stable id of a KP within its discipline (the same name in two disciplines is two KPs)."""
    return hashlib.sha256(f"kp\x1f{discipline or ''}\x1f{canonical}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ graph
@dataclass
class Graph:
    """A KP graph in memory. Lists are sorted, so walks do not depend on the order rows arrived."""

    discipline: dict[str, str]  # kp_id -> discipline
    popularity: dict[str, int]  # kp_id -> seeds containing it
    names: dict[str, str]  # kp_id -> canonical name
    neighbors: dict[str, list[tuple[str, float]]]  # kp_id -> [(kp_id, strength)], sorted
    seeds: dict[str, list[tuple[str, int]]]  # kp_id -> [(seed_uid, difficulty)], sorted
    seed_kps: dict[str, list[str]] = field(default_factory=dict)  # seed_uid -> its kp_ids, sorted

    @property
    def kps(self) -> list[str]:
        return sorted(self.discipline)

    @property
    def n_edges(self) -> int:
        return sum(len(v) for v in self.neighbors.values()) // 2

    @classmethod
    def from_memberships(cls, rows: Iterable[tuple[str, str, str, int]], names: Mapping[str, str] | None = None
                         ) -> Graph:
        """From (seed_uid, kp_id, discipline, difficulty) rows, with the counts of stage kp_graph:
        popularity = seeds containing the KP, cooccurrence = seeds containing both, strength =
        ``edge_strength``."""
        rows = sorted(set(rows))
        members: dict[str, set[str]] = defaultdict(set)
        disc, diff = {}, {}
        for seed, kp, d, h in rows:
            members[seed].add(kp)
            disc[kp] = d
            diff[seed] = int(h)
        pop = Counter(kp for kps in members.values() for kp in kps)
        co = Counter((a, b) for kps in members.values() for a in sorted(kps) for b in sorted(kps) if a < b)
        n = len(members)
        edges = [(a, b, edge_strength(c, pop[a], pop[b], n)[2]) for (a, b), c in co.items()]
        seeds = [(seed, kp, diff[seed]) for seed, kps in members.items() for kp in kps]
        return cls.build(disc, dict(pop), edges, seeds, names)

    @classmethod
    def from_frames(cls, nodes, edges, members) -> Graph:
        """From pandas frames: nodes (kp_id, name, discipline, popularity), edges (kp_a, kp_b,
        strength), members (seed_uid, kp_id, difficulty)."""
        disc = dict(zip(nodes["kp_id"], nodes["discipline"]))
        pop = {k: int(v) for k, v in zip(nodes["kp_id"], nodes["popularity"])}
        names = dict(zip(nodes["kp_id"], nodes["name"]))
        e = list(zip(edges["kp_a"], edges["kp_b"], (float(s) for s in edges["strength"])))
        m = [(s, k, int(h) if h is not None and h == h else 3)
             for s, k, h in zip(members["seed_uid"], members["kp_id"], members["difficulty"]) if k in disc]
        return cls.build(disc, pop, e, m, names)

    @classmethod
    def build(cls, disc: dict[str, str], pop: dict[str, int], edges: Iterable[tuple[str, str, float]],
              members: Iterable[tuple[str, str, int]], names: Mapping[str, str] | None = None) -> Graph:
        nb: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for a, b, s in edges:
            if a in disc and b in disc and a != b:
                nb[a].append((b, float(s)))
                nb[b].append((a, float(s)))
        seeds: dict[str, list[tuple[str, int]]] = defaultdict(list)
        seed_kps: dict[str, list[str]] = defaultdict(list)
        for s, k, h in sorted(set(members)):
            seeds[k].append((s, int(h)))
            seed_kps[s].append(k)
        return cls(dict(disc), dict(pop), dict(names or {k: k for k in disc}),
                   {k: sorted(v) for k, v in nb.items()}, dict(seeds), {s: sorted(v) for s, v in seed_kps.items()})


def edge_strength(cooccurrence: int, pop_a: int, pop_b: int, n_seeds: int) -> tuple[float, float, float]:
    """(pmi, npmi, strength) of an edge: pmi = ln(c_ab N / (c_a c_b)), npmi = pmi / -ln(c_ab / N) in
    [-1, 1] (1 when every seed holds both), strength = (1 + npmi) / 2 in (0, 1]: positive for every
    co-occurring pair, so it can weight a random step."""
    pmi = math.log(cooccurrence * n_seeds / (pop_a * pop_b))
    p_ab = cooccurrence / n_seeds
    npmi = 1.0 if p_ab >= 1 else pmi / -math.log(p_ab)
    return pmi, npmi, (1.0 + npmi) / 2.0


# ------------------------------------------------------------------------------------------ walks
@dataclass(frozen=True)
class WalkConfig:
    paths: int  # paths to draw in this call
    path_length: tuple[int, int] = (2, 4)
    rounds: int = 4
    alpha: float = 1.0
    beta: float = 1.0
    seed: int = 0
    target_mix: Mapping[tuple[str, int], float] | None = None  # (discipline, difficulty) -> share; None: natural
    start_round: int = 0  # rounds already walked (a later run continues the numbering)
    max_starts: int = 20  # start KPs tried for one path before it is given up

    @classmethod
    def from_settings(cls, c, paths: int, start_round: int = 0) -> WalkConfig:
        """From ``settings.linkqa`` (LinkQAConfig)."""
        mix = {(d, int(str(level).upper().lstrip("H"))): float(v) for d, cells in c.target_mix.items()
               for level, v in cells.items()} or None
        return cls(paths=paths, path_length=tuple(c.path_length), rounds=c.rounds, alpha=c.alpha, beta=c.beta,
                   seed=c.seed, target_mix=mix, start_round=start_round)


@dataclass(frozen=True)
class Path:
    path_id: str
    kp_ids: tuple[str, ...]  # the KP at which each seed joined
    seed_uids: tuple[str, ...]
    difficulties: tuple[int, ...]  # of the seeds
    discipline: str
    target_difficulty: int
    round: int


def natural_mix(graph: Graph) -> dict[tuple[str, int], float]:
    """The seeds' own discipline x difficulty distribution (seeds with at least one KP)."""
    cells: Counter = Counter()
    seen: dict[str, tuple[str, int]] = {}
    for kp, members in graph.seeds.items():
        for s, h in members:
            seen[s] = (graph.discipline[kp], h)
    cells.update(seen.values())
    total = sum(cells.values()) or 1
    return {c: n / total for c, n in sorted(cells.items())}


def allocate(n: int, mix: Mapping[tuple[str, int], float]) -> list[tuple[str, int]]:
    """``n`` cells with counts proportional to ``mix`` (largest remainder, ties by cell order)."""
    cells = sorted(c for c, v in mix.items() if v > 0)
    total = sum(mix[c] for c in cells)
    if n <= 0 or not cells or total <= 0:
        return []
    exact = [n * mix[c] / total for c in cells]
    counts = [int(math.floor(x)) for x in exact]
    order = sorted(range(len(cells)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    return [c for c, k in zip(cells, counts) for _ in range(k)]


def value(popularity: float, visits: float, alpha: float, beta: float) -> float:
    """The knowledge-distribution value of a KP: popular KPs are worth visiting, visited ones less."""
    return float(popularity) ** alpha * (1.0 + float(visits)) ** (-beta)


def _pick(rng: np.random.Generator, weights: Sequence[float]) -> int:
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    if not np.isfinite(total) or total <= 0:
        return int(rng.integers(len(w)))
    return int(rng.choice(len(w), p=w / total))


def _path_id(seed: int, rnd: int, index: int, seeds: Sequence[str]) -> str:
    return hashlib.sha256(f"linkqa\x1f{seed}\x1f{rnd}\x1f{index}\x1f{'|'.join(seeds)}".encode()).hexdigest()[:32]


def _cells(graph: Graph, cfg: WalkConfig, rng: np.random.Generator) -> list[tuple[str, int]]:
    mix = dict(cfg.target_mix) if cfg.target_mix else natural_mix(graph)
    cells = allocate(cfg.paths, mix)
    rng.shuffle(cells)  # every round gets a share of every cell
    return cells


def walk(graph: Graph, cfg: WalkConfig, visits: Mapping[str, float] | None = None,
         seed_uses: Mapping[str, float] | None = None) -> tuple[list[Path], dict[str, int]]:
    """Value-guided walks: (paths, counters). ``visits``/``seed_uses``: counts from earlier runs.

    Per path: a cell (discipline, target difficulty) from the target mix; a start KP of that
    discipline drawn ~ value among KPs holding a seed of the target difficulty (else of the nearest
    difficulty present); then steps to an unvisited neighbour j ~ strength x value(j) among those
    with a seed not yet on the path; at each KP a seed joins (nearest to the target difficulty
    preferred, rarely used seeds preferred: ~ 1/(1+|h - target|) x (1 + uses)^-beta). A path that
    cannot reach the minimum length restarts at another KP (``max_starts`` tries), else is dropped
    (counted in ``unfilled``). Visits and seed uses are frozen during a round and updated after it."""
    visits = Counter({k: float(v) for k, v in (visits or {}).items()})
    uses = Counter({k: float(v) for k, v in (seed_uses or {}).items()})
    lo, hi = cfg.path_length
    counters = Counter(unfilled=0, restarts=0, short=0)
    rng0 = np.random.default_rng([cfg.seed, cfg.start_round, 7919])
    cells = _cells(graph, cfg, rng0)
    by_disc: dict[str, list[str]] = defaultdict(list)
    for kp in graph.kps:
        by_disc[graph.discipline[kp]].append(kp)
    per_round = [len(cells) // cfg.rounds + (1 if r < len(cells) % cfg.rounds else 0) for r in range(cfg.rounds)]
    paths: list[Path] = []
    at = 0
    for r, n_r in enumerate(per_round):
        rnd = cfg.start_round + r
        rng = np.random.default_rng([cfg.seed, rnd])
        frozen_v, frozen_u = dict(visits), dict(uses)
        val = {k: value(graph.popularity.get(k, 1), frozen_v.get(k, 0.0), cfg.alpha, cfg.beta) for k in graph.kps}
        made: list[Path] = []
        for i in range(n_r):
            disc, target = cells[at + i]
            length = int(rng.integers(lo, hi + 1))
            p = _one_path(graph, by_disc.get(disc, []), disc, target, length, lo, val, frozen_u, cfg, rng, counters)
            if p is None:
                counters["unfilled"] += 1
                continue
            kps, seeds, diffs = p
            made.append(Path(_path_id(cfg.seed, rnd, i, seeds), tuple(kps), tuple(seeds), tuple(diffs), disc, target,
                             rnd))
        at += n_r
        for p in made:  # visits count from the next round on
            visits.update(p.kp_ids)
            uses.update(p.seed_uids)
        paths.extend(made)
    return paths, dict(counters)


def _start_candidates(graph: Graph, kps: list[str], target: int) -> list[str]:
    def gap(kp: str) -> int:
        return min(abs(h - target) for _, h in graph.seeds.get(kp, [("", 99)]))

    have = [k for k in kps if graph.seeds.get(k)]
    if not have:
        return []
    best = min(gap(k) for k in have)
    return [k for k in have if gap(k) == best]


def _one_path(graph: Graph, kps: list[str], disc: str, target: int, length: int, min_length: int,
              val: Mapping[str, float], uses: Mapping[str, float], cfg: WalkConfig, rng: np.random.Generator,
              counters: Counter):
    starts = _start_candidates(graph, kps, target)
    # a start KP needs a neighbour to move to: prefer those (a dead end is tried only if nothing else);
    # when the nearest level has none, any linked KP of the discipline (the mix report shows the miss)
    linked = [k for k in starts if graph.neighbors.get(k)]
    wider = [k for k in kps if graph.neighbors.get(k) and graph.seeds.get(k) and k not in linked]
    tried: set[str] = set()
    for attempt in range(cfg.max_starts):
        left = [k for k in (linked or starts) if k not in tried] or [k for k in wider if k not in tried]
        if not left:
            break
        if attempt:
            counters["restarts"] += 1
        start = left[_pick(rng, [val[k] for k in left])]
        tried.add(start)
        kps_on, seeds_on, diffs = [start], [], []
        s = _pick_seed(graph, start, seeds_on, target, uses, cfg.beta, rng, nearest=True)
        seeds_on.append(s[0])
        diffs.append(s[1])
        cur = start
        while len(seeds_on) < length:
            options = [(j, w) for j, w in graph.neighbors.get(cur, [])
                       if j not in kps_on and any(x not in seeds_on for x, _ in graph.seeds.get(j, []))]
            if not options:
                break
            j = options[_pick(rng, [w * val.get(k, 0.0) for k, w in options])][0]
            s = _pick_seed(graph, j, seeds_on, target, uses, cfg.beta, rng)
            kps_on.append(j)
            seeds_on.append(s[0])
            diffs.append(s[1])
            cur = j
        if len(seeds_on) >= min_length:
            if len(seeds_on) < length:
                counters["short"] += 1
            return kps_on, seeds_on, diffs
    return None


def _pick_seed(graph: Graph, kp: str, taken: list[str], target: int, uses: Mapping[str, float], beta: float,
               rng: np.random.Generator, nearest: bool = False) -> tuple[str, int]:
    cands = [(s, h) for s, h in graph.seeds[kp] if s not in taken]
    if nearest:  # the start seed sets the path's difficulty: only the nearest level
        best = min(abs(h - target) for _, h in cands)
        cands = [(s, h) for s, h in cands if abs(h - target) == best]
    w = [(1.0 / (1.0 + abs(h - target))) * (1.0 + uses.get(s, 0.0)) ** (-beta) for s, h in cands]
    return cands[_pick(rng, w)]


def uniform_paths(graph: Graph, cfg: WalkConfig) -> list[Path]:
    """Baseline: the same cells and path lengths, seeds drawn uniformly from the cell's discipline
    (no graph); each seed is credited with one of its KPs, drawn uniformly."""
    rng0 = np.random.default_rng([cfg.seed, cfg.start_round, 7919])
    cells = _cells(graph, cfg, rng0)
    rng = np.random.default_rng([cfg.seed, cfg.start_round, 104729])
    by_disc: dict[str, list[tuple[str, int]]] = defaultdict(list)
    seen = set()
    for kp in graph.kps:
        for s, h in graph.seeds.get(kp, []):
            if s not in seen:
                seen.add(s)
                by_disc[graph.discipline[kp]].append((s, h))
    out = []
    lo, hi = cfg.path_length
    for i, (disc, target) in enumerate(cells):
        pool = sorted(by_disc.get(disc, []))
        length = int(rng.integers(lo, hi + 1))
        if len(pool) < lo:
            continue
        idx = rng.choice(len(pool), size=min(length, len(pool)), replace=False)
        seeds = [pool[j] for j in idx]
        kps = [graph.seed_kps[s][int(rng.integers(len(graph.seed_kps[s])))] for s, _ in seeds]
        out.append(Path(_path_id(cfg.seed, -1, i, [s for s, _ in seeds]), tuple(kps), tuple(s for s, _ in seeds),
                        tuple(h for _, h in seeds), disc, target, 0))
    return out


# ------------------------------------------------------------------------------------------ measurements
def visit_counts(paths: Iterable[Path], graph: Graph) -> dict[str, int]:
    """Visits per KP of the graph (zeros included)."""
    c = Counter(k for p in paths for k in p.kp_ids)
    return {k: int(c.get(k, 0)) for k in graph.kps}


def coverage(paths: Iterable[Path], graph: Graph) -> float:
    """Share of the graph's KPs visited by at least one path."""
    v = visit_counts(paths, graph)
    return sum(1 for x in v.values() if x) / len(v) if v else 0.0


def gini(values: Iterable[float]) -> float:
    """Gini coefficient of non-negative values: 0 = perfectly even, -> 1 = all on one."""
    x = np.sort(np.asarray(list(values), dtype=float))
    n = len(x)
    if n == 0 or x.sum() <= 0:
        return 0.0
    return float((2.0 * np.sum(np.arange(1, n + 1) * x) / (n * x.sum())) - (n + 1.0) / n)


def mix_report(paths: Sequence[Path], target: Mapping[tuple[str, int], float]) -> dict:
    """Target vs achieved share of paths per (discipline, target difficulty) cell, and of the seeds'
    own levels (mean seed level, rounded); total variation distances (0 = exact)."""
    total = sum(v for v in target.values() if v > 0) or 1.0
    want = {c: v / total for c, v in target.items() if v > 0}
    n = len(paths) or 1
    got = Counter((p.discipline, p.target_difficulty) for p in paths)
    seeds = Counter((p.discipline, int(round(sum(p.difficulties) / len(p.difficulties)))) for p in paths)
    cells = sorted(set(want) | set(got) | set(seeds))

    def tvd(counts: Counter) -> float:
        return 0.5 * sum(abs(want.get(c, 0.0) - counts.get(c, 0) / n) for c in cells)

    return {"cells": [{"discipline": d, "difficulty": h, "target": round(want.get((d, h), 0.0), 4),
                       "achieved": round(got.get((d, h), 0) / n, 4),
                       "seed_level": round(seeds.get((d, h), 0) / n, 4)} for d, h in cells],
            "tvd": round(tvd(got), 4), "tvd_seed_level": round(tvd(seeds), 4), "paths": len(paths)}


def item_stats(paths: Sequence[Path], graph: Graph) -> dict[str, float]:
    """Seeds per item and KP links per item (pairs of the item's walked KPs joined by an edge)."""
    if not paths:
        return {"seeds_per_item": 0.0, "kp_links_per_item": 0.0, "kps_per_item": 0.0}
    nb = {k: {j for j, _ in v} for k, v in graph.neighbors.items()}
    links = [sum(1 for i, a in enumerate(p.kp_ids) for b in p.kp_ids[i + 1:] if b in nb.get(a, ()))
             for p in paths]
    kps = [len({k for s in p.seed_uids for k in graph.seed_kps.get(s, [])}) for p in paths]
    return {"seeds_per_item": float(np.mean([len(p.seed_uids) for p in paths])),
            "kp_links_per_item": float(np.mean(links)), "kps_per_item": float(np.mean(kps))}


def popularity_walk_config(cfg: WalkConfig) -> WalkConfig:
    """The popularity-proportional walk: the same walk without the visit penalty (beta = 0)."""
    return dataclasses.replace(cfg, beta=0.0)


def compare_strategies(graph: Graph, cfg: WalkConfig, paths: Sequence[Path] | None = None) -> dict[str, dict]:
    """Coverage, Gini of visits and KP links per item at the same number of paths: the value-guided
    walk (``paths`` if given, else walked here), the popularity-proportional walk and uniform seed
    sampling (whose seeds need not share any link: its links per item show what walks add)."""
    value_paths = list(paths) if paths is not None else walk(graph, cfg)[0]
    n = len(value_paths)
    pop_paths = walk(graph, popularity_walk_config(cfg))[0][:n]
    uni_paths = uniform_paths(graph, cfg)[:n]
    out = {}
    for name, ps in (("value", value_paths), ("popularity", pop_paths), ("uniform", uni_paths)):
        v = visit_counts(ps, graph)
        out[name] = {"paths": len(ps), "coverage": round(coverage(ps, graph), 4),
                     "gini": round(gini(v.values()), 4),
                     "kp_links_per_item": round(item_stats(ps, graph)["kp_links_per_item"], 4)}
    return out


def walk_report(graph: Graph, paths: Sequence[Path], cfg: WalkConfig) -> dict:
    """Everything kp_walk logs: coverage and Gini against the baselines at the same number of paths,
    target vs achieved mix, seeds and KP links per item."""
    target = dict(cfg.target_mix) if cfg.target_mix else natural_mix(graph)
    base = dataclasses.replace(cfg, paths=len(paths), start_round=0)
    mix = mix_report(paths, target)
    return {"graph": {"kps": len(graph.kps), "edges": graph.n_edges, "seeds": len(graph.seed_kps),
                      "linked_kps": sum(1 for k in graph.kps if graph.neighbors.get(k))},
            "strategies": compare_strategies(graph, base, paths), "mix": mix, "items": item_stats(paths, graph)}

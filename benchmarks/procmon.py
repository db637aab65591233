"""Peak memory of a process tree by polling /proc (Linux; no third-party dependency).

Used by run.py on the subprocesses it launches, and by anchor_datatrove.py on itself
(per stage). Each sample sums, over the root process and all its descendants:
  * RSS (VmRSS from /proc/PID/status): pages shared between forked workers are counted once
    per process, so this over-states real use a little;
  * PSS (from /proc/PID/smaps_rollup): shared pages split between sharers; closer to the truth.
The peak is the max over samples of each sum. Polling (RSS every 0.25 s by default, PSS every
10th sample because reading smaps_rollup costs ~3 ms per process) can miss a spike shorter
than the interval. The sampler itself costs about 1 % of one core.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces/parens: split after the last ')'
        rest = stat[stat.rfind(")") + 2 :].split()
        kids.setdefault(int(rest[1]), []).append(int(d))
    return kids


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


_HAS_CHILDREN_FILE = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def tree_pids(root: int) -> list[int]:
    kids = None if _HAS_CHILDREN_FILE else _children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p) if kids is None else kids.get(p, []))
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE")
_TCK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> tuple[tuple[int, int], float] | None:
    """((pid, starttime), utime + stime seconds) of one process, without its children."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :].split()  # rest[0] is field 3 (state)
    return (pid, int(rest[19])), (int(rest[11]) + int(rest[12])) / _TCK


def _rss_pss(pid: int, with_pss: bool = True) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0, 0
    if not with_pss:
        return rss, 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
    except OSError:
        pss = rss
    return rss, pss


def tree_memory(root: int, with_pss: bool = True) -> tuple[int, int, int]:
    """(sum RSS, sum PSS or 0, number of processes) of root and its descendants, in bytes."""
    rss = pss = 0
    pids = tree_pids(root)
    for p in pids:
        r, s = _rss_pss(p, with_pss)
        rss += r
        pss += s
    return rss, pss, len(pids)


class PeakMemory:
    """Context manager: samples the tree of `pid` (default: this process) in a thread."""

    def __init__(self, pid: int | None = None, interval: float = 0.25, pss_every: int = 10) -> None:
        self.pid = pid or os.getpid()
        self.interval = interval
        self.pss_every = pss_every
        self.peak_rss = 0
        self.peak_pss = 0
        self.max_procs = 0
        self.samples = 0
        self._cpu: dict[tuple[int, int], float] = {}  # last seen CPU seconds of every process of the tree
        self._cpu0: dict[tuple[int, int], float] = {}  # CPU seconds when first seen (0 if born later)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, with_pss: bool | None = None) -> None:
        if with_pss is None:
            with_pss = self.pss_every > 0 and self.samples % self.pss_every == 0
        rss = pss = 0
        pids = tree_pids(self.pid)
        n = len(pids)
        for p in pids:
            r, s_ = _rss_pss(p, with_pss)
            rss += r
            pss += s_
            c = _cpu(p)
            if c is not None:
                self._cpu[c[0]] = c[1]
                self._cpu0.setdefault(c[0], c[1] if self.samples == 0 else 0.0)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.max_procs = max(self.max_procs, n)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="peak-memory")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()

    @property
    def tree_cpu_seconds(self) -> float:
        """CPU seconds used by the processes of the tree, as last sampled (a process that lives
        shorter than one interval, or its last interval, is missed)."""
        return sum(v - self._cpu0.get(k, 0.0) for k, v in self._cpu.items())

    def as_dict(self) -> dict[str, int]:
        return {"peak_rss_bytes": self.peak_rss, "peak_pss_bytes": self.peak_pss,
                "max_processes": self.max_procs, "samples": self.samples,
                "cpu_seconds_sampled": round(self.tree_cpu_seconds, 2)}


def run_monitored(cmd: list[str], interval: float = 0.25, pss_every: int = 10,
                  **popen_kw: object) -> dict[str, object]:
    """Run cmd as a subprocess; returns returncode, wall seconds and the tree's peak memory."""
    import subprocess

    import resource

    cpu0, ru0 = machine_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen_kw)  # type: ignore[call-overload]
    mon = PeakMemory(proc.pid, interval, pss_every)
    with mon:
        rc = proc.wait()
    wall = time.perf_counter() - t0
    cpu1, ru1 = machine_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    # rusage only covers descendants that were waited for up the chain (a forkserver orphaned at
    # exit is not); the sampled per-process CPU covers the rest
    own = max((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), mon.tree_cpu_seconds)
    busy = cpu1 - cpu0
    ncpu = os.cpu_count() or 1
    return {"returncode": rc, "wall_seconds": wall, **mon.as_dict(),
            "cpu_seconds": round(own, 2),
            # CPU time the rest of the machine used meanwhile (other users' jobs, this harness's
            # sampler, the kernel): a share above a few % means the timing was disturbed
            "foreign_cpu_seconds": round(max(busy - own, 0.0), 2),
            "foreign_cpu_share": round(max(busy - own, 0.0) / (wall * ncpu), 3) if wall > 0 else None}


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all CPUs, from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system irq softirq steal (not idle, iowait)
    return busy / os.sysconf("SC_CLK_TCK")

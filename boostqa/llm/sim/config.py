"""SimConfig: every knob of the simulator."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from boostqa.llm.sim.faults import DEFAULT_FAULT_KINDS, FAULT_KINDS

DEFAULT_MODELS = ("sim-generator", "sim-refiner", "sim-annotator", "sim-probe", "sim-reasoner")


class SimConfig(BaseModel):
    """Defaults: 127.0.0.1 on a free port, ~20 ms latency, no faults, any model served."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    seed: int = 0  # server seed, mixed into every request hash
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS), min_length=1)  # listed by /v1/models
    # the provider whose API behaviour plain /v1 mimics (every dialect is also served under
    # /<dialect>/v1): see dialect.py
    dialect: Literal["openai", "deepseek", "vllm", "sglang", "llamacpp", "databricks", "openai_compatible"] = \
        "openai_compatible"

    # latency, drawn per (request, attempt)
    latency: Literal["lognormal", "fixed", "none"] = "lognormal"
    latency_ms: float = Field(20.0, ge=0)  # median (lognormal) or the fixed value
    latency_sigma: float = Field(0.5, ge=0)  # sigma of log(latency)
    latency_max_ms: float = Field(2000.0, ge=0)  # cap on the drawn latency

    # capacity: more than this many requests in flight -> 429 + Retry-After
    max_in_flight: int | None = Field(None, ge=1)
    retry_after_s: float = Field(1.0, ge=0)  # sent as Retry-After (ceil, seconds) and retry-after-ms

    faults: dict[str, float] = Field(default_factory=dict)  # kind -> rate in 0..1 (sum <= 1)
    timeout_hold_s: float = Field(30.0, ge=0)  # how long a `timeout` fault holds the answer

    api_key: SecretStr | None = None  # when set, `Authorization: Bearer <key>` is required

    @field_validator("faults")
    @classmethod
    def _check_faults(cls, v: dict[str, float]) -> dict[str, float]:
        for kind, rate in v.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; kinds: {', '.join(FAULT_KINDS)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for {kind} must be in 0..1, got {rate}")
        if sum(v.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {sum(v.values()):.3f} > 1")
        return v

    @classmethod
    def with_fault_rate(cls, rate: float, kinds: Iterable[str] = DEFAULT_FAULT_KINDS, **kw: Any) -> SimConfig:
        """A config whose total fault rate `rate` is split evenly over `kinds` (plus any `faults=`)."""
        kinds = [k.strip() for k in kinds if k.strip()]
        faults = {k: rate / len(kinds) for k in kinds} if rate > 0 and kinds else {}
        faults.update(kw.pop("faults", None) or {})
        return cls(faults=faults, **kw)

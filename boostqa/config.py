"""Settings: conf/base.yaml + one profile + environment overrides, validated by pydantic.

A profile file (conf/<profile>.yaml) is deep-merged over base.yaml (mappings merge, lists and
scalars replace). Environment variables ``BOOSTQA__SECTION__KEY=value`` override any leaf
(the value is parsed as YAML, so ``BOOSTQA__RUNNER__CHUNK_ROWS=5000`` is an int). Secrets are
never stored here: config names the *environment variable* that holds a secret.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "BOOSTQA__"
# key names whose values are secrets (masked wherever settings are logged); "max_tokens", the
# "tokens" section and "api_key_env" (the variable's name) are not
_SECRET_KEY = re.compile(r"(?i)(?:^|_)(?:api_?key|secret|password|passwd|credentials?|(?:access_|auth_|bearer_)?token)$")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names file and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineConfig(_Model):
    kind: Literal["embedded", "spark", "remote", "databricks"] = "embedded"
    master: str = "local[2]"  # kind=spark: local[N] or a cluster master URL
    remote: str | None = None  # kind=remote: sc://host:port (or env SPARK_REMOTE)
    shuffle_partitions: int = Field(4, ge=1)
    conf: dict[str, str] = {}  # extra Spark conf set on the session
    # embedded: freed memory goes back to the OS at once instead of staying cached in the allocators
    # (set when the in-process server first starts: mimalloc purge delay 0, two glibc arenas, pyarrow on
    # the system allocator; peak RSS of the profiled 200k dedup 2.0 -> 1.6 GB, ~10 % slower, and the
    # pyarrow pool 1.16 -> 1.08 GB at the same speed)
    release_memory: bool = True
    # embedded: settings of the Sail server (its config keys, e.g. parquet.max_row_group_size), exported
    # as SAIL_* variables when the in-process server first starts; an exported variable wins. The
    # defaults stream Parquet writes in row groups of 8,192 rows: Sail's parallel writer buffered a
    # whole staged chunk, and wide rows (text + signatures) are read back a row group at a time
    # (profiled 200k-document dedup: the staging write's peak 1.62 -> 1.07 GB, same speed)
    sail: dict[str, str] = {"parquet.allow_single_file_parallelism": "false",
                            "parquet.max_row_group_size": "8192"}


class LakeConfig(_Model):
    root: str = "lake"  # local path or object-store URI for path-based Delta tables
    catalog: str | None = None  # Unity Catalog: tables become <catalog>.<schema_prefix><layer>.<table>
    schema_prefix: str = ""


class TrackingConfig(_Model):
    enabled: bool = True
    uri: str | None = None  # default: sqlite:///<runs_dir>/mlflow.db
    experiment: str = "boostqa"


class RunnerConfig(_Model):
    chunk_rows: int = Field(100_000, ge=1)  # rows per committed chunk: a crash loses at most one
    commit_retries: int = Field(5, ge=0)  # retries of a MERGE that lost a concurrent-commit race
    lease_seconds: float = Field(120.0, gt=0)  # a stage's lease (one run per stage and lake) lapses this long after its holder dies
    lease_wait_seconds: float = Field(0.0, ge=0)  # how long a second run of a stage waits before it gives up
    max_feedback_passes: int = Field(3, ge=0)  # reruns of a feedback loop (check -> synthesize) within one run


class FieldMap(_Model):
    """Which field of a source record holds each seed attribute (dotted paths allowed)."""

    id: str | None = None
    question: str = "question"
    answer: str | None = "answer"
    choices: str | None = None
    subject: str | None = None
    lang: str | None = None
    # LinkQA: a list of knowledge-point names the source supplies per record (e.g. CHAMP's
    # ``concepts``); kp_extract uses them instead of asking the LLM (docs/linkqa.md)
    kps: str | None = None


class SourceConfig(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    # a file, directory or glob (``**`` recurses): a local path, package:// (bundled), cache://
    # (assets) or any URI the engine reads (file://, s3a://, abfss://, dbfs:/, /Volumes/...);
    # with format: delta, a Delta table's directory
    path: str | None = None
    table: str | None = None  # a catalog table (catalog.schema.name) instead of files
    # default: from the extension (.jsonl/.ndjson, .json, .csv, .tsv, .parquet, each optionally
    # .gz/.zst/.bz2/.xz); set it to read every file of a directory in one format
    format: Literal["jsonl", "json", "parquet", "csv", "tsv", "delta"] | None = None
    weight: float = Field(1.0, gt=0)  # mixing weight of this source in synthesis sampling
    lang: str = "en"  # default language when the record has none
    require_answer: bool = True
    fields: FieldMap = FieldMap()
    choices_fields: list[str] = []  # choices spread over several fields (MMLU answer_a..d, GPQA answers)
    answer_is_label: bool = False  # the answer is a choice label (A, B, ... or 0, 1, ...): store the choice text
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    enabled: bool = True  # declared but skipped (e.g. a benchmark you have no copy of yet)

    @model_validator(mode="after")
    def _one_location(self) -> SourceConfig:
        if (self.path is None) == (self.table is None):
            raise ValueError(f"source {self.name!r}: set exactly one of path (files, or a Delta directory "
                             "with format: delta) and table (a catalog table)")
        if self.table is not None and self.format not in (None, "delta"):
            raise ValueError(f"source {self.name!r}: a table source has no file format (got format: {self.format})")
        if self.csv_delimiter in "\"\r\n":
            raise ValueError(f"source {self.name!r}: csv_delimiter cannot be a quote or a newline")
        return self


class IngestConfig(_Model):
    """Limits of ingestion: every text a seed carries is bounded (it reaches prompts and paid
    endpoints), and so are a record, its nesting and a file, so no input can stop the run."""

    max_question_chars: int = Field(20_000, ge=1)
    max_answer_chars: int = Field(50_000, ge=1)
    max_choices: int = Field(26, ge=2)
    max_choice_chars: int = Field(10_000, ge=1)  # each choice
    max_subject_chars: int = Field(256, ge=1)
    max_lang_chars: int = Field(64, ge=1)
    max_id_chars: int = Field(512, ge=1)  # the source's own row id
    max_kps: int = Field(64, ge=1)  # source-supplied knowledge points of one record (fields.kps)
    max_kp_chars: int = Field(1_000, ge=1)  # each of them
    # a whole record (jsonl line, json element, csv/parquet row as JSON, table row); also the csv
    # field-size limit. Larger rows are quarantined as too_long before they are parsed
    max_record_chars: int = Field(1_000_000, ge=1_000)
    max_depth: int = Field(64, ge=2, le=500)  # JSON nesting (checked before parsing; Python recursion is ~1000)
    max_file_mb: int = Field(2048, ge=1)  # one file after decompression (a larger one is one too_long row)
    # local sources up to this many MB in total are read on the driver, larger ones (and every
    # URI or table source, or a non-local staging area) by Spark on the executors; 0 = always
    # Spark. Measured on the embedded engine (benchmarks/ingest_bench.py, 2 cores): the driver
    # won at every size up to 123 MB (demo 0.06 s vs 0.14 s; 123 MB 2.7 s vs 4.2 s); above this
    # threshold a cluster's executors are expected to win, and one driver should not hold it all
    driver_max_mb: float = Field(64.0, ge=0)


class NormalizeConfig(_Model):
    """Text normalisation shared by dedup and decontamination."""

    nfkc: bool = True
    lowercase: bool = True
    strip_punctuation: bool = True
    collapse_digits: bool = False  # every digit run -> "0" (numbers stop distinguishing texts)
    split_cjk: bool = True  # each CJK character is a token, so Chinese text has word n-grams
    strip_labels: bool = False  # drop "Q:"/"Question:" prefixes and choice labels "(a)", "A.", "a)" first


class DedupRecallConfig(_Model):
    """Second near-duplicate pass for copies with a few edited words (5-word-shingle Jaccard falls
    to 0.3-0.6 after 2-3 edits in a 40-word text): MinHash LSH on short shingles at a low
    threshold finds candidates, an exact token-level similarity (2 * LCS / total words) keeps
    only true near copies. Thresholds measured with benchmarks/recall_bench.py."""

    enabled: bool = True
    shingle_words: int = Field(2, ge=1)
    num_perm: int = Field(256, ge=16)
    threshold: float = Field(0.4, gt=0, lt=1)  # shingle Jaccard the LSH S-curve is centred on
    false_positive_weight: float = Field(0.1, ge=0, le=1)
    min_words: int = Field(20, ge=1)  # shorter texts: one edited word is a different question
    token_similarity: float = Field(0.85, gt=0, le=1)  # verify: 2 * LCS / (words a + words b)


class DedupConfig(_Model):
    normalize: NormalizeConfig = NormalizeConfig()
    shingle_words: int = Field(5, ge=1)  # word n-gram size of MinHash shingles
    num_perm: int = Field(128, ge=16)
    threshold: float = Field(0.8, gt=0, lt=1)  # Jaccard similarity that makes a near duplicate
    false_positive_weight: float = Field(0.1, ge=0, le=1)  # low: verify drops the extra candidates
    seed: int = 42
    verify: bool = True  # drop LSH candidate pairs whose estimated Jaccard is below the threshold
    keep: Literal["smallest_id", "source_priority", "longest_answer"] = "smallest_id"
    source_priority: list[str] = []  # for keep=source_priority: earlier sources win
    max_iterations: int = Field(50, ge=1)  # connected-components rounds before giving up
    recall: DedupRecallConfig = DedupRecallConfig()


class EmbeddingConfig(_Model):
    enabled: bool = True
    backend: Literal["onnx", "torch", "openai"] = "onnx"  # onnx: int8 MiniLM, no torch; torch: fp32 (embed-torch)
    threshold: float = Field(0.92, gt=0, le=1)  # cosine at or above which a seed matches a benchmark item
    batch_size: int = Field(64, ge=1)
    threads: int = Field(1, ge=1)
    base_url: str | None = None  # backend=openai: any /v1/embeddings endpoint
    model: str | None = None
    api_key_env: str | None = None  # name of the env var holding the key, never the key
    # also score windows of long rows (a benchmark item embedded in longer text is diluted in the
    # whole-text vector): sliding spans of window_words words, stride window_words // 2; 0 = off
    window_words: int = Field(48, ge=0)
    max_windows: int = Field(8, ge=1)  # per row (longer rows: evenly spaced windows)


class SpanConfig(_Model):
    """Benchmark items shorter than the n-gram: the whole normalised question must occur as a
    contiguous span of the row; short or ambiguous stems also need the correct answer."""

    enabled: bool = True
    min_words: int = Field(6, ge=1)  # a question of at least this many words matches on its own
    min_words_with_answer: int = Field(3, ge=1)  # shorter ones need their answer in the row too
    max_items_per_stem: int = Field(1, ge=1)  # a stem found in more benchmark questions is generic: choices needed
    # fuzzy spans: an edited copy of a benchmark question (light edits) inside the row. Measured
    # defaults (benchmarks/recall_bench.py): light edits 0.975 -> 1.0, no new false positive
    fuzzy_enabled: bool = True
    fuzzy_max_edit_rate: float = Field(0.2, ge=0, lt=1)  # word edits / question words
    fuzzy_min_words: int = Field(15, ge=1)  # shorter questions are matched with their choices
    fuzzy_k: int = Field(3, ge=1)  # candidate k-gram size
    fuzzy_min_share: float = Field(0.25, gt=0, le=1)  # share of an item's k-grams the row must hold
    fuzzy_max_items_per_gram: int = Field(20, ge=1)  # k-grams in more items carry no signal
    fuzzy_max_words: int = Field(256, ge=1)  # longer questions are left to the n-gram detector
    fuzzy_max_checks: int = Field(8, ge=1)  # exact span checks per row


class DecontamConfig(_Model):
    normalize: NormalizeConfig = NormalizeConfig(strip_labels=True)
    ngram: int = Field(10, ge=3)  # word n-gram size of the exact-overlap check
    min_shared_ngrams: int = Field(1, ge=1)  # shared n-grams with one benchmark item that make a hit
    min_distinct_words: int = Field(4, ge=1)  # benchmark n-grams with fewer distinct words are ignored
    choice_ngrams: bool = True  # also index question + choices (options appended inline)
    span: SpanConfig = SpanConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()


class EndpointConfig(_Model):
    """One OpenAI-compatible endpoint. ``base_url: simulator`` starts boostqa's own simulator
    (a real HTTP server on loopback, speaking the provider's dialect) for the run, and every
    output is labelled simulated."""

    base_url: str
    model: str
    # the service's dialect (boostqa/llm/providers.py): output modes, reasoning, budget, sampling
    provider: Literal["deepseek", "openai", "vllm", "sglang", "llamacpp", "databricks",
                      "openai_compatible"] = "openai_compatible"
    reasoning: bool = False  # a reasoning model (R1-class): its chain of thought counts in max_tokens
    api_key_env: str | None = None  # the env var that holds the key (never the key)
    # a Databricks secret, "{{secrets/<scope>/<key>}}" (the workspace's reference syntax): a scheduled
    # job reads it on the driver into api_key_env when that variable is unset (serverless tasks get no
    # secret-backed variables); the calls then go out from the driver (llm.calls_from auto or driver)
    api_key_secret: str | None = Field(None, pattern=r"^\{\{secrets/[^/\s{}]+/[^/\s{}]+\}\}$")
    max_concurrency: int = Field(16, ge=1)  # requests in flight, over all Spark tasks
    rpm: float | None = Field(None, gt=0)  # requests per minute, over all tasks
    tpm: float | None = Field(None, gt=0)  # tokens per minute (prompt estimate + max_tokens)
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    invalid_retries: int = Field(0, ge=0)  # asks the same request again when the output does not parse
    blank_retries: int = Field(2, ge=0)  # asks again after blank content (DeepSeek json mode does that)
    backoff_base: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    breaker_failures: int = Field(20, ge=0)  # consecutive failures that stop a task hammering an endpoint
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = Field(1024, ge=1)  # the whole output budget, reasoning included where the provider counts it
    # auto: the provider's best mode; a 400 about response_format falls back json_schema -> json_object -> text
    response_format: Literal["auto", "json_schema", "json_object", "text"] = "auto"
    est_completion_tokens: int = Field(300, ge=0)  # for `boostqa plan`
    price_input_per_mtok: float = Field(0.0, ge=0)  # USD per million prompt tokens, for `boostqa plan`
    price_output_per_mtok: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _secret_fills_a_variable(self):
        if self.api_key_secret and not self.api_key_env:
            raise ValueError("api_key_secret needs api_key_env: the variable the secret is read into")
        return self


class SimulatorConfig(_Model):
    # the simulator's fake answers never land in Unity Catalog tables unless this says so
    allow_in_catalog: bool = False
    latency_ms: float = 20.0
    fault_rate: float = Field(0.0, ge=0, le=1)
    seed: int = 0


class LLMConfig(_Model):
    endpoints: dict[str, EndpointConfig] = {}
    parallel_tasks: int = Field(2, ge=1)  # Spark tasks calling at once; each gets 1/N of every budget
    # executors: calls go out from mapInPandas on the executors (parallel_tasks at once); driver: from
    # the driver process, a chunk at a time with each endpoint's whole budget (a key that exists only
    # in the driver never travels into a UDF); auto: executors, unless a scheduled job had to read a
    # key from its secret scope on the driver (serverless: boostqa.llm.keys)
    calls_from: Literal["auto", "executors", "driver"] = "auto"
    chunk_rows: int = Field(500, ge=1)  # rows per committed chunk in LLM stages
    reasks: int = Field(2, ge=0)  # an invalid or truncated answer is asked again (new sample index) this often
    journal_rows: int = Field(20, ge=1)  # answered calls per journal file: a kill re-pays at most this many per task
    simulator: SimulatorConfig = SimulatorConfig()


class AnnotateConfig(_Model):
    endpoint: str = "annotator"
    prompt: str = "annotate"


class ProbeConfig(_Model):
    endpoint: str = "probe"  # the model under mid-training, behind an OpenAI-compatible server
    prompt: str = "probe"
    # chat: an instruction-tuned checkpoint answers in free text; completions: a base checkpoint
    # continues base_prompt (few-shot), multiple choice scored by option-letter log-probabilities
    api: Literal["chat", "completions"] = "chat"
    base_prompt: str = "probe_base"
    logprobs: int = Field(5, ge=0, le=20)  # top log-probabilities asked for on completions (0: score the text)
    base_max_tokens: int = Field(16, ge=1)  # a base model's answer is a few tokens
    checkpoint: str | None = None  # label of the probed checkpoint (default: the endpoint's model)
    per_cell: int = Field(20, ge=1)  # probe questions per discipline x difficulty cell
    seed: int = 0
    floor: float = Field(0.1, ge=0, le=1)  # minimum weight of a cell the model already masters
    # measured: the STEM and H-level emphases are the probe's error-rate ratios (STEM vs non-STEM,
    # level vs all), clamped to [1, max_boost]; config: the fixed values below
    boosts: Literal["measured", "config"] = "measured"
    max_boost: float = Field(3.0, ge=1)
    min_boost_probes: int = Field(20, ge=1)  # fewer probes in a group: its configured value is kept
    stem_boost: float = Field(1.5, gt=0)  # STEM emphasis (BoostQA synthesises STEM first)
    difficulty_boost: dict[str, float] = {"H4": 1.5, "H5": 2.0}  # the difficulty booster (levels boosted)
    shrinkage: float = Field(5.0, ge=0)  # pseudo-probes pulling a thin cell towards overall accuracy


class BoosterConfig(_Model):
    enabled: bool = True
    min_seed_difficulty: int = Field(4, ge=1, le=5)  # H4/H5 seeds feed the booster
    weight_multiplier: dict[str, float] = {"H4": 2.0, "H5": 3.0}  # extra sampling weight of hard seeds
    target_bump: int = Field(1, ge=0, le=4)  # target difficulty = min(5, seed level + bump)
    tolerance: int = Field(0, ge=0, le=4)  # accepted when re-annotated level >= target - tolerance
    samples: int = Field(1, ge=1)
    retry_degraded: bool = True  # one more try with a stronger instruction before rejecting


class SynthesisConfig(_Model):
    endpoint: str = "generator"
    budget_qa: int = Field(1000, ge=0)  # synthesis tasks planned in total (a later run adds up to it)
    # accepted-QA tokens to plan for (training format, tokens.*); tasks are costed at the observed
    # yield (gold tokens per finished task) once min_yield_tasks have finished, else at the prior
    budget_tokens: int | None = Field(None, ge=0)
    est_tokens_per_task: float = Field(300.0, gt=0)
    min_yield_tasks: int = Field(20, ge=1)
    seed: int = 0  # sampling seed: same seed + same inputs = same plan
    roles: dict[str, int] = {"high_school_teacher": 2, "college_instructor": 3, "graduate_professor": 4}
    samples_per_role: int = Field(1, ge=1)
    multigrade_non_stem: bool = False  # BoostQA runs multi-grade synthesis on STEM seeds only
    booster: BoosterConfig = BoosterConfig()
    prompts: dict[str, str] = {"multigrade": "synth_multigrade", "booster": "synth_booster"}
    reannotate_endpoint: str = "annotator"


class JudgeConfig(_Model):
    enabled: bool = True  # ask an LLM only when final-answer rules cannot decide (verdict "undecided")
    endpoint: str = "refiner"
    prompt: str = "judge"


class RefineConfig(_Model):
    endpoint: str = "refiner"
    prompt: str = "refine"
    judge: JudgeConfig = JudgeConfig()


class GateConfig(_Model):
    min_question_chars: int = Field(20, ge=1)
    max_question_chars: int = Field(6000, ge=1)
    min_answer_chars: int = Field(1, ge=1)
    max_answer_chars: int = Field(12000, ge=1)
    keep_inconsistent: bool = True  # the refined answer is kept; the flag stays for filtering
    template: str = "qa"  # n_tokens of gold rows: this tokens.templates entry, tokens.tokenizer, tokens.eos


class CorpusSourceConfig(SourceConfig):
    """A general-corpus source (documents, not QA): read like a seed source (files, a Delta
    directory or a catalog table), one text field."""

    text_field: str = "text"  # dotted path allowed
    id_field: str | None = None  # the source's own document id, if any (else file + row)
    require_answer: bool = False


class LedgerTable(_Model):
    """A table the token ledger counts: its training template and how its rows map to the
    ledger's dimensions (Spark SQL expressions; default: the same-named column, else NULL)."""

    table: str
    template: str = "qa"  # a name in tokens.templates
    dims: dict[Literal["discipline", "difficulty", "mode", "source"], str] = {}


class TokensConfig(_Model):
    tokenizer: str = "splintr:llama3"  # splintr:<name> | hf:<tokenizer.json> | tiktoken:<file>
    pattern: str | None = None  # split regex for tiktoken files: llama3 | cl100k | o200k | a regex
    eos: bool = True  # every document ends in one EOS token when trained on
    templates: dict[str, str] = {"qa": "Question: {question}\nAnswer: {answer}", "text": "{text}"}
    target_tokens: int = Field(100_000_000_000, gt=0)  # the budget `boostqa tokens` reports progress to
    tables: list[LedgerTable] = []

    @model_validator(mode="after")
    def _known_templates(self) -> TokensConfig:
        for t in self.tables:
            if t.template not in self.templates:
                raise ValueError(f"tokens.tables: {t.table} uses template {t.template!r}, "
                                 f"not in tokens.templates ({sorted(self.templates)})")
        return self


class BlendComponent(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    table: str  # a lake table (logical name such as gold.boostqa)
    template: str = "text"  # a name in tokens.templates
    ratio: float = Field(gt=0)  # share of blend.target_tokens (ratios are normalised)
    id_column: str  # the row's stable id (doc_id, qa_id, ...)
    # optional split of this component's tokens by a column or SQL expression, e.g. {by: discipline,
    # shares: {math: 0.3}} or by: "concat_ws('/', discipline, difficulty)" with shares {"math/5": 0.1};
    # groups not named share the rest in proportion to their available tokens
    by: str | None = None
    shares: dict[str, float] = {}
    where: str | None = None  # a Spark SQL filter on the table (e.g. "consistency != 'inconsistent'")


class BlendConfig(_Model):
    target_tokens: int = Field(10_000_000_000, gt=0)
    seed: int = 0  # sampling and shuffle: same seed + same inputs = same mix
    components: list[BlendComponent] = []
    max_epochs: float = Field(4.0, gt=0)  # refuse to repeat a small component more than this

    @model_validator(mode="after")
    def _unique(self) -> BlendConfig:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"blend.components: duplicate names {names}")
        return self


class ExportConfig(_Model):
    dir: str = "exports"  # <dir>/<mix table version>/: shards, manifest.json, README.md
    shard_tokens: int = Field(50_000_000, gt=0)
    formats: list[Literal["jsonl.zst", "parquet"]] = ["jsonl.zst", "parquet"]
    title: str = "boostqa mix"


class LinkQAConfig(_Model):
    """LinkQA (docs/linkqa.md): knowledge points (KPs) per seed -> KP graph -> value-guided walks ->
    one synthesis task (mode linkqa) per path of 2-4 seeds linked by KPs."""

    enabled: bool = False  # off: kp_extract, kp_graph and kp_walk are skipped, no linkqa tasks are planned
    endpoint: str = "annotator"  # the endpoint that names each seed's KPs
    kp_prompt: str = "kp_extract"
    kp_max_chars: int = Field(60, ge=4, le=200)  # longest KP name accepted from the model
    prompt: str = "synth_linkqa"  # the generator's prompt for mode linkqa (endpoint: synthesis.endpoint)
    path_length: tuple[int, int] = (2, 4)  # seeds per path: each walk aims at a length drawn from [min, max]
    paths: int = Field(200, ge=0)  # paths (= linkqa synthesis tasks) in total; a later run adds up to it
    rounds: int = Field(4, ge=1)  # walk rounds per run: KP visit counts are updated between rounds
    alpha: float = Field(1.0, ge=0)  # value(kp) = popularity^alpha * (1 + visits)^-beta
    beta: float = Field(1.0, ge=0)
    seed: int = 0  # same seed + same graph + same paths so far = same walks
    # target share of paths per discipline x difficulty, e.g. {physics: {H4: 2, H5: 1}} (normalised);
    # empty: the seeds' own discipline x difficulty mix
    target_mix: dict[str, dict[str, float]] = {}
    max_walk_edges: int = Field(2_000_000, ge=1)  # the walk runs over a collected adjacency up to this many edges

    @model_validator(mode="after")
    def _check(self) -> LinkQAConfig:
        lo, hi = self.path_length
        if not 2 <= lo <= hi <= 4:
            raise ValueError(f"linkqa.path_length: need 2 <= min <= max <= 4, got {list(self.path_length)}")
        for d, cells in self.target_mix.items():
            for level, share in cells.items():
                if str(level).upper().lstrip("H") not in {"1", "2", "3", "4", "5"} or share < 0:
                    raise ValueError(f"linkqa.target_mix.{d}.{level}: levels are H1..H5, shares >= 0")
        return self


class Settings(_Model):
    project: str = "boostqa"
    profile: str = "local"
    runs_dir: str = "runs"
    data_cache: str | None = None  # default: env BOOSTQA_DATA_CACHE or ~/.cache/boostqa
    engine: EngineConfig = EngineConfig()
    lake: LakeConfig = LakeConfig()
    tracking: TrackingConfig = TrackingConfig()
    runner: RunnerConfig = RunnerConfig()
    ingest: IngestConfig = IngestConfig()
    sources: list[SourceConfig] = []
    benchmarks: list[SourceConfig] = []
    dedup: DedupConfig = DedupConfig()
    decontam: DecontamConfig = DecontamConfig()
    llm: LLMConfig = LLMConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    probe: ProbeConfig = ProbeConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    linkqa: LinkQAConfig = LinkQAConfig()
    refine: RefineConfig = RefineConfig()
    gate: GateConfig = GateConfig()
    corpus: list[CorpusSourceConfig] = []
    tokens: TokensConfig = TokensConfig()
    blend: BlendConfig = BlendConfig()
    export: ExportConfig = ExportConfig()

    @field_validator("sources", "benchmarks", "corpus")
    @classmethod
    def _unique_sources(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate source names: {dup}")
        return v

    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        return "sqlite:///" + str((Path(self.runs_dir) / "mlflow.db").resolve())

    def cache_dir(self) -> Path:
        if self.data_cache:
            return Path(self.data_cache).expanduser()
        from boostqa.assets import default_cache_dir

        return default_cache_dir()

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log: any secret-looking value is masked."""
        return _redact(self.model_dump(mode="json"))


def redact(obj: Any) -> Any:
    """A dict/list copy with every secret-named key's value masked."""
    return _redact(obj)


def _redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: ("***" if _SECRET_KEY.search(k) and v else _redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


_explicit_conf: Path | None = None  # set by `boostqa --conf DIR`


def set_conf_dir(path: Path | str | None) -> None:
    global _explicit_conf
    _explicit_conf = Path(path).resolve() if path else None


def _packaged_conf() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "_conf"):
        if (candidate / "base.yaml").exists():
            return candidate
    raise ConfigError(f"no conf/base.yaml next to {here}; reinstall boostqa or set BOOSTQA_CONF_DIR")


def conf_dirs() -> list[Path]:
    """Where configuration files are looked up, first wins per file: ``--conf``, ``./conf``,
    ``$BOOSTQA_CONF_DIR``, then the defaults packaged with boostqa (so a project's conf/ may hold
    only the files it changes: a profile, the taxonomy, a prompt)."""
    found = [_explicit_conf, Path.cwd() / "conf",
             Path(os.environ["BOOSTQA_CONF_DIR"]) if os.environ.get("BOOSTQA_CONF_DIR") else None, _packaged_conf()]
    out: list[Path] = []
    for d in found:
        if d is not None and d.is_dir() and d.resolve() not in out:
            out.append(d.resolve())
    return out


def find_conf(relative: str, dirs: list[Path] | None = None) -> Path | None:
    """The first of ``dirs`` (default ``conf_dirs()``) holding ``relative``, or None."""
    return next((d / relative for d in (conf_dirs() if dirs is None else dirs) if (d / relative).is_file()), None)


def conf_file(relative: str) -> Path:
    """The first ``conf_dirs()`` file at ``relative`` (e.g. "local.yaml", "prompts/refine.yaml")."""
    found = find_conf(relative)
    if found is None:
        raise ConfigError(f"no {relative} in {', '.join(map(str, conf_dirs()))}")
    return found


def conf_dir() -> Path:
    """The first configuration directory (``conf_dirs()``), where ``boostqa init`` writes."""
    return conf_dirs()[0]


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def env_overrides(environ: dict[str, str] | None = None) -> dict:
    out: dict = {}
    for name, raw in (environ if environ is not None else os.environ).items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = yaml.safe_load(raw) if raw else raw
    return out


def _layers(profile: str, directory: Path | None, overrides: dict | None,
            environ: dict[str, str] | None) -> list[tuple[str, dict]]:
    """(where, values) from lowest to highest precedence."""
    dirs = [directory] if directory is not None else conf_dirs()
    base, profile_file = find_conf("base.yaml", dirs), find_conf(f"{profile}.yaml", dirs)
    if base is None:
        raise ConfigError(f"no base.yaml in {', '.join(map(str, dirs))}")
    if profile_file is None:
        known = sorted({p.stem for d in dirs for p in d.glob("*.yaml")} - {"base", "taxonomy"})
        raise ConfigError(f"unknown profile {profile!r}: no {profile}.yaml in "
                          f"{', '.join(map(str, dirs))} (profiles: {known})")
    env = environ if environ is not None else os.environ
    return [(str(base), _read_yaml(base)), (str(profile_file), _read_yaml(profile_file)),
            (f"env {ENV_PREFIX}*", env_overrides(env)), ("overrides", overrides or {})]


def load_settings(profile: str | None = None, directory: Path | None = None,
                  overrides: dict | None = None, environ: dict[str, str] | None = None) -> Settings:
    """base.yaml <- <profile>.yaml <- BOOSTQA__* env <- explicit overrides (files looked up in
    ``conf_dirs()`` unless ``directory`` is given)."""
    profile = profile or os.environ.get("BOOSTQA_PROFILE", "local")
    layers = _layers(profile, directory, overrides, environ)
    data: dict = {}
    for _, values in layers:
        data = deep_merge(data, values)
    data["profile"] = profile
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid settings for profile {profile!r} ({layers[1][0]}):\n" + "\n".join(lines)) from None


def origins(profile: str | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Each configured setting (dotted path) -> the file or layer that set it last; settings no
    layer sets come from the code's defaults."""
    profile = profile or os.environ.get("BOOSTQA_PROFILE", "local")
    out: dict[str, str] = {}

    def walk(node, where: str, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, where, f"{prefix}.{k}" if prefix else str(k))
        else:
            for key in [k for k in out if k.startswith(prefix + ".")]:  # a whole subtree replaced
                del out[key]
            out[prefix] = where

    for where, values in _layers(profile, None, None, environ):
        walk(values, where, "")
    return out

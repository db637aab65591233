"""Seed sources (files or tables) -> raw records: the I/O half of ingestion (validation is the stage's).

Every record keeps where it came from (source, file, row) and its original text, so a bad row
can be quarantined with its evidence and named precisely. What a file holds never stops the
read: ``boostqa.text.decode`` turns any bytes into records (bad ones carry a ``read_error``).

How sources are read (``read_raw``):
1. every declared source is listed first, so a missing file or table fails the run, naming
   source and path, before anything is written. Local paths (also package://, cache://,
   file://) are listed with Python's glob semantics (``**`` recurses); other URIs (s3a://,
   abfss://, dbfs:/, /Volumes/... seen only by the cluster) are listed by Spark
   (``binaryFile``) and filtered with the same semantics. File names starting with ``_`` or
   ``.`` are skipped as Spark does (logged, counted as ``hidden_files.<source>``); files of
   no known format in a directory or glob are reported (a warning, ``unsupported_files.<source>``
   in the stage's stats and ``unsupported_files.txt``), never silently skipped;
2. the files are read by Spark (``binaryFile`` with the listed paths; its ``path`` column is
   the provenance), spread over tasks by path, and parsed on the executors by the decode kernel
   inside ``mapInArrow``; a table source (``table:`` or ``format: delta``) is read with
   ``spark.read`` and each row becomes a record (its JSON). The records and one row of facts per
   file (sha256, size, compression, encoding) are staged as parquet once, so the stage's
   several passes over them do not read the sources again;
3. small local inputs (``ingest.driver_max_mb`` in total) are read on the driver by the same
   kernel into a local staging file instead: a Spark job costs more than it saves there
   (benchmarks/ingest_bench.py measures where the lines cross).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import unquote

import pyarrow.parquet as pq

from boostqa.config import IngestConfig, SourceConfig
from boostqa.text import decode
from boostqa.text.decode import FileSpec, Limits, RowBuffer, file_records, format_of, path_key

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package://"
CACHE_PREFIX = "cache://"
RAW_SCHEMA = decode.RAW_SCHEMA
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_GLOB = re.compile(r"[*?\[]")


class SourceError(FileNotFoundError):
    """A declared source cannot be read; nothing has been written."""


@dataclass(frozen=True)
class SourceFile:
    source: str
    path: Path | str  # a local path, or the URI the engine reported
    rel: str  # relative to the source's root: stable across machines, part of every record key
    format: str
    sha256: str  # of the file's bytes as stored ("" until the file was read)
    size: int
    compression: str | None = None

    def spec(self, delimiter: str = ",") -> FileSpec:
        return FileSpec(self.source, self.rel, self.format, self.compression, delimiter)


@dataclass
class Listing:
    """One declared source, resolved: its readable files (or table) and what was left out."""

    source: SourceConfig
    location: str  # the resolved path or table, for messages
    files: list[SourceFile] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    local: bool = True  # listed (and readable) on this machine
    table: str | None = None  # a catalog table, or a Delta directory (format: delta)
    frame: object = None  # the engine's binaryFile DataFrame of a remotely listed source


@dataclass
class RawInput:
    df: object  # DataFrame of RAW_SCHEMA rows
    files: list[SourceFile]
    reader: str  # "driver" | "spark"


def limits_of(cfg: IngestConfig | None) -> Limits:
    cfg = cfg or IngestConfig()
    return Limits(max_record_chars=cfg.max_record_chars, max_depth=cfg.max_depth,
                  max_file_bytes=cfg.max_file_mb << 20)


# ---------------------------------------------------------------------------------------- paths
def resolve_path(path: str, cache_dir: Path) -> tuple[str, bool]:
    """Expand package:// and cache:// prefixes; the flag says whether the path is a cache asset."""
    if path.startswith(PACKAGE_PREFIX):
        return str(Path(__file__).resolve().parent / path[len(PACKAGE_PREFIX):]), False
    if path.startswith(CACHE_PREFIX):
        return str(cache_dir / path[len(CACHE_PREFIX):]), True
    return os.path.expanduser(path), False


def _local(path: str) -> str | None:
    """The local filesystem path of ``path`` (plain or file://), None for other URIs."""
    if path.startswith("file:"):
        rest = path[5:]
        return "/" + rest.lstrip("/") if rest.startswith("/") else rest
    return None if _SCHEME.match(path) and not re.match(r"^[A-Za-z]:[\\/]", path) else path


def _split_glob(path: str) -> tuple[str, list[str]]:
    """(root without glob characters, the pattern's segments below it)."""
    parts = path.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if _GLOB.search(part):
            return "/".join(parts[:i]) or "/", parts[i:]
    return path, []


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    """Python glob semantics on path segments: ``**`` matches any number of directories."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _glob_match(parts[1:], pattern[1:])


def _hidden(rel: str) -> bool:
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


def _missing(src: SourceConfig, resolved: str, from_cache: bool, listing: Listing | None = None) -> SourceError:
    hint = f" (fetch it: boostqa assets fetch {src.path[len(CACHE_PREFIX):].split('/')[0]})" if from_cache else ""
    if listing is not None and (listing.unsupported or listing.hidden):
        hint += (f" (only {len(listing.unsupported)} file(s) of no supported format and {len(listing.hidden)} "
                 f"hidden one(s): {', '.join((listing.unsupported + listing.hidden)[:5])}; set format: to read them)")
    return SourceError(f"source {src.name!r}: no input file at {src.path!r} -> {resolved}{hint}")


def _classify(src: SourceConfig, found: list[tuple[str | Path, str, int]], explicit: bool, listing: Listing) -> Listing:
    """Sort (path, rel, size) into readable files, unsupported and hidden ones."""
    for path, rel, size in found:
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(("_", ".")) if explicit else _hidden(rel):
            if explicit:
                raise SourceError(f"source {src.name!r}: {path} is a hidden file (its name starts with '_' or '.'), "
                                  "which Spark engines skip: rename it")
            listing.hidden.append(rel)
            continue
        fmt = format_of(name, src.format)
        if fmt is None:
            if explicit:
                raise SourceError(f"source {src.name!r}: cannot tell the format of {path}; "
                                  "set format: jsonl|json|parquet|csv|tsv")
            listing.unsupported.append(rel)
            continue
        listing.files.append(SourceFile(src.name, path, rel, fmt[0], "", size, fmt[1]))
    return listing


def _list_local(src: SourceConfig, path: str) -> Listing | None:
    """The files of a local file, directory or glob; None when nothing exists at ``path``."""
    p = Path(path)
    if _GLOB.search(path):
        root = p
        while _GLOB.search(str(root)):
            root = root.parent
        found, explicit = sorted(Path(f) for f in glob.glob(path, recursive=True) if Path(f).is_file()), False
        if not found:
            return None
    elif p.is_dir():
        root, found, explicit = p, sorted(f for f in p.rglob("*") if f.is_file()), False
    elif p.is_file():
        root, found, explicit = p.parent, [p], True
    else:
        return None
    rows = [(f, f.relative_to(root).as_posix() if f.is_relative_to(root) else f.name, f.stat().st_size)
            for f in found]
    return _classify(src, rows, explicit, Listing(src, path))


def _relative(reported: str, root: str) -> str:
    """A path the engine reported, relative to the source's root (schemes and %-escapes aside)."""
    rk = path_key(root).rstrip("/")
    for key in (path_key(reported), path_key(unquote(reported))):
        if key == rk:
            return key.rsplit("/", 1)[-1]
        if key.startswith(rk + "/"):
            return key[len(rk) + 1:]
    return reported.rsplit("/", 1)[-1]


def _list_remote(spark, src: SourceConfig, path: str) -> Listing:
    """List a URI (or a path only the cluster sees) with Spark, filtered with glob semantics."""
    from pyspark.sql import functions as F

    root, pattern = _split_glob(path)
    try:
        frame = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
        rows = frame.select("path", "length").collect()
    except Exception as e:  # the engine's own error (missing path, no credentials, ...)
        first = str(e).splitlines()[0][:500] if str(e) else type(e).__name__
        raise SourceError(f"source {src.name!r}: cannot list {src.path!r} -> {path}: {first}") from e
    rows = list({r["path"]: r for r in rows}.values())  # Sail repeats a large file once per byte range
    explicit = not pattern and len(rows) == 1 and path_key(unquote(rows[0]["path"])).rstrip("/") in (
        path_key(root).rstrip("/"), path_key(unquote(root)).rstrip("/"))
    found = []
    for r in rows:
        rel = _relative(r["path"], root)
        if pattern and not _glob_match(rel.split("/"), pattern):
            continue
        found.append((r["path"], rel, int(r["length"])))
    listing = _classify(src, sorted(found, key=lambda x: x[1]), explicit, Listing(src, path, local=False))
    kept = [f.path for f in listing.files]
    listing.frame = frame if len(kept) == len(rows) else frame.where(F.col("path").isin(kept))
    return listing


def list_source(spark, src: SourceConfig, cache_dir: Path) -> Listing:
    """One source's files (or table), or SourceError naming source and path."""
    if src.table is not None or src.format == "delta":
        return _table_listing(spark, src, cache_dir)
    resolved, from_cache = resolve_path(src.path, cache_dir)
    local = _local(resolved)
    if local is not None:
        listing = _list_local(src, local)
        if listing is not None:
            if not listing.files:
                raise _missing(src, resolved, from_cache, listing)
            return listing
        if spark is None or src.path.startswith((PACKAGE_PREFIX, CACHE_PREFIX)):
            raise _missing(src, resolved, from_cache)
    elif spark is None:
        raise SourceError(f"source {src.name!r}: {resolved} is not a local path: it needs a Spark session")
    listing = _list_remote(spark, src, resolved)  # e.g. /Volumes/... that only the cluster sees
    if not listing.files:
        raise _missing(src, resolved, from_cache, listing)
    return listing


def _table_listing(spark, src: SourceConfig, cache_dir: Path) -> Listing:
    if src.table is not None:
        where, name = src.table, src.table
    else:
        where = resolve_path(src.path, cache_dir)[0]
        name = where.rstrip("/").rsplit("/", 1)[-1]
    if spark is None:
        raise SourceError(f"source {src.name!r}: a table source needs a Spark session")
    try:
        frame = spark.read.table(where) if src.table is not None else spark.read.format("delta").load(where)
        frame.schema  # analysed now: a missing table fails before anything is written
    except Exception as e:
        first = str(e).splitlines()[0][:500] if str(e) else type(e).__name__
        raise SourceError(f"source {src.name!r}: cannot read table {where!r}: {first}") from e
    return Listing(src, where, local=False, table=name, frame=frame)


def list_files(src: SourceConfig, cache_dir: Path) -> list[SourceFile]:
    """The local files of one source (file, directory or glob) with their checksums, or SourceError."""
    listing = list_source(None, src, cache_dir)
    _report(listing)
    return [replace(f, sha256=_sha256(Path(f.path))) for f in listing.files]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _report(listing: Listing, stats=None) -> None:
    name = listing.source.name
    if listing.unsupported:
        log.warning("source %r: %d file(s) of no supported format skipped (extensions: .jsonl .ndjson .json .csv "
                    ".tsv .parquet, optionally .gz/.zst/.bz2/.xz; set format: to read them all as one): %s",
                    name, len(listing.unsupported), ", ".join(listing.unsupported[:20]))
    if listing.hidden:
        log.info("source %r: %d hidden file(s) skipped (names starting with '_' or '.'): %s",
                 name, len(listing.hidden), ", ".join(listing.hidden[:20]))
    if stats is not None and listing.table is None:
        stats.add(f"unsupported_files.{name}", len(listing.unsupported))
        if listing.hidden:
            stats.add(f"hidden_files.{name}", len(listing.hidden))


# ---------------------------------------------------------------------------------- driver path
def read_records(sf: SourceFile, csv_delimiter: str = ",", limits: Limits | None = None):
    """The raw records of one local file (RAW_SCHEMA dicts), read by the decode kernel."""
    yield from file_records(Path(sf.path).read_bytes(), sf.spec(csv_delimiter), limits or Limits())


def write_raw(sources: list[SourceConfig], cache_dir: Path, out_path: str, limits: Limits | None = None,
              stats=None) -> tuple[list[SourceFile], int]:
    """Read every local source on the driver into one parquet file (RAW_SCHEMA); returns the files
    read (with checksums) and the record count. All sources are listed first, so a missing one
    fails before any output exists."""
    listings = [list_source(None, s, cache_dir) for s in sources if s.enabled]
    for listing in listings:
        _report(listing, stats)
    return _write_local(listings, out_path, limits or Limits())


def _write_local(listings: list[Listing], out_path: str, limits: Limits) -> tuple[list[SourceFile], int]:
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    files, n = [], 0
    with pq.ParquetWriter(out_path + ".tmp", RAW_SCHEMA) as writer:
        buf = RowBuffer(RAW_SCHEMA)
        for listing in listings:
            for sf in listing.files:
                info: dict = {}
                spec = sf.spec(listing.source.csv_delimiter)
                for rec in file_records(Path(sf.path).read_bytes(), spec, limits, info):
                    n += 1
                    if buf.add(rec):
                        writer.write_batch(buf.flush())
                files.append(replace(sf, sha256=info["sha256"], compression=info.get("compression")))
        if len(buf):
            writer.write_batch(buf.flush())
    os.replace(out_path + ".tmp", out_path)
    return files, n


# ----------------------------------------------------------------------------------- spark path
def _spark_schema(schema):
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "int64": T.LongType()}
    return T.StructType([T.StructField(f.name, kinds[str(f.type)]) for f in schema])


def _shuffle_partitions(spark, default: int = 8) -> int:
    try:
        return max(int(spark.conf.get("spark.sql.shuffle.partitions")), 1)
    except Exception:  # serverless may refuse, or the value is "auto"
        return default


def _stage_with_spark(spark, listings: list[Listing], out_path: str, limits: Limits):
    """Read and decode on the executors; stage records + file facts as parquet at ``out_path``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    staged_schema = _spark_schema(decode.STAGED_SCHEMA)
    specs: dict[str, list[FileSpec]] = {}
    local_paths: list[str] = []
    frames = []
    for listing in listings:
        for sf in listing.files:
            key = path_key(str(sf.path))
            if key not in specs and listing.local:
                local_paths.append(str(sf.path))
            specs.setdefault(key, []).append(sf.spec(listing.source.csv_delimiter))
        if not listing.local and listing.table is None:
            frames.append(listing.frame.select("path", "content"))
    if local_paths:
        frames.insert(0, spark.read.format("binaryFile").load(local_paths).select("path", "content"))

    def decode_files(batches):  # built here, not at import: Connect UDFs need the session first
        yield from decode.decode_batches(batches, specs, limits)

    parts = []
    if frames:
        files = frames[0]
        for f in frames[1:]:
            files = files.unionByName(f)
        n = max(1, min(len(specs), _shuffle_partitions(spark)))
        parts.append(files.repartition(n, "path").mapInArrow(decode_files, staged_schema))
    for listing in listings:
        if listing.table is not None:
            parts.append(_table_records(listing, limits, staged_schema, Window, F))
    if not parts:  # nothing declared: an empty staging table all the same
        parts.append(spark.createDataFrame([], staged_schema))
    staged = parts[0]
    for p in parts[1:]:
        staged = staged.unionByName(p)
    staged.write.mode("overwrite").parquet(out_path)
    return spark.read.schema(staged_schema).parquet(out_path)


def _table_records(listing: Listing, limits: Limits, staged_schema, Window, F):
    source, name = listing.source.name, listing.table

    def rows(batches):
        yield from decode.table_batches(batches, source, name, limits)

    def keys(batches):
        yield from decode.table_keys(batches)

    table_schema = _spark_schema(decode.pa.schema(decode.TABLE_FIELDS + [("k", decode.pa.int64())]))
    raw = listing.frame.mapInArrow(rows, _spark_schema(decode.pa.schema(decode.TABLE_FIELDS)))
    copies = raw.withColumn("k", F.row_number().over(Window.partitionBy("source", "h").orderBy("h")).cast("long"))
    return copies.select(*table_schema.fieldNames()).mapInArrow(keys, staged_schema)


def _files_from_manifest(listings: list[Listing], manifest: list) -> list[SourceFile]:
    """The listed files with the facts the executors found; SourceError when one was not read."""
    import json

    facts = {(r["source"], r["source_file"]): json.loads(r["raw"]) for r in manifest}
    out, missing = [], []
    for listing in listings:
        for sf in listing.files:
            info = facts.get((sf.source, sf.rel))
            if info is None:
                missing.append(f"{sf.source}: {sf.path}")
            else:
                out.append(replace(sf, sha256=info["sha256"], compression=info.get("compression")))
    if missing:
        raise SourceError(f"the engine returned no data for {len(missing)} listed file(s) (unreadable, or a "
                          f"name it skips): {'; '.join(missing[:10])}")
    return out


def _mlflow_path(path: str) -> str:
    """A URI MLflow can name as a dataset source (it knows s3://, not s3a://; /Volumes, not dbfs:)."""
    path = re.sub(r"^s3[an]://", "s3://", path)
    return re.sub(r"^dbfs:/+", "/", path) if path.startswith("dbfs:/Volumes") else re.sub(r"^dbfs:/+", "/dbfs/", path)


def read_raw(spark, sources: list[SourceConfig], cache_dir: Path, out_path: str, ingest: IngestConfig | None = None,
             stats=None) -> RawInput:
    """Every enabled source -> one DataFrame of raw records (RAW_SCHEMA), staged at ``out_path``.

    All sources are listed first (a missing one raises SourceError before anything is written);
    small local inputs are read on the driver, the rest by Spark on the executors."""
    ingest = ingest or IngestConfig()
    limits = limits_of(ingest)
    listings = [list_source(spark, s, cache_dir) for s in sources if s.enabled]
    for listing in listings:
        _report(listing, stats)
        if listing.table is not None and stats is not None:
            stats.tag(f"table_source.{listing.source.name}", listing.location)
    total = sum(f.size for listing in listings for f in listing.files)
    small = ingest.driver_max_mb > 0 and total <= ingest.driver_max_mb * (1 << 20)
    on_driver = small and all(listing.local for listing in listings) and _local(out_path) is not None
    n_files = sum(len(listing.files) for listing in listings)
    log.info("sources: %d file(s), %.1f MB%s -> read %s (ingest.driver_max_mb = %s)", n_files, total / (1 << 20),
             f" + {sum(x.table is not None for x in listings)} table(s)" if any(x.table for x in listings) else "",
             "on the driver" if on_driver else "by Spark", ingest.driver_max_mb)
    if stats is not None:
        stats.tag("ingest.reader", "driver" if on_driver else "spark")
    raw_cols = [f.name for f in RAW_SCHEMA]
    if on_driver:
        path = _local(out_path)
        files, _ = _write_local(listings, path, limits)
        df = spark.read.schema(_spark_schema(RAW_SCHEMA)).parquet(out_path)
        return RawInput(df, files, "driver")
    staged = _stage_with_spark(spark, listings, out_path, limits)
    manifest = staged.where("kind = 'file'").select("source", "source_file", "raw").collect()
    files = _files_from_manifest(listings, manifest)
    files = [replace(f, path=_mlflow_path(str(f.path))) if not isinstance(f.path, Path) else f for f in files]
    return RawInput(staged.where("kind = 'record'").select(*raw_cols), files, "spark")

"""Seed source files -> raw records (the I/O half of ingestion; validation is the stage's job).

Every record keeps where it came from (source, file, row) and its original text, so a bad row
can be quarantined with its evidence and named precisely. Files are streamed into a staging
parquet file in bounded batches; Spark then reads that file, so memory stays flat whatever the
source size. A missing file fails *before* anything is written.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from boostqa.config import SourceConfig

PACKAGE_PREFIX = "package://"
CACHE_PREFIX = "cache://"
_EXT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_BATCH = 10_000

RAW_SCHEMA = pa.schema([
    ("record_key", pa.string()),  # hash of source, file, row and raw bytes: a changed row is a new record
    ("source", pa.string()),
    ("source_file", pa.string()),  # path relative to the source's root, stable across machines
    ("source_row", pa.int64()),  # 1-based line (jsonl), data row (csv/parquet) or array index + 1 (json)
    ("raw", pa.string()),  # the record's text (jsonl line; csv/parquet row as JSON)
    ("read_error", pa.string()),  # "not_utf8: ..." / "unparseable: ..." when the bytes were not a record
])


class SourceError(FileNotFoundError):
    """A declared source cannot be read; nothing has been written."""


@dataclass(frozen=True)
class SourceFile:
    source: str
    path: Path
    rel: str
    format: str
    sha256: str
    size: int


def resolve_path(path: str, cache_dir: Path) -> tuple[str, bool]:
    """Expand package:// and cache:// prefixes; the flag says whether the path is a cache asset."""
    if path.startswith(PACKAGE_PREFIX):
        return str(Path(__file__).resolve().parent / path[len(PACKAGE_PREFIX):]), False
    if path.startswith(CACHE_PREFIX):
        return str(cache_dir / path[len(CACHE_PREFIX):]), True
    return os.path.expanduser(path), False


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def list_files(src: SourceConfig, cache_dir: Path) -> list[SourceFile]:
    """The files of one source (a file, a directory or a glob), or SourceError naming what is missing."""
    resolved, from_cache = resolve_path(src.path, cache_dir)
    p = Path(resolved)
    if p.is_dir():
        files, root = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _EXT), p
    elif any(ch in resolved for ch in "*?["):
        files, root = sorted(Path(f) for f in glob.glob(resolved, recursive=True) if Path(f).is_file()), p
        while any(ch in str(root) for ch in "*?["):
            root = root.parent
    elif p.is_file():
        files, root = [p], p.parent
    else:
        files, root = [], p
    if not files:
        hint = f" (fetch it: boostqa assets fetch {src.path[len(CACHE_PREFIX):].split('/')[0]})" if from_cache else ""
        raise SourceError(f"source {src.name!r}: no input file at {src.path!r} -> {resolved}{hint}")
    out = []
    for f in files:
        fmt = src.format or _EXT.get(f.suffix.lower())
        if fmt is None:
            raise SourceError(f"source {src.name!r}: cannot tell the format of {f}; set format: jsonl|json|parquet|csv")
        out.append(SourceFile(src.name, f, str(f.relative_to(root)) if f.is_relative_to(root) else f.name, fmt,
                              _sha256(f), f.stat().st_size))
    return out


def _decode(raw: bytes) -> tuple[str, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", "backslashreplace"), f"not_utf8: invalid byte 0x{raw[e.start]:02x} at offset {e.start}"


def _jsonl(path: Path) -> Iterator[tuple[int, bytes, str, str | None]]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            body = line.rstrip(b"\r\n")
            if not body.strip():
                continue  # blank lines are not records
            text, err = _decode(body)
            yield lineno, body, text, err


def _json(path: Path) -> Iterator[tuple[int, bytes, str, str | None]]:
    data = path.read_bytes()
    text, err = _decode(data)
    if err:
        yield 0, data, text, err
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        yield 0, data, text[:10_000], f"unparseable: {e}"
        return
    if not isinstance(doc, list):
        yield 0, data, text[:10_000], "unparseable: a .json source must hold an array of records"
        return
    for i, rec in enumerate(doc, 1):
        body = json.dumps(rec, ensure_ascii=False)
        yield i, body.encode(), body, None


def _csv(path: Path, delimiter: str) -> Iterator[tuple[int, bytes, str, str | None]]:
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    for row_no, row in enumerate(reader, 1):
        if not any(cell.strip() for cell in row):
            continue
        rec = dict(zip(header, row))
        body_bytes = delimiter.join(row).encode("utf-8", "surrogateescape")
        if any("\udc80" <= ch <= "\udcff" for cell in row for ch in cell):
            bad = body_bytes.decode("utf-8", "backslashreplace")
            yield row_no, body_bytes, bad, "not_utf8: invalid UTF-8 bytes in the row"
        elif len(row) != len(header):
            yield row_no, body_bytes, json.dumps(row, ensure_ascii=False), \
                f"unparseable: expected {len(header)} fields, got {len(row)}"
        else:
            body = json.dumps(rec, ensure_ascii=False)
            yield row_no, body.encode(), body, None


def _parquet(path: Path) -> Iterator[tuple[int, bytes, str, str | None]]:
    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH):
        for rec in batch.to_pylist():
            row_no += 1
            body = json.dumps(rec, ensure_ascii=False, default=str)
            yield row_no, body.encode(), body, None


def read_records(sf: SourceFile, csv_delimiter: str = ",") -> Iterator[dict]:
    rows = {"jsonl": _jsonl, "json": _json, "parquet": _parquet}.get(sf.format)
    it = rows(sf.path) if rows else _csv(sf.path, csv_delimiter)
    for row_no, body, text, err in it:
        key = hashlib.sha256(f"{sf.source}\x1f{sf.rel}\x1f{row_no}\x1f".encode() + hashlib.sha256(body).digest())
        yield {"record_key": key.hexdigest()[:32], "source": sf.source, "source_file": sf.rel,
               "source_row": row_no, "raw": text, "read_error": err}


def write_raw(sources: list[SourceConfig], cache_dir: Path, out_path: str) -> tuple[list[SourceFile], int]:
    """Stream every record of every source into one parquet file; returns the files read and the row count.

    All files are resolved first, so a missing one fails before any output exists.
    """
    files = [(s, sf) for s in sources if s.enabled for sf in list_files(s, cache_dir)]
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    n = 0
    with pq.ParquetWriter(out_path + ".tmp", RAW_SCHEMA) as writer:
        buf: list[dict] = []
        for src, sf in files:
            for rec in read_records(sf, src.csv_delimiter):
                buf.append(rec)
                if len(buf) >= _BATCH:
                    writer.write_table(pa.Table.from_pylist(buf, RAW_SCHEMA))
                    n, buf = n + len(buf), []
        if buf:
            writer.write_table(pa.Table.from_pylist(buf, RAW_SCHEMA))
            n += len(buf)
    os.replace(out_path + ".tmp", out_path)
    return [sf for _, sf in files], n

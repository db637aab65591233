"""Training shards: write one shard in several formats, verify shards against a manifest (Spark-free).

Byte-for-byte determinism is the point: the same rows give the same files and sha256s on every
run and every machine with the same library versions, so an export can be checked and rerun.
Hence a fixed zstd level, single-threaded compression fed in fixed row slices, no timestamps,
no pandas metadata, and an explicit Arrow schema (a shard whose ``difficulty`` happens to be all
null must still write an int column, or loaders cannot concatenate the shards).

Parquet files carry pyarrow's ``created_by`` string (``parquet-cpp-arrow version 26.0.1``) and the
Arrow schema; neither varies between runs, but a different pyarrow (or zstandard) version may
produce different bytes for the same rows, so an export records the versions that wrote it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

FORMATS = ("jsonl.zst", "parquet")
ZSTD_LEVEL = 10  # jsonl.zst; level 10 compresses text ~10% better than 3 at ~50 MB/s a core
PARQUET_ZSTD_LEVEL = 9
PARQUET_ROW_GROUP_ROWS = 20_000  # row groups of ~10-50 MB of text: good for streaming loaders
_JSON_SLICE_ROWS = 2_000  # rows per compressor write: fixed, so the compressed bytes never depend on batching


@dataclass(frozen=True)
class ShardFile:
    path: str  # name relative to the shard directory
    format: str
    rows: int
    tokens: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def write_shard(pdf: pd.DataFrame | pa.Table, directory: str, name: str, formats: Sequence[str] = FORMATS,
                text_column: str = "text", metadata_columns: Sequence[str] = (), *,
                schema: pa.Schema | None = None, tokens_column: str = "n_tokens") -> list[ShardFile]:
    """Write ``<name>.<format>`` for each format from rows already in shard order; returns one ShardFile each.

    Only ``text_column`` + ``metadata_columns`` are written (text first, then metadata in the given
    order); ``tokens`` is the sum of ``tokens_column`` (0 when absent). ``schema`` fixes the column
    types (default: inferred). Each file is written under a unique temporary name and renamed into
    place, so a reader never sees a partial shard and two writers of the same shard cannot collide.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown shard formats {sorted(unknown)}; supported: {list(FORMATS)}")
    cols = [text_column, *metadata_columns]
    table = _to_table(pdf, cols, schema)
    if table.column(text_column).null_count:
        raise ValueError(f"shard {name}: {table.column(text_column).null_count} rows have a null {text_column!r}")
    tokens = 0
    if tokens_column in (pdf.column_names if isinstance(pdf, pa.Table) else pdf.columns):
        tok = pdf[tokens_column]
        tokens = int(pc.sum(tok).as_py() or 0) if isinstance(pdf, pa.Table) else int(tok.sum())
    out = []
    for fmt in formats:
        fname = f"{name}.{fmt}"
        final = os.path.join(directory, fname)
        tmp = os.path.join(directory, f".{fname}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                (_write_jsonl_zst if fmt == "jsonl.zst" else _write_parquet)(table, f)
                f.flush()
                os.fsync(f.fileno())
            size, digest = os.path.getsize(tmp), sha256_file(tmp)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        out.append(ShardFile(fname, fmt, table.num_rows, tokens, size, digest))
    return out


def _to_table(pdf, cols: list[str], schema: pa.Schema | None) -> pa.Table:
    if isinstance(pdf, pa.Table):
        table = pdf.select(cols)
        if schema is not None:
            table = table.cast(pa.schema([schema.field(c) for c in cols]))
    else:
        sub = schema and pa.schema([schema.field(c) for c in cols])
        table = pa.Table.from_pandas(pdf[cols], schema=sub, preserve_index=False)
    return table.replace_schema_metadata(None).cast(  # drop pandas/Spark metadata: not part of the data
        pa.schema([f.remove_metadata() for f in table.schema]))


def _write_jsonl_zst(table: pa.Table, f) -> None:
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0, write_checksum=True)
    with cctx.stream_writer(f, closefd=False) as w:
        for start in range(0, table.num_rows, _JSON_SLICE_ROWS):
            rows = table.slice(start, _JSON_SLICE_ROWS).to_pylist()
            w.write("".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows).encode())


def _write_parquet(table: pa.Table, f) -> None:
    pq.write_table(table, f, compression="zstd", compression_level=PARQUET_ZSTD_LEVEL,
                   row_group_size=PARQUET_ROW_GROUP_ROWS,
                   use_dictionary=[c for c in table.column_names[1:]])  # not the text column: all distinct


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_jsonl_zst(path: str) -> Iterator[dict]:
    """Records of a jsonl.zst shard, streamed. Lines end only at b"\\n" (text may hold U+2028 etc.)."""
    with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr:
        for line in io.BufferedReader(zr, 1 << 20):
            yield json.loads(line)


def count_rows(path: str, fmt: str) -> int:
    if fmt == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    n = 0
    with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr:
        for chunk in iter(lambda: zr.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


def verify(directory: str, manifest: Mapping | None = None) -> list[str]:
    """Problems of the shards in ``directory`` against ``manifest`` (default: its manifest.json); [] if none.

    Checks every listed file exists with the listed size, sha256 and row count, and that no
    unlisted shard file sits beside them (a glob like ``*.parquet`` would load it too).
    """
    if manifest is None:
        with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    manifest = getattr(manifest, "data", manifest)
    problems, listed = [], set()
    for e in manifest["files"]:
        name, path = e["name"], os.path.join(directory, e["name"])
        listed.add(name)
        if not os.path.isfile(path):
            problems.append(f"{name}: missing")
            continue
        if os.path.getsize(path) != e["bytes"]:
            problems.append(f"{name}: size {os.path.getsize(path)} != manifest {e['bytes']}")
        digest = sha256_file(path)
        if digest != e["sha256"]:
            problems.append(f"{name}: sha256 {digest} != manifest {e['sha256']}")
        try:
            rows = count_rows(path, e["format"])
        except Exception as ex:  # a corrupt file cannot be counted; that is the finding
            problems.append(f"{name}: unreadable {e['format']} ({type(ex).__name__}: {ex})")
            continue
        if rows != e["rows"]:
            problems.append(f"{name}: {rows} rows != manifest {e['rows']}")
    for fname in sorted(os.listdir(directory)):
        if fname not in listed and any(fname.endswith("." + fmt) for fmt in FORMATS):
            problems.append(f"{fname}: not in the manifest")
    return problems

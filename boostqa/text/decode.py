"""One source file's bytes -> raw records (Spark-free: runs on executors inside ``mapInArrow``, and
on the driver for small local inputs; both call the same functions, so both give the same records).

The reader never raises on what a file holds. Whatever cannot become a record becomes one anyway,
with ``read_error = "reason: detail"`` (the detail names the line, element, row or field), and the
stage quarantines it with the rest of the rules (``boostqa.text.records``):

- compression: gzip, zstd, bz2 and xz, found by magic bytes (the extension only names the inner
  format: ``x.jsonl.gz``); a truncated or corrupt stream keeps the rows before the damage and adds
  a ``corrupt_file`` row; a file that inflates past ``max_file_bytes`` is one ``too_long`` row;
- encoding: a BOM picks UTF-8, UTF-16 or UTF-32 (LE/BE); without one, UTF-16/32 are recognised by
  the NUL pattern of the first four bytes (as JSON's RFC 4627 did), else UTF-8. Bad bytes make
  their row ``not_utf8`` (UTF-8) or ``bad_encoding`` (UTF-16/32), never the file;
- newlines: LF and CRLF; CR-only files (old Mac exports) are split on CR too;
- jsonl: one record per non-blank line; a line over ``max_record_chars`` is ``too_long``, one
  nested deeper than ``max_depth`` is ``too_deep`` (measured before any parser recurses);
- json: an array of records, element by element: a bad element is one row, the others arrive; a
  ``.json`` file holding JSON lines (as ``datasets.to_json`` writes) is read as JSON lines;
- csv/tsv: the csv module with a field-size limit of ``max_record_chars``; a quoted field that
  swallowed the following lines (an unbalanced quote) is detected by a strict re-parse of the span:
  its first line becomes an ``unparseable`` row and the next lines are read again as rows;
- parquet: every row as JSON; binary columns become text when they are UTF-8, else
  ``{"$base64": ...}`` (which the rules reject as ``not_utf8`` when a mapped field holds it).

Records keep the key semantics of earlier versions: ``record_key`` hashes source, file, row and
the record's bytes (a jsonl line as read; a json element, csv row or parquet row as JSON).
"""

from __future__ import annotations

import base64
import bz2
import codecs
import csv
import hashlib
import io
import json
import lzma
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv",
           ".tsv": "tsv"}
COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
TEXT_FORMATS = ("jsonl", "json", "csv", "tsv")

RAW_FIELDS = [("record_key", pa.string()),  # hash of source, file, row and raw bytes
              ("source", pa.string()),
              ("source_file", pa.string()),  # path relative to the source's root
              ("source_row", pa.int64()),  # 1-based line (jsonl), element (json), data row (csv/parquet); 0 = the file
              ("raw", pa.string()),  # the record's text (jsonl line; json element, csv/parquet row as JSON)
              ("read_error", pa.string())]  # "reason: detail" when the bytes were not a record
RAW_SCHEMA = pa.schema(RAW_FIELDS)
# what the read step stages: the records plus one row per file (kind 'file': source_row = its
# record count, raw = JSON facts: path, sha256, size, compression, encoding, bytes, errors)
STAGED_SCHEMA = pa.schema(RAW_FIELDS + [("kind", pa.string())])

EVIDENCE_CHARS = 10_000  # raw text kept for a row too big or too broken to keep whole
_FLUSH_ROWS, _FLUSH_CHARS = 10_000, 64 << 20
_WS = " \t\n\r\x0b\x0c"  # what bytes.strip() strips: blank-line semantics of earlier versions
_SURROGATE = re.compile("[\ud800-\udfff]")  # decoding marks bad bytes with lone surrogates
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)  # linear; an unclosed string runs to the end
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{},]', re.S)
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1


def _mark(err: UnicodeError) -> tuple[str, int]:
    """Decoding error handler for UTF-16/32: one lone surrogate marks the bad code unit(s)."""
    return "\udfff", err.end


codecs.register_error("boostqa.mark", _mark)


@dataclass(frozen=True)
class Limits:
    """What one record, one nesting and one file may weigh (from ``ingest.*``)."""

    max_record_chars: int = 1_000_000
    max_depth: int = 64
    max_file_bytes: int = 2 << 30


@dataclass(frozen=True)
class FileSpec:
    """How to read one file of one source."""

    source: str
    rel: str  # the file's path relative to the source's root (or the table's name)
    format: str  # jsonl | json | csv | tsv | parquet
    compression: str | None = None  # from the name; magic bytes decide
    delimiter: str = ","


def format_of(name: str, declared: str | None = None) -> tuple[str, str | None] | None:
    """(format, compression) of a file name, or None when neither the name nor ``declared`` says."""
    lower, compression = name.lower(), None
    for ext, kind in COMPRESSIONS.items():
        if lower.endswith(ext):
            lower, compression = lower[:-len(ext)], kind
            break
    if declared:
        return declared, compression
    dot = lower.rfind(".")
    fmt = FORMATS.get(lower[dot:]) if dot >= 0 else None
    return (fmt, compression) if fmt else None


def record_key(source: str, rel: str, row: int, body: bytes) -> str:
    key = hashlib.sha256(f"{source}\x1f{rel}\x1f{row}\x1f".encode() + hashlib.sha256(body).digest())
    return key.hexdigest()[:32]


# ---------------------------------------------------------------------------------------- bytes
def _sniff_compression(data: bytes) -> str | None:
    if data[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if data[:3] == b"BZh" and data[3:4].isdigit() and data[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bz2"
    if data[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return None


def _new_decompressor(kind: str):
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind == "xz":
        return lzma.LZMADecompressor()
    import zstandard  # a dependency; imported here so the module loads without it

    return zstandard.ZstdDecompressor().decompressobj()


def decompress(data: bytes, cap: int) -> tuple[bytes, str | None, str | None]:
    """(bytes, compression, error): inflated by magic bytes (concatenated members/frames too),
    never past ``cap`` bytes. ``error`` is "corrupt_file: ..." (the bytes before the damage are
    returned) or "too_long: ..." (nothing is returned)."""
    kind = _sniff_compression(data)
    if kind is None:
        if len(data) > cap:
            return b"", None, f"too_long: the file has {len(data):,} bytes > limit {cap:,} (ingest.max_file_mb)"
        return data, None, None
    out, rest, step = bytearray(), data, 1 << 20
    try:
        while rest:
            d, buf = _new_decompressor(kind), rest
            while True:
                if kind == "zstd":  # no max_length: feed small slices so a bomb cannot overshoot far
                    chunk, buf = d.decompress(buf[:8192]), buf[8192:]
                    if d.eof:
                        buf = d.unused_data + buf
                else:
                    chunk = d.decompress(buf, step)
                    buf = d.unconsumed_tail if kind == "gzip" else b""
                out += chunk
                if len(out) > cap:
                    return b"", kind, (f"too_long: the file inflates to more than {cap:,} bytes "
                                       "(ingest.max_file_mb)")
                if d.eof:
                    rest = (buf if kind == "zstd" else d.unused_data).lstrip(b"\x00")  # padding between members
                    break
                stalled = not chunk and (kind == "zstd" and not buf or kind == "gzip" and not buf or
                                         kind in ("bz2", "xz") and d.needs_input)
                if stalled:
                    return bytes(out), kind, (f"corrupt_file: the {kind} stream is truncated after "
                                              f"{len(out):,} bytes; rows before the damage were read")
    except Exception as e:  # zlib.error, OSError, EOFError, LZMAError, ZstdError: the stream is broken
        return bytes(out), kind, (f"corrupt_file: the {kind} stream is corrupt after {len(out):,} bytes "
                                  f"({type(e).__name__}: {e}); rows before the damage were read")
    return bytes(out), kind, None


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def sniff_encoding(data: bytes) -> tuple[str, int]:
    """(encoding, BOM length): BOM first, then the NUL pattern of an ASCII first character."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return enc, len(bom)
    b = data[:4]
    if len(b) == 4:
        if not b[0] and not b[1] and not b[2] and b[3]:
            return "utf-32-be", 0
        if b[0] and not b[1] and not b[2] and not b[3]:
            return "utf-32-le", 0
        if not b[0] and b[1] and not b[2] and b[3]:
            return "utf-16-be", 0
        if b[0] and not b[1] and b[2] and not b[3]:
            return "utf-16-le", 0
    return "utf-8", 0


def decode_text(data: bytes, encoding: str) -> str:
    """Text in which every undecodable spot is a lone surrogate: surrogate escapes for UTF-8 (so
    the bytes round-trip: ``text.encode('utf-8', 'surrogateescape')``), a marker for UTF-16/32."""
    if encoding == "utf-8":
        return data.decode("utf-8", "surrogateescape")
    return data.decode(encoding, "boostqa.mark")


# --------------------------------------------------------------------------------------- checks
def json_depth(text: str) -> int:
    """How deep brackets nest outside JSON strings (vectorised; no parser recursion)."""
    bare = _JSON_STRING.sub("", text).encode("utf-8", "surrogatepass")
    steps = _DEPTH_STEP[np.frombuffer(bare, np.uint8)]
    steps = steps[steps != 0]
    return int(np.cumsum(steps, dtype=np.int64).max()) if len(steps) else 0


def too_deep(text: str, limit: int) -> int:
    """The nesting depth when it is over ``limit``, else 0 (cheap when there are few brackets)."""
    if text.count("[") + text.count("{") <= limit:
        return 0
    depth = json_depth(text)
    return depth if depth > limit else 0


def _limit(limits: Limits) -> str:
    return f"limit {limits.max_record_chars:,} (ingest.max_record_chars)"


def _evidence(text: str) -> str:
    return text if len(text) <= EVIDENCE_CHARS else f"{text[:EVIDENCE_CHARS]}... [{len(text):,} chars]"


def _bad_spot(text: str, encoding: str, what: str) -> tuple[bytes, str, str] | None:
    """(body, evidence, error) when ``text`` holds an undecodable spot, else None."""
    m = _SURROGATE.search(text)
    if m is None:
        return None
    i = m.start()
    if encoding == "utf-8":
        body = text.encode("utf-8", "surrogateescape")
        offset = len(text[:i].encode("utf-8", "surrogateescape"))
        byte = ord(text[i]) - 0xDC00 if "\udc80" <= text[i] <= "\udcff" else 0
        return body, _evidence(body.decode("utf-8", "backslashreplace")), \
            f"not_utf8: invalid byte 0x{byte:02x} at offset {offset}{what}"
    shown = _SURROGATE.sub("\ufffd", text)
    return shown.encode(), _evidence(shown), f"bad_encoding: invalid {encoding} sequence at character {i}{what}"


def _default(value: Any) -> Any:
    """JSON for what json cannot write: UTF-8 bytes as text, other bytes as {"$base64": ...}
    (a mapped field holding it is rejected as not_utf8), anything else (dates, decimals) as str."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"$base64": base64.b64encode(value).decode("ascii")}
    return str(value)


def dumps(rec: Any) -> str:
    """The record as JSON text, as earlier versions wrote it (ensure_ascii=False); a record with
    lone surrogates (from \\ud800-style escapes) is written with escapes, so it stays valid UTF-8."""
    text = json.dumps(rec, ensure_ascii=False, default=_default)
    if _SURROGATE.search(text):
        text = json.dumps(rec, ensure_ascii=True, default=_default)
    return text


# ---------------------------------------------------------------------------------------- rows
Row = tuple[int, bytes, str, "str | None"]  # (source_row, body for the key, raw text, read_error)


def _split_lines(text: str) -> list[str]:
    """Lines without their ends. LF (and CRLF) files split on LF as earlier versions did, so row
    numbers stay; a file with more lone CRs than LFs (CR-only line ends) splits on CR too."""
    lf = text.count("\n")
    if text.count("\r") - text.count("\r\n") > lf:
        return _NEWLINE.split(text)
    return [line.rstrip("\r") for line in text.split("\n")]


def _line(n: int, line: str, encoding: str, limits: Limits) -> Row:
    bad = _bad_spot(line, encoding, "")
    if bad:
        return n, bad[0], bad[1], bad[2]
    if len(line) > limits.max_record_chars:
        return n, line.encode(), _evidence(line), \
            f"too_long: the line has {len(line):,} chars > {_limit(limits)}"
    depth = too_deep(line, limits.max_depth)
    if depth:
        return n, line.encode(), _evidence(line), \
            f"too_deep: the line nests {depth:,} levels > limit {limits.max_depth} (ingest.max_depth)"
    return n, line.encode(), line, None


def jsonl_rows(text: str, encoding: str, limits: Limits) -> Iterator[Row]:
    for n, line in enumerate(_split_lines(text), 1):
        if line.strip(_WS):  # blank lines are not records
            yield _line(n, line.rstrip("\r"), encoding, limits)


def _element(i: int, rec: Any, limits: Limits) -> Row:
    body = dumps(rec)
    if len(body) > limits.max_record_chars:
        return i, body.encode(), _evidence(body), \
            f"too_long: element {i} has {len(body):,} chars > {_limit(limits)}"
    return i, body.encode(), body, None


def json_rows(text: str, encoding: str, limits: Limits) -> Iterator[Row]:
    """An array of records, element by element; JSON lines in a .json file are read as such."""
    head = text.lstrip(_WS)
    if not head:
        return
    if head[0] != "[":
        lines = [ln for ln in _split_lines(head) if ln.strip(_WS)]
        if head[0] == "{" and len(lines) > 1 and _is_object(lines[0], limits):
            yield from jsonl_rows(text, encoding, limits)
            return
        body = text.encode("utf-8", "surrogateescape" if encoding == "utf-8" else "surrogatepass")
        yield 0, body, _evidence(body.decode("utf-8", "backslashreplace")), \
            "unparseable: a .json source must hold an array of records (or JSON lines)"
        return
    if not _SURROGATE.search(text) and not too_deep(text, limits.max_depth + 1):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, list):  # the common case: the whole array parses at once
            for i, rec in enumerate(doc, 1):
                yield _element(i, rec, limits)
            return
    yield from _json_elements(text, encoding, limits)


def _is_object(line: str, limits: Limits) -> bool:
    if len(line) > limits.max_record_chars or too_deep(line, limits.max_depth):
        return True  # a record line, just a bad one: jsonl rules will say so
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _json_elements(text: str, encoding: str, limits: Limits) -> Iterator[Row]:
    """Slow path for an array that does not parse whole: split it into top-level elements by a
    linear bracket scan outside strings, and judge each element alone."""
    depth, start, deepest, index, end = 0, None, 0, 0, None
    for m in _JSON_TOKEN.finditer(text, text.index("[")):
        ch = text[m.start()]
        if ch == '"':
            continue
        if ch in "[{":
            depth += 1
            if depth == 1:
                start, deepest = m.end(), 0
            else:
                deepest = max(deepest, depth - 1)
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                piece = text[start:m.start()]
                if piece.strip(_WS):
                    index += 1
                    yield _json_piece(index, piece, deepest, encoding, limits)
                end = m.end()
                break
        elif depth == 1:  # a comma between elements
            piece = text[start:m.start()]
            index += 1
            yield _json_piece(index, piece, deepest, encoding, limits)
            start, deepest = m.end(), 0
    if end is None:  # the array never closed
        piece = text[start:] if start is not None else ""
        if piece.strip(_WS):
            index += 1
            body = piece.encode("utf-8", "surrogatepass")
            yield index, body, _evidence(body.decode("utf-8", "backslashreplace")), \
                f"unparseable: the file ends inside element {index} (truncated?)"
    elif text[end:].strip(_WS):
        tail = text[end:]
        body = tail.encode("utf-8", "surrogatepass")
        yield index + 1, body, _evidence(body.decode("utf-8", "backslashreplace")), \
            "unparseable: data after the end of the array"


def _json_piece(i: int, piece: str, depth: int, encoding: str, limits: Limits) -> Row:
    piece = piece.strip(_WS)
    bad = _bad_spot(piece, encoding, f" of element {i}")
    if bad:
        return i, bad[0], bad[1], bad[2]
    if len(piece) > limits.max_record_chars:
        return i, piece.encode(), _evidence(piece), \
            f"too_long: element {i} has {len(piece):,} chars > {_limit(limits)}"
    if depth > limits.max_depth:
        return i, piece.encode(), _evidence(piece), \
            f"too_deep: element {i} nests {depth:,} levels > limit {limits.max_depth} (ingest.max_depth)"
    if not piece:
        return i, b"", "", f"unparseable: element {i} is empty"
    try:
        rec = json.loads(piece)
    except (ValueError, RecursionError) as e:
        return i, piece.encode(), _evidence(piece), f"unparseable: element {i}: {e}"
    return _element(i, rec, limits)


class _Lines:
    """An iterator over physical lines that knows how many the csv reader took."""

    __slots__ = ("lines", "pos")

    def __init__(self, lines: list[str], pos: int):
        self.lines, self.pos = lines, pos

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _quote_unclosed(lines: list[str], delimiter: str) -> bool:
    """A record spanning these lines does not parse strictly: its quote ran to the end of the data
    or closed in the middle of a field, the marks of a quote that swallowed the next rows."""
    try:
        next(csv.reader(io.StringIO("".join(lines), newline=""), delimiter=delimiter, strict=True))
        return False
    except csv.Error:
        return True


def csv_rows(text: str, encoding: str, delimiter: str, limits: Limits) -> Iterator[Row]:
    """Data rows numbered from 1 after the header (blank rows count, as in earlier versions)."""
    csv.field_size_limit(max(limits.max_record_chars + 1, 131_072))  # process-wide; every caller sets the same
    lines = _LINE.findall(text)
    header: list[str] | None = None
    row_no, pos = 0, 0
    while pos < len(lines):
        src = _Lines(lines, pos)
        reader = csv.reader(src, delimiter=delimiter)
        while True:
            start = src.pos
            try:
                row = next(reader)
            except StopIteration:
                pos = len(lines)
                break
            except csv.Error as e:  # e.g. a field over the size limit
                span = src.pos - start
                if header is None:
                    yield 0, lines[start].encode("utf-8", "surrogatepass"), _evidence(lines[start]), \
                        f"unparseable: the CSV header cannot be read: {e}"
                    return
                row_no += 1
                line = lines[start].rstrip("\r\n")
                body = line.encode("utf-8", "surrogatepass")
                if "field larger than field limit" in str(e) and span <= 1:
                    cells = line.split(delimiter)  # where the big field is (quotes aside)
                    field = next((j for j, c in enumerate(cells) if len(c) > limits.max_record_chars), None)
                    name = f"field {header[field]!r}" if field is not None and field < len(header) else "a field"
                    yield row_no, body, _evidence(body.decode("utf-8", "backslashreplace")), \
                        f"too_long: {name} of the row is over {_limit(limits)}"
                    pos = src.pos
                else:
                    yield row_no, body, _evidence(body.decode("utf-8", "backslashreplace")), \
                        f"unparseable: {e} (the next lines are read again as rows)"
                    pos = start + 1
                break
            span = src.pos - start
            if header is None:
                if span > 1 and _quote_unclosed(lines[start:src.pos], delimiter):
                    yield 0, lines[start].encode("utf-8", "surrogatepass"), _evidence(lines[start]), \
                        "unparseable: unbalanced quote in the CSV header"
                    return
                if any(cell.strip() for cell in row):
                    header = [_SURROGATE.sub("\ufffd", c) for c in row]
                continue
            row_no += 1
            if span > 1 and (len(row) != len(header) or _quote_unclosed(lines[start:src.pos], delimiter)):
                line = lines[start].rstrip("\r\n")
                body = line.encode("utf-8", "surrogatepass")
                yield row_no, body, _evidence(body.decode("utf-8", "backslashreplace")), \
                    (f"unparseable: unbalanced quote: the row's quoted field ran over {span - 1} more lines; "
                     "they are read again as rows")
                pos = start + 1
                break
            if any(cell.strip() for cell in row):
                yield _csv_row(row_no, header, row, delimiter, encoding, limits)


def _csv_row(row_no: int, header: list[str], row: list[str], delimiter: str, encoding: str, limits: Limits) -> Row:
    for j, cell in enumerate(row):
        if _SURROGATE.search(cell):
            name = header[j] if j < len(header) else str(j + 1)
            joined = delimiter.join(row)
            bad = _bad_spot(cell, encoding, f" of field {name!r}")
            if encoding == "utf-8":
                body = joined.encode("utf-8", "surrogateescape")
                return row_no, body, body.decode("utf-8", "backslashreplace"), bad[2]
            shown = _SURROGATE.sub("\ufffd", joined)
            return row_no, shown.encode(), shown, bad[2]
    if len(row) != len(header):
        return row_no, delimiter.join(row).encode(), json.dumps(row, ensure_ascii=False), \
            f"unparseable: expected {len(header)} fields, got {len(row)}"
    body = json.dumps(dict(zip(header, row)), ensure_ascii=False)
    if len(body) > limits.max_record_chars:
        return row_no, body.encode(), _evidence(body), \
            f"too_long: the row has {len(body):,} chars > {_limit(limits)}"
    return row_no, body.encode(), body, None


def parquet_rows(data: bytes, limits: Limits) -> Iterator[Row]:
    row_no = 0
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        for batch in pf.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                row_no += 1
                yield _element(row_no, rec, limits)
    except Exception as e:  # a broken footer, page or type: the rows before it were read
        msg = f"corrupt_file: the parquet file cannot be read after row {row_no} ({type(e).__name__}: {e})"
        yield 0, msg.encode(), "", msg


# ---------------------------------------------------------------------------------------- files
def file_rows(data: bytes, spec: FileSpec, limits: Limits, info: dict | None = None) -> Iterator[Row]:
    """Every row of one file; ``info`` collects facts about it (compression, encoding, bytes)."""
    info = {} if info is None else info
    data, compression, error = decompress(data, limits.max_file_bytes)
    info.update(compression=compression, bytes=len(data))
    if error:
        yield 0, error.encode(), "", error
        if error.startswith("too_long"):
            return
    if spec.format == "parquet":
        yield from parquet_rows(data, limits)
        return
    encoding, bom = sniff_encoding(data)
    info["encoding"] = encoding + ("+bom" if bom else "")
    text = decode_text(data[bom:] if bom else data, encoding)
    if spec.format == "jsonl":
        yield from jsonl_rows(text, encoding, limits)
    elif spec.format == "json":
        yield from json_rows(text, encoding, limits)
    elif spec.format in ("csv", "tsv"):
        yield from csv_rows(text, encoding, "\t" if spec.format == "tsv" else spec.delimiter, limits)
    else:
        msg = f"unparseable: unknown format {spec.format!r}"
        yield 0, msg.encode(), "", msg


def file_records(data: bytes, spec: FileSpec, limits: Limits, info: dict | None = None) -> Iterator[dict]:
    """Raw records of one file (RAW_SCHEMA dicts); ``info`` gets the file's facts and counts."""
    info = {} if info is None else info
    info.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data), format=spec.format)
    n = errors = 0
    for row, body, text, err in file_rows(data, spec, limits, info):
        n, errors = n + 1, errors + (err is not None)
        yield {"record_key": record_key(spec.source, spec.rel, row, body), "source": spec.source,
               "source_file": spec.rel, "source_row": row, "raw": text, "read_error": err}
    info.update(records=n, errors=errors)


def manifest_row(spec: FileSpec, path: str, info: dict) -> dict:
    return {"record_key": None, "source": spec.source, "source_file": spec.rel, "source_row": info.get("records", 0),
            "raw": json.dumps({"path": path, **info}, default=str), "read_error": None, "kind": "file"}


class RowBuffer:
    """Rows -> Arrow record batches of bounded rows and text (a string column stays < 2 GiB)."""

    def __init__(self, schema: pa.Schema = STAGED_SCHEMA):
        self.schema, self.cols, self.chars = schema, {f.name: [] for f in schema}, 0

    def add(self, rec: dict) -> bool:
        for name, col in self.cols.items():
            col.append(rec.get(name))
        self.chars += len(rec.get("raw") or "")
        return len(self.cols["source"]) >= _FLUSH_ROWS or self.chars >= _FLUSH_CHARS

    def __len__(self) -> int:
        return len(self.cols["source"])

    def flush(self) -> pa.RecordBatch:
        arrays = []
        for f in self.schema:
            values = self.cols[f.name]
            try:
                arrays.append(pa.array(values, f.type))
            except (pa.ArrowInvalid, UnicodeEncodeError):  # a lone surrogate slipped through: escape it
                arrays.append(pa.array([v.encode("utf-8", "backslashreplace").decode() if isinstance(v, str) else v
                                        for v in values], f.type))
        self.cols, self.chars = {f.name: [] for f in self.schema}, 0
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def path_key(path: str) -> str:
    """A file path as engines report it, made comparable: no scheme, no leading slashes
    (Sail reports 'tmp/x', Spark 'file:/tmp/x', Databricks 'dbfs:/Volumes/x')."""
    return re.sub(r"^[A-Za-z][A-Za-z0-9+.\-]*:", "", path).lstrip("/")


def lookup(files: dict[str, list[FileSpec]], path: str) -> list[FileSpec] | None:
    key = path_key(path)
    return files.get(key) or files.get(path_key(unquote(path)))


def decode_batches(batches: Iterator[pa.RecordBatch], files: dict[str, list[FileSpec]],
                   limits: Limits) -> Iterator[pa.RecordBatch]:
    """mapInArrow kernel: (path, content) rows of a binaryFile read -> STAGED_SCHEMA batches, the
    records of every file plus one 'file' row with its facts. A path seen twice (Sail returns a
    large file once per byte range) is read once: all copies share a partition after the
    repartition by path."""
    seen: set[str] = set()
    buf = RowBuffer()
    for batch in batches:
        paths, contents = batch.column("path").to_pylist(), batch.column("content")
        for i, path in enumerate(paths):
            if path in seen:
                continue
            seen.add(path)
            specs = lookup(files, path)
            if not specs:
                spec = FileSpec("", path, "")
                if buf.add(manifest_row(spec, path, {"error": "the engine returned a file nobody listed"})):
                    yield buf.flush()
                continue
            data = contents[i].as_py()
            for spec in specs:
                info: dict = {}
                for rec in file_records(data, spec, limits, info):
                    rec["kind"] = "record"
                    if buf.add(rec):
                        yield buf.flush()
                if buf.add(manifest_row(spec, path, info)):
                    yield buf.flush()
            del data
    if len(buf):
        yield buf.flush()


TABLE_FIELDS = [("source", pa.string()), ("source_file", pa.string()), ("h", pa.string()), ("raw", pa.string()),
                ("read_error", pa.string())]


def table_batches(batches: Iterator[pa.RecordBatch], source: str, name: str,
                  limits: Limits) -> Iterator[pa.RecordBatch]:
    """mapInArrow kernel for a table source: each row as JSON (as parquet rows are written) and
    the hex SHA-256 of that JSON, which gives the row its number and key (``table_keys``)."""
    schema = pa.schema(TABLE_FIELDS)
    for batch in batches:
        buf = RowBuffer(schema)
        for rec in batch.to_pylist():
            body = dumps(rec)
            err = None
            if len(body) > limits.max_record_chars:
                err = f"too_long: the row has {len(body):,} chars > {_limit(limits)}"
            buf.add({"source": source, "source_file": name, "h": hashlib.sha256(body.encode()).hexdigest(),
                     "raw": _evidence(body) if err else body, "read_error": err})
        if len(buf):
            yield buf.flush()


def table_keys(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Rows of ``table_batches`` plus ``k`` (the copy number among identical rows) -> raw records.
    A table has no row order: a row's number is taken from its content (and copy number), so a
    rewritten or compacted table keeps its keys."""
    for batch in batches:
        cols = batch.to_pydict()
        rows, keys = [], []
        for src, name, h, k in zip(cols["source"], cols["source_file"], cols["h"], cols["k"]):
            digest = h if k == 1 else hashlib.sha256(f"{h}:{k}".encode()).hexdigest()
            row = int(digest[:15], 16)
            rows.append(row)
            keys.append(hashlib.sha256(f"{src}\x1f{name}\x1f{row}\x1f".encode() + bytes.fromhex(h)).hexdigest()[:32])
        yield pa.RecordBatch.from_arrays(
            [pa.array(keys, pa.string()), batch.column("source"), batch.column("source_file"),
             pa.array(rows, pa.int64()), batch.column("raw"), batch.column("read_error"),
             pa.array(["record"] * len(rows), pa.string())], schema=STAGED_SCHEMA)

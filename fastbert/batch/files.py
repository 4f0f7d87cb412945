"""Streaming readers and writers for `fastbert encode`: numpy, the standard library and (for Parquet only)
pyarrow; no torch, no transformers.

Readers yield one (text, pair) tuple per input row, in file order, and say how far through the file they are
(for the progress bar). Every error names the file and, where there is one, the line. Writers append
embedding blocks in order and write to a temporary name that `atomic_output` renames into place only when the
whole run succeeded, so an interrupted run never leaves a half-written file under the output's name.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

INPUT_FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")
OUTPUT_FORMATS = ("npy", "parquet")
_INPUT_SUFFIXES = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_OUTPUT_SUFFIXES = {".npy": "npy", ".parquet": "parquet", ".pq": "parquet"}


class InputError(ValueError):
    """Bad input data or arguments; the message names the file (and line) and is meant for the user."""


Row = tuple[str, str | None]  # (text, second text of a pair or None)


def input_format(path: str, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in INPUT_FORMATS:
            raise InputError(f"unknown input format {fmt!r}; choose one of {', '.join(INPUT_FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _INPUT_SUFFIXES:
        raise InputError(
            f"{path}: cannot tell the input format from the suffix {suffix or '(none)'!r}; "
            f"pass --input-format ({', '.join(INPUT_FORMATS)})"
        )
    return _INPUT_SUFFIXES[suffix]


def output_format(path: str, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in OUTPUT_FORMATS:
            raise InputError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _OUTPUT_SUFFIXES:
        raise InputError(
            f"{path}: cannot tell the output format from the suffix {suffix or '(none)'!r}; "
            "use .npy or .parquet (or pass --output-format)"
        )
    return _OUTPUT_SUFFIXES[suffix]


def _require_pyarrow(what: str):
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{what} needs pyarrow: pip install pyarrow") from None
    return pq


# ---------------------------------------------------------------------------------------------- readers


class Reader:
    """Iterate over (text, pair) rows of one input file; `rows` counts the rows yielded so far and
    `estimated_rows()` guesses the total (for the progress bar's percent and ETA)."""

    def __init__(
        self,
        path: str,
        fmt: str | None = None,
        text_field: str | None = None,
        pair_field: str | None = None,
        header: bool = True,
        extra_fields: tuple[str, ...] = (),
    ):
        self.path = str(path)
        self.fmt = input_format(self.path, fmt)
        if not os.path.exists(self.path):
            raise InputError(f"{self.path}: no such input file")
        if os.path.isdir(self.path):
            raise InputError(f"{self.path}: is a directory, not an input file")
        if self.fmt == "txt" and (text_field or pair_field):
            raise InputError(
                f"{self.path}: a .txt input has one text per line and no fields; "
                "use .jsonl, .csv, .tsv or .parquet for --text-field/--pair-field"
            )
        self.text_field = text_field
        self.pair_field = pair_field
        self.header = header
        # extra_fields (fine-tuning's labels): their values follow (text, pair) in each row, as the file holds
        # them (JSON and Parquet values keep their types; CSV/TSV cells are strings)
        self.extra_fields = tuple(extra_fields)
        if self.fmt == "txt" and self.extra_fields:
            raise InputError(f"{self.path}: a .txt input has no fields; use .jsonl, .csv, .tsv or .parquet")
        self.rows = 0
        self.where = self.path  # "path:line" (or "path: row N" for Parquet) of the row last yielded
        self.total_bytes = os.path.getsize(self.path)
        self.bytes_read = 0
        self.total_rows: int | None = None
        if self.fmt == "parquet":
            pq = _require_pyarrow("reading Parquet")
            try:
                self._pq = pq.ParquetFile(self.path)
            except Exception as exc:  # pyarrow raises its own error types
                raise InputError(f"{self.path}: not a readable Parquet file ({exc})") from None
            self.total_rows = self._pq.metadata.num_rows
            names = self._pq.schema_arrow.names
            for f in (self.text_field or "text", self.pair_field, *self.extra_fields):
                if f is not None and f not in names:
                    option = "--label-field" if f in self.extra_fields else "--text-field/--pair-field"
                    raise InputError(f"{self.path}: no column {f!r} (columns: {', '.join(names)}); pass {option}")

    def estimated_rows(self) -> float | None:
        """Rows in the whole file: exact for Parquet, else extrapolated from the bytes read so far."""
        if self.total_rows is not None:
            return float(self.total_rows)
        if self.bytes_read and self.total_bytes:
            return self.rows * self.total_bytes / self.bytes_read
        return None

    def __iter__(self) -> Iterator[Row]:
        gen = {"txt": self._txt, "jsonl": self._jsonl, "csv": self._csv, "tsv": self._csv, "parquet": self._parquet}[
            self.fmt
        ]()
        for row in gen:
            self.rows += 1
            yield row

    # Lines are read as bytes and decoded one by one so a bad byte is reported with its line number.
    def _lines(self) -> Iterator[tuple[int, str]]:
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                self.bytes_read += len(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"{self.path}:{lineno}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                    ) from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line

    def _txt(self) -> Iterator[Row]:
        for _, line in self._lines():
            yield line.rstrip("\r\n"), None

    def _field(self, obj: dict, name: str, where: str) -> str:
        if name not in obj:
            raise InputError(
                f"{where}: no field {name!r} (fields: {', '.join(map(str, obj)) or 'none'}); "
                "pass --text-field/--pair-field"
            )
        value = obj[name]
        if value is None:
            return ""
        return value if isinstance(value, str) else str(value)

    def _blank_row(self, where: str) -> None:
        """A blank line is an empty text, but never a row of labels."""
        if self.extra_fields:
            raise InputError(f"{where}: an empty line where a row with {self.extra_fields[0]!r} was expected")

    def _value(self, obj: dict, name: str, where: str) -> object:
        if name not in obj:
            raise InputError(f"{where}: no field {name!r} (fields: {', '.join(map(str, obj)) or 'none'})")
        return obj[name]

    def _jsonl(self) -> Iterator[Row]:
        text_field = self.text_field or "text"
        for lineno, line in self._lines():
            where = f"{self.path}:{lineno}"
            if not line.strip():
                self._blank_row(where)
                yield "", ("" if self.pair_field else None)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                hint = (
                    "; this looks like one JSON array, encode reads JSON lines (one object per line)"
                    if lineno == 1 and line.lstrip().startswith("[")
                    else ""
                )
                raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}){hint}") from None
            if not isinstance(obj, dict):
                raise InputError(
                    f"{where}: expected a JSON object with a {text_field!r} field, got {type(obj).__name__}"
                )
            self.where = where
            row = (
                self._field(obj, text_field, where),
                self._field(obj, self.pair_field, where) if self.pair_field else None,
            )
            yield row + tuple(self._value(obj, name, where) for name in self.extra_fields)

    def _csv(self) -> Iterator[Row]:
        lineno = 0

        def lines():
            nonlocal lineno
            for lineno, line in self._lines():  # noqa: B007  (sets the nonlocal lineno the errors name)
                yield line

        delimiter = "\t" if self.fmt == "tsv" else ","
        reader = csv.reader(lines(), delimiter=delimiter)
        text_col = pair_col = None
        extra_cols: list[int] = []
        try:
            first = True
            for record in reader:
                if first and self.header:
                    first = False
                    names = record
                    text_name = self.text_field or "text"
                    if text_name not in names:
                        raise InputError(
                            f"{self.path}:{lineno}: the header has no column {text_name!r} "
                            f"(columns: {', '.join(names)}); pass --text-field"
                        )
                    text_col = names.index(text_name)
                    if self.pair_field is not None:
                        if self.pair_field not in names:
                            raise InputError(
                                f"{self.path}:{lineno}: the header has no column "
                                f"{self.pair_field!r} (columns: {', '.join(names)})"
                            )
                        pair_col = names.index(self.pair_field)
                    for name in self.extra_fields:
                        if name not in names:
                            raise InputError(
                                f"{self.path}:{lineno}: the header has no column {name!r} (columns: {', '.join(names)})"
                            )
                        extra_cols.append(names.index(name))
                    continue
                if first:  # no header: fields are 0-based column numbers
                    first = False
                    text_col = self._column_number(self.text_field or "0")
                    pair_col = None if self.pair_field is None else self._column_number(self.pair_field)
                    extra_cols = [self._column_number(name) for name in self.extra_fields]
                self.where = f"{self.path}:{lineno}"
                if not record:  # a blank line is an empty row
                    self._blank_row(self.where)
                    yield "", ("" if pair_col is not None else None)
                    continue
                need = max(text_col, pair_col if pair_col is not None else -1, *extra_cols)
                if need >= len(record):
                    raise InputError(f"{self.path}:{lineno}: {len(record)} column(s), expected at least {need + 1}")
                row = (record[text_col], (record[pair_col] if pair_col is not None else None))
                yield row + tuple(record[c] for c in extra_cols)
        except csv.Error as exc:
            raise InputError(f"{self.path}:{lineno}: malformed {self.fmt.upper()} ({exc})") from None

    def _column_number(self, field: str) -> int:
        try:
            return int(field)
        except ValueError:
            raise InputError(
                f"{self.path}: with --no-header, --text-field/--pair-field are 0-based column numbers, got {field!r}"
            ) from None

    def _parquet(self) -> Iterator[Row]:
        text_field = self.text_field or "text"
        columns = [text_field] + ([self.pair_field] if self.pair_field else []) + list(self.extra_fields)
        first_extra = 2 if self.pair_field else 1
        for batch in self._pq.iter_batches(batch_size=4096, columns=columns):
            texts = batch.column(0).to_pylist()
            pairs = batch.column(1).to_pylist() if self.pair_field else [None] * len(texts)
            extras = [batch.column(first_extra + i).to_pylist() for i in range(len(self.extra_fields))]
            for i, (t, p) in enumerate(zip(texts, pairs)):
                if self.pair_field:
                    p = "" if p is None else str(p)
                self.where = f"{self.path}: row {self.rows + 1}"
                yield (("" if t is None else str(t)), p) + tuple(column[i] for column in extras)


# ---------------------------------------------------------------------------------------------- writers


class NpyWriter:
    """A .npy file written block by block: the header is reserved up front with room for any row count
    and rewritten with the final shape on close (numpy reads the padding spaces as part of the header)."""

    HEADER_LEN = 128  # magic(6) + version(2) + length(2) + dict, padded with spaces to a multiple of 64

    def __init__(self, path: str, dim: int, dtype: DTypeLike = np.float32):
        self.path, self.dim, self.dtype = path, int(dim), np.dtype(dtype)
        self.rows = 0
        self._f = open(path, "wb")
        self._f.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        d = f"{{'descr': {self.dtype.str!r}, 'fortran_order': False, 'shape': ({rows:d}, {self.dim:d}), }}"
        body_len = self.HEADER_LEN - 10
        body = d.ljust(body_len - 1) + "\n"
        if len(body) != body_len:
            raise ValueError("npy header overflow")
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", body_len) + body.encode("latin1")

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"expected a block of shape (n, {self.dim}), got {tuple(block.shape)}")
        self._f.write(block.tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(self._header(self.rows))
        self._f.close()

    def abort(self) -> None:
        self._f.close()


class ParquetWriter:
    """Parquet with one column `embedding` of fixed-size float lists, one row group per block batch."""

    def __init__(self, path: str, dim: int, dtype: DTypeLike = np.float32):
        pq = _require_pyarrow("writing Parquet")
        import pyarrow as pa

        self._pa = pa
        self.dim, self.dtype, self.rows = int(dim), np.dtype(dtype), 0
        value_type = pa.float16() if self.dtype == np.float16 else pa.float32()
        self._schema = pa.schema([("embedding", pa.list_(value_type, self.dim))])
        self._w = pq.ParquetWriter(path, self._schema)

    def write(self, block: np.ndarray) -> None:
        pa = self._pa
        block = np.ascontiguousarray(block, dtype=self.dtype)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), self.dim)
        self._w.write_table(pa.Table.from_arrays([arr], schema=self._schema))
        self.rows += block.shape[0]

    def close(self) -> None:
        self._w.close()

    def abort(self) -> None:
        try:
            self._w.close()
        except Exception:
            pass


def open_writer(path: str, fmt: str, dim: int, dtype: DTypeLike = np.float32) -> NpyWriter | ParquetWriter:
    return NpyWriter(path, dim, dtype) if fmt == "npy" else ParquetWriter(path, dim, dtype)


def read_embeddings(path: str) -> np.ndarray:
    """Load what `fastbert encode` wrote (.npy or .parquet) as a (rows, dim) array."""
    if output_format(path) == "npy":
        return np.load(path)
    pq = _require_pyarrow("reading Parquet")
    col = pq.read_table(path).column("embedding").combine_chunks()
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1)


# ---------------------------------------------------------------------------------------------- atomicity


def temp_name(path: str, tag: str) -> str:
    p = Path(path)
    return str(p.with_name(f".{p.name}.{tag}.part"))


@contextmanager
def atomic_output(path: str, tag: str | None = None) -> Iterator[str]:
    """Yield a temporary path next to `path`; rename it to `path` when the block succeeds, delete it when
    the block raises (KeyboardInterrupt and SystemExit included)."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise InputError(f"{path}: the output folder {str(parent)!r} does not exist")
    tmp = temp_name(path, tag or str(os.getpid()))
    try:
        yield tmp
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    os.replace(tmp, path)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what torchrun and job schedulers send) raises KeyboardInterrupt, so `finally` blocks and
    `atomic_output` clean up exactly as on Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def eprint(*args, **kwargs) -> None:
    print(*args, file=sys.stderr, flush=True, **kwargs)

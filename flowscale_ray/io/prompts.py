"""Prompt sources: inline lists and files (text, JSONL, CSV, Parquet) at any fsspec URI.

    text     one prompt per line; blank lines are skipped
    jsonl    one JSON object per line: {"prompt": "...", "id": "...", "seed": 3, "counts": {...}}
    csv      a header row naming the columns
    parquet  a string column

The prompt is the `column` (default `prompt`). A prompt's id is the `id_column` (default `id`, when the
file has one), else derived from the row number and the text: `000042-1a2b3c4d` (row 42, first 8 hex
digits of the text's SHA-256), stable as long as the file is. A `seed_column` (default `seed`) overrides the
run seed per prompt. Every other key or column is kept as the prompt's metadata, which rewards read (for
example `counts` for the counting reward); a CSV cell that holds a JSON object or list is decoded.
Rows count from 1 (lines for text and JSONL, data records for CSV, table rows for Parquet). Compressed
files (`.gz`, `.bz2`, `.xz`, `.zst`) are read by their extension.

Bad input fails before any work starts, with one line naming the file, the row and the problem: a missing
or empty file, a missing column, an undecodable or malformed line, an empty prompt, a bad seed, a duplicated
prompt id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flowscale_ray.config import ConfigError, PromptFileConfig, StorageConfig
from flowscale_ray.errors import first_line
from flowscale_ray.io.storage import Redactor, open_filesystem, resolve_local, retry
from flowscale_ray.prompts import Prompt

WHERE = "prompts.file"
_EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".lst": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
MAX_DEPTH = 32  # levels of nesting a prompt's metadata may have
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


def derived_id(row: int, text: str) -> str:
    """The id of a prompt that has none: its row number and a digest of its text."""
    return f"{row:06d}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def prompts_digest(prompts: list[Prompt]) -> str:
    """SHA-256 over every prompt's id, text, seed and metadata, in order (part of the run's config hash)."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.id, p.text, p.seed, p.metadata], sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def load_prompts(
    spec: list[str | dict[str, Any]] | PromptFileConfig,
    base_dir: Path | None = None,
    storage: StorageConfig | None = None,
) -> list[Prompt]:
    """Read and validate every prompt. Raises ConfigError (one line, naming the file and row)."""
    if isinstance(spec, PromptFileConfig):
        return read_prompt_file(spec, base_dir, storage)
    if not spec:
        raise ConfigError("prompts", "must hold at least one prompt")
    rows = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            item = {"prompt": item}
        rows.append((i + 1, item))
    return _build(rows, PromptFileConfig(file="<inline>", format="jsonl"), None, "", "prompts")


def read_prompt_file(
    spec: PromptFileConfig, base_dir: Path | None = None, storage: StorageConfig | None = None
) -> list[Prompt]:
    redact = Redactor.for_storage(storage)
    name = redact(spec.file)  # for messages: a URL's user-info is not shown
    uri = resolve_local(spec.file, base_dir)
    if "://" not in uri and Path(uri).is_dir():
        raise ConfigError(WHERE, f"{name} is a directory, not a prompt file; name the file in it")
    fmt, compression = _format_of(spec, uri, name)

    def read() -> tuple[list[tuple[int, dict[str, Any]]], bytes]:
        fs, path = open_filesystem(uri, storage)
        if not fs.isfile(path):
            if fs.isdir(path):
                raise ConfigError(WHERE, f"{name} is a directory, not a prompt file; name the file in it")
            raise ConfigError(WHERE, f"no such file: {name}")
        with fs.open(path, "rb", compression=compression) as f:
            if fmt == "parquet":
                return list(_parquet_rows(f, name, spec)), b""
            return [], f.read()

    try:
        rows, data = retry(read, f"read {name}", storage.retries if storage is not None else 5)
    except ConfigError:
        raise
    except Exception as exc:  # storage and decoding errors, reported on one line
        msg = first_line(exc, typed=False)
        raise ConfigError(WHERE, f"cannot read {name}: {redact(msg)}") from None
    if fmt != "parquet":
        if not data.strip():
            raise ConfigError(WHERE, f"{name} is empty")
        text = _decode(data, name)
        if fmt == "text":
            rows = [(n, {"prompt": line.strip()}) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
            spec = PromptFileConfig(file=spec.file, format="text")
        elif fmt == "jsonl":
            rows = list(_jsonl_rows(text, name))
        else:
            rows = list(_csv_rows(text, name, spec))
    if not rows:
        raise ConfigError(WHERE, f"{name} holds no prompts")
    return _build(rows, spec, name, "line" if fmt in ("text", "jsonl") else "row", WHERE)


def _format_of(spec: PromptFileConfig, uri: str, name: str) -> tuple[str, str | None]:
    lower = uri.lower().rstrip("/")
    compression = None
    for ext, comp in _COMPRESSIONS.items():
        if lower.endswith(ext):
            compression, lower = comp, lower[: -len(ext)]
    if spec.format != "auto":
        return spec.format, compression
    for ext, fmt in _EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt, compression
    allowed = ", ".join(sorted(_EXTENSIONS))
    raise ConfigError(
        "prompts.format",
        f"cannot tell the format of {name} from its extension ({allowed}); set it to text, jsonl, csv or parquet",
    )


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(WHERE, f"{name} line {line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None
    return text.removeprefix("\ufeff")


def _jsonl_rows(text: str, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            raise ConfigError(
                WHERE, f"{name} line {n}: key {exc.key!r} is given twice in one object (JSON would keep the last)"
            ) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(WHERE, f"{name} line {n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise ConfigError(
                WHERE, f"{name} line {n}: JSON nested too deeply (metadata may nest at most {MAX_DEPTH} levels)"
            ) from None
        except ValueError:  # Python's limit on converting long digit strings
            raise ConfigError(WHERE, f"{name} line {n}: invalid JSON (a number of more than 4300 digits)") from None
        if not isinstance(obj, dict):
            raise ConfigError(WHERE, f"{name} line {n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _csv_rows(text: str, name: str, spec: PromptFileConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    """Data records as mappings. The reader is strict: a quote that is never closed (which would swallow every
    row after it into one field) or text after a closing quote is an error naming the line where the record
    starts; so is a record with more or fewer fields than the header, or a column named twice."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1  # the line the next record starts on

    def bad(exc: csv.Error) -> ConfigError:
        what = str(exc)
        if "unexpected end of data" in what:
            what = "a quoted field that opens here is never closed (an unterminated quote)"
        return ConfigError(
            WHERE,
            f"{name} line {start}: bad CSV ({what}); a field that starts with a double quote must end with one, "
            'and a quote inside it is written twice ("")',
        )

    try:
        columns = next(reader, None)
    except csv.Error as exc:
        raise bad(exc) from None
    if not columns:
        raise ConfigError(WHERE, f"{name} is empty")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ConfigError(WHERE, f"{name} line 1: column {repeated[0]!r} is named twice in the header")
    _require_columns(columns, spec, name)
    row = 0
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            raise bad(exc) from None
        if fields is None:
            return
        if not fields:  # a blank line
            continue
        row += 1
        if len(fields) != len(columns):
            more = "more" if len(fields) > len(columns) else "fewer"
            raise ConfigError(
                WHERE,
                f"{name} row {row} (line {start}): {len(fields)} field(s), {more} than the header's {len(columns)}",
            )
        record = dict(zip(columns, fields, strict=True))
        yield row, {k: _csv_cell(v) if k != spec.column else v for k, v in record.items()}


def _csv_cell(value: str | None) -> Any:
    if value is None or value == "":
        return None
    if value[:1] in "{[":
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON after all (JSONDecodeError is a ValueError)
            return value  # kept as text; nesting past MAX_DEPTH is refused with the row
    return value


def _parquet_rows(f: Any, name: str, spec: PromptFileConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(WHERE, f"{name}: not a readable Parquet file ({first_line(exc, typed=False)})") from None
    _require_columns(table.column_names, spec, name)
    kind = table.schema.field(spec.column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ConfigError(WHERE, f"{name}: column {spec.column!r} must hold strings, got {kind}")
    columns = {c: table.column(c).to_pylist() for c in table.column_names}
    for i in range(table.num_rows):
        yield i + 1, {c: values[i] for c, values in columns.items()}


def _require_columns(columns: Sequence[str], spec: PromptFileConfig, name: str) -> None:
    for label, col in (("column", spec.column), ("id_column", spec.id_column), ("seed_column", spec.seed_column)):
        if col is not None and col not in columns:
            raise ConfigError(
                WHERE, f"{name}: missing column {col!r} (prompts.{label}); columns: {', '.join(map(str, columns))}"
            )


def _build(
    rows: list[tuple[int, dict[str, Any]]], spec: PromptFileConfig, name: str | None, unit: str, where: str
) -> list[Prompt]:
    """Rows (number, mapping) -> validated Prompts. Errors name `name` and the row (`prompts[i]` inline)."""

    def at(n: int) -> str:
        return f"{name} {unit} {n}" if name is not None else f"prompts[{n - 1}]"

    def first(n: int) -> str:
        return f"{unit} {n}" if name is not None else f"prompts[{n - 1}]"

    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    id_key = spec.id_column or "id"
    seed_key = spec.seed_column or "seed"
    for n, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(where, f"{at(n)}: expected a string or a mapping, got {type(row).__name__}")
        if spec.column not in row:
            keys = ", ".join(map(str, row)) or "none"
            raise ConfigError(where, f"{at(n)}: no {spec.column!r} key (prompts.column); keys: {keys}")
        text = row[spec.column]
        if not isinstance(text, str):
            raise ConfigError(where, f"{at(n)}: {spec.column!r} must be a string, got {text!r}")
        text = text.strip()
        if not text:
            raise ConfigError(where, f"{at(n)}: empty prompt")
        bad = _unwritable(text)
        if bad:
            raise ConfigError(where, f"{at(n)}: the prompt {bad}")
        pid = row.get(id_key)
        if pid is None or pid == "":
            if spec.id_column is not None:
                raise ConfigError(where, f"{at(n)}: empty prompt id ({spec.id_column!r})")
            pid = derived_id(n, text)
        elif isinstance(pid, bool) or not isinstance(pid, str | int):
            raise ConfigError(where, f"{at(n)}: prompt id must be a string or an integer, got {pid!r}")
        pid = str(pid)
        if pid in seen:
            raise ConfigError(where, f"{at(n)}: duplicate prompt id {pid!r} (first at {first(seen[pid])})")
        seen[pid] = n
        seed = row.get(seed_key)
        if isinstance(seed, str) and seed.strip().lstrip("-").isdigit():  # a CSV cell
            digits = seed.strip().lstrip("-")
            if len(digits) > 20:  # past what int() converts quickly, and far past 2**63
                raise ConfigError(where, f"{at(n)}: seed must be < 2**63, got a number of {len(digits)} digits")
            seed = int(seed)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(where, f"{at(n)}: seed must be an integer >= 0, got {seed!r}")
        if seed is not None and seed >= 2**63:
            raise ConfigError(where, f"{at(n)}: seed must be < 2**63 (9223372036854775808), got {seed}")
        metadata = {k: v for k, v in row.items() if k not in (spec.column, id_key, seed_key) and v is not None}
        bad = _unwritable(pid)
        if bad:
            raise ConfigError(where, f"{at(n)}: the prompt id {bad}")
        bad = _unwritable(metadata)
        if bad:
            raise ConfigError(where, f"{at(n)}: metadata {bad}")
        prompts.append(Prompt(id=pid, text=text, seed=seed, metadata=metadata))
    return prompts


def _unwritable(value: Any, depth: int = 0) -> str | None:
    """Why `value` (a prompt's text, id or metadata) cannot be written to the output's UTF-8 Parquet and JSON, or
    None: a lone surrogate (JSON's "\\ud800" decodes to one), NaN or infinity (not JSON), nesting past 32 levels."""
    if depth > MAX_DEPTH:
        return f"nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"holds a lone surrogate ({value[exc.start]!r} at character {exc.start}), which UTF-8 cannot encode"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"holds {value}, which JSON cannot hold"
    if isinstance(value, dict):
        for k, v in value.items():
            why = _unwritable(k, depth + 1) or _unwritable(v, depth + 1)
            if why:
                return f"{k!r}: {why}" if isinstance(k, str) and not _unwritable(k) else why
    elif isinstance(value, list | tuple):
        for v in value:
            why = _unwritable(v, depth + 1)
            if why:
                return why
    return None

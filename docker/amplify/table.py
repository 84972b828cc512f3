"""Amplify's table step: each CSV, TSV or JSON table validated (one header, every row as wide as it, no line
over MAX_LINE, at most MAX_COLUMNS columns) and profiled per column (its type, counts of values, empties and
distinct values, min and max), into <file>.profile.json. A CSV is streamed a line at a time; a JSON table is
read whole up to MAX_JSON_BYTES (a list of objects, an object of lists, or JSON lines).

A table that is not valid is reported so, with the first errors, and still exits 0: an invalid table is a
finding, not a failure of the step."""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from amplify_common import output_path, run_each

MAX_COLUMNS = 10_000
MAX_LINE = 1024 * 1024
MAX_ROWS = 5_000_000
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_DISTINCT = 1000
MAX_ERRORS = 10


class Column:
    def __init__(self, name: str) -> None:
        self.name = name
        self.values = self.empty = 0
        self.types: dict[str, int] = {}
        self.distinct: set[str] = set()
        self.many = False
        self.low: float | str | None = None
        self.high: float | str | None = None

    def add(self, value: Any) -> None:
        if value is None or value == "":
            self.empty += 1
            return
        self.values += 1
        kind, key = _kind(value)
        self.types[kind] = self.types.get(kind, 0) + 1
        if not self.many:
            self.distinct.add(str(value)[:200])
            if len(self.distinct) > MAX_DISTINCT:
                self.many, self.distinct = True, set()
        if key is not None:
            if self.low is None or _lt(key, self.low):
                self.low = key
            if self.high is None or _lt(self.high, key):
                self.high = key

    def profile(self) -> dict[str, Any]:
        kinds = set(self.types)
        if kinds <= {"integer"} and kinds:
            kind = "integer"
        elif kinds <= {"integer", "number"} and kinds:
            kind = "number"
        elif len(kinds) == 1:
            kind = kinds.pop()
        else:
            kind = "string" if kinds else "empty"
        out: dict[str, Any] = {"name": self.name, "type": kind, "values": self.values, "empty": self.empty,
                               "distinct": f">{MAX_DISTINCT}" if self.many else len(self.distinct)}
        if kind in ("integer", "number", "date"):
            out["min"], out["max"] = self.low, self.high
        return out


def _lt(a: float | str, b: float | str) -> bool:
    if type(a) is not type(b):
        return str(a) < str(b)
    return a < b      # type: ignore[operator]


def _kind(value: Any) -> tuple[str, float | str | None]:
    if isinstance(value, bool):
        return "boolean", None
    if isinstance(value, int):
        return "integer", value
    if isinstance(value, float):
        return "number", value
    if not isinstance(value, str):
        return type(value).__name__.replace("dict", "object").replace("list", "array"), None
    text = value.strip()
    if text.lower() in ("true", "false"):
        return "boolean", None
    try:
        return "integer", int(text)
    except ValueError:
        pass
    try:
        number = float(text)
        if number == number and abs(number) != float("inf"):
            return "number", number
    except ValueError:
        pass
    if len(text) >= 10 and text[4:5] == "-":
        try:
            datetime.date.fromisoformat(text[:10])
            return "date", text
        except ValueError:
            pass
    return "string", None


def _lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as f:
        for line in iter(lambda: f.readline(MAX_LINE), b""):
            if len(line) >= MAX_LINE and not line.endswith(b"\n"):
                raise ValueError(f"a line longer than {MAX_LINE} bytes")
            yield line.decode("utf-8", "replace")


def profile_csv(path: Path, mime: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        sample = f.read(64 * 1024).decode("utf-8", "replace")
    delimiter = "\t" if mime.endswith("tab-separated-values") or path.suffix.lower() == ".tsv" else ","
    if delimiter == ",":
        try:
            delimiter = csv.Sniffer().sniff(sample[:sample.rfind("\n") + 1] or sample, ",;\t|").delimiter
        except csv.Error:
            pass
    first = sample.split("\n", 1)[0]
    if first.count(delimiter) + 1 > MAX_COLUMNS:
        return _invalid(f"{first.count(delimiter) + 1}+ columns, over the limit of {MAX_COLUMNS}")
    if "\n" not in sample and path.stat().st_size > len(sample.encode()):
        return _invalid("a header row longer than 64 KiB")
    reader = csv.reader(_lines(path), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header:
            return _invalid("no header row")
        if len(header) > MAX_COLUMNS:
            return _invalid(f"{len(header)} columns, over the limit of {MAX_COLUMNS}")
        return _profile(header, reader, delimiter)
    except (csv.Error, ValueError) as exc:
        return _invalid(f"line {reader.line_num}: {exc}")


def _profile(header: list[str], rows: Iterable[list[Any]], delimiter: str | None) -> dict[str, Any]:
    errors: list[str] = []
    dupes = sorted({h for h in header if header.count(h) > 1}) if len(header) < 2000 else []
    if dupes:
        errors.append(f"columns named twice: {', '.join(d[:50] for d in dupes[:10])}")
    columns = [Column(str(h)[:200]) for h in header]
    count = 0
    truncated = False
    for row in rows:
        if not row:
            continue
        count += 1
        if count > MAX_ROWS:
            truncated = True
            count -= 1
            break
        if len(row) != len(columns) and len(errors) < MAX_ERRORS:
            errors.append(f"row {count}: {len(row)} fields, the header has {len(columns)}")
        for column, value in zip(columns, row, strict=False):
            column.add(value)
    out: dict[str, Any] = {"valid": not errors, "rows": count, "columns": len(columns),
                           "fields": [c.profile() for c in columns]}
    if delimiter:
        out["delimiter"] = delimiter
    if errors:
        out["errors"] = errors
    if truncated:
        out["truncated_at_rows"] = MAX_ROWS
    return out


def _invalid(reason: str) -> dict[str, Any]:
    return {"valid": False, "errors": [reason]}


def profile_json(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        return _invalid(f"{size} bytes of JSON, over the limit of {MAX_JSON_BYTES}")
    raw = path.read_bytes()
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        if "Extra data" not in str(exc):
            return _invalid(f"not JSON: {exc}")
        try:
            data = [json.loads(line) for line in raw.splitlines() if line.strip()]   # JSON lines
        except json.JSONDecodeError as exc2:
            return _invalid(f"not JSON: {exc2}")
    except RecursionError:
        return _invalid("JSON nested too deep")
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        if len(data) > MAX_COLUMNS:
            return _invalid(f"{len(data)} columns, over the limit of {MAX_COLUMNS}")
        header = list(data)
        height = max(len(v) for v in data.values())
        rows: Iterable[list[Any]] = ([data[h][i] if i < len(data[h]) else None for h in header]
                                     for i in range(height))
        return _profile(header, rows, None)
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        keys: dict[str, None] = {}
        for record in data:
            keys.update(dict.fromkeys(record))
            if len(keys) > MAX_COLUMNS:
                return _invalid(f"over {MAX_COLUMNS} distinct keys")
        header = list(keys)
        return _profile(header, ([r.get(k) for k in header] for r in data), None)
    if isinstance(data, list) and data and all(isinstance(r, list) for r in data):
        head = [str(h) for h in data[0]]
        if len(head) > MAX_COLUMNS:
            return _invalid(f"{len(head)} columns, over the limit of {MAX_COLUMNS}")
        return _profile(head, data[1:], None)
    return {"valid": True, "tabular": False, "top": type(data).__name__.replace("dict", "object")}


def handle(rel: str, path: Path, mime: str) -> dict[str, Any]:
    json_like = mime in ("application/json", "application/x-ndjson")
    profile = profile_json(path) if json_like else profile_csv(path, mime)
    output_path(rel, ".profile.json").write_text(json.dumps(profile, indent=1, default=str))
    return {k: v for k, v in profile.items() if k != "fields"}


if __name__ == "__main__":
    tables = ("text/csv", "text/tab-separated-values", "application/json", "application/x-ndjson", "application/csv")
    raise SystemExit(run_each(handle, wants=lambda mime: mime in tables))

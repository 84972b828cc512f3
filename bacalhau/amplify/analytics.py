"""What Amplify's results say, read from amplify.db: the commonest values of a key in the steps' JSON stdout,
and runs submitted / node results per hour. Each is a function of a connection, run by AmplifyStore.query in its
worker thread (the JSON is parsed there, off the event loop), over a bounded number of rows."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

MAX_SCANNED = 5000            # newest succeeded nodes whose stdout is read for a key
MAX_DOCS = 1000               # JSON documents taken from one stdout (JSON lines)
MAX_HOURS = 24 * 366
SERIES = ("submissions", "node-results")


def _documents(stdout: str) -> list[Any]:
    """The JSON in a step's stdout: one document, or one a line (lines that are not JSON are left out)."""
    text = stdout.strip()
    if not text:
        return []
    try:
        return [json.loads(text)]
    except RecursionError:    # nested past the parser's depth: a step's output, not ours to fail on
        return []
    except ValueError:
        pass
    docs = []
    for line in text.splitlines()[:MAX_DOCS]:
        try:
            docs.append(json.loads(line))
        except (ValueError, RecursionError):
            continue
    return docs


def _lookup(doc: Any, path: list[str]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(doc, dict) or part not in doc:
            return False, None
        doc = doc[part]
    return True, doc


def top_values(key: str, limit: int) -> Callable[[sqlite3.Connection], dict[str, Any]]:
    """The `limit` commonest values of `key` (dotted for nested objects: `image.width`) across the newest
    succeeded nodes' stdout, each with its count; values keep their JSON type (1, "1" and true are three)."""
    path = key.split(".")

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        scanned = 0
        for row in conn.execute("SELECT stdout FROM nodes WHERE state='succeeded' AND stdout!='' "
                                "ORDER BY ended_at DESC LIMIT ?", (MAX_SCANNED,)):
            scanned += 1
            for doc in _documents(row["stdout"]):
                found, value = _lookup(doc, path)
                if found:
                    counts[json.dumps(value, sort_keys=True)] += 1
        return {"values": [(json.loads(v), n) for v, n in counts.most_common(limit)], "scanned": scanned}

    return tx


def _hour(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def over_time(series: str, hours: int) -> Callable[[sqlite3.Connection], list[dict[str, Any]]]:
    """Counts per hour (UTC, oldest first) of the last `hours`: runs submitted, or graph nodes that ended, by
    their state. Hours with nothing are left out."""
    since = time.time() - hours * 3600

    def tx(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        if series == "submissions":
            rows = conn.execute("SELECT CAST(created_at / 3600 AS INTEGER) AS h, COUNT(*) AS n FROM runs "
                                "WHERE created_at >= ? GROUP BY h ORDER BY h", (since,)).fetchall()
            return [{"hour": _hour(r["h"] * 3600), "count": r["n"]} for r in rows]
        rows = conn.execute("SELECT CAST(ended_at / 3600 AS INTEGER) AS h, state, COUNT(*) AS n FROM nodes "
                            "WHERE ended_at >= ? GROUP BY h, state ORDER BY h", (since,)).fetchall()
        out: dict[int, dict[str, Any]] = {}
        for r in rows:
            entry = out.setdefault(r["h"], {"hour": _hour(r["h"] * 3600), "count": 0, "states": {}})
            entry["count"] += r["n"]
            entry["states"][r["state"]] = r["n"]
        return list(out.values())

    return tx

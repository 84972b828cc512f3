"""Kubernetes label selectors, the syntax the original Bacalhau took for `-s`:

    zone=eu, zone==eu, zone!=eu, gpu in (a100,h100), gpu notin (t4), gpu, !gpu

Requirements are comma-separated and all must hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KEY = r"[A-Za-z0-9]([A-Za-z0-9_.\-/]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([A-Za-z0-9_.\-]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(?P<neg>!)?\s*(?P<key>{_KEY})\s*$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str                      # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # "!=", "notin"

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{next(iter(self.values))}"
        return f"{self.key} {self.op} ({','.join(sorted(self.values))})"


def _split(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_selector(text: str) -> list[Requirement]:
    """Parse a selector; raise ValueError naming the bad requirement."""
    reqs: list[Requirement] = []
    if not text.strip():
        return reqs
    for part in _split(text):
        if m := _SET_RE.match(part):
            values = [v.strip() for v in m.group("values").split(",")]
            bad = [v for v in values if not v or not _VALUE_RE.match(v)]
            if bad or not values:
                raise ValueError(f"bad value in selector requirement {part.strip()!r}")
            reqs.append(Requirement(m.group("key"), m.group("op"), frozenset(values)))
        elif m := _EQ_RE.match(part):
            op = "=" if m.group("op") in ("=", "==") else "!="
            reqs.append(Requirement(m.group("key"), op, frozenset({m.group("value")})))
        elif m := _EXISTS_RE.match(part):
            reqs.append(Requirement(m.group("key"), "!exists" if m.group("neg") else "exists"))
        else:
            raise ValueError(
                f"bad selector requirement {part.strip()!r} (expected k=v, k!=v, k in (a,b), k notin (a,b), k or !k)"
            )
    return reqs


def matches(requirements: list[Requirement], labels: dict[str, str]) -> bool:
    return all(r.matches(labels) for r in requirements)

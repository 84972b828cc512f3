"""Resources a job asks for and a node offers: CPU in cores, memory in bytes."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, field_validator

from bacalhau.models.limits import MAX_CPU, MAX_MEMORY, finite

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """'512Mb', '1Gi', '100' -> bytes. Docker's convention: 'm' and 'mb' are both 10^6 here, 'mi' 2^20.
    ValueError for anything that is not a finite, non-negative size of at most MAX_MEMORY."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"not a size: {value[:40]!r} (try 512Mb, 2Gi or a number of bytes)")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    return int(_bounded(value, "memory", MAX_MEMORY, "1 PiB"))


def parse_cpu(value: object) -> float:
    """'500m' -> 0.5, '2' -> 2.0 (Kubernetes millicores are accepted). ValueError for anything that is not a
    finite, non-negative amount of at most MAX_CPU cores ('nan', 'inf' and '1e999' among them)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except ValueError:
            raise ValueError(f"not a CPU amount: {text[:40]!r} (try 0.5, 2 or 500m)") from None
    return _bounded(value, "cpu", MAX_CPU, f"{MAX_CPU:g} cores")


def _bounded(value: object, what: str, high: float, high_text: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number or a string such as 2 or 512Mb, not {type(value).__name__}")
    if isinstance(value, int):
        value = max(-1, min(value, int(high) + 1))     # float() of a huge int overflows
    return finite(float(value), what, 0, high, high_text)


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cpu: float = 0.0
    memory: int = 0

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: object) -> float:
        return parse_cpu(v)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: object) -> int:
        return parse_size(v)

    def fits_in(self, other: Resources) -> bool:
        return self.cpu <= other.cpu + 1e-9 and self.memory <= other.memory

    # arithmetic on amounts already checked: a node's capacity accounting may sum up to its total and a hair above
    def __add__(self, other: Resources) -> Resources:
        return Resources.model_construct(cpu=self.cpu + other.cpu, memory=self.memory + other.memory)

    def __sub__(self, other: Resources) -> Resources:
        return Resources.model_construct(cpu=max(0.0, self.cpu - other.cpu), memory=max(0, self.memory - other.memory))


def format_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return str(size)

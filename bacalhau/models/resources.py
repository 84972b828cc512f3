"""Resources a job asks for and a node offers: CPU in cores, memory in bytes."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, field_validator

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int | float) -> int:
    """'512Mb', '1Gi', '100' -> bytes. Docker's convention: 'm' and 'mb' are both 10^6 here, 'mi' 2^20."""
    if isinstance(value, int | float):
        return int(value)
    m = _SIZE.match(value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (try 512Mb, 2Gi or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_cpu(value: str | int | float) -> float:
    """'500m' -> 0.5, '2' -> 2.0 (Kubernetes millicores are accepted)."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    try:
        if text.endswith("m"):
            return float(text[:-1]) / 1000
        return float(text)
    except ValueError:
        raise ValueError(f"not a CPU amount: {value!r} (try 0.5, 2 or 500m)") from None


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: float = 0.0
    memory: int = 0

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: object) -> float:
        value = parse_cpu(v)  # type: ignore[arg-type]
        if value < 0:
            raise ValueError("cpu must not be negative")
        return value

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: object) -> int:
        value = parse_size(v)  # type: ignore[arg-type]
        if value < 0:
            raise ValueError("memory must not be negative")
        return value

    def fits_in(self, other: Resources) -> bool:
        return self.cpu <= other.cpu + 1e-9 and self.memory <= other.memory

    def __add__(self, other: Resources) -> Resources:
        return Resources(cpu=self.cpu + other.cpu, memory=self.memory + other.memory)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(cpu=max(0.0, self.cpu - other.cpu), memory=max(0, self.memory - other.memory))


def format_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)

"""The bounds of what a job spec (and a node's advertisement) may hold.

Every number is finite (no NaN, no Infinity: Python's json takes both literals, and a NaN once stored made a
node unable to start again) and every value is bounded, so a spec that validates can be stored, read back,
scheduled and run. The bounds are far above any real job; they exist so that one hostile spec cannot make a
requester or a compute node do unbounded work.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, Field

MAX_CPU = 1024.0                         # cores a job may ask for, or a node offer
MAX_MEMORY = 1024**5                     # bytes: 1 PiB
MAX_JOB_TIMEOUT = 365 * 24 * 3600.0      # a year; a node may enforce a lower maximum of its own
MAX_CONCURRENCY = 100                    # nodes one job runs on at once
MAX_ATTEMPTS = 100                       # retry.max_attempts
MAX_BACKOFF = 24 * 3600.0                # retry.backoff: a day
MAX_EXIT_CODE = 255                      # noop.exit_code (a process's exit status)
MAX_NAME_CHARS = 1024                    # image names, entry points, env and label keys, working dirs, paths
MAX_VALUE_CHARS = 128 * 1024             # one parameter, env value or label value (Linux's MAX_ARG_STRLEN)
MAX_LIST_ITEMS = 1024                    # parameters, entrypoint words
MAX_MAP_ITEMS = 256                      # env variables, labels
MAX_INPUTS = 64
MAX_SOURCE_CHARS = 4 * 1024 * 1024       # an input source: inline data is uploaded in it (the API body's limit)
MAX_MODULE_CHARS = 4 * 1024 * 1024       # a WASM module uploaded as base64
MAX_SELECTOR_CHARS = 4096
MAX_NOOP_STDOUT_CHARS = 1024 * 1024


def _clean(text: str) -> str:
    """No NUL (no C string, no Docker env, no path holds one) and no lone surrogate (not UTF-8: it can be
    neither stored nor sent)."""
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return text


def finite(value: float, what: str, low: float, high: float, high_text: str = "") -> float:
    """`value` if it is a number within [low, high]; ValueError naming `what` otherwise."""
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value}")
    if value < low:
        raise ValueError(f"{what} must not be below {low:g}" if low else f"{what} must not be negative")
    if value > high:
        raise ValueError(f"{what} must be at most {high_text or format(high, 'g')}")
    return value


Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_clean)]
Value = Annotated[str, Field(max_length=MAX_VALUE_CHARS), AfterValidator(_clean)]
Source = Annotated[str, Field(max_length=MAX_SOURCE_CHARS), AfterValidator(_clean)]
Module = Annotated[str, Field(max_length=MAX_MODULE_CHARS), AfterValidator(_clean)]
Selector = Annotated[str, Field(max_length=MAX_SELECTOR_CHARS), AfterValidator(_clean)]
Stdout = Annotated[str, Field(max_length=MAX_NOOP_STDOUT_CHARS), AfterValidator(_clean)]
Args = Annotated[list[Value], Field(max_length=MAX_LIST_ITEMS)]
Env = Annotated[dict[Name, Value], Field(max_length=MAX_MAP_ITEMS)]

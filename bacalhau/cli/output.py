"""Output formatting for the CLI: tables for people, JSON and YAML for machines. No click here: `list` and
`describe` print through this module without importing it (fast.py)."""

from __future__ import annotations

import json
import math
import re
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

FORMATS = ("table", "json", "yaml")


def output_option(default: str = "table") -> Callable[[_F], _F]:
    import click

    return click.option("--output", "-o", "output", type=click.Choice(FORMATS), default=default, show_default=True,
                        help="How to print the result.")


def emit(data: Any, fmt: str) -> None:
    if fmt == "json":
        _out(json.dumps(data, indent=2) + "\n")
    elif fmt == "yaml":
        _out(to_yaml(data))
    else:
        raise ValueError(fmt)


def printable(text: str, keep: str = "") -> str:
    """`text` with what is not printable (a terminal's escape sequences, other controls, bidi overrides) written
    as Python escapes it, but for the characters in `keep`: a job's output or a peer's reason is shown to the
    user, never run by their terminal (an OSC sequence sets its title, CSI ones clear or move the screen)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def table(headers: list[str], rows: list[list[str]]) -> None:
    rows = [[printable(str(cell)) for cell in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    _out("".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() + "\n"
                 for row in [headers, *rows]))


def echo(text: str) -> None:
    _out(text + "\n")


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# -- YAML, written here for JSON-shaped data (PyYAML's import was a fifth of `describe`'s start) -------------
# The block style of yaml.safe_dump(sort_keys=False, allow_unicode=True): a string that could read back as
# something else (a number, a bool, null, a date) or has any character outside a plain set is double-quoted
# with escapes YAML reads as JSON writes them. Anything else (a key not a string, a very long key, a type JSON
# has not) goes to PyYAML. tests/test_cli_output.py reads what is written back with PyYAML.

# (source text, compiled by re on first use and kept in its cache: compiled at import they were ~2.5 ms of every
# client command's start)
_PLAIN = r"[A-Za-z0-9_/][A-Za-z0-9_./@+=:-]*(?: [A-Za-z0-9_./@+=:-]+)*"
_IMPLICIT = (  # (verbose) PyYAML's YAML 1.1 resolvers: bool, null, int, float, timestamp, merge, value
    r"""(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF|y|Y|n|N
    |~|null|Null|NULL|<<|=
    |[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
    |[-+]?0b[0-1_]+|[-+]?0x[0-9a-fA-F_]+|[-+]?0o?[0-7_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?
    |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)
    |[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?.*)""")
# what a YAML double-quoted scalar may not hold raw: C1 controls (NEL is a line break), the Unicode line and
# paragraph separators, lone surrogates, a BOM, the non-characters
_ESCAPE = "[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]"
_LONGEST_PLAIN = 70     # PyYAML folds a longer plain string with spaces over lines: quoted, it is one line
_LONGEST_KEY = 128


class _NotJsonShaped(Exception):
    pass


def to_yaml(data: Any) -> str:
    try:
        if isinstance(data, dict | list) and data:
            return "".join(_block(data, 0))
        return _scalar(data) + "\n" if not isinstance(data, dict | list) else ("{}\n" if isinstance(data, dict)
                                                                               else "[]\n")
    except _NotJsonShaped:
        import yaml

        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value).lower()
        return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text
    if isinstance(value, str):
        if not value:
            return "''"
        if re.fullmatch(_PLAIN, value) and not re.fullmatch(_IMPLICIT, value, re.X) and ": " not in value \
                and value[-1] != ":" and (
                len(value) <= _LONGEST_PLAIN or " " not in value):
            return value
        return re.sub(_ESCAPE, lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))
    raise _NotJsonShaped(type(value).__name__)


def _block(data: dict[Any, Any] | list[Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str) or len(key) > _LONGEST_KEY:
                raise _NotJsonShaped("key")
            head = f"{pad}{_scalar(key)}:"
            if isinstance(value, dict) and value:
                lines += [head + "\n", *_block(value, indent + 2)]
            elif isinstance(value, list) and value:
                lines += [head + "\n", *_block(value, indent)]     # PyYAML's sequences in a mapping: not indented
            else:
                lines.append(f"{head} {_inline(value)}\n")
        return lines
    for item in data:
        if isinstance(item, dict | list) and item:
            inner = _block(item, indent + 2)
            lines += [f"{pad}- {inner[0][indent + 2:]}", *inner[1:]]
        else:
            lines.append(f"{pad}- {_inline(item)}\n")
    return lines


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def ago(ts: float) -> str:
    delta = max(0.0, time.time() - ts)
    if delta < 60:
        return f"{delta:.0f}s ago"
    if delta < 3600:
        return f"{delta / 60:.0f}m ago"
    if delta < 86400:
        return f"{delta / 3600:.0f}h ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def short(node_or_job_id: str, n: int = 8) -> str:
    if node_or_job_id.startswith("12D3KooW"):
        return node_or_job_id[-n:]
    return node_or_job_id[:n]


def status(message: str) -> None:
    """Progress and status go to stderr, so stdout stays the job's output or an ID (a job's reason in it is
    a peer's text: shown, never run by the terminal)."""
    print(printable(message, keep="\n\t"), file=sys.stderr, flush=True)


def exit_status(code: Any) -> int:
    """A job's exit code as this process's: a status is one byte (sys.exit(256) exits 0, a success), so a code
    outside 0..255 that a node reports (a hostile or broken one; -1 is a run killed) is 255."""
    code = int(code)
    return code if 0 <= code <= 255 else 255

"""Amplify's text step: for each text file, its line, word and character counts and an extractive summary (the
SUMMARY_SENTENCES sentences whose words are most frequent in the text, in their order), in
<file>.summary.json and <file>.summary.txt. Counts run over the whole file a line at a time; the summary reads
at most SUMMARY_BYTES."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from amplify_common import output_path, run_each

SUMMARY_BYTES = 1024 * 1024
SUMMARY_SENTENCES = 3
MAX_LINE = 1024 * 1024
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
STOPWORDS = frozenset("""a an and are as at be been but by can could did do does for from had has have he her his
i if in into is it its me my no not of on or our she so than that the their them then there these they this to
too us was we were what when which who will with would you your""".split())


def summarise(text: str, count: int = SUMMARY_SENTENCES) -> list[str]:
    sentences = [" ".join(s.split()) for s in _SENTENCE.split(text)]
    sentences = [s for s in sentences if _WORD.search(s)][:5000]
    if len(sentences) <= count:
        return sentences
    freq = Counter(w for w in (m.lower() for m in _WORD.findall(text)) if w not in STOPWORDS)
    top = max(freq.values(), default=1)

    def score(s: str) -> float:
        words = [w.lower() for w in _WORD.findall(s)]
        return sum(freq.get(w, 0) / top for w in words) / (len(words) ** 0.5 or 1)

    best = sorted(range(len(sentences)), key=lambda i: (-score(sentences[i]), i))[:count]
    return [sentences[i] for i in sorted(best)]


def handle(rel: str, path: Path, mime: str) -> dict[str, Any]:
    lines = words = chars = 0
    head = bytearray()
    last = b""
    with open(path, "rb") as f:
        for line in iter(lambda: f.readline(MAX_LINE), b""):
            lines += line.endswith(b"\n")
            text = line.decode("utf-8", "replace")
            words += len(text.split())
            chars += len(text)
            if len(head) < SUMMARY_BYTES:
                head += line[:SUMMARY_BYTES - len(head)]
            last = line
    if last and not last.endswith(b"\n"):
        lines += 1                      # a last line without its newline is a line
    summary = summarise(head.decode("utf-8", "replace"))
    record = {"lines": lines, "words": words, "characters": chars, "summary": summary}
    output_path(rel, ".summary.json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
    output_path(rel, ".summary.txt").write_text("\n".join(summary) + "\n")
    return record


if __name__ == "__main__":
    raise SystemExit(run_each(handle, wants=lambda mime: mime.startswith("text/")))

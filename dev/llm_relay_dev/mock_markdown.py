"""The mock upstream's markdown answer (`"markdown": N`): a deterministic document of about N characters in
sections of headings, paragraphs, nested lists, fenced code blocks and tables, what a model's long answer looks like
to a browser that renders it as it streams."""

from __future__ import annotations

_WORDS = [
    "relay",
    "stream",
    "token",
    "budget",
    "lease",
    "upstream",
    "chunk",
    "summary",
    "latency",
    "cancel",
    "markdown",
    "render",
    "frame",
    "browser",
    "client",
    "buffer",
    "grapheme",
    "table",
    "column",
    "request",
    "answer",
    "model",
]


def _words(seed: int, count: int) -> str:
    return " ".join(_WORDS[(seed * 7 + i * 3) % len(_WORDS)] for i in range(count))


def _section(n: int) -> str:
    code = "\n".join(f"    total += chunk_{n}_{i}.size  # {_words(n + i, 3)}" for i in range(6))
    rows = "\n".join(f"| {_words(n + i, 2)} | {n * 10 + i} | `{_words(i, 1)}` |" for i in range(5))
    return (
        f"## Section {n}: {_words(n, 3)}\n\n"
        f"A paragraph with **{_words(n, 2)}**, *{_words(n + 1, 2)}* and `inline_{n}()`: {_words(n + 2, 24)}.\n\n"
        f"- {_words(n, 5)}\n- {_words(n + 1, 4)}\n  - nested {_words(n + 2, 3)}\n- {_words(n + 3, 6)}\n\n"
        f"1. {_words(n + 4, 4)}\n2. {_words(n + 5, 4)}\n\n"
        f"```python\ndef section_{n}(chunks):\n    total = 0\n{code}\n    return total\n```\n\n"
        f"| name | value | kind |\n|---|---:|---|\n{rows}\n\n"
        f"> {_words(n + 6, 12)}\n\n"
    )


def markdown_document(chars: int) -> str:
    """Sections until the document holds at least `chars` characters (one section is about 1,100)."""
    parts = [f"# A long answer of about {chars} characters\n\n"]
    size, n = len(parts[0]), 0
    while size < chars:
        n += 1
        parts.append(_section(n))
        size += len(parts[-1])
    return "".join(parts)

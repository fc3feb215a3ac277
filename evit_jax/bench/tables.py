"""One table renderer for the benchmark tools: fixed-width text or Markdown."""

from __future__ import annotations

from collections.abc import Sequence


def render(head: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False,
           left: int = 1, rule: bool = False) -> str:
    """`head` and `rows` of cell strings -> a table.

    Text: the first `left` columns left-aligned, the rest right-aligned, two spaces apart,
    with a dashed line under the head if `rule`. Markdown: a pipe table.
    """
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < left else c.rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(head)] + (["  ".join("-" * w for w in widths)] if rule else [])
    return "\n".join(lines + [fmt(r) for r in rows])

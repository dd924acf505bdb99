"""Markdown pieces of the card: fenced blocks, one-line text, table cells."""
from __future__ import annotations

import re


def block(code: str, lang: str) -> str:
    """A fenced code block whose fence no backtick run inside it can close."""
    longest = max((len(m) for m in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{code.rstrip()}\n{fence}"


def oneline(text: str) -> str:
    return " ".join(str(text).split())


def cell(text: str) -> str:
    return oneline(text).replace("|", "\\|")

"""PTR answers are untrusted input: only a plain, valid hostname gets through."""

from __future__ import annotations

import re

MAX_NAME = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def valid_hostname(text: str | bytes) -> str | None:
    """``text`` as a lower-case hostname without the final dot, or None when it is not
    one: ASCII letters, digits and hyphens in labels of 1 to 63, at most 253 in all.

    Anything else (markup, escape sequences, spaces, non-ASCII, underscores) is refused
    rather than cleaned: a name that needs cleaning is not the router's name.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not text.isascii():
        return None
    name = text.lower().removesuffix(".")
    if not name or len(name) > MAX_NAME:
        return None
    if not all(_LABEL.match(label) for label in name.split(".")):
        return None
    return name

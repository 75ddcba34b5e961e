"""Prefixed, time-sortable, unguessable ids (ULID layout: 48-bit ms timestamp + 80 random bits)."""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32

PREFIXES = {"artifact": "art", "job": "job", "upload": "upl"}


def ulid() -> str:
    """26 characters, sorting by creation time (to the millisecond)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(kind: str) -> str:
    """A new id for ``kind`` ("artifact" | "job" | "upload"), e.g. ``job_01JD3Q7W8M6Z5K2R9T0V4X1YBC``."""
    return f"{PREFIXES[kind]}_{ulid()}"


def pattern(kind: str) -> str:
    """Regular expression matching the ids of ``kind``."""
    return rf"^{PREFIXES[kind]}_[0-9A-HJKMNP-TV-Z]{{26}}$"


def is_valid(kind: str, value: str) -> bool:
    return re.fullmatch(pattern(kind), value) is not None

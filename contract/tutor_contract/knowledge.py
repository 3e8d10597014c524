"""The ``kb_id`` rule: which names may select a knowledge base (REST and engine alike)."""

from __future__ import annotations

import re

KB_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
KB_ID_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'"
_KB_ID = re.compile(KB_ID_PATTERN)


def is_valid_kb_id(kb_id: str) -> bool:
    """Whether ``kb_id`` is, as a whole, a safe directory name (no trailing newline, no '..')."""
    return _KB_ID.fullmatch(kb_id) is not None and ".." not in kb_id

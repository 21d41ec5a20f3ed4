"""Pydantic validation errors as the one-line messages bench prints: the field path first, the bad value, what is
allowed; a union field's branches joined; unknown keys with a did-you-mean."""
from __future__ import annotations

import difflib
import re
from typing import Callable, Dict, List

from pydantic import ValidationError

__all__ = ["pydantic_errors"]


def _fmt_loc(loc) -> str:
    return ".".join(str(p) for p in loc) if loc else "(top level)"


_UNION_TAG = re.compile(r"^(constrained-\w+|literal\[.*\]|int|float|str|bool|none|list\[.*\]|dict\[.*\]|function-\w+\[.*\])$")


def pydantic_errors(e: ValidationError, prefix: str = "",
                    allowed_keys: Callable[[tuple], List[str]] = lambda loc: []) -> List[str]:
    """One line per problem, the field path first; the branches of a union field (``batch_size``: an integer ≥ 1
    or 'full') joined into one line; an unknown key gets a did-you-mean from ``allowed_keys(section path)``."""
    out: List[str] = []
    merged: Dict[str, int] = {}
    for err in e.errors():
        raw_loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
        loc = _fmt_loc(raw_loc)
        msg = err["msg"]
        if raw_loc != tuple(err["loc"]) and err["type"] != "extra_forbidden":
            msg = msg.replace("Input should be ", "")
            if loc in merged:  # another branch of the same union field
                i = merged[loc]
                head, _, got = out[i].rpartition(" (got ")
                out[i] = f"{head} or {msg} (got {got}" if got else f"{out[i]} or {msg}"
                continue
            msg = "must be " + msg
            merged[loc] = len(out)
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = tuple(p for p in prefix.rstrip(".").split(".") if p) + tuple(err["loc"][:-1])
            allowed = allowed_keys(parent)
            if allowed:
                close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
                msg += (f" (did you mean {close[0]!r}?)" if close else "") + f"; allowed in {'.'.join(map(str, parent)) or 'the suite'}: {', '.join(allowed)}"
        elif err["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be")
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        value = err.get("input")
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        got = "" if err["type"] in ("missing",) or isinstance(value, dict) or "got" in msg else f" (got {shown})"
        out.append(f"{prefix}{loc}: {msg}{got}")
    return out

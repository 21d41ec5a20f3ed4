"""Where each setting of a suite comes from: the suite's ``provenance:`` block, checked strictly and rendered as the
table a paper suite's report opens with (issue: a benchmark is worth exactly its fidelity).

Each entry: ``setting`` (what), ``value`` (the value the suite uses), ``source`` (one of :data:`SOURCES`) and
optionally ``where`` (the citation: a journal section or table, the authors' file:line from AUTHORS-CODE.md)."""
from __future__ import annotations

from typing import Any, List

import pandas as pd

__all__ = ["SOURCES", "check_provenance", "provenance_table"]

# source key -> how the report names it
SOURCES = {
    "journal": "journal text",
    "paper": "the paper's text",
    "authors-code": "authors' code",
    "authors-code-nov2020": "authors' code (Nov 2020)",
    "inferred": "inferred (stated nowhere)",
    "ours": "ours (a choice of this benchmark)",
}
_KEYS = {"setting", "value", "source", "where"}


def check_provenance(entries: Any) -> List[str]:
    """Problems of a ``provenance:`` block as 'provenance[i].field: message' (empty = fine)."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        return ["provenance: must be a list of {setting, value, source, where} entries"]
    errors: List[str] = []
    seen = set()
    for i, e in enumerate(entries):
        at = f"provenance[{i}]"
        if not isinstance(e, dict):
            errors.append(f"{at}: must be a mapping with setting, value, source (and optionally where)")
            continue
        bad = sorted(set(e) - _KEYS)
        if bad:
            errors.append(f"{at}: unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(_KEYS))}")
        for k in ("setting", "value", "source"):
            if k not in e:
                errors.append(f"{at}.{k}: required")
        for k in ("setting", "value", "where"):
            if k in e and not isinstance(e[k], (str, int, float)):
                errors.append(f"{at}.{k}: must be text (got {type(e[k]).__name__})")
        if "source" in e and e["source"] not in SOURCES:
            errors.append(f"{at}.source: must be one of {', '.join(SOURCES)} (got {e['source']!r})")
        if isinstance(e.get("setting"), str):
            if e["setting"] in seen:
                errors.append(f"{at}.setting: {e['setting']!r} is listed twice")
            seen.add(e["setting"])
    return errors


def provenance_table(entries) -> pd.DataFrame:
    """setting · value · source · where, one row per entry."""
    return pd.DataFrame([{"setting": str(e["setting"]), "value": str(e["value"]), "source": SOURCES[e["source"]],
                          "where": str(e.get("where", "") or "")} for e in entries or []],
                        columns=["setting", "value", "source", "where"])

"""Published numbers kept in the repository as data (``references/<name>.csv``, long format:
one column per key the table is indexed by, plus ``metric`` and ``value``; ``#`` lines are comments)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import pandas as pd

REFERENCE_DIR = Path(__file__).parent / "references"


def reference_names() -> List[str]:
    return sorted(p.stem for p in REFERENCE_DIR.glob("*.csv"))


def reference_path(name: str, base: Optional[Path] = None) -> Path:
    """A bundled reference by name (``paper-table-3``) or a CSV path (relative to ``base``, then the cwd)."""
    if name.endswith(".csv") or "/" in name:
        problem = _path_problem(name)
        if problem:
            raise ValueError(problem)
        for folder in ([base] if base is not None else []) + [Path.cwd()]:
            if (folder / name).is_file():
                return folder / name
        raise ValueError(f"reference file {name!r} not found beside the suite; bundled references: "
                         f"{', '.join(reference_names())}")
    p = REFERENCE_DIR / f"{name}.csv"
    if not p.exists():
        raise ValueError(f"unknown reference {name!r}; bundled references: {', '.join(reference_names())} "
                         "(or give a path to a .csv)")
    return p


def _path_problem(name: str) -> Optional[str]:
    """Why ``name`` is not an acceptable reference path: a .csv file named relative to the suite's folder, inside it."""
    p = Path(name)
    if not name.endswith(".csv"):
        return f"reference file {name!r}: must be a .csv file"
    if p.is_absolute() or ".." in p.parts:
        return f"reference file {name!r}: must be a path relative to the suite's folder, inside it (no '..', not absolute)"
    return None


def load_reference(name: str, base: Optional[Path] = None) -> pd.DataFrame:
    return pd.read_csv(reference_path(name, base), comment="#")


def suite_reference(ctx, name: Optional[str], need) -> Optional[pd.DataFrame]:
    """The reference a report entry names (bundled, or a CSV beside the suite), or None when it names
    none or the table lacks a ``need``ed column (then a note in the report says which)."""
    if not name:
        return None
    ref = load_reference(name, Path(ctx.data.suite.path).parent)
    missing = sorted(set(need) - set(ref.columns))
    if missing:
        ctx.note(f"Reference {name!r} lacks column(s) {', '.join(missing)}: not shown.")
        return None
    return ref


def check_reference(name) -> List[str]:
    if name is None:
        return []
    if not isinstance(name, str):
        return [f"reference: must be a name ({', '.join(reference_names())}) or a .csv path, got {name!r}"]
    if name.endswith(".csv") or "/" in name:
        problem = _path_problem(name)  # its presence beside the suite file is checked when rendering
        return [f"reference: {problem}"] if problem else []
    try:
        reference_path(name)
    except ValueError as e:
        return [f"reference: {e}"]
    return []

"""A suite with every section checked: the run cells (:mod:`bench.suite`), the ``reports:`` entries
(:mod:`bench.report`), the ``claims:`` (:mod:`bench.report.claims`), the ``provenance:``
(:mod:`bench.report.provenance`) and the ``search:`` block (:mod:`bench.search`),
every problem at once."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from .report.claims import check_claims
from .report.provenance import check_provenance
from .report.registry import check_reports
from .search.cells import check_search
from .suite import Suite, load_suite

__all__ = ["load_checked"]


def load_checked(path: str | Path, sets: Sequence[str] = (), only: Sequence[str] = (),
                 seeds: Optional[List[int]] = None) -> Suite:
    """:func:`bench.suite.load_suite` with the reports and search sections checked; raises SuiteError."""
    return load_suite(path, sets=list(sets), only=list(only), seeds=seeds,
                      section_checks={"reports": check_reports, "search": check_search,
                                      "claims": check_claims, "provenance": check_provenance})

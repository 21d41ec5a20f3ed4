"""Render a suite's ``reports:`` list into ``reports/<suite-name>/`` (index.md, index.html, tables, figures)."""
from __future__ import annotations

import html
import os
import re
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import List, Optional

from ..paths import no_space, reports_dir
from ..tracking import missing_store
from .data import load_suite_data, select
from .output import GENERATED_MARK, ReportContext, Section, setup_matplotlib
from .registry import get_report, resolve_entry

__all__ = ["render_suite", "default_out_dir", "ReportError"]

_OUTPUT_EXT = (".md", ".tex", ".csv", ".png", ".svg", ".html")


class ReportError(ValueError):
    """A report entry cannot be used: ``field`` names it (``reports[i].option``)."""


def default_out_dir(suite) -> Path:
    """``<results>/reports/<suite name>`` (:func:`bench.paths.reports_dir`)."""
    return reports_dir(suite.name, suite=suite.path or None)


def _publish(stage: Path, out: Path) -> None:
    """Move a complete render from ``stage`` into ``out``: each file by an atomic rename, the index last; then remove
    the previous render's files that the new one no longer has (only when ``out`` held one of ours: index.md starts
    with our mark — other files, e.g. an archived store, are never touched). A kill at any point leaves a readable
    report (old, new or a mix of both files), never an empty folder."""
    idx = out / "index.md"
    previous = idx.exists() and idx.read_text().startswith(GENERATED_MARK)
    new = sorted(p.name for p in stage.iterdir() if p.is_file())
    for name in sorted(new, key=lambda n: n.startswith("index.")):
        os.replace(stage / name, out / name)
    if previous:
        for p in sorted(out.iterdir()):
            if p.is_file() and p.suffix in _OUTPUT_EXT and p.name not in new:
                p.unlink()


def _where_text(where) -> str:
    if not where:
        return ""
    return ", ".join(f"{k} = {v}" for k, v in where.items())


def render_suite(suite, tracking_uri: Optional[str] = None, out_dir: Optional[Path] = None) -> Path:
    """Read ``suite``'s runs from the tracking store and render every entry of its ``reports:`` list.

    Returns the output folder (default ``<project>/reports/<suite-name>``, :mod:`bench.paths`).
    Entries that fail to render become a note in the index (the others are still rendered); an
    invalid entry (unknown kind/option) raises :class:`ReportError` before anything is written.
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir(suite)
    entries = []
    for i, raw in enumerate(suite.cfg.reports):
        try:
            entries.append(resolve_entry(raw))
        except ValueError as e:
            raise ReportError(f"{suite.path}: reports[{i}]: {e}") from None
    gone = missing_store(tracking_uri)
    if gone:  # a report reads a store, it never creates one
        raise ReportError(f"no tracking store at {gone}: nothing has run there. Point --tracking-uri (or IRN_RESULTS / "
                          "IRN_TRACKING_URI) at the store that holds the suite's runs")
    os.environ.setdefault("MPLBACKEND", "Agg")
    setup_matplotlib()
    data = load_suite_data(suite, tracking_uri)
    if (out / "index.html").exists() and not (data.runs["status"] == "finished").any():
        # a report with nothing in it must not replace one that has results (e.g. rendered from another store)
        store = data.tracker.uri if data.tracker is not None else tracking_uri
        raise ReportError(f"no finished run of suite {suite.cfg.name!r} in the store {store}; the existing report in "
                          f"{out} is left as it is. Point --tracking-uri (or IRN_RESULTS) at the store that holds the "
                          f"runs, or remove {out} to render an empty report")
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.rendering-", dir=out.parent))
    try:
        _render_entries(suite, entries, data, stage, out)
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _render_entries(suite, entries, data, stage: Path, out: Path) -> None:
    sections: List[Section] = []
    used = set()
    for i, e in enumerate(entries):
        stem = e.get("name") or f"{i + 1:02d}-{e['kind']}"
        stem = re.sub(r"[^A-Za-z0-9_.\-]+", "_", stem)
        while stem in used:
            stem += "_"
        used.add(stem)
        title = e.get("title") or e["kind"].replace("_", " ") + (f" ({_where_text(e['where'])})" if e.get("where") else "")
        sec = Section(title=title, stem=stem, kind=e["kind"])
        runs = select(data, e.get("where"))
        ctx = ReportContext(data, runs, stage, sec)
        kind = get_report(e["kind"])
        if kind.needs_runs and runs.empty:
            ctx.note(f"No run of the suite matches where: {_where_text(e.get('where'))}.")
        elif kind.needs_runs and (runs["status"] == "finished").sum() == 0:
            ctx.note("No finished run yet for this entry: nothing to show.")
            _status_note(ctx, runs)
        else:
            try:
                kind.render(ctx, e)
            except Exception as ex:  # noqa: BLE001 - one broken entry must not stop the others
                if no_space(ex):  # ... but a full disk stops them all (the CLI says where)
                    raise
                tb = traceback.format_exception_only(type(ex), ex)[-1].strip()
                ctx.note(f"This entry could not be rendered: {tb}")
                import matplotlib.pyplot as plt

                plt.close("all")
        sections.append(sec)
    _write_index(stage, out, suite, data, sections)


def _status_note(ctx, runs) -> None:
    counts = runs["status"].value_counts().to_dict()
    ctx.note("Runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".")


def _runs_table(data):
    import pandas as pd

    rows = []
    for _, r in data.runs.iterrows():
        st = r["status"] if r["status"] != "failed" else f"failed: {r['reason']}"
        rows.append({"run": r["label"], "status": st, "spec hash": r["spec_hash"], "MLflow run": r["run_id"][:12] if isinstance(r["run_id"], str) else ""})
    return pd.DataFrame(rows, columns=["run", "status", "spec hash", "MLflow run"])


def _write_index(stage: Path, out: Path, suite, data, sections: List[Section]) -> None:
    from .output import to_html, to_markdown

    desc = suite.cfg.description
    n = len(data.runs)
    counts = data.runs["status"].value_counts().to_dict() if n else {}
    summary = f"{n} run(s) in the suite: " + ", ".join(f"{counts[s]} {s}" for s in ("finished", "failed", "running", "missing")
                                                        if counts.get(s))
    shown = Path(os.path.relpath(out)) if out.is_absolute() and Path.cwd() in out.parents else out
    regen = f"bench report {suite.path} --out {shown.as_posix()}" if Path(suite.path).is_absolute() is False else \
        f"bench report {suite.path}"
    md = [GENERATED_MARK, "", f"# Report: {suite.name}", ""]
    if desc:
        md += [desc, ""]
    md += [f"Runs read from the MLflow experiment `{suite.name}`. {summary}.", "",
           f"Regenerate: `{regen}` (the store: `--tracking-uri`, `IRN_TRACKING_URI` or `IRN_RESULTS`).", ""]
    if data.notes:
        md += ["**Notes**", ""] + [f"- {t}" for t in data.notes] + [""]
    heads = _head_tables(stage, suite, data)
    for title, caption, table in heads:
        md += [f"## {title}", "", f"*{caption}*", "", to_markdown(table), ""]
    md += ["## Contents", ""] + [f"{i + 1}. [{s.title}](#{_anchor(s)})" for i, s in enumerate(sections)] + [""]
    hx = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>Report: {html.escape(suite.name)}</title>",
          "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:90%}th,td{padding:3px 8px;text-align:right}"
          "th:first-child,td:first-child{text-align:left}thead th{border-bottom:1px solid #444}"
          "tbody tr:nth-child(odd){background:#f6f6f6}td.missing{color:#b00}img{max-width:100%}"
          ".note{background:#fff8e0;border-left:3px solid #e0b000;padding:.3em .8em;margin:.5em 0}"
          "figcaption,.caption{color:#555;font-size:90%}</style></head><body>",
          f"<h1>Report: {html.escape(suite.name)}</h1>"]
    if desc:
        hx.append(f"<p>{html.escape(desc)}</p>")
    hx.append(f"<p>Runs read from the MLflow experiment <code>{html.escape(suite.name)}</code>. {html.escape(summary)}.</p>")
    hx.append(f"<p>Regenerate: <code>{html.escape(regen)}</code></p>")
    if data.notes:
        hx.append("<div class=\"note\"><b>Notes</b><ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in data.notes) + "</ul></div>")
    for title, caption, table in heads:
        hx += [f"<h2>{html.escape(title)}</h2>", f'<p class="caption">{html.escape(caption)}</p>', to_html(table)]
    hx.append("<h2>Contents</h2><ol>" + "".join(f'<li><a href="#{_anchor(s)}">{html.escape(s.title)}</a></li>' for s in sections) + "</ol>")
    for s in sections:
        md += [f"## {s.title}", ""]
        hx.append(f'<h2 id="{_anchor(s)}">{html.escape(s.title)}</h2>')
        for b in s.blocks:
            if b[0] == "note":
                md += [f"> {b[1]}", ""]
                hx.append(f'<p class="note">{html.escape(b[1])}</p>')
            elif b[0] == "table":
                _, stem, cap, tmd, thtml = b
                if cap:
                    md += [f"*{cap}*", ""]
                    hx.append(f'<p class="caption">{html.escape(cap)}</p>')
                md += [tmd, f"([csv]({stem}.csv), [LaTeX]({stem}.tex))", ""]
                hx.append(thtml + f'<p class="caption"><a href="{stem}.csv">csv</a> · <a href="{stem}.tex">LaTeX</a> · '
                          f'<a href="{stem}.md">markdown</a></p>')
            elif b[0] == "figure":
                _, stem, cap = b
                md += [f"![{cap or stem}]({stem}.png)", ""]
                if cap:
                    md += [f"*{cap}* ([svg]({stem}.svg))", ""]
                hx.append(f'<figure><a href="{stem}.svg"><img src="{stem}.png" alt="{html.escape(cap or stem)}"></a>'
                          f"<figcaption>{html.escape(cap)} (<a href=\"{stem}.svg\">svg</a>)</figcaption></figure>")
    runs = _runs_table(data)
    md += ["## Runs", "", to_markdown(runs)]
    hx += ['<h2 id="runs">Runs</h2>', to_html(runs), "</body></html>"]
    (stage / "index.md").write_text("\n".join(md) + "\n")
    (stage / "index.html").write_text("\n".join(hx) + "\n")


def _head_tables(stage: Path, suite, data):
    """What the report opens with: where its settings come from (``provenance:``), the claims of the suite with their
    verdicts, and the results table (one row per
    cell: n seeds, each final metric as mean ± sd and its 95 % t-interval, or the single value for one seed). Also
    written as provenance.csv, claims.csv and results.csv."""
    from .claims import evaluate_claims
    from .provenance import provenance_table

    out = []
    if suite.cfg.provenance:
        prov = provenance_table(suite.cfg.provenance)
        prov.to_csv(stage / "provenance.csv", index=False)
        out.append(("Provenance", "Where each setting of this suite comes from: journal / paper = the paper's text; "
                    "authors' code = the authors' repository — vreshniak/ImplicitResNet at e831e4c (or its Nov-2020 "
                    "state) for the implicit-ResNet journal, davydovalexander/Non-Euclidean_Mon_Op_Net at d7ca027 for "
                    "NEMON — with file:line as in AUTHORS-CODE.md; inferred = stated nowhere, chosen to be consistent with the sources; ours = a choice of "
                    "this benchmark (e.g. sizing for a CPU).", prov))
    if suite.cfg.claims:
        claims = evaluate_claims(suite.cfg.claims, data, Path(suite.path).parent)
        claims.to_csv(stage / "claims.csv", index=False)
        counts = claims["verdict"].value_counts().to_dict()
        out.append(("Claims", f"{len(claims)} claim(s) of the papers checked on these runs: {counts.get('holds', 0)} "
                    f"hold, {counts.get('fails', 0)} fail, {counts.get('inconclusive', 0)} inconclusive. Differences are "
                    "paired by seed with a 95 % Student-t interval; one seed gives no interval and so no verdict.",
                    claims.drop(columns=["kind"])))
    results = results_table(data)
    if not results.empty:
        results.to_csv(stage / "results.csv", index=False)
        multi = (data.runs[data.runs["status"] == "finished"].groupby("cell").size() > 1).any()
        caption = ("One row per cell; n = finished seeds of the cell. Mean ± sample std [95 % Student-t interval] "
                   "when n ≥ 2; the single value when n = 1 (no spread is known)." if multi else
                   "One row per cell, 1 seed each: the value of that run (one seed gives no spread and no interval).")
        out.append(("Results", caption, results))
    return out


def results_table(data):
    """Per cell: n seeds and every ``final/`` and ``window/`` metric, formatted honestly for n."""
    import pandas as pd

    from .kinds._common import t_interval

    runs = data.runs
    if runs.empty:
        return pd.DataFrame()
    metrics = [c for c in runs.columns if c.startswith(("final/", "window/"))]
    rows = []
    for cell, grp in runs.groupby("cell", sort=False):
        fin = grp[grp["status"] == "finished"]
        k = len(fin)
        row = {"cell": cell or "all runs",
               "n": f"{k} seed{'' if k == 1 else 's'}" + (f" of {len(grp)}" if k != len(grp) else "")}
        for m in metrics:
            vals = fin[m].dropna().tolist() if m in fin else []
            mean, hw, n = t_interval(vals)
            if n == 0:
                row[m] = "–"
            elif n == 1:
                row[m] = f"{mean:.4g}"
            else:
                sd = float(pd.Series(vals).std(ddof=1))
                row[m] = f"{mean:.4g} ± {sd:.2g} [{mean - hw:.4g}, {mean + hw:.4g}]"
        rows.append(row)
    return pd.DataFrame(rows, columns=["cell", "n", *metrics])


def _anchor(s: Section) -> str:
    return "sec-" + s.stem

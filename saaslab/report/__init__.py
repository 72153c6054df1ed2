"""The report engine: one self-contained HTML page and a Markdown summary per pattern, plus an index.

`write_pattern_report(pattern)` reads what `saaslab sim` and `saaslab load` wrote in the pattern's results
folder, `<SAASLAB_RESULTS_DIR>/<pattern>/sim/` and `live/` (`data`), builds the report the pattern
declares (`REPORT` in its report module, named by the registry: `declaration`) and lays it out
(`render`). A pattern's report module declares; the loading, statistics (`numbers`, `cells`), the
evidence every report shares (`evidence`: checks, missing runs, send lag) and the rendering live here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from saaslab import patterns
from saaslab.report.cells import Cells
from saaslab.report.content import (
    Expected,
    Figure,
    Report,
    Table,
    figure_data_uri,
    grouped_bars,
    use_log_scale,
)
from saaslab.report.data import (
    SOURCES,
    PatternData,
    ReportError,
    RunData,
    load_pattern,
    load_run,
    pattern_folder,
    results_dir,
)
from saaslab.report.declaration import PatternReport, Section, build, split_sentences
from saaslab.report.evidence import LiveLatency, checks_sentence, checks_table
from saaslab.report.numbers import (
    MISSING,
    Summary,
    decimals_for,
    fmt_g,
    fmt_gap,
    fmt_list,
    fmt_load,
    fmt_loads,
    fmt_num,
    gap_cell,
    gap_percent,
    load_key,
    ordered,
    summarise,
)
from saaslab.report.render import CSS, e, html_table, markdown_table, render_html, render_markdown

SUMMARY_JSON = "summary.json"
"""Written beside summary.md: the question, headline and answer the index shows."""


def declaration_for(pattern: str) -> PatternReport:
    """The report the registry names for `pattern`."""
    try:
        declared = patterns.get(pattern)
    except KeyError as err:
        raise ReportError(str(err.args[0])) from None
    return declared.module("report").REPORT  # type: ignore[no-any-return]


def write_pattern_report(pattern: str, reports_dir: Path | None = None, *, directory: Path | None = None) -> Path:
    """Write index.html, summary.md and summary.json into the pattern's results folder (`directory`, else
    <reports_dir>/<pattern>, reports_dir defaulting to SAASLAB_RESULTS_DIR), from its sim/ and live/; returns
    the HTML path."""
    decl = declaration_for(pattern)
    data = load_pattern(pattern, reports_dir, directory=directory)
    report = build(decl, data)
    generated_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = data.directory
    (out / "summary.md").write_text(render_markdown(report, data, generated_at))
    (out / SUMMARY_JSON).write_text(json.dumps({
        "pattern": pattern, "question": report.question, "headline": report.headline, "answer": report.answer,
        "conclusions": report.conclusions, "sources": {s.source: True for s in data.runs},
        "generated_at": generated_at}, indent=2))
    html_path = out / "index.html"
    html_path.write_text(render_html(report, data, generated_at))
    return html_path


def write_index(reports_dir: Path | None = None) -> Path:
    """reports_dir/index.html (default SAASLAB_RESULTS_DIR): every registered pattern with its question, linking
    the reports written."""
    reports_dir = results_dir() if reports_dir is None else reports_dir
    reports_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for slug, declared in patterns.REGISTRY.items():
        page = reports_dir / slug / "index.html"
        summary_path = reports_dir / slug / SUMMARY_JSON
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if page.is_file():
            headline = summary.get("headline", f"(no summary: re-run `saaslab report {slug}`)")
            items.append(f'<li><h3><a href="{e(slug)}/index.html">{e(slug)}</a>: {e(declared.title)}</h3>'
                         f'<p class="question">{e(declared.question)}</p><p>{e(headline)}</p>'
                         f'<p class="muted">Markdown: <a href="{e(slug)}/summary.md">summary.md</a></p></li>')
        else:
            items.append(f"<li><h3>{e(slug)}: {e(declared.title)}</h3>"
                         f'<p class="question">{e(declared.question)}</p>'
                         f'<p class="muted">No report yet: run `saaslab sim {e(slug)}`, then '
                         f"`saaslab report {e(slug)}`.</p></li>")
    written = any((reports_dir / slug / "index.html").is_file() for slug in patterns.REGISTRY)
    none_yet = ("" if written else "<p>No pattern reports yet: run `saaslab demo`, or `saaslab sim tenancy` then "
                "`saaslab report tenancy`.</p>")
    bench = reports_dir / "bench"
    bench_html = ""
    if bench.is_dir():
        target = "bench/index.html" if (bench / "index.html").is_file() else "bench/"
        bench_html = f'<h2>Benchmarks</h2><p><a href="{target}">Benchmark results</a> (from `make bench`).</p>'
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>saaslab reports</title><style>{CSS} ul.reports {{ list-style: none; padding: 0; }}</style>",
        "</head><body>",
        "<h1>saaslab reports</h1>",
        f'<p class="muted">Generated {e(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))}. Each report answers '
        "one design question from simulated and measured runs.</p>",
        none_yet,
        '<ul class="reports">' + "".join(items) + "</ul>",
        bench_html,
        "</body></html>",
    ])
    index = reports_dir / "index.html"
    index.write_text(page + "\n")
    return index


__all__ = [
    "MISSING", "SOURCES", "SUMMARY_JSON", "Cells", "Expected", "Figure", "LiveLatency", "PatternData", "PatternReport", "Report",
    "ReportError", "RunData", "Section", "Summary", "Table", "build", "checks_sentence", "checks_table",
    "declaration_for", "decimals_for", "figure_data_uri", "fmt_g", "fmt_gap", "fmt_list", "fmt_load", "fmt_loads",
    "fmt_num", "gap_cell", "gap_percent", "grouped_bars", "html_table", "load_key", "load_pattern", "load_run",
    "markdown_table", "ordered", "pattern_folder", "render_html", "render_markdown", "results_dir", "split_sentences",
    "summarise", "use_log_scale", "write_index", "write_pattern_report",
]

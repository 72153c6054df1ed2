"""Pattern reports: one self-contained HTML page and a Markdown summary per pattern, plus an index.

`write_pattern_report(pattern)` reads what `saaslab sim` and `saaslab load` wrote under
`reports/<pattern>/sim/` and `reports/<pattern>/live/`, hands it to the pattern's builder, a
function `build(data: PatternData) -> Report` in `saaslab.reports.<pattern>`, and renders the
`Report` it fills. Everything in this module is pattern-agnostic: the builder decides what the
question, tables, plots and conclusions are; this module loads, summarises and renders.

The HTML is one file with no external assets (CSS inline, plots as PNG data URIs), so a report can
be mailed or attached to an issue and still show everything.
"""

from __future__ import annotations

import base64
import html
import importlib
import io
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from saaslab import PATTERNS
from saaslab.history import CheckResult
from saaslab.results import Row, read_rows
from saaslab.stats import mean_ci95

SOURCES = ("sim", "live")
SUMMARY_JSON = "summary.json"
"""Written beside summary.md: the question and headline the index shows."""


class ReportError(Exception):
    """There is nothing to report on; the message says which command produces it."""


# --- loading ------------------------------------------------------------------------------------

@dataclass
class RunData:
    """One source of a pattern's results: its rows, its run.json and (live runs) its check results."""

    source: str
    directory: Path
    rows: list[Row]
    meta: dict[str, Any]
    checks: list[CheckResult] | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        return self.meta.get("parameters") or {}

    def select(self, *, metric: str | None = None, tenant: str | None = None) -> list[Row]:
        return [r for r in self.rows
                if (metric is None or r.metric == metric) and (tenant is None or r.tenant == tenant)]


@dataclass
class PatternData:
    """Both sources of one pattern; a source that was never run is None."""

    pattern: str
    directory: Path
    sim: RunData | None
    live: RunData | None

    @property
    def runs(self) -> list[RunData]:
        return [r for r in (self.sim, self.live) if r is not None]


def load_run(directory: Path, source: str) -> RunData | None:
    """The run in `directory` (results.csv, run.json, optional check.json), or None if there is none."""
    csv_path = directory / "results.csv"
    if not csv_path.is_file():
        return None
    meta_path = directory / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    check_path = directory / "check.json"
    checks = None
    if check_path.is_file():
        listed = json.loads(check_path.read_text())
        # Either a bare list of CheckResult dicts or {"valid": ..., "results": [...]}.
        if isinstance(listed, dict):
            listed = listed.get("results", [])
        checks = [CheckResult(**c) for c in listed]
    return RunData(source=source, directory=directory, rows=read_rows(csv_path), meta=meta, checks=checks)


def load_pattern(pattern: str, reports_dir: Path = Path("reports")) -> PatternData:
    directory = reports_dir / pattern
    sim, live = (load_run(directory / s, s) for s in SOURCES)
    if sim is None and live is None:
        raise ReportError(f"no results for {pattern} in {directory}; run `saaslab sim {pattern}` first")
    return PatternData(pattern=pattern, directory=directory, sim=sim, live=live)


# --- statistics ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    """Mean over seeds with the half-width of its 95% CI (NaN with fewer than two values)."""

    mean: float
    ci95: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        finite = [v for v in values if not math.isnan(v)]
        mean, half = mean_ci95(finite)
        return cls(mean=mean, ci95=half, n=len(finite))

    @property
    def known(self) -> bool:
        return self.n > 0 and not math.isnan(self.mean)

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    def text(self, suffix: str = "") -> str:
        """'1.49x ± 0.05' style; 'n/a' when nothing was measured; no ± with a single value."""
        if not self.known:
            return "n/a"
        decimals = decimals_for(self.mean)
        out = f"{fmt_num(self.mean, decimals)}{suffix}"
        if not math.isnan(self.ci95):
            out += f" ± {fmt_num(self.ci95, decimals)}"
        return out


Key = tuple[Any, ...]


def summarise(rows: Iterable[Row], by: Sequence[str] = ("design", "load_point", "tenant", "metric")
              ) -> dict[Key, Summary]:
    """Group rows by the `by` columns and summarise each group's values (one per seed)."""
    groups: dict[Key, list[float]] = defaultdict(list)
    for r in rows:
        groups[tuple(getattr(r, c) for c in by)].append(r.value)
    return {k: Summary.of(v) for k, v in groups.items()}


def decimals_for(x: float) -> int:
    """Enough decimals for three significant figures below 100, none above."""
    ax = abs(x)
    if math.isnan(ax) or ax >= 100:
        return 0
    if ax >= 10:
        return 1
    if ax >= 0.01 or ax == 0:
        return 2
    return 4


def fmt_num(x: float, decimals: int | None = None) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.{decimals_for(x) if decimals is None else decimals}f}"


def gap_percent(reference: float, measured: float) -> float:
    """(measured - reference) / reference in percent; NaN when the reference is zero or unknown."""
    if math.isnan(reference) or math.isnan(measured) or reference == 0:
        return float("nan")
    return (measured - reference) / abs(reference) * 100.0


def fmt_gap(pct: float) -> str:
    if math.isnan(pct):
        return "n/a"
    return f"{round(pct):+d}%"  # an int: no "-0%" for tiny negative gaps


def load_key(x: float) -> float:
    """A load point as a dictionary key: each source (simulation, live run) wrote its own float."""
    return round(x, 6)


def fmt_load(lp: float) -> str:
    return f"{lp:g}"


def fmt_loads(lps: Iterable[float]) -> str:
    """'load 0.5' or 'loads 0.5 and 0.7'."""
    lps = list(lps)
    return ("load " if len(lps) == 1 else "loads ") + fmt_list([fmt_load(lp) for lp in lps])


def fmt_g(x: Any) -> str:
    """A run parameter as written by whoever chose it (20, 0.5), not padded to a precision."""
    return f"{float(x):g}"


def ordered(present: Iterable[str], order: Sequence[str]) -> list[str]:
    """`present` in the report's `order`, anything unknown after it, alphabetically."""
    present = set(present)
    return [d for d in dict.fromkeys(order) if d in present] + sorted(present - set(order))


def fmt_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# --- report content -----------------------------------------------------------------------------

@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    title: str
    data_uri: str
    caption: str = ""


@dataclass
class Report:
    """What a pattern builder fills; `render_html` and `render_markdown` lay it out."""

    pattern: str
    question: str
    designs: dict[str, str]
    workload: list[str]
    conclusions: list[str]
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    invariants: Table | None = None
    invariants_note: str = ""
    sim_vs_live: Table | None = None
    sim_vs_live_note: str = ""
    notes: list[str] = field(default_factory=list)
    """Caveats about the data (too few seeds, missing metrics), shown beside the sources."""
    simulation_only: bool = False
    """The pattern has no live face: a missing live run is expected, not something to go and make."""

    @property
    def headline(self) -> str:
        return self.conclusions[0] if self.conclusions else "No conclusion could be drawn from the data."


def grouped_bars(ax: Any, groups: Sequence[str], series: dict[str, list[Summary]], *,
                 capsize: float = 3) -> Any:
    """Grouped bars (one series per entry) with 95% CI error bars; returns the group centres."""
    import numpy as np

    x = np.arange(len(groups), dtype=float)
    width = 0.8 / max(1, len(series))
    for i, (name, summaries) in enumerate(series.items()):
        means = [s.mean if s.known else 0.0 for s in summaries]
        errs = [0.0 if math.isnan(s.ci95) else s.ci95 for s in summaries]
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=errs, capsize=capsize, label=name)
    ax.set_xticks(x, list(groups))
    return x


def figure_data_uri(fig: MplFigure, dpi: int = 110) -> str:
    """The figure as a base64 PNG data URI, rendered with the Agg canvas (no display, no pyplot state).

    Give the figure `layout="constrained"` rather than relying on a tight bounding box: that
    would draw it twice.
    """
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def checks_table(run: RunData | None, pattern: str) -> tuple[Table | None, str]:
    """The live run's invariant results as a table, or None and a sentence saying why there are none."""
    if run is None:
        return None, (f"No live run, so no invariant results: `saaslab load {pattern}` runs the checks "
                      "and writes live/check.json.")
    if run.checks is None:
        return None, (f"The live run in {run.directory} has no check.json: re-run `saaslab load {pattern}`, "
                      "which writes it.")
    if not run.checks:
        return None, "The live run's check.json lists no checks."
    rows = [[c.name, "yes" if c.valid else "NO", str(c.checked), str(c.violations), c.detail]
            for c in run.checks]
    return Table("Invariant checks on the live history",
                 ["check", "valid", "checked", "violations", "detail"], rows), ""


def checks_sentence(run: RunData | None) -> str | None:
    """One conclusion about the invariants, or None when no checks ran."""
    if run is None or not run.checks:
        return None
    failed = [c for c in run.checks if not c.valid]
    checked = sum(c.checked for c in run.checks)
    if not failed and len(run.checks) == 1:
        return f"The invariant check {run.checks[0].name} held on the live history ({checked:,} items checked)."
    if not failed:
        return f"All {len(run.checks)} invariant checks held on the live history ({checked:,} items checked)."
    names = fmt_list([f"{c.name} ({c.violations:,} violations)" for c in failed])
    return f"{len(failed)} of {len(run.checks)} invariant checks failed on the live history: {names}."


# --- rendering ----------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.2rem; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d8dde6; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-bottom: .3rem; }
.question { font-size: 1.15rem; color: #2b4a7a; margin-top: 0; }
.muted { color: #5d6675; font-size: .9rem; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: .4rem .8rem; margin: .5rem 0; }
ul.conclusions li { margin-bottom: .35rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #d8dde6; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f1f4f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; text-align: left; color: #5d6675; font-size: .85rem; padding-top: .3rem; }
figure { margin: 1rem 0 1.8rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e8ef; }
figcaption { color: #5d6675; font-size: .85rem; }
dt { font-weight: 600; }
dd { margin: 0 0 .5rem 1.2rem; }
pre { background: #f6f8fb; padding: .6rem; overflow-x: auto; font-size: .8rem; }
details { margin: .6rem 0; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_NUMERIC = re.compile(r"^([+-]?\d[\d,.]*(x|%| ms)?( ± [\d,.]+)?|n/a)$")


def _td(text: str) -> str:
    """A cell; numbers (with their unit suffix and ± interval) align right."""
    return f'<td class="num">{_e(text)}</td>' if _NUMERIC.match(str(text)) else f"<td>{_e(text)}</td>"


def html_table(t: Table) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in t.rows)
    caption = f"<caption>{_e(t.caption)}</caption>" if t.caption else ""
    return f"<h3>{_e(t.title)}</h3>\n<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(t: Table) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"### {t.title}", "", "| " + " | ".join(cell(c) for c in t.columns) + " |",
             "|" + "|".join(" --- " for _ in t.columns) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    if t.caption:
        lines += ["", f"_{t.caption}_"]
    return "\n".join(lines)


def source_lines(data: PatternData, simulation_only: bool = False) -> list[str]:
    """One line per source: what was found, or that it is missing and which command makes it."""
    make = {"sim": f"saaslab sim {data.pattern}", "live": f"saaslab load {data.pattern}"}
    label = {"sim": "Simulated", "live": "Measured (live)"}
    out = []
    for name, run in (("sim", data.sim), ("live", data.live)):
        if run is None and name == "live" and simulation_only:
            out.append(f"{label[name]}: none — {data.pattern} is a simulation-only pattern, with no live face to measure.")
            continue
        if run is None:
            out.append(f"{label[name]}: missing — no {data.directory / name / 'results.csv'}; "
                       f"run `{make[name]}` to produce it.")
            continue
        seeds = len({r.seed for r in run.rows})
        run_id = run.meta.get("run_id") or (run.rows[0].run_id if run.rows else "?")
        out.append(f"{label[name]}: run {run_id}, {len(run.rows):,} rows, {seeds} seed(s), "
                   f"finished {run.meta.get('finished_at', 'at an unknown time')}.")
    return out


def metadata_table(run: RunData) -> Table:
    """Where and how a run was made: commit, machine, package versions."""
    meta = run.meta
    machine = meta.get("machine") or {}
    packages = meta.get("packages") or {}
    rows = [
        ["run id", str(meta.get("run_id", "unknown"))],
        ["finished at", str(meta.get("finished_at", "unknown"))],
        ["git commit", str(meta.get("git_commit") or "unknown")],
        ["machine", ", ".join(f"{k} {v}" for k, v in machine.items()) or "unknown"],
        ["packages", ", ".join(f"{k} {v}" for k, v in sorted(packages.items())) or "unknown"],
    ]
    return Table(f"{run.source} run", ["field", "value"], rows)


def render_html(report: Report, data: PatternData, generated_at: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>saaslab · {_e(report.pattern)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>saaslab · {_e(report.pattern)}</h1>",
        f'<p class="question">{_e(report.question)}</p>',
        f'<p class="muted">Generated {_e(generated_at)} from {_e(data.directory)}.</p>',
        "<h2>Answer</h2>",
        '<ul class="conclusions">' + "".join(f"<li>{_e(c)}</li>" for c in report.conclusions) + "</ul>",
        "<h2>Data</h2>",
        "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in source_lines(data, report.simulation_only)) + "</ul>",
        *(f'<p class="note">{_e(n)}</p>' for n in report.notes),
        "<h2>Designs</h2>",
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in report.designs.items()) + "</dl>",
        "<h2>Workload</h2>",
        "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in report.workload) + "</ul>",
        "<h2>Results</h2>",
        *(html_table(t) for t in report.tables),
        *(f'<figure><img alt="{_e(f.title)}" src="{f.data_uri}"><figcaption><b>{_e(f.title)}.</b> '
          f"{_e(f.caption)}</figcaption></figure>" for f in report.figures),
        "<h2>Invariants</h2>",
        html_table(report.invariants) if report.invariants else f"<p>{_e(report.invariants_note)}</p>",
        "<h2>Simulated versus measured</h2>",
        *([f"<p>{_e(report.sim_vs_live_note)}</p>"] if report.sim_vs_live_note else []),
        *([html_table(report.sim_vs_live)] if report.sim_vs_live else []),
        "<h2>Runs</h2>",
    ]
    for run in data.runs:
        parts.append(html_table(metadata_table(run)))
        parts.append(f"<details><summary>{_e(run.source)} parameters</summary><pre>"
                     f"{_e(json.dumps(run.parameters, indent=2, default=str))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(report: Report, data: PatternData, generated_at: str) -> str:
    lines = [f"# {report.pattern}: {report.question}", "", report.headline, "",
             f"_Generated {generated_at}; the full report with plots is index.html beside this file._", "",
             "## Conclusions", "", *(f"- {c}" for c in report.conclusions), "",
             "## Data", "", *(f"- {line}" for line in source_lines(data, report.simulation_only)), *(f"- {n}" for n in report.notes), "",
             "## Designs", "", *(f"- **{k}**: {v}" for k, v in report.designs.items()), "",
             "## Workload", "", *(f"- {w}" for w in report.workload), "",
             "## Results", ""]
    for t in report.tables:
        lines += [markdown_table(t), ""]
    lines += ["## Invariants", ""]
    lines += [markdown_table(report.invariants) if report.invariants else report.invariants_note, ""]
    lines += ["## Simulated versus measured", ""]
    if report.sim_vs_live_note:
        lines += [report.sim_vs_live_note, ""]
    if report.sim_vs_live:
        lines += [markdown_table(report.sim_vs_live), ""]
    return "\n".join(lines)


# --- entry points -------------------------------------------------------------------------------

def builder_for(pattern: str) -> Callable[[PatternData], Report]:
    try:
        module = importlib.import_module(f"saaslab.reports.{pattern}")
    except ModuleNotFoundError as e:
        if e.name != f"saaslab.reports.{pattern}":
            raise
        raise ReportError(f"no report is defined for {pattern!r} (expected saaslab/reports/{pattern}.py)") from e
    return module.build


def write_pattern_report(pattern: str, reports_dir: Path = Path("reports")) -> Path:
    """Write reports_dir/pattern/index.html, summary.md and summary.json; returns the HTML path."""
    data = load_pattern(pattern, reports_dir)
    report = builder_for(pattern)(data)
    generated_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = data.directory
    (out / "summary.md").write_text(render_markdown(report, data, generated_at))
    (out / SUMMARY_JSON).write_text(json.dumps({
        "pattern": pattern, "question": report.question, "headline": report.headline,
        "conclusions": report.conclusions, "sources": {s.source: True for s in data.runs},
        "generated_at": generated_at}, indent=2))
    html_path = out / "index.html"
    html_path.write_text(render_html(report, data, generated_at))
    return html_path


def _pattern_order(name: str) -> tuple[int, str]:
    return (PATTERNS.index(name) if name in PATTERNS else len(PATTERNS), name)


def write_index(reports_dir: Path = Path("reports")) -> Path:
    """reports_dir/index.html linking every pattern report present, with its question and headline."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    found = sorted((d.name for d in reports_dir.iterdir() if (d / "index.html").is_file() and d.name != "bench"),
                   key=_pattern_order)
    items = []
    for name in found:
        summary_path = reports_dir / name / SUMMARY_JSON
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        question = summary.get("question", "")
        headline = summary.get("headline", "(no summary: re-run `saaslab report " + name + "`)")
        items.append(f'<li><h3><a href="{_e(name)}/index.html">{_e(name)}</a></h3>'
                     f'<p class="question">{_e(question)}</p><p>{_e(headline)}</p>'
                     f'<p class="muted">Markdown: <a href="{_e(name)}/summary.md">summary.md</a></p></li>')
    if not items:
        items.append("<li>No pattern reports yet: run `saaslab demo`, or `saaslab sim tenancy` then "
                     "`saaslab report tenancy`.</li>")
    bench = reports_dir / "bench"
    bench_html = ""
    if bench.is_dir():
        target = "bench/index.html" if (bench / "index.html").is_file() else "bench/"
        bench_html = f'<h2>Benchmarks</h2><p><a href="{target}">Benchmark results</a> (from `make bench`).</p>'
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>saaslab reports</title><style>{_CSS} ul.reports {{ list-style: none; padding: 0; }}</style>",
        "</head><body>",
        "<h1>saaslab reports</h1>",
        f'<p class="muted">Generated {_e(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))}. Each report answers '
        "one design question from simulated and measured runs.</p>",
        '<ul class="reports">' + "".join(items) + "</ul>",
        bench_html,
        "</body></html>",
    ])
    index = reports_dir / "index.html"
    index.write_text(page + "\n")
    return index

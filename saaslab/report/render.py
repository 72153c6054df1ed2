"""Laying a built `Report` out: one self-contained HTML page and a Markdown summary.

The HTML is one file with no external assets (CSS inline, plots as PNG data URIs), so a report can
be mailed or attached to an issue and still show everything. Both open with the answer (the HTML
with its headline plot first); the full evidence follows.
"""

from __future__ import annotations

import html
import json
import re

from saaslab.report.content import Expected, Figure, Report, Table
from saaslab.report.data import PatternData, RunData, command

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.2rem; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d8dde6; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-bottom: .3rem; }
.question { font-size: 1.15rem; color: #2b4a7a; margin-top: 0; }
.answer { font-size: 1.05rem; background: #eef4fb; border-left: 4px solid #2b4a7a; padding: .5rem .9rem; }
.muted { color: #5d6675; font-size: .9rem; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: .4rem .8rem; margin: .5rem 0; }
.note.expected { background: #eef4fb; border-left-color: #2b4a7a; }
ul.conclusions li { margin-bottom: .35rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #d8dde6; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f1f4f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
caption { caption-side: bottom; text-align: left; color: #5d6675; font-size: .85rem; padding-top: .3rem; }
figure { margin: 1rem 0 1.8rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e8ef; }
figcaption { color: #5d6675; font-size: .85rem; }
dt { font-weight: 600; }
dd { margin: 0 0 .5rem 1.2rem; }
pre { background: #f6f8fb; padding: .6rem; overflow-x: auto; font-size: .8rem; }
details { margin: .6rem 0; }
"""


def e(text: object) -> str:
    return html.escape(str(text), quote=True)


_NUMERIC = re.compile(r"^([+-]?\d[\d,.]*(x|%| ms)?( ± [\d,.]+)?|n/a)$")


def _td(text: str) -> str:
    """A cell; numbers (with their unit suffix and ± interval) align right."""
    return f'<td class="num">{e(text)}</td>' if _NUMERIC.match(str(text)) else f"<td>{e(text)}</td>"


def html_table(t: Table) -> str:
    head = "".join(f"<th>{e(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in t.rows)
    caption = f"<caption>{e(t.caption)}</caption>" if t.caption else ""
    return f"<h3>{e(t.title)}</h3>\n<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
    make = {"sim": command("sim", data.pattern, data.directory), "live": command("load", data.pattern, data.directory)}
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


def _html_figure(f: Figure) -> str:
    return (f'<figure><img alt="{e(f.title)}" src="{f.data_uri}"><figcaption><b>{e(f.title)}.</b> '
            f"{e(f.caption)}</figcaption></figure>")


def note_label(note: str) -> str:
    """What a warning box says first: whether it is expected of the run or a problem to look into."""
    return "Expected:" if isinstance(note, Expected) else "Problem:"


def _html_note(note: str) -> str:
    kind = "note expected" if isinstance(note, Expected) else "note"
    return f'<p class="{kind}"><b>{note_label(note)}</b> {e(note)}</p>'


def in_results_folder(data: PatternData) -> bool:
    """The report sits in <results>/<pattern>/, beside the index of every pattern (`--out` may name any folder)."""
    return data.directory.name == data.pattern


def _answer(report: Report) -> list[str]:
    return report.answer or [report.headline]


def render_html(report: Report, data: PatternData, generated_at: str) -> str:
    headline = (report.figures[report.headline_figure] if report.headline_figure is not None else None)
    rest = [f for i, f in enumerate(report.figures) if i != report.headline_figure]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>saaslab · {e(report.pattern)}</title>",
        f"<style>{CSS}</style></head><body>",
        *(['<p class="muted"><a href="../index.html">← all patterns</a></p>'] if in_results_folder(data) else []),
        f"<h1>saaslab · {e(report.pattern)}</h1>",
        f'<p class="question">{e(report.question)}</p>',
        f'<p class="muted">Generated {e(generated_at)} from {e(data.directory)}.</p>',
        *([_html_figure(headline)] if headline else []),
        "<h2>Answer</h2>",
        f'<p class="answer">{e(" ".join(_answer(report)))}</p>',
        "<h2>Conclusions</h2>",
        '<ul class="conclusions">' + "".join(f"<li>{e(c)}</li>" for c in report.conclusions) + "</ul>",
        "<h2>Data</h2>",
        "<ul>" + "".join(f"<li>{e(line)}</li>" for line in source_lines(data, report.simulation_only)) + "</ul>",
        *(_html_note(n) for n in report.notes),
        "<h2>Designs</h2>",
        "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in report.designs.items()) + "</dl>",
        "<h2>Workload</h2>",
        "<ul>" + "".join(f"<li>{e(w)}</li>" for w in report.workload) + "</ul>",
        "<h2>Results</h2>",
        *(html_table(t) for t in report.tables),
        *(_html_figure(f) for f in rest),
        "<h2>Invariants</h2>",
        html_table(report.invariants) if report.invariants else f"<p>{e(report.invariants_note)}</p>",
        "<h2>Simulated versus measured</h2>",
        *([f"<p>{e(report.sim_vs_live_note)}</p>"] if report.sim_vs_live_note else []),
        *([html_table(report.sim_vs_live)] if report.sim_vs_live else []),
        *([html_table(report.send_lag)] if report.send_lag else []),
        "<h2>Runs</h2>",
    ]
    for run in data.runs:
        parts.append(html_table(metadata_table(run)))
        parts.append(f"<details><summary>{e(run.source)} parameters</summary><pre>"
                     f"{e(json.dumps(run.parameters, indent=2, default=str))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(report: Report, data: PatternData, generated_at: str) -> str:
    """The headline on the third line (the index and tools read it there), the rest of the answer below it."""
    answer = _answer(report)
    rest = [s for s in answer if s != report.headline] if answer[0] == report.headline else answer
    lines = [f"# {report.pattern}: {report.question}", "", report.headline, ""]
    if rest:
        lines += [" ".join(rest), ""]
    index = "; all patterns: [../index.html](../index.html)" if in_results_folder(data) else ""
    lines += [f"_Generated {generated_at}; the full report with plots is index.html beside this file{index}._", "",
              "## Conclusions", "", *(f"- {c}" for c in report.conclusions), "",
              "## Data", "", *(f"- {line}" for line in source_lines(data, report.simulation_only)),
              *(f"- **{note_label(n)}** {n}" for n in report.notes), "",
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
    if report.send_lag:
        lines += [markdown_table(report.send_lag), ""]
    return "\n".join(lines)

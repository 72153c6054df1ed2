"""The idempotency report's invariants: the simulated checker's verdicts per design, and the live ones."""

from __future__ import annotations

from saaslab.history import CheckResult
from saaslab.report import RunData, Table, fmt_load, fmt_num
from saaslab.report.evidence import live_checks_note
from saaslab.reports.idempotency.view import BRACKETED, CHECKS, PATTERN, View, order, worst

# --- invariants -----------------------------------------------------------------------------------

def _live_checks(live: RunData | None) -> list[tuple[str, str, CheckResult]]:
    """(design, check name, result) for each live result; a plain name stands for every design."""
    if live is None or not live.checks:
        return []
    designs = order(r.design for r in live.rows) or ["*"]
    out = []
    for c in live.checks:
        m = BRACKETED.match(c.name)
        if m:
            out.append((m["design"], m["check"], c))
        else:
            out += [(d, c.name, c) for d in designs]
    return out


def invariants(sim: View | None, live: RunData | None) -> tuple[Table | None, str]:
    rows = []
    if sim is not None:
        for d in sim.designs:
            for check in CHECKS:
                ok, n = sim.held(d, check)
                if not n:
                    continue
                if check == "replays_match_first":
                    bad = sum(x for _, x in sim.runs(d, "replay_mismatch"))
                    detail = f"{fmt_num(bad, 0)} mismatched replays in all"
                else:
                    metric = "effect_violations_per_10k" if check == "exactly_one_effect" else "orphans_per_10k"
                    what = "violating keys" if check == "exactly_one_effect" else "orphan charges"
                    w = worst(sim, d, metric)
                    detail = (f"no {what}" if w is None or w[0] == 0 else
                              f"{what} per 10,000 payments: up to {fmt_num(w[0])} (load {fmt_load(w[1])})")
                rows.append(["simulated", d, check, f"{ok}/{n} runs", str(n - ok), detail])
    for d, name, c in _live_checks(live):
        rows.append(["live", d, name, "yes" if c.valid else "NO", f"{c.violations:,}", c.detail])
    note = live_checks_note(live, PATTERN)
    if not rows:
        return None, note or "No invariant results were recorded."
    caption = ("Simulated: in how many runs (loads x seeds) the check held on the run's history and final ledger, "
               "and how many failed. Live: the verdict on the live history and the state read back after the "
               "completer.")
    return Table("Invariant checks", ["source", "design", "check", "held", "violations", "detail"], rows,
                 caption=caption), note

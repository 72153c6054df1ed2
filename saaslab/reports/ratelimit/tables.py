"""The rate-limiting report's tables of the simulation."""

from __future__ import annotations

from saaslab.report import Table, fmt_g, fmt_load, fmt_num
from saaslab.reports.ratelimit.conclusions import memory
from saaslab.reports.ratelimit.concurrency import race_verdicts
from saaslab.reports.ratelimit.view import DEFAULT_PROMISE, PROMISED_WINDOW_RATIO, View, sim_rejected_pct
from saaslab.results import ALL_TENANTS

# --- tables ---------------------------------------------------------------------------------------

def accuracy_table(v: View) -> Table:
    rows = []
    for d in v.designs:
        for lp in v.load_points:
            if not v.seeds(d, lp, "accuracy_offered", ALL_TENANTS):
                continue
            rows.append([d, fmt_load(lp), v.get(d, lp, "accuracy_rejected_pct").text("%"),
                         v.get(d, lp, "accuracy_admitted_vs_exact_pct").text("%"),
                         v.get(d, lp, "accuracy_false_admit_pct").text("%"),
                         v.get(d, lp, "accuracy_false_reject_pct").text("%"),
                         v.get(d, lp, "accuracy_max_window_ratio").text("x"),
                         str(len(v.seeds(d, lp, "accuracy_offered", ALL_TENANTS)))])
    return Table("Accuracy against an exact sliding log (simulated)",
                 ["design", "load (x limit)", "429 rate", "admitted vs exact", "false admits", "false rejects",
                  "most in any window", "seeds"], rows,
                 caption=("One bursty tenant. False admits/rejects: decisions the exact rule over the same "
                          "admissions would have made the other way, in percent of requests. 'Most in any window': "
                          "the most admitted in any span of one window, over the limit. Mean ± 95% CI over seeds."))


def boundary_memory_table(v: View) -> Table:
    rows = []
    for d in v.designs:
        rows.append([d, *(v.get(d, lp, "boundary_burst_ratio").text("x") for lp in v.load_points),
                     memory(v, d).text(), v.get(d, v.top_load, "memory_state_bytes_max").text()])
    return Table("Window boundary and memory per tenant (simulated)",
                 ["design", *(f"boundary flood {fmt_load(lp)}x" for lp in v.load_points),
                  f"state bytes, mean (load {fmt_load(v.top_load)})", "state bytes, max"], rows,
                 caption=("Boundary flood Lx: an idle tenant sends L x the limit evenly around a window boundary; "
                          "cells are admitted over the limit. State bytes: estimated Redis memory of the "
                          "tenant's limiter key."))


def neighbour_table(v: View) -> Table:
    rows = []
    for d in v.designs:
        quiet = [s.mean for lp in v.load_points if (s := sim_rejected_pct(v, d, lp, "quiet")).known]
        rows.append([d, *(sim_rejected_pct(v, d, lp, "noisy").text("%") for lp in v.load_points),
                     f"{fmt_num(max(quiet))}%" if quiet else "n/a",
                     v.get(d, v.top_load, "neighbour_noisy_admitted_x_quota").text("x")])
    return Table("Noisy neighbour: 429 rates per tenant (simulated)",
                 ["design", *(f"noisy refused at {fmt_load(lp)}x" for lp in v.load_points),
                  "quiet refused (worst load)", f"noisy admitted / quota at {fmt_load(v.top_load)}x"], rows,
                 caption=("One noisy tenant at L x its quota, four quiet ones at half theirs, Poisson arrivals; "
                          "limits are per tenant. Mean ± 95% CI over seeds."))


def concurrency_table(v: View) -> Table:
    held, _ = race_verdicts(v)
    lp = v.top_load
    rows = []
    for d in v.designs:
        ok, n = held.get(d, (0, 0))
        rows.append([d, v.get(d, lp, "race_admitted_ratio").text("x"), f"{ok}/{n}" if n else "n/a",
                     v.get(d, lp, "cluster_false_admit_pct").text("%"),
                     v.get(d, lp, "skew_false_admit_pct").text("%"),
                     v.get(d, lp, "skew_false_reject_pct").text("%"),
                     v.get(d, lp, "cluster_max_window_ratio").text("x"),
                     v.get(d, lp, "skew_max_window_ratio").text("x"),
                     f"{fmt_g(PROMISED_WINDOW_RATIO.get(d, DEFAULT_PROMISE))}x"])
    skew_ms = v.run.parameters.get("skew_ms")
    skew = f"±{fmt_g(skew_ms)} ms" if skew_ms is not None else "skewed"
    return Table(f"Concurrency and clock skew at load {fmt_load(lp)} (simulated)",
                 ["design", "race: admitted / limit", "race: no_over_admission held (runs)",
                  "false admits, clocks agree", f"false admits, {skew}", f"false rejects, {skew}",
                  "most in any window, clocks agree", f"most in any window, {skew}", "promise"], rows,
                 caption=("Race: a tenant's requests arrive within milliseconds across the app servers; the check "
                          "column counts runs over all loads and seeds. Clocks: app servers sharing one Redis, "
                          "each passing its own clock; judged in true time. Promise: the most an algorithm may "
                          "admit in one window's span by design."))

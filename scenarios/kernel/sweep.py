"""Sweeps: every design x load point x seed of a scenario, on a process pool.

A scenario provides one top-level (so picklable) function
`simulate(design, load_point, seed, params) -> list[Row]`; each call is an independent seeded
run. The sweep fans the calls out over `jobs` processes and puts the results back in sweep order
(design, then load point, then seed, then the order `simulate` returned), so the rows are the same
whatever `jobs` is and in whatever order the workers finish.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any

from saaslab.results import Row

Simulate = Callable[[str, float, int, Mapping[str, Any]], list[Row]]
Progress = Callable[[int, int], None]


def sweep(simulate: Simulate, *, designs: Iterable[str], load_points: Iterable[float], seeds: Iterable[int],
          params: Mapping[str, Any] | None = None, jobs: int = 1, progress: Progress | None = None
          ) -> list[Row]:
    """All rows of the sweep. `jobs=1` runs inline (tests, notebooks); `progress(done, total)`
    is called in this process after each run finishes."""
    params = dict(params or {})
    tasks = list(itertools.product(tuple(designs), tuple(load_points), tuple(seeds)))
    total = len(tasks)
    results: list[list[Row]] = [[] for _ in tasks]
    if jobs <= 1:
        for i, (design, lp, seed) in enumerate(tasks):
            results[i] = simulate(design, lp, seed, params)
            if progress:
                progress(i + 1, total)
    else:
        with ProcessPoolExecutor(max_workers=min(jobs, max(1, total))) as pool:
            index: dict[Future[list[Row]], int] = {
                pool.submit(simulate, design, lp, seed, params): i for i, (design, lp, seed) in enumerate(tasks)
            }
            try:
                for done, fut in enumerate(as_completed(index), start=1):
                    results[index[fut]] = fut.result()
                    if progress:
                        progress(done, total)
            except BaseException:
                # A failed run (or Ctrl-C) makes the rest pointless: don't wait for the queued ones.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return [row for rows in results for row in rows]

"""A worker settles the garbage collector once it is up (reference_impl/app.py, `settle_gc`)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import gc
from reference_impl.app import GC_YOUNG_THRESHOLD, settle_gc
before = gc.get_threshold()
settle_gc()
young, *older = gc.get_threshold()
assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()  # the start-up heap, out of the collector's way
assert young == max(before[0], GC_YOUNG_THRESHOLD) and tuple(older) == before[1:], (before, gc.get_threshold())
print("settled")
"""


def test_settle_gc_freezes_the_start_up_heap_and_widens_the_young_generation() -> None:
    # In a process of its own: freezing is for a worker's whole life, not for the test process's.
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "settled"

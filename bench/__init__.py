"""Benchmarks (`make bench`): speed targets measured as ratios in one run, written to reports/bench/."""

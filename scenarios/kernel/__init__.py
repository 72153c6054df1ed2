"""The simulation kernel every pattern's scenarios share: workloads, faults, metrics, sweeps.

Simulated time is integer microseconds (`env.now` counts µs), as in the decision cores, so a
simulated latency and a measured one go through the same integer arithmetic.
"""

US_PER_S = 1_000_000
US_PER_MS = 1_000

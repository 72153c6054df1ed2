"""The simulation kernel every pattern's scenarios share: workloads, faults, metrics, sweeps."""

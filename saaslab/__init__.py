"""saaslab: a simulation and load-testing lab for SaaS backend patterns.

The package holds what every pattern shares: settings, embedded services, the results schema,
histories for invariant checkers, statistics, the report writer and the command line.
"""

__version__ = "0.1.0"

from saaslab.patterns import REGISTRY, with_face

PATTERNS = tuple(REGISTRY)
"""Pattern slugs with a simulation and a report, in the order the demo runs them (the registry's order)."""

LIVE_PATTERNS = tuple(p.slug for p in with_face("live"))
"""Patterns that also have a live face: a load test against the reference service and its checker."""

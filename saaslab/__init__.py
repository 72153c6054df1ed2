"""saaslab: a simulation and load-testing lab for SaaS backend patterns.

The package holds what every pattern shares: settings, embedded services, the results schema,
histories for invariant checkers, statistics, the report writer and the command line.
"""

__version__ = "0.1.0"

PATTERNS = ("tenancy",)
"""Pattern slugs built so far, in the order the demo runs them."""

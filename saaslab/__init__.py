"""saaslab: a simulation and load-testing lab for SaaS backend patterns.

The package holds what every pattern shares: settings, embedded services, the results schema,
histories for invariant checkers, statistics, the registry of patterns (`saaslab.patterns`), the
report engine and the command line.
"""

__version__ = "0.1.0"

"""saaslab package."""

"""One module per pattern, each with `build(data: PatternData) -> Report` (see saaslab.report)."""

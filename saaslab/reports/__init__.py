"""One package per pattern, each declaring its report as `REPORT`, a `saaslab.report.PatternReport`
(the registry, saaslab/patterns/, names it); `saaslab.report` builds and renders them."""

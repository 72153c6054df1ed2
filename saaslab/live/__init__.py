"""The live face of each pattern: `saaslab load <pattern>` runs `saaslab.live.<pattern>.run` on the shared harness."""

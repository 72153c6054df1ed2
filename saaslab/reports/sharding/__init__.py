"""The sharding report: NOT BUILT YET (issue #14). `REPORT` is None until it is declared."""

REPORT = None

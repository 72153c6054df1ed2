"""The failover report: NOT BUILT YET (issue #15). `REPORT` is None until it is declared."""

REPORT = None

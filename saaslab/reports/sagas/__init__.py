"""The sagas report: NOT BUILT YET (issue #13). `REPORT` is None until it is declared."""

REPORT = None

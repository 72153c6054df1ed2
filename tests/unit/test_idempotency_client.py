"""The load tests' client: an answer counts only when its body arrived in full.

Locust hands back a response whose body it failed to read (its per-read timeout, a connection
closed mid-body) with the head alone. Recorded as a 201 with an empty body, that made the
idempotency checker report "a 201 names another payment" for a payment that was in fact made once
and answered once; `loadtests/idempotency.py` now treats such an answer as not received.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from geventhttpclient.response import HTTPConnectionClosed

from loadtests.common.answers import received_body, whole


class _Unreadable:
    @property
    def content(self) -> bytes:
        raise HTTPConnectionClosed("connection closed.")


class _Read:
    def __init__(self, content: bytes | None) -> None:
        self.content = content


@pytest.mark.parametrize(("length", "body", "is_whole"), [
    ("32", b"x" * 32, True),
    ("32", b"", False),
    ("32", b"x" * 31, False),
    (None, b"", True),  # no length to hold it to
    ("abc", b"", False),
])
def test_a_body_is_whole_only_at_its_content_length(length: str | None, body: bytes, is_whole: bool) -> None:
    assert whole(length, body) is is_whole


def test_a_body_that_cannot_be_read_comes_back_empty_not_as_an_error() -> None:
    assert received_body(_Unreadable()) == b""
    assert received_body(_Read(None)) == b"" and received_body(_Read(b"ok")) == b"ok"


def test_the_helpers_leave_the_process_unpatched() -> None:
    """Importing Locust monkey-patches the whole process with gevent: the test session must never do it."""
    code = ("import sys, loadtests.common.answers; from gevent import monkey; "
            "sys.exit(int('locust' in sys.modules or monkey.is_module_patched('socket')))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

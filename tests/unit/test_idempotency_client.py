"""The idempotency load test's client: an answer counts only when its body arrived in full.

Locust hands back a response whose body it failed to read (its per-read timeout, a connection
closed mid-body) with the head alone. Recorded as a 201 with an empty body, that made the checker
report "a 201 names another payment" for a payment that was in fact made once and answered once.
"""

from __future__ import annotations

import pytest
from geventhttpclient.response import HTTPConnectionClosed

from loadtests.idempotency import Answer, _body, _whole


class _Unreadable:
    @property
    def content(self) -> bytes:
        raise HTTPConnectionClosed("connection closed.")


class _Read:
    def __init__(self, content: bytes | None) -> None:
        self.content = content


@pytest.mark.parametrize(("length", "body", "whole"), [
    ("32", b"x" * 32, True),
    ("32", b"", False),
    ("32", b"x" * 31, False),
    (None, b"", True),  # no length to hold it to
    ("abc", b"", False),
])
def test_a_body_is_whole_only_at_its_content_length(length: str | None, body: bytes, whole: bool) -> None:
    assert _whole(length, body) is whole


def test_a_body_that_cannot_be_read_comes_back_empty_not_as_an_error() -> None:
    assert _body(_Unreadable()) == b""
    assert _body(_Read(None)) == b"" and _body(_Read(b"ok")) == b"ok"


def test_a_cut_short_answer_is_unknown_so_it_is_retried_not_judged() -> None:
    cut = Answer(0, error="body cut short: 0 of 180 bytes")
    assert (cut.kind, cut.decisive, cut.unknown) == ("info", False, True)

"""Reading a load test's answers whole, without importing Locust (which patches the process with gevent).

Locust hands back a response whose body it failed to read (its per-read timeout, a connection
closed mid-body) with the head alone, and reading the body again may raise. Taken at face value
that is, say, a 201 with an empty body: an answer the client never actually received.
"""

from __future__ import annotations

import zlib
from typing import Any

from geventhttpclient._parser import HTTPParseError  # HTTPConnectionClosed is one

# What reading a body can raise (Locust's FAILURE_EXCEPTIONS, less gevent's Timeout: a caller's
# own deadline must still reach the caller).
READ_ERRORS = (OSError, HTTPParseError, zlib.error)


def received_body(resp: Any) -> bytes:
    """The body as received: empty when it could not be read."""
    try:
        return bytes(resp.content or b"")
    except READ_ERRORS:
        return b""


def whole(content_length: str | None, body: bytes) -> bool:
    """Whether a response's body arrived in full, as its Content-Length says (no header, no check)."""
    try:
        return content_length is None or int(content_length) == len(body)
    except ValueError:
        return False


def json_object(resp: Any) -> dict[str, Any]:
    """The body as a JSON object: empty when it is not one (a proxy's HTML page, a list, no body)."""
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}

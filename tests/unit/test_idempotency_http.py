"""The HTTP glue of idempotency without servers: settings, the key middleware, storing and rendering responses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from reference_impl.idempotency.core import Policy
from reference_impl.idempotency.http import KEY_SCOPE_KEY, IdempotencyKeyMiddleware, keep, policy_of, render
from saaslab.settings import Settings


def test_the_settings_map_onto_the_core_policy() -> None:
    assert policy_of(Settings()) == Policy()  # 24 h retention, a 90 s lock
    assert policy_of(Settings(idempotency_retention_s=600, idempotency_lock_timeout_s=2.5)) == \
        Policy(retention_us=600_000_000, lock_timeout_us=2_500_000)
    with pytest.raises(ValidationError, match="must be below SAASLAB_IDEMPOTENCY_RETENTION_S"):
        Settings(idempotency_retention_s=60, idempotency_lock_timeout_s=60)
    with pytest.raises(ValidationError):
        Settings(idempotency="memory")  # type: ignore[arg-type]


async def call(middleware_path: str, method: str, headers: list[tuple[bytes, bytes]]) -> tuple[list[Message], Scope]:
    """Send one request through IdempotencyKeyMiddleware to an app that answers 204."""
    seen: dict[str, Any] = {}

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen["scope"] = scope
        await Response(status_code=204)(scope, receive, send)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": method, "path": middleware_path, "headers": headers, "query_string": b""}
    await IdempotencyKeyMiddleware(inner)(scope, receive, send)
    return sent, seen.get("scope", {})


@pytest.mark.parametrize("headers", [[(b"idempotency-key", b"k" * 256)], [(b"idempotency-key", b"")],
                                     [(b"idempotency-key", "caf\u00e9".encode())],
                                     [(b"idempotency-key", b"a"), (b"idempotency-key", b"a")]])
async def test_a_bad_key_on_a_v1_post_is_a_400_problem_before_the_route(headers: list[tuple[bytes, bytes]]) -> None:
    sent, scope = await call("/v1/payments", "POST", headers)
    assert scope == {}  # the route never ran
    assert sent[0]["status"] == 400
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["type"].endswith("/invalid-idempotency-key")


async def test_a_good_key_reaches_the_route_and_other_requests_pass_untouched() -> None:
    sent, scope = await call("/v1/payments", "POST", [(b"idempotency-key", b"order 42")])
    assert sent[0]["status"] == 204 and scope[KEY_SCOPE_KEY] == "order 42"
    sent, scope = await call("/v1/payments", "POST", [])
    assert sent[0]["status"] == 204 and KEY_SCOPE_KEY not in scope
    for path, method in (("/v1/payments", "GET"), ("/admin/tenants", "POST")):
        sent, scope = await call(path, method, [(b"idempotency-key", b"")])
        assert sent[0]["status"] == 204 and KEY_SCOPE_KEY not in scope, (path, method)


def test_a_response_is_stored_without_per_request_headers_and_rendered_byte_for_byte() -> None:
    response = Response(b'{"id":"p1"}', status_code=201, media_type="application/json",
                        headers={"Location": "/v1/payments/p1", "RateLimit-Remaining": "9", "X-Trace": "t"})
    stored = keep(response)
    assert (stored.status, stored.body) == (201, b'{"id":"p1"}')
    assert sorted(stored.headers) == [("content-type", "application/json"), ("location", "/v1/payments/p1")]
    first, replay = render(stored), render(stored, replayed=True)
    assert (first.status_code, first.body) == (replay.status_code, replay.body) == (201, b'{"id":"p1"}')
    assert first.headers["content-type"] == "application/json" and first.headers["content-length"] == "11"
    assert "idempotent-replayed" not in first.headers and replay.headers["Idempotent-Replayed"] == "true"
    assert keep(replay) == stored  # a replay stores back to the same response

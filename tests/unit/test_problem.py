"""Problem documents, the pure-ASGI error and body-limit middleware, ids and cursors (no servers)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from reference_impl.common.middleware import BodyLimitMiddleware, ErrorMiddleware
from reference_impl.common.problem import Problem, validation_problem
from reference_impl.tenancy.routes import decode_cursor, encode_cursor, parse_id


def http_scope(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "POST", "path": "/x", "headers": headers or [], "query_string": b""}


async def call(app: Any, scope: Scope, chunks: list[bytes]) -> tuple[int, dict[bytes, bytes], bytes]:
    """Run an ASGI app on one request; the body arrives in `chunks`."""
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


async def read_body_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body like a framework would, then answers with its length."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def test_problem_document_shape() -> None:
    problem = Problem(409, "conflict", "It clashed.", headers={"Retry-After": "2"}, extra={"hint": "wait"})
    assert problem.body() == {"type": "https://saaslab.dev/problems/conflict", "title": "Conflict",
                              "status": 409, "detail": "It clashed.", "hint": "wait"}
    response = problem.response()
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "2"
    assert json.loads(response.body) == problem.body()


def test_a_smuggled_tenant_outranks_other_validation_errors_on_tenant_routes() -> None:
    errors = [{"type": "missing", "loc": ("body", "name"), "msg": "Field required"},
              {"type": "extra_forbidden", "loc": ("body", "Tenant_ID"), "msg": "Extra inputs are not permitted"}]
    scoped = validation_problem(errors, tenant_scoped=True)
    assert scoped.slug == "tenant-in-request" and "API key" in scoped.detail
    plain = validation_problem(errors, tenant_scoped=False)
    assert plain.slug == "validation-error"
    assert plain.detail == "name: Field required; Tenant_ID: Extra inputs are not permitted"
    assert [e["loc"] for e in plain.extra["errors"]] == [["body", "name"], ["body", "Tenant_ID"]]


def test_invalid_json_is_named_as_such() -> None:
    errors = [{"type": "json_invalid", "loc": ("body", 7), "msg": "JSON decode error",
               "ctx": {"error": "Expecting value"}}]
    problem = validation_problem(errors, tenant_scoped=True)
    assert (problem.status, problem.slug) == (422, "invalid-json")
    assert problem.detail == "body is not valid JSON (Expecting value)"


async def test_error_middleware_hides_the_exception() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("password=hunter2")

    status, headers, body = await call(ErrorMiddleware(broken, unavailable_errors=(ConnectionError,)), http_scope(), [b""])
    assert status == 500 and headers[b"content-type"] == b"application/problem+json"
    assert b"hunter2" not in body and json.loads(body)["type"].endswith("/internal-error")


async def test_error_middleware_maps_outages_and_problems() -> None:
    async def outage(scope: Scope, receive: Receive, send: Send) -> None:
        raise ConnectionError("redis down")

    async def refusal(scope: Scope, receive: Receive, send: Send) -> None:
        raise Problem(401, "unauthorized", "No key.")

    status, _, _ = await call(ErrorMiddleware(outage, unavailable_errors=(ConnectionError,)), http_scope(), [b""])
    assert status == 503
    status, _, body = await call(ErrorMiddleware(refusal, unavailable_errors=()), http_scope(), [b""])
    assert status == 401 and json.loads(body)["detail"] == "No key."


async def test_error_middleware_reraises_once_the_response_has_started() -> None:
    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError):
        await call(ErrorMiddleware(half, unavailable_errors=()), http_scope(), [b""])


@pytest.mark.parametrize("chunks,expected", [([b"a" * 10], 200), ([b"a" * 6, b"a" * 4], 200),
                                             ([b"a" * 6, b"a" * 5], 413), ([b"a" * 11], 413)])
async def test_streamed_bodies_are_limited_while_they_arrive(chunks: list[bytes], expected: int) -> None:
    status, _, body = await call(BodyLimitMiddleware(read_body_app, max_bytes=10), http_scope(), chunks)
    assert status == expected
    if expected == 413:
        assert json.loads(body)["type"].endswith("/body-too-large")


@pytest.mark.parametrize("length,expected", [(b"10", 200), (b"11", 413), (b"ten", 400), (b"-1", 400)])
async def test_declared_lengths_are_checked_up_front(length: bytes, expected: int) -> None:
    scope = http_scope([(b"content-length", length)])
    status, _, _ = await call(BodyLimitMiddleware(read_body_app, max_bytes=10), scope, [b"a" * 10])
    assert status == expected


def test_ids_parse_and_malformed_ids_are_plain_404s() -> None:
    some = uuid.uuid4()
    assert parse_id(str(some), "project") == some
    bodies = set()
    for raw in ("nope", "", "123", str(some)[:-1], "../../etc"):
        with pytest.raises(Problem) as caught:
            parse_id(raw, "project")
        bodies.add(caught.value.encode())
    assert len(bodies) == 1 and b"nope" not in bodies.pop()


@given(st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_cursors_round_trip(created_at: datetime, object_id: uuid.UUID) -> None:
    position = decode_cursor(encode_cursor((object_id, "name", created_at)))
    assert (position.created_at, position.id) == (created_at, object_id)


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGEgY3Vyc29y", "MjAyNC0wMS0wMXxub3QtYS11dWlk",
                                    "MjAyNC0wMS0wMVQwMDowMDowMHwwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDA"])
def test_foreign_cursors_are_422(cursor: str) -> None:
    with pytest.raises(Problem) as caught:
        decode_cursor(cursor)
    assert (caught.value.status, caught.value.slug) == (422, "invalid-cursor")

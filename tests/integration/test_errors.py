"""Bad input never reaches storage and never becomes a 5xx; every error is a problem document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from live_app import LiveService, TenantHandle, count_rows, live_service

from saaslab.services import port_is_free
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

TWO_MIB = 2 * 1024 * 1024
PROBLEM_KEYS = {"type", "title", "status", "detail"}


@dataclass
class Env:
    svc: LiveService
    tenant: TenantHandle


@pytest_asyncio.fixture(scope="module")
async def env(settings: Settings) -> AsyncIterator[Env]:
    async with live_service(settings) as svc:
        yield Env(svc, await svc.new_tenant())


def assert_problem(r: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert PROBLEM_KEYS <= set(body) and body["status"] == status
    assert body["type"].startswith("https://saaslab.dev/problems/")
    if slug:
        assert body["type"] == f"https://saaslab.dev/problems/{slug}", body
    return body


# (route, valid body, a wrong-typed variant per field)
POSTS = {
    "/admin/tenants": ({"name": "n", "plan": "pro"},
                       [{"name": 5, "plan": "pro"}, {"name": "n", "plan": "gold"},
                        {"name": "n", "plan": "pro", "limits": {"requests": "10", "window_s": 1}},
                        {"name": "n", "plan": "pro", "limits": {"requests": 0, "window_s": 1}},
                        {"name": "n", "plan": "pro", "limits": {"requests": 10, "window_s": -1}},
                        {"name": "n", "plan": "pro", "limits": [10, 1]}]),
    "/v1/projects": ({"name": "n"},
                     [{"name": 5}, {"name": ["n"]}, {"name": ""}, {"name": "x" * 201}, {"name": None}]),
    "/v1/payments": ({"amount": 100, "currency": "EUR"},
                     [{"amount": "100", "currency": "EUR"}, {"amount": 1.5, "currency": "EUR"},
                      {"amount": True, "currency": "EUR"}, {"amount": 0, "currency": "EUR"},
                      {"amount": -3, "currency": "EUR"}, {"amount": 2**63, "currency": "EUR"},
                      {"amount": 100, "currency": "eur"}, {"amount": 100, "currency": "EURO"},
                      {"amount": 100, "currency": "E1R"}, {"amount": 100, "currency": 978}]),
}


# Python's JSON decoder accepts NaN; each route must still refuse it in its numeric field.
NAN_BODIES = {
    "/admin/tenants": b'{"name": "n", "plan": "pro", "limits": {"requests": 10, "window_s": NaN}}',
    "/v1/projects": b'{"name": NaN}',
    "/v1/payments": b'{"amount": NaN, "currency": "EUR"}',
}


def bad_requests(route: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, httpx request kwargs) for every kind of bad input to a POST route."""
    valid, wrong_types = POSTS[route]
    text_field = next(k for k, v in valid.items() if isinstance(v, str))
    json_ct = {"content-type": "application/json"}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("malformed json", {"content": b'{"name": "n", ', "headers": json_ct}),
        ("malformed json, no content type", {"content": b"{oops"}),
        ("empty body", {"content": b"", "headers": json_ct}),
        ("json array", {"json": [valid]}),
        ("json null", {"content": b"null", "headers": json_ct}),
        ("NaN literal", {"content": NAN_BODIES[route], "headers": json_ct}),
        # json.dumps writes these as \ud800 and \u0000 escapes, which decode to unstorable text.
        ("lone surrogate", {"content": json.dumps({**valid, text_field: "\ud800"}).encode(), "headers": json_ct}),
        ("NUL character", {"content": json.dumps({**valid, text_field: "a\u0000"}).encode(), "headers": json_ct}),
        ("unknown field", {"json": {**valid, "colour": "red"}}),
        ("missing everything", {"json": {}}),
        ("tenant_id in body", {"json": {**valid, "tenant_id": "00000000-0000-0000-0000-000000000000"}}),
        ("tenant in body", {"json": {**valid, "Tenant": "acme"}}),
    ]
    cases += [(f"missing {field}", {"json": {k: v for k, v in valid.items() if k != field}}) for field in valid]
    cases += [(f"wrong type {i}", {"json": body}) for i, body in enumerate(wrong_types)]
    return cases


@pytest.mark.parametrize("route", list(POSTS))
async def test_bad_input_on_every_post_is_4xx_and_stores_nothing(env: Env, settings: Settings, route: str) -> None:
    svc = env.svc
    auth = svc.admin if route.startswith("/admin") else env.tenant.headers
    before = {t: count_rows(settings, t) for t in ("tenants", "projects", "payments")}
    for label, kwargs in bad_requests(route):
        headers = {**auth, **kwargs.pop("headers", {})}
        r = await svc.client.post(route, headers=headers, **kwargs)
        body = assert_problem(r, 422)
        if route.startswith("/v1") and "tenant" in label and "body" in label:
            assert body["type"].endswith("/tenant-in-request"), label
            assert "API key" in body["detail"]
    assert {t: count_rows(settings, t) for t in before} == before


@pytest.mark.parametrize("route", ["/v1/projects", "/v1/payments"])
@pytest.mark.parametrize("name", ["tenant_id", "tenant", "TENANT_ID"])
async def test_tenant_in_the_query_string_is_refused(env: Env, settings: Settings, route: str, name: str) -> None:
    valid = POSTS[route][0]
    before = count_rows(settings, route.rsplit("/", 1)[1])
    for method, kwargs in [("POST", {"json": valid}), ("GET", {})]:
        r = await env.svc.client.request(method, route, params={name: env.tenant.id}, headers=env.tenant.headers,
                                         **kwargs)
        body = assert_problem(r, 422, "tenant-in-request")
        assert "API key" in body["detail"]
    # Percent-encoding the name does not slip past.
    r = await env.svc.client.get(f"{route}?%74enant_id=x", headers=env.tenant.headers)
    assert_problem(r, 422, "tenant-in-request")
    assert count_rows(settings, route.rsplit("/", 1)[1]) == before


@pytest.mark.parametrize("route", list(POSTS))
async def test_bodies_over_one_mib_are_413(env: Env, settings: Settings, route: str) -> None:
    auth = env.svc.admin if route.startswith("/admin") else env.tenant.headers
    payload = json.dumps({"name": "x" * TWO_MIB}).encode()
    before = {t: count_rows(settings, t) for t in ("tenants", "projects", "payments")}

    r = await env.svc.client.post(route, content=payload, headers={**auth, "content-type": "application/json"})
    assert_problem(r, 413, "body-too-large")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while streaming
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start:start + 64 * 1024]

    r = await env.svc.client.post(route, content=chunked(), headers={**auth, "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "body-too-large")
    assert {t: count_rows(settings, t) for t in before} == before


async def test_a_body_just_under_the_limit_is_accepted_as_input(env: Env) -> None:
    # Under the size limit the request reaches validation (422 for the over-long name), not 413.
    payload = json.dumps({"name": "x" * (1024 * 1024 - 100)}).encode()
    r = await env.svc.client.post("/v1/projects", content=payload,
                                  headers={**env.tenant.headers, "content-type": "application/json"})
    assert_problem(r, 422)


async def test_unknown_routes_and_methods(env: Env) -> None:
    assert_problem(await env.svc.client.get("/no/such/route"), 404, "not-found")
    assert_problem(await env.svc.client.get("/v1/nothing-here", headers=env.tenant.headers), 404, "not-found")
    r = await env.svc.client.put("/v1/projects", headers=env.tenant.headers, json={"name": "x"})
    assert_problem(r, 405, "method-not-allowed")
    assert r.headers["allow"] == "GET, POST"
    assert_problem(await env.svc.client.post("/healthz"), 405)


async def test_an_unexpected_exception_is_a_bare_500_problem(settings: Settings) -> None:
    async with live_service(settings) as svc:
        async def explode() -> None:
            raise RuntimeError("secret internal detail")

        svc.app.add_api_route("/explode", explode)
        r = await svc.client.get("/explode")
        body = assert_problem(r, 500, "internal-error")
        assert "secret" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
        assert set(body) == PROBLEM_KEYS


async def test_redis_outage_on_the_hot_path_is_503_not_500(settings: Settings) -> None:
    port = next(p for p in range(18150, 18200) if port_is_free(p))
    # The usage-only path (rate limiting off); the limiter's own failure policy is tested in test_ratelimit_service.
    async with live_service(settings, redis_url=f"redis://127.0.0.1:{port}/0", ratelimit="off") as svc:
        tenant = await svc.new_tenant()  # admin routes do not touch Redis
        r = await svc.client.get("/v1/projects", headers=tenant.headers)
        assert_problem(r, 503, "service-unavailable")
        assert r.headers["retry-after"] == "1"

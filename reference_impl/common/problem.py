"""RFC 9457 problem details: the one shape every error of the service takes.

A `Problem` is an exception that knows its response, so route code, dependencies and pure-ASGI
middleware all fail the same way: raise it (or `await problem.send(send)` below the router).
`install_problem_handlers` turns FastAPI's and Starlette's own errors into problems too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Send

from reference_impl.common.identity import reject_smuggled_tenant

PROBLEM_BASE = "https://saaslab.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"

# Slugs for the statuses the framework raises on its own (routing, body parsing).
_SLUG_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    500: "internal-error",
    503: "service-unavailable",
    504: "timeout",
}


class Problem(Exception):
    """An error response: `type` is PROBLEM_BASE + slug; `extra` adds extension members."""

    def __init__(self, status: int, slug: str, detail: str, *, title: str | None = None,
                 headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return {"type": PROBLEM_BASE + self.slug, "title": self.title, "status": self.status,
                "detail": self.detail, **self.extra}

    def encode(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":")).encode()

    def response(self) -> Response:
        return Response(self.encode(), status_code=self.status, headers=self.headers,
                        media_type=PROBLEM_CONTENT_TYPE)

    async def send(self, send: Send) -> None:
        """Answer from pure-ASGI middleware, where there is no Response machinery to lean on."""
        body = self.encode()
        headers = [(b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                   (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; some problems add members (a validation error its `errors`).",
    "properties": {
        "type": {"type": "string", "description": PROBLEM_BASE + "<slug>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {PROBLEM_CONTENT_TYPE: {"schema": _PROBLEM_SCHEMA}}}
    for status, text in (("4XX", "The request was refused; the problem says why."),
                         ("5XX", "A backing service is unavailable or timed out (Retry-After says when to retry)."))
}
"""OpenAPI `responses` for every router: any 4xx or 5xx answer is a problem document. (FastAPI would
otherwise document its own 422 body, which this service never sends.)"""


def not_found(what: str) -> Problem:
    # The detail never names the id: a missing id, a malformed one and another tenant's must read alike.
    return Problem(404, "not-found", f"No {what} with this id.")


def unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def tenant_in_request(field: str, where: str) -> Problem:
    return Problem(422, "tenant-in-request",
                   f"The {where} names a tenant ({field!r}); the tenant comes from the API key alone.")


def unavailable(detail: str) -> Problem:
    return Problem(503, "service-unavailable", detail, headers={"Retry-After": "1"})


class BodyTooLarge(HTTPException):
    """Raised from a size-limited `receive`; an HTTPException so FastAPI's body reader lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds {limit} bytes.")


def _describe(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """One readable sentence plus a JSON-safe list (loc, msg, type) of pydantic errors; inputs not echoed."""
    listed: list[dict[str, Any]] = []
    parts: list[str] = []
    for err in errors:
        loc = [p for p in err.get("loc", ()) if p != "body"] if err.get("type") != "json_invalid" else []
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            msg = f"body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})"
        listed.append({"loc": [str(p) for p in err.get("loc", ())], "msg": msg, "type": str(err.get("type"))})
        parts.append(f"{'.'.join(str(p) for p in loc)}: {msg}" if loc else msg)
    return "; ".join(parts) or "The request is invalid.", listed


def validation_problem(errors: Sequence[Any], *, tenant_scoped: bool) -> Problem:
    """422 for invalid input; on tenant-scoped routes a body naming a tenant gets its own problem type."""
    if tenant_scoped:
        extra_fields = [err["loc"][1] for err in errors
                        if err.get("type") == "extra_forbidden" and len(err.get("loc", ())) == 2
                        and err["loc"][0] == "body"]
        smuggled = reject_smuggled_tenant(extra_fields)
        if smuggled is not None:
            return tenant_in_request(smuggled, "body")
    detail, listed = _describe(errors)
    slug = "invalid-json" if any(e.get("type") == "json_invalid" for e in errors) else "validation-error"
    return Problem(422, slug, detail, extra={"errors": listed})


def allowed_methods(routers: Iterable[APIRouter]) -> dict[str, str]:
    """Allow header values by route template: every method of the path, not just one route's."""
    methods: dict[str, set[str]] = {}
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                methods.setdefault(route.path, set()).update(route.methods)
    return {path: ", ".join(sorted(m)) for path, m in methods.items()}


def install_problem_handlers(app: FastAPI, unavailable_errors: tuple[type[Exception], ...], *,
                             allow: Mapping[str, str], tenant_prefix: str = "/v1/") -> None:
    """Route every error FastAPI can raise through `Problem`.

    `unavailable_errors` mean a backing service is down (503); `allow` (from `allowed_methods`)
    completes the Allow header of a 405, where Starlette names only the first matching route's methods.
    """

    async def on_problem(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response()

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            path = getattr(request.scope.get("route"), "path", None)
            if path in allow:
                headers["Allow"] = allow[path]
        phrase = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else {
            404: "No route matches this path.",
            405: "This route does not accept this method.",
        }.get(exc.status_code, phrase + ".")
        slug = _SLUG_BY_STATUS.get(exc.status_code, "http-error")
        return Problem(exc.status_code, slug, detail, headers=headers).response()

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        scoped = request.scope["path"].startswith(tenant_prefix)
        return validation_problem(exc.errors(), tenant_scoped=scoped).response()

    async def on_unavailable(_request: Request, exc: Exception) -> Response:
        return unavailable(f"A backing service did not answer ({type(exc).__name__}).").response()

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    for error_type in unavailable_errors:
        app.add_exception_handler(error_type, on_unavailable)

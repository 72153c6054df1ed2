"""Serving hot routes cheaply: a route class without dependency injection, and JSON rendered by orjson."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response


class DirectRoute(APIRoute):
    """A route whose endpoint takes the `Request` alone and returns a `Response` itself.

    It is declared, documented (OpenAPI, `response_model`) and matched like any other route, and
    errors it raises reach the app's exception handlers as usual; only the per-request handler
    differs: FastAPI's solves dependencies, parses query parameters and checks the return value,
    which on a hot route costs more than the route's own Python. Use it where there is nothing to
    inject or validate: path parameters are read from `request.path_params` and parsed by the route
    (they are declared in the OpenAPI document all the same, as strings).
    Dependencies would never run, so a route that has any (its own or its router's) is refused;
    do not include a router of DirectRoutes with `include_router(..., dependencies=...)` either.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        # The endpoint declares no parameters, so FastAPI's OpenAPI would leave the path's out:
        # declare each as a string (the route parses it and answers 404 to one it cannot read).
        # Only the document changes; the request path never reads `openapi_extra`.
        extra = dict(self.openapi_extra or {})
        declared = {p.get("name") for p in extra.get("parameters", ()) if p.get("in") == "path"}
        missing = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                   for name in self.param_convertors if name not in declared]
        if missing:
            extra["parameters"] = [*extra.get("parameters", ()), *missing]
            self.openapi_extra = extra

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        if self.dependant.dependencies or len(inspect.signature(self.endpoint).parameters) != 1:
            raise TypeError(f"DirectRoute {self.path}: the endpoint must take just the Request and the "
                            "route must have no dependencies (they would never run)")
        return self.endpoint


def json_response(body: Any, status_code: int = 200) -> Response:
    """`body` as compact UTF-8 JSON, like `JSONResponse`, rendered by orjson in C at a fraction of
    the json module's cost."""
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], raw: bytes) -> M:
    """A JSON request body validated by `model` in one pydantic call (parsing included), for a
    `DirectRoute` that takes a body. Failures raise RequestValidationError with the `body` location
    FastAPI gives them, so they reach the same 422 problem handler as any other route's."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a `DirectRoute`'s JSON body (FastAPI documents only the bodies it parses itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema(
        ref_template="#/components/schemas/{model}")}}}}

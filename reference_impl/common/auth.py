"""Who is calling: the admin (a shared token) or a tenant (derived from its API key, and only from it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reference_impl.common.identity import Tenant, reject_smuggled_tenant, same_secret
from reference_impl.common.per_request import PerRequest
from reference_impl.common.problem import tenant_in_request, unauthorized

# Where the auth middleware leaves its findings for the routes.
TENANT_SCOPE_KEY = "saaslab.tenant"
ADMISSION_SCOPE_KEY = "saaslab.admission"


class TenantResolver(Protocol):
    """Finds the tenant an API key belongs to (tenancy's directory provides it: reference_impl/tenancy/wiring.py)."""

    async def by_api_key(self, api_key: str) -> Tenant | None: ...


def bearer_token(authorization: bytes | str | None) -> str | None:
    """The credentials of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def admin_guard(admin_token: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency admitting only `Authorization: Bearer <admin token>`, compared in constant time."""

    async def require_admin(request: Request) -> None:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise unauthorized("This route needs the admin token as a Bearer credential.")
        if not same_secret(token, admin_token):
            raise unauthorized("The admin token is not valid.")

    return require_admin


class TenantAuthMiddleware:
    """Every request under `prefix` names its tenant by API key; nothing else can name it.

    Resolves the key (401 if missing or unknown), refuses a tenant named in the query string (422),
    then makes the request's one Redis round trip (`PerRequest.admit`): a refused request (429, or
    503 from a fail-closed limiter) gets its problem; an admitted one gets the admission's headers.
    Routes read the tenant from `scope[TENANT_SCOPE_KEY]`.
    """

    def __init__(self, app: ASGIApp, *, resolver: TenantResolver, per_request: PerRequest,
                 prefix: str = "/v1") -> None:
        self.app = app
        self.resolver = resolver
        self.per_request = per_request
        self.prefix = prefix
        self.prefix_slash = prefix + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith(self.prefix_slash) or path == self.prefix):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        api_key = bearer_token(authorization)
        if api_key is None:
            await unauthorized("Send the tenant's API key as `Authorization: Bearer <api_key>`.").send(send)
            return
        tenant = await self.resolver.by_api_key(api_key)
        if tenant is None:
            await unauthorized("The API key is not valid.").send(send)
            return
        query = scope.get("query_string", b"")
        if query and (b"tenant" in query.lower() or b"%" in query):  # cheap screen before parsing
            smuggled = reject_smuggled_tenant(k for k, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True))
            if smuggled is not None:
                await tenant_in_request(smuggled, "query string").send(send)
                return
        scope[TENANT_SCOPE_KEY] = tenant
        admission = scope[ADMISSION_SCOPE_KEY] = await self.per_request.admit(tenant)
        if admission.refusal is not None:
            await admission.refusal.send(send)
            return
        if admission.headers:
            send = _adding_headers(send, admission.headers)
        await self.app(scope, receive, send)


def _adding_headers(send: Send, headers: tuple[tuple[bytes, bytes], ...]) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *headers]
        await send(message)

    return send_with_headers

"""HTTP face of tenancy: tenant provisioning (admin) and the tenant-scoped /v1 resources.

Routes never check ownership: they hand the tenant (set by TenantAuthMiddleware from the API key)
to the store, and the store's design decides how isolation is enforced. Each route's storage work
runs inside a scheduler slot, behind the `tenancy.query` fault point.

Every POST goes through the idempotency glue (reference_impl/idempotency/http.py): a payment is
charged and recorded by the idempotency design, which publishes it to the store's payments table;
the reads below serve it from there like any other object.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.responses import Response

from reference_impl.common.auth import ADMISSION_SCOPE_KEY, TENANT_SCOPE_KEY
from reference_impl.common.faults import Faults
from reference_impl.common.identity import Tenant
from reference_impl.common.per_request import Admission
from reference_impl.common.problem import PROBLEM_RESPONSES, Problem, not_found, unavailable
from reference_impl.common.routing import DirectRoute, body_schema, json_response, parse_body
from reference_impl.idempotency.http import IdempotentRequests
from reference_impl.idempotency.ledger import PaymentRequest
from reference_impl.ratelimit.core import Policy
from reference_impl.tenancy.core import etag, if_match_versions
from reference_impl.tenancy.gate import Gate
from reference_impl.tenancy.repository import (
    PAYMENTS,
    PROJECTS,
    QUERY_POINT,
    Position,
    Row,
    Store,
    TenantDirectory,
)

T = TypeVar("T")
Endpoint = TypeVar("Endpoint", bound=Callable[[Request], Awaitable[Response]])

PAGE_DEFAULT = 20
PAGE_MAX = 100


# --- request and response bodies ------------------------------------------------------------------

def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: refuse both as input
    # errors here rather than let them fail as 500s in the database driver.
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return text


Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)]


class _Input(BaseModel):
    # Strict: "5" is not an amount. Unknown fields are errors, which also refuses a smuggled tenant_id.
    model_config = ConfigDict(extra="forbid", strict=True)


class LimitsIn(_Input):
    requests: int = Field(gt=0, le=1_000_000_000)
    window_s: float = Field(gt=0, le=366 * 86400, allow_inf_nan=False)
    # At most this many of the tenant's requests in flight at once (reference_impl/ratelimit/concurrency.py).
    concurrency: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _a_valid_policy(self) -> LimitsIn:
        # What the limiter can enforce exactly (at least 1 µs per request, bounded product): else 422, not 500.
        Policy.from_limits(self.requests, self.window_s)
        return self


class TenantLimitsIn(_Input):
    limits: LimitsIn | None


class TenantIn(_Input):
    name: Name
    plan: Literal["free", "pro", "enterprise"]
    limits: LimitsIn | None = None


class TenantOut(BaseModel):
    tenant_id: str
    api_key: str
    plan: str


class ProjectIn(_Input):
    name: Name


class ProjectOut(BaseModel):
    id: str
    name: str
    created_at: datetime


class PaymentIn(_Input):
    amount: int = Field(gt=0, le=2**63 - 1, description="minor units")
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")


class PaymentOut(BaseModel):
    id: str
    amount: int
    currency: str
    status: str
    created_at: datetime


class ProjectPage(BaseModel):
    items: list[ProjectOut]
    next_cursor: str | None


class PaymentPage(BaseModel):
    items: list[PaymentOut]
    next_cursor: str | None


class UsageOut(BaseModel):
    tenant_id: str
    period: str
    requests: int


# `created_at` stays a datetime: orjson writes it as `isoformat()` would (aware, UTC: "+00:00"), in C.
def project_json(row: Row) -> dict[str, Any]:
    object_id, name, _version, created_at = row
    return {"id": str(object_id), "name": name, "created_at": created_at}


def project_response(row: Row) -> Response:
    """A project with its version as the `ETag` (the tag a conditional PATCH sends back in `If-Match`)."""
    response = json_response(project_json(row))
    response.headers["ETag"] = etag(row[2])
    return response


IF_MATCH = {"name": "If-Match", "in": "header", "required": True, "schema": {"type": "string"},
            "description": "The ETag of the version the change is based on (from GET); `*` for any version."}
ETAG = {"ETag": {"description": "The project's version, for If-Match.", "schema": {"type": "string"}}}


def payment_json(row: Row) -> dict[str, Any]:
    object_id, amount, currency, status, created_at = row
    return {"id": str(object_id), "amount": amount, "currency": currency, "status": status,
            "created_at": created_at}


# --- ids and cursors --------------------------------------------------------------------------------

def parse_id(raw: str, what: str) -> UUID:
    """A malformed id is answered exactly like a missing one: ids are not a way to probe."""
    try:
        return UUID(raw)
    except ValueError:
        raise not_found(what) from None


def encode_cursor(row: Row) -> str:
    """Opaque to clients: the (created_at, id) of a page's last row."""
    raw = f"{row[-1].isoformat()}|{row[0]}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, object_id = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return Position(created_at, UUID(object_id))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(422, "invalid-cursor", "The cursor is not one this service issued; "
                      "start again without `cursor`.") from None


# --- routers ----------------------------------------------------------------------------------------

def tenant_of(request: Request) -> Tenant:
    # Read from the scope rather than injected with Depends: on the hot path FastAPI's dependency
    # solving costs more than everything else the route does in Python.
    return request.scope[TENANT_SCOPE_KEY]


PageLimit = Annotated[int, Query(ge=1, le=PAGE_MAX)]
PageCursor = Annotated[str | None, Query(max_length=512)]


def admin_router(directory: TenantDirectory, store: Store, require_admin: Callable[..., Awaitable[None]]) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                       responses=PROBLEM_RESPONSES)

    @router.post("/tenants", status_code=201, response_model=TenantOut)
    async def create_tenant(body: TenantIn) -> Response:
        limits = body.limits.model_dump(exclude_none=True) if body.limits is not None else None
        tenant, api_key = await directory.create(body.name, body.plan, limits)
        await store.provision(tenant)
        return json_response({"tenant_id": tenant.id, "api_key": api_key, "plan": tenant.plan}, status_code=201)

    @router.patch("/tenants/{tenant_id}")
    async def set_tenant_limits(tenant_id: str, body: TenantLimitsIn) -> Response:
        """Change a tenant's rate-limit override live; workers see it once their tenant cache expires (~1 s)."""
        limits = body.limits.model_dump(exclude_none=True) if body.limits is not None else None
        if not await directory.set_limits(parse_id(tenant_id, "tenant"), limits):
            raise not_found("tenant")
        return json_response({"tenant_id": tenant_id, "limits": limits})

    return router


def tenant_router(store: Store, gate: Gate, faults: Faults, idempotency: IdempotentRequests) -> APIRouter:
    """The /v1 routes. Routes by id read `{id}` from `request.path_params` instead of declaring it and
    are served as `DirectRoute`s (no dependency solving): the id is parsed by `parse_id` anyway.
    POST routes answer through `idempotency` (`pay` or `respond`), inside their scheduler slot."""
    router = APIRouter(prefix="/v1", tags=["tenant"], responses=PROBLEM_RESPONSES)

    def direct(method: str, path: str, **route: Any) -> Callable[[Endpoint], Endpoint]:
        def register(endpoint: Endpoint) -> Endpoint:
            router.add_api_route(path, endpoint, methods=[method], route_class_override=DirectRoute, **route)
            return endpoint

        return register

    async def scoped(tenant: Tenant, work: Callable[[], Awaitable[T]]) -> T:
        """Storage work of one request: inside a scheduler slot, behind the `tenancy.query` point.
        (`get_project`, the hottest route, spells the same steps out inline.)"""
        async with gate.slot(tenant.id, tenant.plan):
            if faults.armed:
                await faults.before(QUERY_POINT)
            result = await work()
        faults.after(QUERY_POINT)
        return result

    def page_response(rows: list[Row], limit: int, render: Callable[[Row], dict[str, Any]]) -> Response:
        more = len(rows) > limit
        rows = rows[:limit]
        return json_response({"items": [render(r) for r in rows],
                              "next_cursor": encode_cursor(rows[-1]) if more else None})

    @router.post("/projects", status_code=201, response_model=ProjectOut)
    async def create_project(body: ProjectIn, request: Request) -> Response:
        tenant = tenant_of(request)

        async def create() -> Response:
            row = await store.insert(tenant, PROJECTS, {"name": body.name})
            return json_response(project_json(row), status_code=201)

        return await scoped(tenant, lambda: idempotency.respond(request, tenant, create))

    @direct("GET", "/projects/{project_id}", response_model=ProjectOut)
    async def get_project(request: Request) -> Response:
        tenant = tenant_of(request)
        object_id = parse_id(request.path_params["project_id"], "project")
        # `scoped(...)` spelled out: two coroutines and a closure less per request on the hottest route.
        granted_at = await gate.acquire(tenant.id, tenant.plan)
        try:
            if faults.armed:
                await faults.before(QUERY_POINT)
            row = await store.get(tenant, PROJECTS, object_id)
        finally:
            gate.release(tenant.id, granted_at)
        faults.after(QUERY_POINT)
        if row is None:
            raise not_found("project")
        return project_response(row)

    @direct("PATCH", "/projects/{project_id}", response_model=ProjectOut,
            responses={200: {"description": "The project as changed.", "headers": ETAG}},
            openapi_extra={**body_schema(ProjectIn), "parameters": [IF_MATCH]})
    async def update_project(request: Request) -> Response:
        """Rename a project if it is still at the version the client read (optimistic concurrency):
        200 with the new ETag; 412 when another change came first (read it again, then retry); 428
        without If-Match."""
        tenant = tenant_of(request)
        object_id = parse_id(request.path_params["project_id"], "project")
        body = parse_body(ProjectIn, await request.body())
        header = request.headers.get("if-match")
        if header is None:
            raise Problem(428, "precondition-required", "Send If-Match with the ETag of the version you read "
                          "(GET /v1/projects/{id}), so that a change made meanwhile is never overwritten.")
        versions = if_match_versions(header)
        found = await scoped(tenant, lambda: store.update(tenant, PROJECTS, object_id, {"name": body.name}, versions))
        if found is None:
            raise not_found("project")
        written, row = found
        if not written:
            raise Problem(412, "precondition-failed", "The project changed since that version was read: GET it "
                          "again for its current ETag, then retry the change.")
        return project_response(row)

    @router.get("/projects", response_model=ProjectPage)
    async def list_projects(request: Request, limit: PageLimit = PAGE_DEFAULT, cursor: PageCursor = None) -> Response:
        tenant = tenant_of(request)
        after = decode_cursor(cursor) if cursor else None
        rows = await scoped(tenant, lambda: store.page(tenant, PROJECTS, limit + 1, after))
        return page_response(rows, limit, project_json)

    @direct("DELETE", "/projects/{project_id}", status_code=204)
    async def delete_project(request: Request) -> Response:
        tenant = tenant_of(request)
        object_id = parse_id(request.path_params["project_id"], "project")
        if not await scoped(tenant, lambda: store.delete(tenant, PROJECTS, object_id)):
            raise not_found("project")
        return Response(status_code=204)

    @direct("POST", "/payments", status_code=201, response_model=PaymentOut, openapi_extra=body_schema(PaymentIn))
    async def create_payment(request: Request) -> Response:
        """Charges the lab's payment provider once per Idempotency-Key (201 with the payment; 402 if
        the provider declines; 504 if its answer was lost: retry with the same key)."""
        # A DirectRoute: a replay (the route's hot case) then costs one pydantic call, not FastAPI's
        # body machinery; errors are the same 422 problems.
        tenant = tenant_of(request)
        body = parse_body(PaymentIn, await request.body())
        payment = PaymentRequest(body.amount, body.currency)
        return await scoped(tenant, lambda: idempotency.pay(request, tenant, payment))

    @direct("GET", "/payments/{payment_id}", response_model=PaymentOut)
    async def get_payment(request: Request) -> Response:
        tenant = tenant_of(request)
        object_id = parse_id(request.path_params["payment_id"], "payment")
        row = await scoped(tenant, lambda: store.get(tenant, PAYMENTS, object_id))
        if row is None:
            raise not_found("payment")
        return json_response(payment_json(row))

    @router.get("/payments", response_model=PaymentPage)
    async def list_payments(request: Request, limit: PageLimit = PAGE_DEFAULT, cursor: PageCursor = None) -> Response:
        tenant = tenant_of(request)
        after = decode_cursor(cursor) if cursor else None
        rows = await scoped(tenant, lambda: store.page(tenant, PAYMENTS, limit + 1, after))
        return page_response(rows, limit, payment_json)

    @direct("GET", "/usage", response_model=UsageOut)
    async def usage(request: Request) -> Response:
        # Counted by the request's own Redis round trip in the auth middleware: no second trip here.
        admission: Admission = request.scope[ADMISSION_SCOPE_KEY]
        if admission.requests is None:
            raise unavailable("The usage counter is unreachable (Redis is down); retry later.")
        return json_response({"tenant_id": tenant_of(request).id, "period": admission.period,
                              "requests": admission.requests})

    return router

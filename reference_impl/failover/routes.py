"""HTTP face of failover: a tenant's uniquely identified writes, and the topology for operators.

`POST /v1/failover/writes {"id"}` answers 201 `{"id", "server", "created": true}` once the primary has
committed the write (with `sync`, once a standby has it too), or 200 with `"created": false` when the tenant
wrote this id before. `GET /v1/failover/writes/{id}` answers 200 `{"id", "server"}` when the primary has it,
404 when not: the read-your-writes probe of loadtests/failover.py. During a switch both answer 503
problem+json with `Retry-After`: `write-refused` (certainly not written: no primary, or a fenced one,
SQLSTATE 25006) or `write-unknown` (sent, with no answer: it may be there), so a client can count like
Jepsen. `GET /admin/topology` (admin token) is docs/contract.md's.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from reference_impl.common.auth import TENANT_SCOPE_KEY
from reference_impl.common.problem import PROBLEM_RESPONSES, Problem, not_found
from reference_impl.common.routing import DirectRoute, body_schema, json_response, parse_body
from reference_impl.failover.pool import PrimaryUnavailable, WriteUnknown
from reference_impl.failover.writes import WriteLog
from reference_impl.idempotency.http import IdempotentRequests

WRITE_ID = re.compile(r"[\x21-\x7e]{1,200}")


class WriteIn(BaseModel):
    # Unknown fields are errors, which also refuses a smuggled tenant_id.
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                    description="Unique per tenant: printable ASCII without spaces, 1 to 200 characters.")


class WriteOut(BaseModel):
    id: str
    server: str
    created: bool


class WriteFound(BaseModel):
    id: str
    server: str


def switching(err: PrimaryUnavailable) -> Problem:
    """503 with Retry-After: the write certainly did not happen (`write-refused`) or may have (`write-unknown`)."""
    unknown = isinstance(err, WriteUnknown)
    return Problem(503, "write-unknown" if unknown else "write-refused",
                   ("The primary did not answer after the write was sent; it may have been written. "
                    if unknown else "No primary takes writes now. ") + f"({err})",
                   headers={"Retry-After": str(err.retry_after_s)})


def writes_router(log: WriteLog, idempotency: IdempotentRequests) -> APIRouter:
    router = APIRouter(prefix="/v1/failover", tags=["failover"], responses=PROBLEM_RESPONSES)

    async def write(request: Request) -> Response:
        body = parse_body(WriteIn, await request.body())
        tenant = request.scope[TENANT_SCOPE_KEY]

        async def write_once() -> Response:
            try:
                done = await log.write(tenant.id, body.id)
            except PrimaryUnavailable as err:
                raise switching(err) from None
            return json_response({"id": done.id, "server": done.server, "created": done.created},
                                 status_code=201 if done.created else 200)

        # Like every POST under /v1, an Idempotency-Key replays the first answer; a 503 during the switch is not
        # stored, so its retry writes (the write is keyed by its id besides, so it lands at most once).
        return await idempotency.respond(request, tenant, write_once)

    async def read(request: Request) -> Response:
        write_id = request.path_params["write_id"]
        if not WRITE_ID.fullmatch(write_id):
            raise not_found("write")
        tenant = request.scope[TENANT_SCOPE_KEY]
        try:
            found, server = await log.read(tenant.id, write_id)
        except PrimaryUnavailable as err:
            raise switching(err) from None
        if not found:
            raise not_found("write")
        return json_response({"id": write_id, "server": server})

    router.add_api_route("/writes", write, methods=["POST"], status_code=201, response_model=WriteOut,
                         responses={200: {"model": WriteOut, "description": "The tenant wrote this id before."}},
                         route_class_override=DirectRoute, openapi_extra=body_schema(WriteIn))
    router.add_api_route("/writes/{write_id}", read, methods=["GET"], response_model=WriteFound,
                         route_class_override=DirectRoute)
    return router


def topology_router(topology: Callable[[], Awaitable[dict[str, Any]]],
                    require_admin: Callable[..., Awaitable[None]]) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                       responses=PROBLEM_RESPONSES)

    @router.get("/topology")
    async def get_topology() -> Response:
        """Who is primary, who replicates, on which timeline, under which design (docs/contract.md "Failover")."""
        return json_response(await topology())

    return router

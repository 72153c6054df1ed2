"""The reference service in-process for integration tests: real lifespan, real PostgreSQL and Redis."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI

from reference_impl.app import create_app
from saaslab.launch import launched, log_tail
from saaslab.services import ServiceError
from saaslab.settings import Settings


@dataclass(frozen=True)
class TenantHandle:
    id: str
    api_key: str
    plan: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass
class LiveService:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.app.state.admin_token}"}

    async def new_tenant(self, plan: str = "pro") -> TenantHandle:
        r = await self.client.post("/admin/tenants", json={"name": f"t-{uuid.uuid4().hex[:8]}", "plan": plan},
                                   headers=self.admin)
        assert r.status_code == 201, r.text
        body = r.json()
        return TenantHandle(body["tenant_id"], body["api_key"], body["plan"])

    async def create_project(self, tenant: TenantHandle, name: str | None = None) -> dict[str, Any]:
        r = await self.client.post("/v1/projects", json={"name": name or f"p-{uuid.uuid4().hex[:6]}"},
                                   headers=tenant.headers)
        assert r.status_code == 201, r.text
        return r.json()

    async def create_payment(self, tenant: TenantHandle, amount: int = 1250, currency: str = "EUR") -> dict[str, Any]:
        r = await self.client.post("/v1/payments", json={"amount": amount, "currency": currency},
                                   headers=tenant.headers)
        assert r.status_code == 201, r.text
        return r.json()

    async def all_items(self, tenant: TenantHandle, resource: str, limit: int = 100) -> list[dict[str, Any]]:
        """Every item of a list route, following next_cursor."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": limit}
        for _ in range(1000):
            r = await self.client.get(f"/v1/{resource}", params=params, headers=tenant.headers)
            assert r.status_code == 200, r.text
            page = r.json()
            items += page["items"]
            if page["next_cursor"] is None:
                return items
            params["cursor"] = page["next_cursor"]
        raise AssertionError("pagination did not end")


@asynccontextmanager
async def live_service(settings: Settings, **overrides: Any) -> AsyncIterator[LiveService]:
    """A fresh app (pools opened by its lifespan) and a client talking to it over ASGI."""
    effective = settings.model_copy(update=overrides)
    app = create_app(effective)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield LiveService(app, client, effective)


def count_rows(settings: Settings, table: str) -> int:
    """Rows of a shared table, read as the service's login role (which bypasses RLS)."""
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        row = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class Worker:
    url: str
    log: Callable[[], str]
    """The end of what the worker has logged so far (its tracebacks, for a failing test to show)."""


@contextmanager
def uvicorn_worker(settings: Settings, **overrides: Any) -> Iterator[Worker]:
    """The service as production runs it, one uvicorn worker (`app_from_env`, started by `saaslab.launch`) on
    a free port, with `settings` plus `overrides`, once /readyz answers; stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="saaslab-worker-") as logs, ExitStack() as stack:
        log_path = Path(logs) / "service.log"
        try:
            svc = stack.enter_context(launched(settings.model_copy(update=overrides), log_path=log_path))
        except ServiceError as e:  # the log goes with its directory: show it here
            raise AssertionError(f"{e}\n{log_tail(log_path)}") from e
        yield Worker(svc.url, svc.log_tail)

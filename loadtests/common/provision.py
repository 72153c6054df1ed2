"""Tenants and lab faults through the service's admin API (CONTRACT.md), for harnesses and orchestration.

Plain blocking HTTP (httpx): it runs in a Locust process (where gevent has patched sockets) as
well as in the orchestrator.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import httpx

from scenarios.kernel.workload import TenantSpec

ADMIN_TOKEN_ENV = "SAASLAB_ADMIN_TOKEN"
TIMEOUT_S = 30.0

UNLIMITED = {"requests": 1_000_000, "window_s": 1}
"""A rate policy no workload here reaches: the noisy-neighbour question is about scheduling, not limiting."""


class Tenant(NamedTuple):
    tenant_id: str
    api_key: str


class ProvisioningError(RuntimeError):
    """The admin API refused or failed; the message says what to do."""


def admin_token_from_env() -> str:
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        raise ProvisioningError(f"{ADMIN_TOKEN_ENV} is not set; export the service's admin token "
                                "(`saaslab serve` prints it when it generates one)")
    return token


def _admin(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT_S)


def _raise_for(resp: httpx.Response, what: str) -> None:
    if resp.status_code >= 400:
        hint = " (is the admin token right?)" if resp.status_code in (401, 403) else ""
        raise ProvisioningError(f"{what} failed: HTTP {resp.status_code}{hint}: {resp.text[:300]}")


def create_tenants(base_url: str, token: str, specs: Iterable[TenantSpec], *,
                   limits: Mapping[str, Any] | None = UNLIMITED, tag: str | None = None) -> dict[str, Tenant]:
    """Create one service tenant per spec; returns spec name -> Tenant(tenant_id, api_key).

    Service-side names carry a random `tag`, so repeated runs on one database never collide.
    """
    tag = tag or uuid.uuid4().hex[:8]
    out: dict[str, Tenant] = {}
    with _admin(base_url, token) as c:
        for spec in specs:
            body: dict[str, Any] = {"name": f"{spec.name}-{tag}", "plan": spec.plan}
            if limits is not None:
                body["limits"] = dict(limits)
            resp = c.post("/admin/tenants", json=body)
            _raise_for(resp, f"creating tenant {spec.name!r}")
            data = resp.json()
            out[spec.name] = Tenant(str(data["tenant_id"]), str(data["api_key"]))
    return out


def arm_fault(base_url: str, token: str, point: str, mode: str, *, delay_ms: int | None = None,
              probability: float | None = None, count: int | None = None) -> None:
    """Arm a lab-mode fault (`POST /admin/faults`)."""
    body: dict[str, Any] = {"point": point, "mode": mode}
    for k, v in (("delay_ms", delay_ms), ("probability", probability), ("count", count)):
        if v is not None:
            body[k] = v
    with _admin(base_url, token) as c:
        resp = c.post("/admin/faults", json=body)
    if resp.status_code == 404:
        raise ProvisioningError(f"{base_url} has no /admin/faults: start the service with SAASLAB_LAB_MODE=1")
    _raise_for(resp, f"arming fault {point}:{mode}")


def clear_faults(base_url: str, token: str) -> None:
    with _admin(base_url, token) as c:
        resp = c.delete("/admin/faults")
    if resp.status_code != 404:  # lab mode off: nothing is armed
        _raise_for(resp, "clearing faults")

"""Tenants and lab faults through the service's admin API (CONTRACT.md): the one provisioner of the lab.

Every live run, locustfile and benchmark that needs tenants creates them here (`Admin`, or the
one-call `create_tenants` and `create_tenant`). Plain blocking HTTP (httpx): it runs in a Locust
process (where gevent has patched sockets) as well as in the orchestrator and the benchmarks.

An `Admin` keeps one HTTP client for its calls: building an httpx client costs tens of
milliseconds of CPU (its TLS context), which in a Locust process would hold up every send of the
open-model driver behind it. A fault is armed on a fresh connection each time (`Connection:
close`), so that repeated arms land on whichever service worker accepts each one (faults live in
each worker).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
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


def _raise_for(resp: httpx.Response, what: str) -> None:
    if resp.status_code >= 400:
        hint = " (is the admin token right?)" if resp.status_code in (401, 403) else ""
        raise ProvisioningError(f"{what} failed: HTTP {resp.status_code}{hint}: {resp.text[:300]}")


class Admin:
    """The admin API of one service, as its admin token allows; close it (or use it in a `with`) when done."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"},
                                    timeout=TIMEOUT_S)

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: Mapping[str, Any], what: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._client.post(path, json=dict(body), **kw)
        except httpx.HTTPError as e:
            raise ProvisioningError(f"{what} failed: {e!r} (is the service at {self.base_url} up?)") from None
        _raise_for(resp, what)
        return resp

    def get(self, path: str) -> httpx.Response:
        """GET an admin route; an error answer raises `ProvisioningError`."""
        try:
            resp = self._client.get(path)
        except httpx.HTTPError as e:
            raise ProvisioningError(f"GET {path} failed: {e!r} (is the service at {self.base_url} up?)") from None
        _raise_for(resp, f"GET {path}")
        return resp

    def post_raw(self, path: str, body: Mapping[str, Any] | None) -> httpx.Response:
        """POST to an admin route and return the answer as it is (a 4xx is the caller's to read)."""
        try:
            return self._client.post(path, json=dict(body) if body is not None else None)
        except httpx.HTTPError as e:
            raise ProvisioningError(f"POST {path} failed: {e!r} (is the service at {self.base_url} up?)") from None

    def create_tenant(self, name: str, *, plan: str = "enterprise",
                      limits: Mapping[str, Any] | None = UNLIMITED) -> Tenant:
        """One tenant named `name` (as it is: the caller makes it unique), its rate policy `limits`
        (None: the plan's)."""
        body: dict[str, Any] = {"name": name, "plan": plan}
        if limits is not None:
            body["limits"] = dict(limits)
        data = self._post("/admin/tenants", body, f"creating tenant {name!r}").json()
        return Tenant(str(data["tenant_id"]), str(data["api_key"]))

    def create_tenants(self, specs: Iterable[TenantSpec], *, limits: Mapping[str, Any] | None = UNLIMITED,
                       tag: str | None = None) -> dict[str, Tenant]:
        """One tenant per spec (its plan); returns spec name -> Tenant. Service-side names carry a random
        `tag`, so repeated runs on one database never collide."""
        tag = tag or uuid.uuid4().hex[:8]
        return {spec.name: self.create_tenant(f"{spec.name}-{tag}", plan=spec.plan, limits=limits)
                for spec in specs}

    def arm_fault(self, point: str, mode: str, *, delay_ms: int | None = None, probability: float | None = None,
                  count: int | None = None) -> None:
        """Arm a lab-mode fault (`POST /admin/faults`) on whichever worker accepts a fresh connection."""
        body: dict[str, Any] = {"point": point, "mode": mode}
        for k, v in (("delay_ms", delay_ms), ("probability", probability), ("count", count)):
            if v is not None:
                body[k] = v
        what = f"arming fault {point}:{mode}"
        try:
            resp = self._client.post("/admin/faults", json=body, headers={"Connection": "close"})
        except httpx.HTTPError as e:
            raise ProvisioningError(f"{what} failed: {e!r}") from None
        if resp.status_code == 404:
            raise ProvisioningError(f"{self.base_url} has no /admin/faults: start the service with "
                                    "SAASLAB_LAB_MODE=1")
        _raise_for(resp, what)

    def check_lab(self) -> None:
        """Raise, with what to set, unless the service answers in lab mode and accepts the admin token."""
        try:
            resp = self._client.get("/admin/faults")
        except httpx.HTTPError as e:
            raise ProvisioningError(f"the service at {self.base_url} does not answer ({type(e).__name__}); "
                                    "start it with `saaslab serve`, or pass its URL as --host") from None
        if resp.status_code == 404:
            raise ProvisioningError(f"{self.base_url} is not in lab mode: start the service with SAASLAB_LAB_MODE=1")
        if resp.status_code in (401, 403):
            raise ProvisioningError(f"{self.base_url} refused the admin token: set {ADMIN_TOKEN_ENV} to the token "
                                    "the service was started with")
        _raise_for(resp, "reading the lab's faults")

    def clear_faults(self, connections: int = 1) -> None:
        """Clear the faults armed on the service, over `connections` fresh connections at once: faults live in
        each service worker, and each connection lands on whichever worker accepts it."""

        def clear_one() -> None:
            try:
                resp = self._client.delete("/admin/faults", headers={"Connection": "close"})
            except httpx.HTTPError as e:
                raise ProvisioningError(f"clearing faults failed: {e!r}") from None
            if resp.status_code != 404:  # lab mode off: nothing is armed
                _raise_for(resp, "clearing faults")

        if connections <= 1:
            clear_one()
            return
        with ThreadPoolExecutor(max_workers=connections) as pool:
            for done in [pool.submit(clear_one) for _ in range(connections)]:
                done.result()


def create_tenants(base_url: str, token: str, specs: Iterable[TenantSpec], *,
                   limits: Mapping[str, Any] | None = UNLIMITED, tag: str | None = None) -> dict[str, Tenant]:
    """`Admin.create_tenants` in one call."""
    with Admin(base_url, token) as admin:
        return admin.create_tenants(specs, limits=limits, tag=tag)


def create_tenant(base_url: str, token: str, name: str, *, plan: str = "enterprise",
                  limits: Mapping[str, Any] | None = UNLIMITED) -> Tenant:
    """`Admin.create_tenant` in one call."""
    with Admin(base_url, token) as admin:
        return admin.create_tenant(name, plan=plan, limits=limits)


def arm_fault(base_url: str, token: str, point: str, mode: str, **kw: Any) -> None:
    """`Admin.arm_fault` in one call."""
    with Admin(base_url, token) as admin:
        admin.arm_fault(point, mode, **kw)


def clear_faults(base_url: str, token: str) -> None:
    """`Admin.clear_faults` in one call."""
    with Admin(base_url, token) as admin:
        admin.clear_faults()

"""`GET /admin/config`: the settings the service runs with, for clients that did not start it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from live_app import LiveService, live_service

from reference_impl.app import UNSERVED_SETTINGS
from saaslab.settings import Settings

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def svc(settings: Settings) -> AsyncIterator[LiveService]:
    async with live_service(settings, scheduler_slots=3, scheduler="wfq") as live:
        yield live


@pytest.mark.parametrize("authorization", [None, "Bearer not-the-admin-token"])
async def test_config_needs_the_admin_token(svc: LiveService, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    r = await svc.client.get("/admin/config", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_config_answers_every_setting_but_secrets_and_urls(svc: LiveService) -> None:
    r = await svc.client.get("/admin/config", headers=svc.admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scheduler_slots"] == 3 and body["scheduler"] == "wfq" and body["lab_mode"] is False
    assert set(body) == set(Settings.model_fields) - UNSERVED_SETTINGS
    assert UNSERVED_SETTINGS == {"admin_token", "database_url", "redis_url", "failover_members"}
    for secret in (svc.settings.admin_token, svc.settings.database_url, svc.settings.redis_url):
        assert secret and secret not in r.text

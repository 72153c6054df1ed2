"""Idempotency in the reference service (docs/contract.md "Idempotency"), on real PostgreSQL and Redis.

In-process apps, one per design, for the contract: 50 simultaneous payments with one key (exactly one
charge and one payment on `redis` and `postgres`, one per request on `none`), byte-identical replays,
409/422/400, validation failures never stored, keys scoped per tenant, a provider that charges and then
times out, abandoned claims finished or rolled back by the completer. Then real uvicorn processes: the
same 50 requests across two workers, and a worker killed by a lab-mode crash fault between recovery
points, finished by `saaslab completer --once`.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from live_app import LiveService, TenantHandle, live_service
from redis.asyncio import Redis
from typer.testing import CliRunner

from reference_impl.common.db import Pool
from reference_impl.idempotency import completer
from reference_impl.idempotency.core import MAX_KEY_LENGTH, Outcome, fingerprint
from reference_impl.idempotency.http import wall_clock_us
from reference_impl.idempotency.invariants import F_PAY, attempt_value, check, response_value
from reference_impl.idempotency.ledger import CHECKPOINTS, PaymentRequest, read_state
from reference_impl.tenancy.repository import publisher
from saaslab.cli import app as cli_app
from saaslab.history import History
from saaslab.launch import child_env, launched, settings_env
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "idempotency-api-test-token"
DESIGNS = ("none", "redis", "postgres")
SAFE = ("redis", "postgres")
BODY = {"amount": 1999, "currency": "EUR"}
RAW_BODY = json.dumps(BODY).encode()
JSON = {"content-type": "application/json"}
# One valid body per POST route under /v1: a route missing here fails the test that checks them all.
POST_BODIES = {"/v1/payments": RAW_BODY, "/v1/projects": b'{"name":"apollo"}',
               "/v1/orders": b'{"items":[{"sku":"apollo","qty":1}],"amount":100,"currency":"EUR"}',
               "/v1/failover/writes": b'{"id":"apollo-1"}'}
CREATED = {"/v1/orders": 202}
"""A POST route's success status when it is not 201 (a checkout is accepted, then runs)."""


class Crash(Exception):
    """Stands for a worker dying at a checkpoint."""


@pytest_asyncio.fixture(scope="module")
async def apps(settings: Settings) -> AsyncIterator[dict[str, LiveService]]:
    async with AsyncExitStack() as stack:
        yield {d: await stack.enter_async_context(live_service(settings, idempotency=d, lab_mode=True))
               for d in DESIGNS}


@pytest_asyncio.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[Pool]:
    p = Pool(settings.database_url or "", min_size=1, max_size=4)
    await p.open()
    yield p
    await p.close()


def keyed(tenant: TenantHandle, key: str) -> dict[str, str]:
    return {**tenant.headers, **JSON, "Idempotency-Key": key}


async def pay(svc: LiveService, tenant: TenantHandle, key: str | None, body: bytes = RAW_BODY,
              path: str = "/v1/payments") -> httpx.Response:
    headers = keyed(tenant, key) if key is not None else {**tenant.headers, **JSON}
    return await svc.client.post(path, content=body, headers=headers)


async def ledger(pool: Pool, tenant: TenantHandle) -> tuple[int, int]:
    """(successful charges, ledger payment rows) of one tenant."""
    state = await read_state(pool, tenant.id)
    return sum(c.status == "succeeded" for c in state.charges), len(state.payments)


async def keys_stored(pool: Pool, redis: Redis, settings: Settings, tenant: TenantHandle) -> int:
    """Idempotency records of one tenant, in PostgreSQL and in Redis."""
    async with pool.connection() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE tenant_id = $1", tenant.id)
    in_redis = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}:{{{tenant.id}}}:idem:*")]
    return int(rows) + len(in_redis)


@pytest_asyncio.fixture(scope="module")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url or "")
    yield client
    await client.aclose()


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["type"] == f"https://saaslab.dev/problems/{slug}", body
    return body


async def arm(svc: LiveService, point: str, mode: str, **extra: Any) -> None:
    r = await svc.client.post("/admin/faults", json={"point": point, "mode": mode, **extra}, headers=svc.admin)
    assert r.status_code == 201, r.text


def metric(text: str, sample: str) -> float:
    line = next((ln for ln in text.splitlines() if ln.startswith(sample + " ")), None)
    return float(line.split()[-1]) if line else 0.0


def service_settings(settings: Settings, prefix: str, **overrides: Any) -> Settings:
    """The settings of a uvicorn service (or a saaslab command) on this session's database."""
    return settings.model_copy(update={"admin_token": ADMIN_TOKEN, "redis_prefix": prefix, "lab_mode": True,
                                       "idempotency": "postgres", "isolation": "rls",
                                       "idempotency_lock_timeout_s": 1.0, **overrides})


async def served(config: Settings, work: Callable[[httpx.AsyncClient], Awaitable[None]], *, workers: int = 1,
                 exits: bool = False) -> int | None:
    """Run `work` against uvicorn started with `config`, then stop it; with `exits` the service is to exit on
    its own (a crash fault): returns its exit code."""
    with launched(config, workers=workers) as svc:
        async with httpx.AsyncClient(base_url=svc.url, timeout=30.0, limits=httpx.Limits(max_connections=60)) as client:
            await work(client)
        return svc.wait(timeout_s=15) if exits else None


def saaslab_cli(config: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "saaslab.cli", *args], cwd=ROOT, env=child_env(settings_env(config)),
                          capture_output=True, text=True, timeout=60)


# --- 50 simultaneous requests with one key -----------------------------------------------------------

def assert_one_effect(design: str, responses: list[httpx.Response], listed: list[dict[str, Any]],
                      effects: tuple[int, int]) -> Counter[str]:
    """One charge, one payment, one execution; every other answer a 409 or a byte-identical replay.
    The unsafe `none` design pays every time instead. Returns the answers by kind."""
    if design == "none":
        assert Counter(r.status_code for r in responses) == {201: len(responses)}
        assert effects == (len(responses), len(responses)) and len(listed) == len(responses)
        return Counter({"execute": len(responses)})
    executed = [r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r.headers]
    replayed = [r for r in responses if r.headers.get("Idempotent-Replayed") == "true"]
    conflicts = [r for r in responses if r.status_code == 409]
    assert len(executed) == 1 and len(executed) + len(replayed) + len(conflicts) == len(responses)
    first = executed[0]
    assert all((r.status_code, r.content, r.headers["content-type"]) ==
               (201, first.content, first.headers["content-type"]) for r in replayed)
    for r in conflicts:
        assert_problem(r, 409, "idempotency-key-in-use")
        assert r.headers["Retry-After"] == "1"
    assert effects == (1, 1)
    assert listed == [first.json()]
    return Counter({"execute": 1, "replay": len(replayed), "conflict": len(conflicts)})


@pytest.mark.parametrize("design", DESIGNS)
async def test_fifty_simultaneous_payments_with_one_key_in_process(apps: dict[str, LiveService], pool: Pool,
                                                                   design: str) -> None:
    svc = apps[design]
    tenant = await svc.new_tenant()
    before = (await svc.client.get("/metrics")).text
    responses = await asyncio.gather(*(pay(svc, tenant, "double-click") for _ in range(50)))
    answers = assert_one_effect(design, responses, await svc.all_items(tenant, "payments"),
                                await ledger(pool, tenant))
    after = (await svc.client.get("/metrics")).text
    for outcome in ("execute", "replay", "conflict"):
        sample = f'saaslab_idempotency_decisions_total{{outcome="{outcome}"}}'
        assert metric(after, sample) - metric(before, sample) == answers[outcome], outcome


@pytest.mark.parametrize("design", DESIGNS)
async def test_fifty_simultaneous_payments_with_one_key_across_two_workers(settings: Settings, pool: Pool,
                                                                           design: str) -> None:
    # The default lock (90 s): a first request slower than the crash test's 1 s lock would be recovered midway.
    config = service_settings(settings, f"{settings.redis_prefix}-{uuid.uuid4().hex[:6]}", idempotency=design,
                              idempotency_lock_timeout_s=90.0)

    async def burst(client: httpx.AsyncClient) -> None:
        r = await client.post("/admin/tenants", json={"name": "burst", "plan": "pro"},
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        tenant = TenantHandle(r.json()["tenant_id"], r.json()["api_key"], "pro")
        # Open the connections first, so that the 50 requests arrive together rather than as they connect.
        await asyncio.gather(*(client.get("/healthz") for _ in range(50)))
        responses = await asyncio.gather(*(client.post("/v1/payments", content=RAW_BODY,
                                                       headers=keyed(tenant, "double-click")) for _ in range(50)))
        listed = (await client.get("/v1/payments", params={"limit": 100}, headers=tenant.headers)).json()["items"]
        assert_one_effect(design, responses, listed, await ledger(pool, tenant))

    await served(config, burst, workers=2)


# --- replays, mismatches, bad keys, bad bodies ---------------------------------------------------------

@pytest.mark.parametrize("design", SAFE)
async def test_a_replay_is_byte_identical_and_another_request_is_a_mismatch(apps: dict[str, LiveService], pool: Pool,
                                                                           design: str) -> None:
    svc = apps[design]
    tenant = await svc.new_tenant()
    first = await pay(svc, tenant, "order-42")
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = await pay(svc, tenant, "order-42")
    assert (again.status_code, again.content, again.headers["content-type"]) == \
        (201, first.content, "application/json")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "RateLimit-Remaining" in again.headers  # per-request headers are the replay's own, not stored

    other_body = json.dumps({**BODY, "amount": 2000}).encode()
    same_json_other_bytes = json.dumps(BODY, indent=1).encode()
    for r in (await pay(svc, tenant, "order-42", other_body), await pay(svc, tenant, "order-42", same_json_other_bytes),
              await pay(svc, tenant, "order-42", path="/v1/payments?note=x")):
        body = assert_problem(r, 422, "idempotency-key-mismatch")
        assert "Idempotent-Replayed" not in r.headers and first.json()["id"] not in r.text and body["detail"]
    assert await ledger(pool, tenant) == (1, 1)

    # Any POST route: a project is created once per key, and replayed.
    created = await pay(svc, tenant, "project-1", POST_BODIES["/v1/projects"], "/v1/projects")
    replay = await pay(svc, tenant, "project-1", POST_BODIES["/v1/projects"], "/v1/projects")
    assert created.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.content == created.content
    assert [p["id"] for p in await svc.all_items(tenant, "projects")] == [created.json()["id"]]


@pytest.mark.parametrize("design", SAFE)
async def test_bad_keys_are_400_and_store_nothing(apps: dict[str, LiveService], pool: Pool, redis: Redis,
                                                  settings: Settings, design: str) -> None:
    svc = apps[design]
    tenant = await svc.new_tenant()
    too_long = "k" * (MAX_KEY_LENGTH + 1)
    for headers in ({"Idempotency-Key": too_long}, {"Idempotency-Key": ""}, {"Idempotency-Key": "caf\xe9".encode("latin-1")}):
        for path, body in POST_BODIES.items():
            r = await svc.client.post(path, content=body, headers={**tenant.headers, **JSON, **headers})
            assert_problem(r, 400, "invalid-idempotency-key")
            assert "RateLimit-Remaining" in r.headers  # counted like any /v1 request
    twice = httpx.Headers([*tenant.headers.items(), *JSON.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    assert_problem(await svc.client.post("/v1/payments", content=RAW_BODY, headers=twice), 400,
                   "invalid-idempotency-key")
    # A bad key wins over a bad body: the body is never parsed.
    r = await svc.client.post("/v1/payments", content=b"{oops", headers=keyed(tenant, too_long))
    assert_problem(r, 400, "invalid-idempotency-key")
    assert await keys_stored(pool, redis, settings, tenant) == 0
    assert await ledger(pool, tenant) == (0, 0)
    assert await svc.all_items(tenant, "payments") == [] and await svc.all_items(tenant, "projects") == []
    # The longest valid key works.
    assert (await pay(svc, tenant, "k" * MAX_KEY_LENGTH)).status_code == 201


@pytest.mark.parametrize("design", SAFE)
async def test_a_malformed_body_is_refused_and_not_stored(apps: dict[str, LiveService], pool: Pool, redis: Redis,
                                                          settings: Settings, design: str) -> None:
    svc = apps[design]
    tenant = await svc.new_tenant()
    for bad in (b'{"amount": 1999, ', b'{"amount": "1999", "currency": "EUR"}', b'{"amount": 1999}',
                b'{"amount": 1999, "currency": "EUR", "tenant_id": "x"}', b""):
        r = await pay(svc, tenant, "fix-and-retry", bad)
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/problem+json", r.text
    assert await keys_stored(pool, redis, settings, tenant) == 0
    assert await ledger(pool, tenant) == (0, 0)
    # Nothing was stored, so the corrected request with the same key executes rather than mismatching.
    r = await pay(svc, tenant, "fix-and-retry")
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    assert await keys_stored(pool, redis, settings, tenant) == 1


@pytest.mark.parametrize("design", SAFE)
async def test_keys_are_scoped_per_tenant(apps: dict[str, LiveService], pool: Pool, design: str) -> None:
    svc = apps[design]
    a, b = await svc.new_tenant(), await svc.new_tenant()
    paid_a, paid_b = await pay(svc, a, "shared-key"), await pay(svc, b, "shared-key")
    assert paid_a.status_code == paid_b.status_code == 201
    assert "Idempotent-Replayed" not in paid_b.headers and paid_a.json()["id"] != paid_b.json()["id"]
    assert [p["id"] for p in await svc.all_items(a, "payments")] == [paid_a.json()["id"]]
    assert [p["id"] for p in await svc.all_items(b, "payments")] == [paid_b.json()["id"]]
    assert await ledger(pool, a) == await ledger(pool, b) == (1, 1)


async def test_without_a_key_every_post_executes(apps: dict[str, LiveService], pool: Pool) -> None:
    svc = apps["postgres"]
    tenant = await svc.new_tenant()
    first, second = await pay(svc, tenant, None), await pay(svc, tenant, None)
    assert first.status_code == second.status_code == 201 and first.json()["id"] != second.json()["id"]
    state = await read_state(pool, tenant.id)
    assert [p.idempotency_key for p in state.payments] == [None, None]
    assert {p["id"] for p in await svc.all_items(tenant, "payments")} == {first.json()["id"], second.json()["id"]}


@pytest.mark.parametrize("design", SAFE)
async def test_every_post_route_under_v1_replays(apps: dict[str, LiveService], design: str) -> None:
    svc = apps[design]
    paths = svc.app.openapi()["paths"]
    assert {path for path, methods in paths.items() if path.startswith("/v1/") and "post" in methods} == \
        set(POST_BODIES)
    tenant = await svc.new_tenant()
    for path, body in POST_BODIES.items():
        first, again = [await pay(svc, tenant, f"every-{path}", body, path) for _ in range(2)]
        assert first.status_code == CREATED.get(path, 201) and "Idempotent-Replayed" not in first.headers, path
        assert again.headers.get("Idempotent-Replayed") == "true" and again.content == first.content, path


# --- faults: a provider that charges and times out; abandoned claims --------------------------------------

@pytest.mark.parametrize("design", SAFE)
async def test_a_charge_that_times_out_after_its_effect_is_paid_once(apps: dict[str, LiveService], pool: Pool,
                                                                      design: str) -> None:
    svc = apps[design]
    tenant = await svc.new_tenant()
    await arm(svc, "idempotency.provider", "timeout_after_effect", count=1)
    lost = await pay(svc, tenant, "flaky")
    assert_problem(lost, 504, "provider-timeout")
    assert lost.headers["Retry-After"] == "1"
    assert await ledger(pool, tenant) == (1, 0)  # charged, not yet recorded
    retry = await pay(svc, tenant, "flaky")  # at once: the claim was released, so it resumes
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry.headers
    replay = await pay(svc, tenant, "flaky")
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.content == retry.content
    assert await ledger(pool, tenant) == (1, 1)
    assert [p["id"] for p in await svc.all_items(tenant, "payments")] == [retry.json()["id"]]
    text = (await svc.client.get("/metrics")).text
    assert metric(text, "saaslab_idempotency_provider_timeouts_total") >= 1
    assert metric(text, 'saaslab_faults_fired_total{mode="timeout_after_effect",point="idempotency.provider"}') == 1


async def test_lab_mode_faults_at_the_provider_and_checkpoints(apps: dict[str, LiveService], pool: Pool) -> None:
    svc = apps["postgres"]
    points = (await svc.client.get("/admin/faults", headers=svc.admin)).json()["points"]
    assert {"idempotency.provider", "idempotency.charged", "idempotency.charge_created"} <= set(points)
    tenant = await svc.new_tenant()
    await arm(svc, "idempotency.provider", "error", count=1)  # the provider declines: stored, replayed
    declined = await pay(svc, tenant, "declined")
    assert_problem(declined, 402, "payment-declined")
    again = await pay(svc, tenant, "declined")
    assert again.headers["Idempotent-Replayed"] == "true" and again.content == declined.content
    await arm(svc, "idempotency.charged", "error", count=1)  # a 503 after the charge: the retry resumes
    assert_problem(await pay(svc, tenant, "resumed"), 503, "fault-injected")
    assert (await pay(svc, tenant, "resumed")).status_code == 201
    await arm(svc, "idempotency.provider", "delay", delay_ms=500, count=1)  # a slow provider: the retry meets a 409

    async def retry_soon() -> httpx.Response:
        await asyncio.sleep(0.1)
        return await pay(svc, tenant, "slow")

    # Whichever claims first takes the slow charge; the other meets it in flight.
    paid, conflict = sorted(await asyncio.gather(pay(svc, tenant, "slow"), retry_soon()), key=lambda r: r.status_code)
    assert paid.status_code == 201
    assert_problem(conflict, 409, "idempotency-key-in-use")
    assert conflict.headers["Retry-After"] == "1"
    assert await ledger(pool, tenant) == (2, 2)  # "resumed" and "slow"; "declined" moved no money


@pytest.mark.parametrize("point", ["started", *CHECKPOINTS])
async def test_a_payment_abandoned_at_a_checkpoint_is_finished_by_the_completer(apps: dict[str, LiveService],
                                                                               pool: Pool, point: str) -> None:
    """A worker dies at a recovery point (simulated: the design is driven to it and abandoned)."""
    svc = apps["postgres"]
    design = svc.app.state.idempotency.design
    tenant = await svc.new_tenant()
    key, now = f"crash-{point}", wall_clock_us()
    claim = await design.claim(tenant.id, key, fingerprint("POST", "/v1/payments", RAW_BODY), now,
                               payment=PaymentRequest(**BODY))
    if point != "started":
        async def die_at(reached: str) -> None:
            if reached == point:
                raise Crash(point)

        with pytest.raises(Crash):
            await design.pay(claim, PaymentRequest(**BODY), now, checkpoint=die_at)
    assert_problem(await pay(svc, tenant, key), 409, "idempotency-key-in-use")  # still locked

    later = now + design.policy.lock_timeout_us
    assert await completer.run_once(pool, later, policy=design.policy, publish=publisher(svc.app.state.store)) == 1
    history = History()
    invoked = history.invoke(F_PAY, attempt_value(tenant.id, key))
    replay = await pay(svc, tenant, key)
    history.complete(invoked, "ok", response_value(replay.status_code, replay.content, True))
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert await svc.all_items(tenant, "payments") == [replay.json()]
    results = check(history.ops, await read_state(pool, tenant.id))
    assert all(r.valid for r in results), results
    assert await ledger(pool, tenant) == (1, 1)


async def test_an_abandoned_request_that_is_not_a_payment_is_rolled_back(apps: dict[str, LiveService],
                                                                         pool: Pool) -> None:
    svc = apps["postgres"]
    design = svc.app.state.idempotency.design
    tenant = await svc.new_tenant()
    body = POST_BODIES["/v1/projects"]
    now = wall_clock_us()
    claim = await design.claim(tenant.id, "project-crash", fingerprint("POST", "/v1/projects", body), now)
    assert claim.outcome == Outcome.EXECUTE
    later = now + design.policy.lock_timeout_us
    assert await completer.run_once(pool, later, policy=design.policy) == 1
    r = await pay(svc, tenant, "project-crash", body, "/v1/projects")  # executes afresh
    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    assert [p["id"] for p in await svc.all_items(tenant, "projects")] == [r.json()["id"]]


# --- a real worker killed between recovery points; the completer and reaper commands --------------------

@pytest.mark.parametrize(("point", "left"), [("idempotency.charged", (1, 0)), ("idempotency.charge_created", (1, 1))])
async def test_a_worker_killed_between_recovery_points_is_finished_by_saaslab_completer(
        settings: Settings, pool: Pool, point: str, left: tuple[int, int]) -> None:
    config = service_settings(settings, f"{settings.redis_prefix}-{uuid.uuid4().hex[:6]}")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    tenant: dict[str, str] = {}

    async def crash_mid_payment(client: httpx.AsyncClient) -> None:
        r = await client.post("/admin/tenants", json={"name": "crash", "plan": "pro"}, headers=admin)
        tenant.update(r.json())
        r = await client.post("/admin/faults", json={"point": point, "mode": "crash"}, headers=admin)
        assert r.status_code == 201
        with pytest.raises(httpx.TransportError):
            await client.post("/v1/payments", content=RAW_BODY,
                              headers={"Authorization": f"Bearer {tenant['api_key']}", **JSON,
                                       "Idempotency-Key": "killed"})

    assert await served(config, crash_mid_payment, exits=True) == 70  # faults.CRASH_EXIT_CODE
    crashed_at = time.monotonic()
    assert await ledger(pool, TenantHandle(tenant["tenant_id"], "", "")) == left  # and no response stored

    await asyncio.sleep(max(0.0, crashed_at + 1.05 - time.monotonic()))  # past the 1 s lock
    done = saaslab_cli(config, "completer", "--once")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "completer: 1 abandoned request(s) finished or rolled back"

    # Back up: the retry gets the stored 201, and the payment reads back under row-level security.
    async with live_service(settings, idempotency="postgres", isolation="rls") as svc:
        handle = TenantHandle(tenant["tenant_id"], tenant["api_key"], "pro")
        history = History()
        invoked = history.invoke(F_PAY, attempt_value(handle.id, "killed"))
        replay = await pay(svc, handle, "killed")
        history.complete(invoked, "ok", response_value(replay.status_code, replay.content, True))
        assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert await svc.all_items(handle, "payments") == [replay.json()]
    state = await read_state(pool, handle.id)
    assert [str(p.id) for p in state.payments] == [replay.json()["id"]] and len(state.charges) == 1
    results = check(history.ops, state)
    assert all(r.valid for r in results), results


async def test_saaslab_reaper_once_deletes_expired_keys(settings: Settings, pool: Pool) -> None:
    tenant_id, now = str(uuid.uuid4()), wall_clock_us()
    async with pool.connection() as conn:
        for key, expires in (("expired", now - 1), ("kept", now + 60_000_000)):
            await conn.execute("INSERT INTO idempotency_keys (tenant_id, key, token, fingerprint, state, locked_until_us,"
                               " expires_at_us) VALUES ($1, $2, $3, 'fp', 'started', 0, $4)",
                               tenant_id, key, f"tok-{uuid.uuid4().hex}", expires)
    # In-process (a thread: the command runs its own event loop); the completer above runs as a real process.
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["reaper", "--once"],
                                     env=settings_env(service_settings(settings, settings.redis_prefix)))
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"reaper: [1-9]\d* expired idempotency key\(s\) deleted", result.stdout.strip()), result.output
    async with pool.connection() as conn:
        left = await conn.fetch("SELECT key FROM idempotency_keys WHERE tenant_id = $1", tenant_id)
        await conn.execute("DELETE FROM idempotency_keys WHERE tenant_id = $1", tenant_id)
    assert [r["key"] for r in left] == ["kept"]


def test_the_completer_and_reaper_commands_explain_themselves() -> None:
    runner = CliRunner()
    for command, words in (("completer", ("abandoned", "--once", "provider token")), ("reaper", ("retention",))):
        result = runner.invoke(cli_app, [command, "--help"])
        assert result.exit_code == 0 and all(w in result.output for w in words), result.output

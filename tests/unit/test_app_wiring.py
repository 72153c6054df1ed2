"""create_app wires what the registered patterns' service faces return, in the order the service needs.

No server is needed: the app connects only in its lifespan, which these tests never start.
"""

from __future__ import annotations

import pytest

from reference_impl.app import MIGRATIONS, create_app
from reference_impl.common.service import PaymentSink, ServiceContext
from reference_impl.sagas.core import FAULT_POINTS as SAGA_FAULT_POINTS
from saaslab.settings import Settings

OFFLINE = Settings(database_url="postgresql://offline/none", redis_url="redis://offline:1/0", lab_mode=True)


def test_middleware_runs_in_the_order_the_requests_need() -> None:
    app = create_app(OFFLINE)
    assert [m.cls.__name__ for m in app.user_middleware] == [
        "MetricsMiddleware", "ErrorMiddleware", "BodyLimitMiddleware", "TenantAuthMiddleware",
        "ConcurrencyMiddleware", "IdempotencyKeyMiddleware"]


def test_the_load_shedder_refuses_before_tenant_auth() -> None:
    app = create_app(OFFLINE.model_copy(update={"shed_capacity": 8}))
    names = [m.cls.__name__ for m in app.user_middleware]
    assert names.index("BodyLimitMiddleware") < names.index("LoadSheddingMiddleware") < names.index(
        "TenantAuthMiddleware")


def test_the_hot_v1_routes_come_first_then_the_app_s_own_then_admin() -> None:
    paths = list(create_app(OFFLINE).openapi()["paths"])
    first_other = next(i for i, p in enumerate(paths) if not p.startswith("/v1"))
    assert all(not p.startswith("/v1") for p in paths[first_other:])
    assert paths[first_other:first_other + 4] == ["/healthz", "/readyz", "/metrics", "/bench/bare"]
    assert [p for p in paths if p.startswith("/admin")] == paths[first_other + 4:]


def test_patterns_contribute_fault_points_metrics_state_and_migrations_in_registry_order() -> None:
    app = create_app(OFFLINE)
    assert list(app.state.faults.points) == ["tenancy.query", "tenancy.commit", "idempotency.provider",
                                             "idempotency.charged", "idempotency.charge_created",
                                             *SAGA_FAULT_POINTS, "sharding.cutover"]
    assert all(hasattr(app.state, name) for name in ("gate", "store", "idempotency", "sagas"))
    assert [p.name for p in MIGRATIONS] == ["schema.sql", "provider.sql", "schema.sql", "orders.sql", "control.sql"]
    assert [p.parent.name for p in MIGRATIONS] == ["tenancy", "idempotency", "idempotency", "sagas", "sharding"]
    metrics = app.state.metrics.render().decode()
    order = [metrics.index(name) for name in ("saaslab_scheduler_slots", "saaslab_ratelimit_decisions_total",
                                              "saaslab_idempotency_decisions_total")]
    assert order == sorted(order)


def test_without_the_limiter_no_ratelimit_metrics_are_registered() -> None:
    app = create_app(OFFLINE.model_copy(update={"ratelimit": "off"}))
    assert "saaslab_ratelimit" not in app.state.metrics.render().decode()


def test_the_context_names_what_is_missing_and_refuses_a_second_provider() -> None:
    ctx = ServiceContext(OFFLINE, None, None, None, None, None, ())  # type: ignore[arg-type]
    with pytest.raises(LookupError, match="PaymentSink"):
        ctx.need(PaymentSink)

    async def sink(_payment: object) -> None: ...

    ctx.provide(PaymentSink, sink)
    assert ctx.need(PaymentSink) is sink
    with pytest.raises(ValueError, match="twice"):
        ctx.provide(PaymentSink, sink)

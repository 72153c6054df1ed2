"""The load shedder's wiring: route classes declared on the server, off by default, shares checked at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reference_impl.ratelimit.shedding import Shedding, route_class
from saaslab.settings import Settings


def test_route_classes_are_declared_server_side() -> None:
    assert route_class("POST", "/v1/payments") == "critical"
    assert route_class("POST", "/v1/payments/") == "critical"
    assert route_class("POST", "/v1/orders") == "critical"
    assert route_class("POST", "/v1/projects") == "default"
    assert route_class("DELETE", "/v1/projects/7") == "default"
    assert route_class("PUT", "/v1/inventory/sku-1") == "default"
    for path in ("/v1/payments", "/v1/payments/7", "/v1/projects", "/v1/usage"):
        assert route_class("GET", path) == "sheddable"


def test_shedding_is_off_by_default_and_its_shares_are_checked() -> None:
    assert Shedding.from_settings(Settings()) is None
    on = Shedding.from_settings(Settings(shed_capacity=10))
    assert on is not None and on.core.limit("sheddable") == 5 and on.core.limit("critical") == 10
    assert Shedding.from_settings(Settings(shed_capacity=10, shed_default_pct=50, shed_sheddable_pct=50)) is not None
    with pytest.raises(ValidationError, match="sheddable requests go first"):
        Settings(shed_capacity=10, shed_default_pct=50, shed_sheddable_pct=80)
    for bad in ({"shed_default_pct": 0}, {"shed_sheddable_pct": 101}, {"shed_capacity": -1}):
        with pytest.raises(ValidationError):
            Settings(**bad)

"""The registry: every pattern of the lab, one declaration each, in the order the demo runs them.

Adding a pattern means writing its own files (see `saaslab.patterns.base.Pattern` for the faces)
and adding its declaration's module to `_DECLARATIONS`. The CLI, `create_app`, the settings'
design choices, the report index and `make bench` all read `REGISTRY`.
"""

from __future__ import annotations

import importlib

from saaslab.patterns.base import Axis, Design, Pattern

_DECLARATIONS = ("tenancy", "ratelimit", "idempotency", "retries", "sagas", "sharding", "failover")

REGISTRY: dict[str, Pattern] = {
    p.slug: p for p in (importlib.import_module(f"saaslab.patterns.{name}").PATTERN for name in _DECLARATIONS)
}


def get(slug: str) -> Pattern:
    """The pattern called `slug`; a `KeyError` names the known ones."""
    try:
        return REGISTRY[slug]
    except KeyError:
        raise KeyError(f"unknown pattern {slug!r}; known: {', '.join(REGISTRY)}") from None


def with_face(face: str) -> tuple[Pattern, ...]:
    """The patterns that have `face` (`"live"`, `"service"`, `"bench"`, ...), in registry order."""
    return tuple(p for p in REGISTRY.values() if getattr(p, face) is not None)


def axis(setting: str) -> Axis:
    """The design axis a `Settings` field selects."""
    for p in REGISTRY.values():
        for a in p.axes:
            if a.setting == setting:
                return a
    raise KeyError(f"no pattern declares a design setting {setting!r}")


__all__ = ["REGISTRY", "Axis", "Design", "Pattern", "axis", "get", "with_face"]

"""import-linter contracts that read the registry, so a new pattern is checked without editing pyproject.toml.

`make lint` runs `lint-imports`, which loads this module through `contract_types` in pyproject.toml.
Only the lint run imports it (import-linter is a development dependency).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from importlinter.contracts.independence import IndependenceContract

from saaslab.patterns import REGISTRY


def pattern_packages() -> list[str]:
    """`reference_impl.<slug>` of every registered pattern that has one."""
    return [f"reference_impl.{slug}" for slug in REGISTRY if importlib.util.find_spec(f"reference_impl.{slug}")]


class PatternIndependenceContract(IndependenceContract):
    """An independence contract over every registered pattern's `reference_impl` package (its `ignore_imports`
    name the exceptions); the `modules` option is the registry's, not the configuration's."""

    def __init__(self, name: str, session_options: dict[str, Any], contract_options: dict[str, Any]) -> None:
        super().__init__(name, session_options, {**contract_options, "modules": pattern_packages()})

"""The pure layers stay pure: a core, a checker or a simulation never loads a driver or a web framework.

Each module is imported in a fresh interpreter and its `sys.modules` inspected, so whatever it pulls
in counts, directly or through any chain of imports, static or at import time (docs/design.md, "A pattern
is one registration"; pyproject.toml's [tool.importlinter] contracts state the same layers for
`make lint`). The modules come from the registry, so a new pattern is checked as soon as it is listed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from saaslab.patterns import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("asyncpg", "redis", "fastapi", "starlette", "httpx")
PURE_MODULES = sorted({m for p in REGISTRY.values() for m in (p.core, p.invariants, p.simulation) if m})

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
"""


def loaded_packages(module: str) -> set[str]:
    """The top-level packages in `sys.modules` after importing `module` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _PROBE, module], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, f"importing {module} failed:\n{done.stderr}"
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_loads_no_driver_or_web_framework(module: str) -> None:
    loaded = loaded_packages(module)
    assert not loaded & set(FORBIDDEN), f"{module} loads {', '.join(sorted(loaded & set(FORBIDDEN)))}"


def test_the_probe_sees_a_driver_loaded_through_a_chain_of_imports() -> None:
    # The check itself must be able to fail: the service's app loads the drivers and the framework
    # only through its pattern and common modules.
    assert {"asyncpg", "redis", "fastapi", "starlette"} <= loaded_packages("reference_impl.app")

"""The registry is the one list of patterns: every face it names exists with its entry point, and the
CLI, the settings and the benchmarks offer exactly what it registers."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

import pytest

from saaslab.patterns import REGISTRY, Pattern, with_face
from saaslab.settings import Settings

PATTERNS = list(REGISTRY.values())
ENTRY_POINTS = {  # face -> the callable or name the face's module must offer
    "core": None,
    "invariants": None,
    "simulation": "run",
    "service": "install",
    "live": "run",
    "report": "REPORT",
    "bench": "run",
}


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.slug)
@pytest.mark.parametrize("face", list(ENTRY_POINTS))
def test_every_module_face_exists_with_its_entry_point(pattern: Pattern, face: str) -> None:
    if getattr(pattern, face) is None:
        pytest.skip(f"{pattern.slug} has no {face} face")
    module = pattern.module(face)
    entry = ENTRY_POINTS[face]
    if entry is not None:
        assert hasattr(module, entry), f"{module.__name__} lacks {entry}"


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if p.has_live], ids=lambda p: p.slug)
def test_every_live_face_takes_the_clis_options_and_one_process_by_default(pattern: Pattern) -> None:
    params = inspect.signature(pattern.module("live").run).parameters
    for name in ("quick", "host", "rate", "duration", "progress", "unsafe", "processes"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert params["processes"].default == 1


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.slug)
def test_every_file_face_exists(pattern: Pattern) -> None:
    assert pattern.path("notebook").is_file()
    if pattern.loadtest is not None:
        assert pattern.path("loadtest").is_file()


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.slug)
def test_a_pattern_declares_its_designs_once_and_its_unsafe_one(pattern: Pattern) -> None:
    names = [d.name for d in pattern.designs]
    assert len(names) == len(set(names)), names
    assert sum(d.unsafe for d in pattern.designs) <= 1
    if pattern.live is not None:  # a live face runs checkers, which must be seen to catch an unsafe design
        assert pattern.unsafe is not None and pattern.invariants is not None
    for axis in pattern.axes:
        assert axis.default in axis.choices


def test_slugs_are_the_module_names() -> None:
    for slug, p in REGISTRY.items():
        assert p.slug == slug
        for face in ("core", "simulation", "report"):
            assert slug in getattr(p, face).split(".")


def test_settings_offer_exactly_the_registered_designs() -> None:
    fields = Settings.model_fields
    for p in PATTERNS:
        for axis in p.axes:
            if axis.setting is None:
                continue
            assert axis.setting in fields, f"{p.slug}: no setting {axis.setting}"
            assert set(typing.get_args(fields[axis.setting].annotation)) == set(axis.choices)
            assert fields[axis.setting].default == axis.default
        if p.settings is not None:  # the pattern's own model is part of Settings, every field of it
            assert set(p.settings.model_fields) <= set(fields)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saaslab.cli", *args], capture_output=True, text=True, timeout=60)


def test_the_cli_offers_exactly_the_registered_patterns() -> None:
    sim = _cli("sim", "nosuchpattern").stderr
    assert sim.strip().endswith(f"choose one of: {', '.join(REGISTRY)}, all")
    live = _cli("load", "nosuchpattern").stderr
    assert live.strip().endswith(f"choose one of: {', '.join(p.slug for p in with_face('live'))}, all")


def test_the_benchmarks_are_the_registered_ones() -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "nosuchpattern"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().endswith(f"choose from {', '.join(p.slug for p in with_face('bench'))}")


def test_saaslab_settings_lists_every_setting_where_it_is_declared() -> None:
    out = _cli("settings").stdout.splitlines()
    listed = {line.split()[0]: line.split()[-1] for line in out[1:]}
    assert set(listed) == {f"SAASLAB_{name.upper()}" for name in Settings.model_fields}
    for p in PATTERNS:
        for name in (p.settings.model_fields if p.settings else ()):
            assert listed[f"SAASLAB_{name.upper()}"] == f"saaslab/patterns/{p.slug}.py"
    assert listed["SAASLAB_DATABASE_URL"] == "saaslab/settings.py"

"""Embedded PostgreSQL and Redis start from the wheels, answer, and stop cleanly."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import redis

from saaslab.services import EmbeddedServices, services_for
from saaslab.settings import Settings

pytestmark = pytest.mark.integration


def test_embedded_servers_start_answer_and_stop(tmp_path: Path) -> None:
    emb = EmbeddedServices(tmp_path / "state")
    ep = emb.up()
    try:
        assert emb.running() == ep.__class__(ep.database_url, ep.redis_url, embedded=True)
        with psycopg.connect(ep.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert redis.Redis.from_url(ep.redis_url).ping()
        # A second `up` reuses the running pair instead of starting another.
        assert emb.up().database_url == ep.database_url
    finally:
        emb.down()
    assert emb.running() is None
    assert emb.status()["postgres"] == "stopped" and emb.status()["redis"] == "stopped"


def test_services_for_prefers_configured_urls(tmp_path: Path) -> None:
    configured = Settings(database_url="postgresql://x@127.0.0.1:1/db", redis_url="redis://127.0.0.1:1/0",
                          state_dir=tmp_path)
    with services_for(configured) as s:
        assert s.database_url == configured.database_url
    assert not (tmp_path / "services.json").exists()


def test_services_for_stops_what_it_started(tmp_path: Path) -> None:
    with services_for(Settings(database_url=None, redis_url=None, state_dir=tmp_path / "s")) as s:
        assert s.database_url and s.redis_url
        assert redis.Redis.from_url(s.redis_url).ping()
    assert EmbeddedServices(tmp_path / "s").running() is None

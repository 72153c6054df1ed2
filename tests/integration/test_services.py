"""Embedded PostgreSQL and Redis start from the wheels, answer, and stop cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from saaslab.services import EmbeddedServices, _pid_alive, services_for
from saaslab.settings import Settings

pytestmark = pytest.mark.integration


def test_embedded_servers_start_answer_and_stop(tmp_path: Path) -> None:
    emb = EmbeddedServices(tmp_path / "state")
    ep = emb.up()
    try:
        assert emb.running() == ep.__class__(ep.database_url, ep.redis_url)
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


def _state(state_dir: Path) -> dict:
    return json.loads((state_dir / "services.json").read_text())


def test_servers_left_by_a_killed_command_are_replaced_not_reused(tmp_path: Path) -> None:
    """A command killed outright (SIGKILL) cannot stop the servers it started; the next one does."""
    state_dir = tmp_path / "s"
    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from saaslab.services import services_for\n"
        "from saaslab.settings import Settings\n"
        f"with services_for(Settings(database_url=None, redis_url=None, state_dir=Path({str(state_dir)!r}))):\n"
        "    print('up', flush=True)\n"
        "    time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "up\n"
        orphans = _state(state_dir)
        assert orphans["owner_pid"] == owner.pid
    finally:
        owner.kill()
        owner.wait()
    emb = EmbeddedServices(state_dir)
    assert emb.running() is not None and emb.orphaned_by() == owner.pid
    with services_for(Settings(database_url=None, redis_url=None, state_dir=state_dir)) as s:
        fresh = _state(state_dir)
        assert fresh["owner_pid"] == os.getpid()
        assert fresh["pg_pid"] != orphans["pg_pid"] and fresh["redis_pid"] != orphans["redis_pid"]
        assert not any(_pid_alive(orphans[k]) for k in ("pg_pid", "redis_pid"))
        assert redis.Redis.from_url(s.redis_url).ping()
    assert emb.running() is None


def test_services_up_replaces_orphans_rather_than_adopting_them(tmp_path: Path) -> None:
    """`saaslab services up` over a killed command's servers: fresh ones, with no owner to outlive."""
    emb = EmbeddedServices(tmp_path / "s")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    emb.up(owner_pid=int(gone.stdout))  # started for a command that has since died without stopping them
    orphans = _state(tmp_path / "s")
    try:
        emb.up()
        kept = _state(tmp_path / "s")
        assert kept["owner_pid"] is None and kept["redis_pid"] != orphans["redis_pid"]
        assert not _pid_alive(orphans["redis_pid"]) and emb.orphaned_by() is None
    finally:
        emb.down()


def test_servers_of_services_up_or_a_live_command_are_reused(tmp_path: Path) -> None:
    emb = EmbeddedServices(tmp_path / "s")
    ep = emb.up()  # `saaslab services up`: no owner, never an orphan
    try:
        assert emb.orphaned_by() is None
        with services_for(Settings(database_url=None, redis_url=None, state_dir=tmp_path / "s")) as s:
            assert s.redis_url == ep.redis_url
        assert emb.running() is not None  # left running: this block did not start them
    finally:
        emb.down()

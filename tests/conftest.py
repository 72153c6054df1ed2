"""Shared fixtures: real PostgreSQL and Redis for every integration and e2e test.

With `SAASLAB_DATABASE_URL` / `SAASLAB_REDIS_URL` set the suite uses those servers; otherwise it
starts the embedded ones (as `make test` does on a fresh machine). Each test session gets its own
fresh database and Redis key prefix, so parallel sessions on one server never see each other.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from saaslab.services import services_for
from saaslab.settings import Settings


def _with_database(url: str, dbname: str) -> str:
    base, _, _old = url.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def service_urls() -> Iterator[Settings]:
    """Settings whose URLs point at running servers (embedded ones started if needed)."""
    with services_for(Settings()) as s:
        yield s


@contextmanager
def _fresh_database(service_urls: Settings) -> Iterator[Settings]:
    tag = uuid.uuid4().hex[:10]
    dbname = f"saaslab_t_{tag}"
    admin_url = service_urls.database_url
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield service_urls.model_copy(update={
            "database_url": _with_database(admin_url, dbname),
            "redis_prefix": f"t{tag}",
            "admin_token": "test-admin-token",
        })
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            # With it go the databases a pattern derived from its name (the sagas participants': <db>_inventory, ...).
            derived = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                                (f"{dbname}_",))]
            for name in (dbname, *derived):
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def settings(service_urls: Settings) -> Iterator[Settings]:
    """Settings on a fresh database of this session, with a Redis prefix of its own."""
    with _fresh_database(service_urls) as s:
        yield s


@pytest.fixture
def server_path() -> Iterator[Path]:
    """A folder of this test's own for server data (replicas, Sentinels), outside pytest's `tmp_path`.

    PostgreSQL runs as an unprivileged user when the tests run as root, so every folder above its data must
    stay open to it; pytest keeps its `pytest-of-<user>` root private (0700) and resets it when another
    session starts, which would shut a running server's `pg_rewind` out of its own data."""
    path = Path(tempfile.mkdtemp(prefix="saaslab-servers-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_settings(service_urls: Settings) -> Iterator[Settings]:
    """Settings on a database and Redis prefix of this test alone: for a test whose service leaves state that
    scans across tenants would see (abandoned claims a completer would take over)."""
    with _fresh_database(service_urls) as s:
        yield s


def pytest_collection_finish(session: pytest.Session) -> None:
    """Locust monkey-patches the process that imports it with gevent, which breaks asyncio, psycopg and
    subprocess waits for every later test: only subprocesses may import it."""
    if "locust" in sys.modules:
        raise pytest.UsageError("a test module imported locust (directly or through a locustfile); import the "
                                "locust-free helpers in loadtests/common instead, or run Locust in a subprocess")

"""Your own PostgreSQL: a database user without CREATEROLE gets one line saying what to grant.

The tenancy schema creates the cluster-wide role `saaslab_app` (reference_impl/tenancy/schema.sql) and
joins the service's login to it. On a shared server that role already exists, so the real migration
meets the missing right at the membership grant; the same schema with a role name of this test's own
meets it at CREATE ROLE. Both run as a login made here, on a database it owns, and are dropped after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from reference_impl.app import MIGRATIONS
from reference_impl.common.db import MigrationError, Pool, migrate
from saaslab.launch import start_service
from saaslab.services import ServiceError
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

TENANCY_SCHEMA = next(p for p in MIGRATIONS if p.parent.name == "tenancy" and p.name == "schema.sql")


def _url_for(admin_url: str, user: str, dbname: str) -> str:
    scheme, _, rest = admin_url.partition("://")
    host_and_db = rest.split("@", 1)[-1]
    host = host_and_db.rsplit("/", 1)[0]
    return f"{scheme}://{user}@{host}/{dbname}"


@pytest.fixture
def login(service_urls: Settings) -> Iterator[tuple[str, str, str]]:
    """(name, URL, admin URL) of a fresh login without CREATEROLE, owning a fresh database."""
    tag = uuid.uuid4().hex[:10]
    name, dbname = f"t_nocreate_{tag}", f"saaslab_t_own_{tag}"
    admin_url = service_urls.database_url
    assert admin_url
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(name)))
    try:
        yield name, _url_for(admin_url, name, dbname), admin_url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(f"t_app_{name}")))
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


async def _migrate_as(url: str, scripts: Iterable[Path]) -> None:
    pool = Pool(url, min_size=1, max_size=1)
    await pool.open()
    try:
        await migrate(pool, scripts)
    finally:
        await pool.close()


async def test_the_migration_names_the_right_a_login_lacks(login: tuple[str, str, str]) -> None:
    name, url, admin_url = login
    with pytest.raises(MigrationError) as failed:
        await _migrate_as(url, MIGRATIONS)
    message = str(failed.value)
    assert "\n" not in message
    assert f"database user {name} may not" in message and "role saaslab_app" in message
    assert f"ALTER ROLE {name} CREATEROLE" in message and f"GRANT saaslab_app TO {name}" in message

    # The administrator's way: the role granted to the login, which still may not create roles.
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(sql.SQL("GRANT saaslab_app TO {}").format(sql.Identifier(name)))
    await _migrate_as(url, MIGRATIONS)


async def test_creating_the_role_needs_createrole_and_works_with_it(login: tuple[str, str, str],
                                                                   tmp_path: Path) -> None:
    """The same schema with a role no one has created yet: refused without CREATEROLE, set up with it."""
    name, url, admin_url = login
    role = f"t_app_{name}"
    schema = tmp_path / "schema.sql"
    schema.write_text(TENANCY_SCHEMA.read_text().replace("saaslab_app", role))

    with pytest.raises(MigrationError) as failed:
        await _migrate_as(url, [schema])
    message = str(failed.value)
    assert "\n" not in message
    assert f"database user {name} may not create role {role}" in message
    assert f"ALTER ROLE {name} CREATEROLE" in message

    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(sql.SQL("ALTER ROLE {} CREATEROLE").format(sql.Identifier(name)))
    await _migrate_as(url, [schema])
    await _migrate_as(url, [schema])  # idempotent: the role exists and the login is a member
    with psycopg.connect(url) as c:
        assert c.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)).fetchone() == (True,)
        owners = {r[0] for r in c.execute("SELECT pg_get_userbyid(proowner) FROM pg_proc p "
                                          "JOIN pg_namespace n ON n.oid = p.pronamespace "
                                          "WHERE n.nspname = 'saaslab_rls'")}
        assert owners == {role}


def test_the_launcher_reports_the_missing_right_in_one_line(login: tuple[str, str, str], service_urls: Settings,
                                                            tmp_path: Path) -> None:
    name, url, _ = login
    settings = service_urls.model_copy(update={"database_url": url, "redis_prefix": f"t{uuid.uuid4().hex[:10]}"})
    with pytest.raises(ServiceError) as failed:
        svc = start_service(settings, token="test-admin-token", log_path=tmp_path / "service.log")
        svc.stop()
    message = str(failed.value)
    assert "\n" not in message
    assert f"ALTER ROLE {name} CREATEROLE" in message, message

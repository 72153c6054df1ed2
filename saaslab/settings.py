"""Settings from `SAASLAB_*` environment variables (pydantic-settings).

One `Settings` object is built at the edge (CLI, test fixture, ASGI factory) and passed down;
nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from saaslab.patterns import REGISTRY

# Each pattern declares its own settings (saaslab/patterns/<p>.py), its design choices included, so adding a
# pattern never edits this file; here are only the settings the whole lab shares.
_PATTERN_SETTINGS = tuple(p.settings for p in REGISTRY.values() if p.settings is not None)


def project_reports() -> Path:
    """The project's reports/ folder when saaslab runs from its checkout (installed with `pip install -e`), else
    reports/ in the current folder. An absolute default lets the CLI, run from any folder, and the notebooks,
    whose kernels run in notebooks/, find the same results."""
    root = Path(__file__).resolve().parent.parent
    return root / "reports" if (root / "pyproject.toml").is_file() else Path("reports")


class Settings(*_PATTERN_SETTINGS, BaseSettings):  # type: ignore[misc]
    model_config = SettingsConfigDict(env_prefix="SAASLAB_", extra="ignore")

    # Where the servers are. Unset means: start the embedded ones under `state_dir`.
    database_url: str | None = None
    redis_url: str | None = None
    # Redis Sentinels, comma-separated `host:port`: with them the service's Redis clients find the master that
    # `redis_master_name` names through Sentinel and ask again after a switch (READONLY, a lost connection), and
    # `redis_url` gives only the password and database. Empty: `redis_url`'s server, one Redis.
    redis_sentinels: str = ""
    redis_master_name: str = Field(default="lab", min_length=1, max_length=200)
    state_dir: Path = Path(".saaslab")

    # Where `saaslab sim/load/check/report`, `saaslab demo` and the notebooks keep results: one folder per
    # pattern, <results_dir>/<pattern>/ holding sim/, live/ and the report. A relative path is taken from the
    # folder a command runs in (a notebook runs in notebooks/).
    results_dir: Path = Field(default_factory=project_reports)

    # Prefix for every Redis key, so several runs can share one Redis without clashing.
    redis_prefix: str = "saaslab"

    admin_token: str | None = None
    lab_mode: bool = False

    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    max_body_bytes: int = 1024 * 1024

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: str) -> str:
        sentinel_addresses(value)
        return value


def sentinel_addresses(value: str) -> list[tuple[str, int]]:
    """`SAASLAB_REDIS_SENTINELS` as [(host, port)]; a ValueError says what is wrong with it."""
    addresses = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"SAASLAB_REDIS_SENTINELS: {item!r} is not `host:port`")
        addresses.append((host.strip("[]"), int(port)))
    return addresses

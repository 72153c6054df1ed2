"""Settings from `SAASLAB_*` environment variables (pydantic-settings).

One `Settings` object is built at the edge (CLI, test fixture, ASGI factory) and passed down;
nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# `leaky` forgets the tenant filter on purpose: the unsafe design the checker must catch.
IsolationDesign = Literal["filtered", "rls", "schema", "leaky"]
SchedulerDesign = Literal["fifo", "bulkhead", "wfq"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAASLAB_", extra="ignore")

    # Where the servers are. Unset means: start the embedded ones under `state_dir`.
    database_url: str | None = None
    redis_url: str | None = None
    state_dir: Path = Path(".saaslab")

    # Prefix for every Redis key, so several runs can share one Redis without clashing.
    redis_prefix: str = "saaslab"

    admin_token: str | None = None
    lab_mode: bool = False

    # tenancy
    isolation: IsolationDesign = "filtered"
    scheduler: SchedulerDesign = "fifo"
    # Concurrent request slots the scheduler hands out (the service's "workers").
    scheduler_slots: int = Field(default=8, ge=1)
    # Per-tenant cap for the bulkhead design.
    bulkhead_per_tenant: int = Field(default=2, ge=1)

    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    max_body_bytes: int = 1024 * 1024

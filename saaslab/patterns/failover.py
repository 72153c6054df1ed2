"""failover: a primary dies, pauses or is cut off; PostgreSQL replicas and Redis Sentinel take over."""

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

from saaslab.patterns.base import Axis, Design, Pattern

REPLICATION = Axis("failover", (
    Design("async", "asynchronous streaming replication; a leader lease, and a primary whose lease lapses "
                    "fences itself"),
    Design("sync", "synchronous replication (synchronous_standby_names, a commit waits for a standby) "
                   "with the lease and fencing"),
    Design("unsafe", "asynchronous replication and no fencing: a paused or cut-off primary keeps taking writes",
           unsafe=True),
), default="sync")
"""PostgreSQL: how the primary replicates and whether it fences itself (reference_impl/failover/core.py)."""

REDIS = Axis("failover_redis", (
    Design("plain", "Redis' asynchronous replication; Sentinel promotes the replica"),
    Design("wait", "WAIT 1 <ms> after each write that matters: acknowledged once a replica has it, or refused"),
    Design("min_replicas", "min-replicas-to-write 1 with min-replicas-max-lag: an isolated master refuses writes"),
), default="min_replicas")
"""Redis master, replica and 3 Sentinels: what a write's acknowledgement waits for."""

TimerPreset = Literal["lab", "patroni", "repmgr", "sentinel"]


class FailoverSettings(BaseModel):
    """docs/contract.md "Failover": the replication design, the manager's timers, the replicas."""

    failover: REPLICATION.literal = REPLICATION.default
    failover_redis: REDIS.literal = REDIS.default
    # The leader lease (Patroni's ttl), how often each agent loops, and how long a store call may be
    # retried; loop_wait + 2*retry_timeout <= ttl, so a leader fences itself before its lease lapses.
    # The defaults are the lab's short timers; Patroni's are 30, 10 and 10 s.
    failover_ttl_s: float = Field(default=3.0, gt=0, le=3600)
    failover_loop_wait_s: float = Field(default=1.0, gt=0, le=3600)
    failover_retry_timeout_s: float = Field(default=1.0, gt=0, le=3600)
    # Streaming replicas beside the primary.
    failover_replicas: int = Field(default=1, ge=1, le=2)
    # sync: what a commit waits for (synchronous_commit): the standby's flush, or its replay too.
    failover_sync_commit: Literal["on", "remote_write", "remote_apply"] = "on"
    # A replica further behind than this (bytes of WAL) is not promoted (Patroni's maximum_lag_on_failover).
    failover_max_lag_bytes: int = Field(default=1024 * 1024, ge=0)
    # Redis: WAIT's timeout, Sentinel's down-after, and min-replicas-max-lag.
    failover_redis_wait_ms: int = Field(default=200, ge=1, le=60_000)
    failover_sentinel_down_after_ms: int = Field(default=1000, ge=100, le=600_000)
    failover_min_replicas_max_lag_s: int = Field(default=1, ge=1, le=3600)
    # The PostgreSQL members the service's failover writes go to (POST /v1/failover/writes), comma-separated
    # `name=postgresql://...` (a bare URL is named by its host:port); its pool follows whichever is the
    # primary. Empty: the service's own database, one server and nothing to fail over to.
    failover_members: str = ""
    # The failover manager's lease key in Redis: GET /admin/topology reads the members' role, LSN and
    # timeline its agents publish at `<key>:members`. Empty: the topology asks the members themselves.
    failover_lease_key: str = Field(default="", max_length=200)

    @field_validator("failover_members")
    @classmethod
    def _member_urls(cls, value: str) -> str:
        member_urls(value)
        return value

    @model_validator(mode="after")
    def _patronis_rule(self) -> "FailoverSettings":
        # The same rule as reference_impl/failover/core.py Timers.validate (the kernel cannot import it).
        if self.failover_loop_wait_s + 2 * self.failover_retry_timeout_s > self.failover_ttl_s:
            raise ValueError(
                f"SAASLAB_FAILOVER_LOOP_WAIT_S + 2*SAASLAB_FAILOVER_RETRY_TIMEOUT_S "
                f"({self.failover_loop_wait_s:g} + 2*{self.failover_retry_timeout_s:g}) must not exceed "
                f"SAASLAB_FAILOVER_TTL_S ({self.failover_ttl_s:g}): Patroni's rule, so a leader fences itself "
                f"before its lease can lapse")
        return self


def member_urls(value: str) -> dict[str, str]:
    """`SAASLAB_FAILOVER_MEMBERS` as {name: URL}; a ValueError says what is wrong with it."""
    members: dict[str, str] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, _, url = item.partition("=") if "=" in item.split("://", 1)[0] else ("", "", item)
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError(f"SAASLAB_FAILOVER_MEMBERS: {item!r} is not `name=postgresql://host:port/db`")
        name = name.strip() or f"{parts.hostname}:{parts.port or 5432}"
        if name in members:
            raise ValueError(f"SAASLAB_FAILOVER_MEMBERS names {name!r} twice")
        members[name] = url
    return members


PATTERN = Pattern(
    slug="failover",
    title="Failover and high availability",
    question=("When the primary dies, pauses or is cut off, how long is the service unable to write, how many "
              "acknowledged writes are lost, and does anything write to two primaries at once, for each "
              "replication and failover design?"),
    axes=(REPLICATION, REDIS),
    core="reference_impl.failover.core",
    invariants="reference_impl.failover.invariants",
    simulation="scenarios.failover",
    report="saaslab.reports.failover",
    notebook="notebooks/failover.ipynb",
    service="reference_impl.failover.wiring",
    live="saaslab.live.failover",
    loadtest="loadtests/failover.py",
    bench="bench.failover",
    settings=FailoverSettings,
)

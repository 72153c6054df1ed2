"""sharding: tenants across PostgreSQL shard servers, placement schemes and online tenant moves."""

from pydantic import BaseModel, Field

from saaslab.patterns.base import Axis, Design, Pattern

ROUTER = Axis("shard_router", (
    Design("mod", "hash of the tenant id mod N: even, but growing N -> N+1 moves N/(N+1) of the tenants"),
    Design("ring", "a consistent-hash ring with virtual nodes per shard: about 1/(N+1) moves on growth"),
    Design("jump", "jump consistent hash (Lamping & Veach): no memory, even, shards added at the end"),
    Design("rendezvous", "highest random weight: each tenant on the shard with the largest hash of (tenant, shard)"),
    Design("directory", "a tenant -> shard table with an epoch per tenant and a routing cache: any tenant can "
                        "move alone, adding a shard moves nothing until the rebalancer does"),
), default="directory")
MOVER = Axis("shard_mover", (
    Design("fenced", "copy, catch up through change capture, fence the source's writes (epoch bump), final "
                     "catch-up, flip the directory, clean the source"),
    Design("unsafe", "copy, catch up and flip the directory without the fence: writes landing on the source "
                     "after the last catch-up are deleted with it", unsafe=True),
), default="fenced")


class ShardingSettings(BaseModel):
    """docs/contract.md "Sharding": where the shards are, how tenants are placed on them and how they move."""

    shard_router: ROUTER.literal = ROUTER.default
    shard_mover: MOVER.literal = MOVER.default
    # Shard servers to start from the embedded PostgreSQL binaries when `shard_urls` is empty.
    shards: int = Field(default=3, ge=1, le=64)
    # Comma-separated PostgreSQL URLs, one per shard (other hosts); empty: start `shards` embedded servers.
    shard_urls: str = ""
    # Ring points per shard for the `ring` router (100: load spread about 10%; 1,000: about 3%).
    shard_vnodes: int = Field(default=100, ge=1, le=10_000)
    # A scatter-gather admin query waits this long per shard, then answers without it (partial).
    shard_query_timeout_s: float = Field(default=2.0, gt=0, le=600)
    # A catch-up round that applies at most this many changes lets the mover put the write fence up.
    shard_fence_backlog: int = Field(default=50, ge=0)
    # A write refused at a move's fence is retried this long against the new placement, then answered 503.
    shard_fence_wait_s: float = Field(default=5.0, gt=0, le=600)
    # Pool size per shard (the control database keeps db_pool_min/db_pool_max).
    shard_pool_max: int = Field(default=10, ge=1)


PATTERN = Pattern(
    slug="sharding",
    title="Sharding tenants across PostgreSQL servers",
    question=("As tenants and shards grow and one tenant turns hot, which placement scheme keeps load even, moves "
              "the least data when shards are added, and lets a tenant move between shards online without losing a "
              "write or blocking writes for long?"),
    axes=(ROUTER, MOVER),
    core="reference_impl.sharding.core",
    invariants="reference_impl.sharding.invariants",
    service="reference_impl.sharding.wiring",
    live="saaslab.live.sharding",
    loadtest="loadtests/sharding.py",
    bench="bench.sharding",
    simulation="scenarios.sharding",
    report="saaslab.reports.sharding",
    notebook="notebooks/sharding.ipynb",
    settings=ShardingSettings,
)

"""Sharding as pure code: where a tenant lives, what moves when shards change, and how a tenant moves.

No I/O and no clock of its own: the service (reference_impl/sharding/) drives it against PostgreSQL
shard servers, the simulation (scenarios/sharding.py) against simulated stores, with times in integer µs.

**One hash function everywhere**: `hash64(key)` is the first 8 bytes of BLAKE2b (`digest_size=8`) of the
key's UTF-8, read as an unsigned big-endian integer. Tenants are hashed by their id, ring points by
`"<shard>#<vnode>"`. Where two keys combine (rendezvous: tenant x shard) the tenant's hash and the
shard's hash are mixed by SplitMix64's finalizer (`mix64`), a bijection on 64 bits, so each pair gets
an independent-looking weight for one BLAKE2b per tenant instead of one per pair.

Routers (`Router`): `shard_for(tenant_id) -> shard` and `with_shards(shards) -> Router` (a membership
change gives a new router; routers are immutable). Shards are small integers; a router's `shards` are
in the order they were added, which is what `mod` and `jump` number their buckets by.

* `mod`: `hash64 % N`. Growing N -> N+1 moves about N/(N+1) of the tenants.
* `ring`: a consistent-hash ring, `vnodes` points per shard (Karger et al.); moves about 1/(N+1);
  load spread about 1/sqrt(vnodes) (100 vnodes: ~10% standard deviation).
* `jump`: jump consistent hash (Lamping & Veach 2014), no memory, perfect spread, shards added at the end.
* `rendezvous`: highest random weight (Thaler & Ravishankar): the shard whose mix of (tenant, shard) is largest.
* `directory`: a table tenant -> (shard, epoch) over a fallback router frozen when the directory was made:
  adding a shard moves nothing until the rebalancer moves tenants; any tenant can be moved alone.

Every router keeps explicit entries (`Placement`) over its hash: under a hash router they are the
tenants a mover has moved (a hot tenant isolated, a reshard in progress); under the directory they are
every tenant placed since. `epoch` counts a tenant's moves; the service's `RoutingCache` keeps it.

The online move (`MoveState`, `next_step`, `advance`): copy -> catch_up (rounds) -> fence -> final_catch_up
-> flip -> clean -> done (every step can be done again: `state_to_dict` after each one is what a job resumes
from when the worker running it died); the unsafe mover flips without the fence and the final catch-up, so writes
that land on the source between its last catch-up and the flip (or from a stale routing cache after
it) are deleted with the source's copy. The planners (`rebalance_plan`, `isolation_plan`,
`reshard_plan`) produce `Move`s that the same mover runs.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

MASK64 = (1 << 64) - 1
Shard = int
SCHEMES = ("mod", "ring", "jump", "rendezvous", "directory")
DEFAULT_VNODES = 100


def hash64(key: str) -> int:
    """The lab's one hash: BLAKE2b-64 of the UTF-8 key, unsigned big-endian."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def mix64(x: int) -> int:
    """SplitMix64's finalizer: a bijection of 64-bit integers with good avalanche."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & MASK64
    return x ^ (x >> 31)


def jump_hash(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash of a 64-bit key into `buckets` buckets (jump(256, 1024) = 520)."""
    if buckets <= 0:
        raise ValueError("buckets must be > 0")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


class Router(Protocol):
    scheme: str
    shards: tuple[Shard, ...]

    def shard_for(self, tenant_id: str) -> Shard: ...
    def with_shards(self, shards: Sequence[Shard]) -> Router: ...


def _check_shards(shards: Sequence[Shard]) -> tuple[Shard, ...]:
    out = tuple(shards)
    if not out:
        raise ValueError("a router needs at least one shard")
    if len(set(out)) != len(out):
        raise ValueError(f"shards named twice: {out}")
    return out


@dataclass(frozen=True, slots=True)
class ModRouter:
    shards: tuple[Shard, ...]
    scheme: str = "mod"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", _check_shards(self.shards))

    def shard_for(self, tenant_id: str) -> Shard:
        return self.shards[hash64(tenant_id) % len(self.shards)]

    def with_shards(self, shards: Sequence[Shard]) -> ModRouter:
        return ModRouter(tuple(shards))


@dataclass(frozen=True, slots=True)
class JumpRouter:
    shards: tuple[Shard, ...]
    scheme: str = "jump"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", _check_shards(self.shards))

    def shard_for(self, tenant_id: str) -> Shard:
        return self.shards[jump_hash(hash64(tenant_id), len(self.shards))]

    def with_shards(self, shards: Sequence[Shard]) -> JumpRouter:
        return JumpRouter(tuple(shards))


@dataclass(frozen=True, slots=True)
class RendezvousRouter:
    shards: tuple[Shard, ...]
    scheme: str = "rendezvous"
    _seeds: tuple[tuple[int, Shard], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", _check_shards(self.shards))
        object.__setattr__(self, "_seeds", tuple((hash64(f"shard:{s}"), s) for s in self.shards))

    def shard_for(self, tenant_id: str) -> Shard:
        h = hash64(tenant_id)
        return max((mix64(h ^ seed), shard) for seed, shard in self._seeds)[1]

    def with_shards(self, shards: Sequence[Shard]) -> RendezvousRouter:
        return RendezvousRouter(tuple(shards))


@dataclass(frozen=True, slots=True)
class RingRouter:
    shards: tuple[Shard, ...]
    vnodes: int = DEFAULT_VNODES
    scheme: str = "ring"
    _points: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _owners: tuple[Shard, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", _check_shards(self.shards))
        if self.vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        ring = sorted((hash64(f"{s}#{v}"), s) for s in self.shards for v in range(self.vnodes))
        object.__setattr__(self, "_points", tuple(p for p, _ in ring))
        object.__setattr__(self, "_owners", tuple(s for _, s in ring))

    def shard_for(self, tenant_id: str) -> Shard:
        """The first ring point clockwise from the tenant's hash (wrapping past the top)."""
        i = bisect.bisect_left(self._points, hash64(tenant_id))
        return self._owners[i if i < len(self._owners) else 0]

    def with_shards(self, shards: Sequence[Shard]) -> RingRouter:
        return RingRouter(tuple(shards), self.vnodes)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one tenant lives, and how many times it has moved."""

    shard: Shard
    epoch: int = 0


@dataclass(frozen=True)
class DirectoryRouter:
    """Explicit placements over a hash router: `shard_for` looks the tenant up, else asks `fallback`.

    `scheme` is the scheme it stands for: `directory` (the fallback is frozen: `with_shards` only widens
    the membership, so growth moves nothing) or a hash scheme (the entries are the tenants moved off
    their hash shard; `with_shards` re-hashes, and `reshard_plan` says who moves).
    """

    shards: tuple[Shard, ...]
    fallback: Router
    entries: Mapping[str, Placement] = field(default_factory=dict)
    scheme: str = "directory"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", _check_shards(self.shards))

    def placement(self, tenant_id: str) -> Placement:
        entry = self.entries.get(tenant_id)
        return entry if entry is not None else Placement(self.fallback.shard_for(tenant_id), 0)

    def shard_for(self, tenant_id: str) -> Shard:
        entry = self.entries.get(tenant_id)
        return entry.shard if entry is not None else self.fallback.shard_for(tenant_id)

    def with_shards(self, shards: Sequence[Shard], *, rehash: bool | None = None) -> DirectoryRouter:
        """The router over new membership. `rehash` (default: for the hash schemes, not the directory)
        hashes the tenants without an entry over the new shards; without it a new shard is only a
        place the mover can move tenants to, which is how a reshard starts (`reshard_plan`)."""
        shards = _check_shards(shards)
        if {p.shard for p in self.entries.values()} - set(shards) or (
                not (self.scheme != "directory" if rehash is None else rehash)
                and set(self.fallback.shards) - set(shards)):
            raise ValueError("a shard that still holds tenants cannot leave; move them first")
        if self.scheme != "directory" if rehash is None else rehash:
            return replace(self, shards=shards, fallback=self.fallback.with_shards(shards))
        return replace(self, shards=shards)

    def with_placement(self, tenant_id: str, shard: Shard) -> DirectoryRouter:
        """The tenant moved to `shard`: its epoch goes up by one."""
        return self.with_placements({tenant_id: shard})

    def with_placements(self, targets: Mapping[str, Shard]) -> DirectoryRouter:
        if unknown := set(targets.values()) - set(self.shards):
            raise ValueError(f"no shard {sorted(unknown)}; shards: {self.shards}")
        entries = dict(self.entries)
        for tenant_id, shard in targets.items():
            entries[tenant_id] = Placement(shard, self.placement(tenant_id).epoch + 1)
        return replace(self, entries=entries)


def make_router(scheme: str, shards: Sequence[Shard], *, vnodes: int = DEFAULT_VNODES) -> DirectoryRouter:
    """A router of `scheme` over `shards`, with room for explicit placements (see `DirectoryRouter`).

    The directory's fallback for tenants it has never placed is jump hashing over the first shards.
    """
    shards = tuple(shards)
    hashed: dict[str, Router] = {"mod": ModRouter(shards), "jump": JumpRouter(shards),
                                 "rendezvous": RendezvousRouter(shards), "ring": RingRouter(shards, vnodes)}
    if scheme == "directory":
        return DirectoryRouter(shards, JumpRouter(shards))
    if scheme not in hashed:
        raise ValueError(f"unknown shard router {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return DirectoryRouter(shards, hashed[scheme], scheme=scheme)


def moved_on_growth(before: Router, after: Router, tenants: Iterable[str]) -> list[str]:
    """The tenants whose shard differs between two routers (a membership change)."""
    return [t for t in tenants if before.shard_for(t) != after.shard_for(t)]


def expected_moved_fraction(scheme: str, shards_before: int) -> float:
    """The theory for N -> N+1: N/(N+1) for mod, 1/(N+1) for the consistent schemes, 0 for the directory."""
    n = shards_before
    return {"mod": n / (n + 1), "directory": 0.0}.get(scheme, 1 / (n + 1))


class RoutingCache:
    """The service's tenant -> placement cache: bounded (least recently used goes), never goes back in epoch.

    A placement is kept until a shard refuses a write for the tenant (it was fenced there: the tenant
    moved); then `invalidate` drops it and the next request reads the directory again.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, Placement] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, tenant_id: str) -> Placement | None:
        entry = self._entries.get(tenant_id)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(tenant_id)
        return entry

    def put(self, tenant_id: str, placement: Placement) -> Placement:
        """Remember `placement` unless a later epoch is already known; returns what is kept."""
        known = self._entries.get(tenant_id)
        if known is not None and known.epoch > placement.epoch:
            return known
        self._entries[tenant_id] = placement
        self._entries.move_to_end(tenant_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return placement

    def invalidate(self, tenant_id: str) -> None:
        self._entries.pop(tenant_id, None)

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------------------------
# The online move

MoverName = Literal["fenced", "unsafe"]
MOVERS: tuple[MoverName, ...] = ("fenced", "unsafe")
StepName = Literal["copy", "catch_up", "fence", "final_catch_up", "flip", "clean", "done", "failed"]
STEPS: tuple[StepName, ...] = ("copy", "catch_up", "fence", "final_catch_up", "flip", "clean", "done")


@dataclass(frozen=True, slots=True)
class Move:
    """One tenant from `source` to `target`; `rows` and `load` are what the planner knew of it."""

    tenant_id: str
    source: Shard
    target: Shard
    rows: int = 0
    load: float = 0.0


@dataclass(frozen=True, slots=True)
class MovePolicy:
    """When catching up may stop and the fence go up: a round applied at most `fence_backlog` changes,
    or `max_rounds` rounds ran (a tenant writing faster than the copy catches up still gets moved,
    with a longer fence)."""

    fence_backlog: int = 50
    max_rounds: int = 10


@dataclass(frozen=True, slots=True)
class MoveState:
    """A move in progress. `step` is the next thing to do; `advance` records that it was done.

    `epoch` is the tenant's epoch after the move (the fence and the flip carry it). The write-blocked
    window is fence -> flip: the source refuses the tenant's writes from the fence on, the target takes
    them from the flip on.
    """

    move: Move
    mover: MoverName
    epoch: int
    step: StepName = "copy"
    policy: MovePolicy = MovePolicy()
    copied_rows: int = 0
    caught_up_rows: int = 0
    rounds: int = 0
    started_us: int = 0
    fenced_us: int | None = None
    flipped_us: int | None = None
    finished_us: int | None = None
    error: str | None = None

    @property
    def write_blocked_us(self) -> int:
        if self.fenced_us is None:
            return 0
        end = self.flipped_us if self.flipped_us is not None else self.finished_us
        return max(0, (end if end is not None else self.fenced_us) - self.fenced_us)

    @property
    def finished(self) -> bool:
        return self.step in ("done", "failed")

    @property
    def flipped(self) -> bool:
        return self.flipped_us is not None


def start_move(move: Move, *, mover: MoverName, current_epoch: int, now_us: int,
               policy: MovePolicy = MovePolicy()) -> MoveState:
    if mover not in MOVERS:
        raise ValueError(f"unknown mover {mover!r}; choose one of {', '.join(MOVERS)}")
    if move.source == move.target:
        raise ValueError(f"tenant {move.tenant_id} is already on shard {move.target}")
    return MoveState(move, mover, current_epoch + 1, policy=policy, started_us=now_us)


def advance(state: MoveState, now_us: int, rows: int = 0) -> MoveState:
    """`state.step` was done at `now_us`; `rows` is how many rows it copied or changes it applied.

    copy -> catch_up; catch_up repeats until a round applies <= `fence_backlog` changes or
    `max_rounds` ran, then -> fence (fenced mover) or -> flip (unsafe mover, no fence, no final
    catch-up); fence -> final_catch_up -> flip -> clean -> done.
    """
    s = state
    match s.step:
        case "copy":
            return replace(s, step="catch_up", copied_rows=s.copied_rows + rows)
        case "catch_up":
            s = replace(s, caught_up_rows=s.caught_up_rows + rows, rounds=s.rounds + 1)
            if rows > s.policy.fence_backlog and s.rounds < s.policy.max_rounds:
                return s
            return replace(s, step="fence" if s.mover == "fenced" else "flip")
        case "fence":
            return replace(s, step="final_catch_up", fenced_us=now_us)
        case "final_catch_up":
            return replace(s, step="flip", caught_up_rows=s.caught_up_rows + rows)
        case "flip":
            return replace(s, step="clean", flipped_us=now_us)
        case "clean":
            return replace(s, step="done", finished_us=now_us)
    raise ValueError(f"move of {s.move.tenant_id} is {s.step}; nothing to advance")


def state_to_dict(state: MoveState) -> dict[str, object]:
    """A move in progress as plain JSON values: what a job persists after every step, to resume from."""
    return asdict(state)


def state_from_dict(data: Mapping[str, Any]) -> MoveState:
    """The inverse of `state_to_dict`."""
    fields = dict(data)
    return MoveState(move=Move(**fields.pop("move")), policy=MovePolicy(**fields.pop("policy")), **fields)


def fail_move(state: MoveState, now_us: int, error: str) -> MoveState:
    """The step failed. Before the flip the move is undone (`undo_steps`); after it, only cleaning is left."""
    return replace(state, step="failed", finished_us=now_us, error=error)


def undo_steps(state: MoveState) -> tuple[str, ...]:
    """What to undo after a failure: before the flip, drop the target's copy and lift the source's fence
    (the source still owns the tenant); after the flip, nothing (the target owns it, clean the source later)."""
    if state.flipped:
        return ()
    return ("drop_target", "unfence_source") if state.fenced_us is not None else ("drop_target",)


# ---------------------------------------------------------------------------------------------
# Planners

def shard_loads(router: Router, loads: Mapping[str, float], shards: Sequence[Shard] | None = None) -> dict[Shard, float]:
    """Load per shard (every shard of the router, or of `shards`, listed even when idle)."""
    out = {s: 0.0 for s in (shards if shards is not None else router.shards)}
    for tenant, load in loads.items():
        shard = router.shard_for(tenant)
        out[shard] = out.get(shard, 0.0) + load
    return out


def imbalance(per_shard: Mapping[Shard, float]) -> float:
    """max / mean load (1.0 is perfectly even)."""
    values = list(per_shard.values())
    mean = sum(values) / len(values) if values else 0.0
    return max(values) / mean if mean > 0 else 1.0


def rebalance_plan(router: Router, loads: Mapping[str, float], *, rows: Mapping[str, int] | None = None,
                   tolerance: float = 1.10, max_moves: int = 100) -> list[Move]:
    """Greedy moves that bring the hottest shard within `tolerance` x the mean load.

    By load, not tenant count: each step takes the hottest shard and moves, to the coolest shard, the
    tenant that narrows their gap most (its load as close as possible to half the gap) and, among
    equals, the one with the fewest rows (less data to copy). A tenant hotter than the gap is never
    moved (it would only move the hot spot): that is what `isolation_plan` is for. Deterministic.
    """
    rows = rows or {}
    where = {t: router.shard_for(t) for t in loads}
    per_shard = shard_loads(router, loads)
    mean = sum(per_shard.values()) / len(per_shard)
    moves: list[Move] = []
    moved: set[str] = set()
    while len(moves) < max_moves and mean > 0:
        hot = max(per_shard, key=lambda s: (per_shard[s], -s))
        cool = min(per_shard, key=lambda s: (per_shard[s], s))
        gap = per_shard[hot] - per_shard[cool]
        if per_shard[hot] <= tolerance * mean or gap <= 0:
            break
        candidates = [t for t, s in where.items() if s == hot and t not in moved and 0 < loads[t] < gap]
        if not candidates:
            break
        best = min(candidates, key=lambda t: (abs(gap / 2 - loads[t]), rows.get(t, 0), t))
        moves.append(Move(best, hot, cool, rows.get(best, 0), loads[best]))
        moved.add(best)
        where[best] = cool
        per_shard[hot] -= loads[best]
        per_shard[cool] += loads[best]
    return moves


def hottest_tenant(loads: Mapping[str, float]) -> str:
    return max(loads, key=lambda t: (loads[t], t))


def isolation_plan(router: Router, tenant_id: str, new_shard: Shard, loads: Mapping[str, float] | None = None,
                   rows: Mapping[str, int] | None = None) -> list[Move]:
    """Citus's `isolate_tenant_to_new_shard`: the tenant alone onto `new_shard` (a shard with no tenants)."""
    if new_shard in router.shards:
        for t, load in (loads or {}).items():
            if t != tenant_id and router.shard_for(t) == new_shard and load > 0:
                raise ValueError(f"shard {new_shard} already holds tenant {t}")
    source = router.shard_for(tenant_id)
    if source == new_shard:
        return []
    return [Move(tenant_id, source, new_shard, (rows or {}).get(tenant_id, 0), (loads or {}).get(tenant_id, 0.0))]


def reshard_plan(before: Router, after: Router, tenants: Iterable[str],
                 rows: Mapping[str, int] | None = None) -> list[Move]:
    """N -> N+1 under a hash router: every tenant whose hash shard changes, as moves for the mover.

    The mover runs them under `before.with_shards(new, rehash=False)` (each flip an entry), then the
    service switches to `after`: the moved tenants' entries agree with the new hash, the others never moved.
    """
    rows = rows or {}
    return [Move(t, before.shard_for(t), after.shard_for(t), rows.get(t, 0))
            for t in moved_on_growth(before, after, tenants)]


def apply_moves(router: DirectoryRouter, moves: Iterable[Move]) -> DirectoryRouter:
    """The router after `moves` (their flips) happened."""
    return router.with_placements({m.tenant_id: m.target for m in moves})
